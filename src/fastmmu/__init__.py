"""fastmmu: a fast simulator of x86-64 memory virtualization."""

from fastmmu._core.memory import HostMemory, MemoryExhausted

__all__ = ["HostMemory", "MemoryExhausted"]
