"""The guest kernel model: processes, demand paging, the clock, and the port to its page tables."""

from fastmmu.guest.config import GuestConfig
from fastmmu.guest.os import GuestOS, Process
from fastmmu.guest.port import GuestMemoryError, PagingPort

__all__ = ["GuestConfig", "GuestMemoryError", "GuestOS", "PagingPort", "Process"]
