"""The one narrow interface through which a guest touches its page tables.

Everything the guest kernel does to paging goes through a ``PagingPort``:
reading and writing a page-table entry, starting a fresh table, loading CR3,
and invalidating translations.  Each virtualization mode implements the port,
and so decides what traps: natively nothing does, under brute force every
call but ``new_table``/``release_table`` does, under shadow paging CR3 loads
and invalidations do, and under nested paging nothing does.

Addresses are guest-physical frame numbers (``gfn``); entries are what the
guest wrote, with the accessed/dirty flags the hardware (or the hypervisor,
on its behalf) set.  A gfn outside the VM's memory raises
``GuestMemoryError``: the VM is then stopped with that reason, as a real
hypervisor would on an access it cannot back.
"""

from __future__ import annotations

from typing import Protocol


class GuestMemoryError(Exception):
    """The guest touched guest-physical memory its VM does not have."""


class PagingPort(Protocol):
    def new_table(self, gfn: int) -> None:
        """The guest clears frame ``gfn`` to use it as a page table (plain stores: never a trap)."""

    def release_table(self, gfn: int) -> None:
        """The guest no longer uses ``gfn`` as a page table (its own bookkeeping: never a trap)."""

    def read_pte(self, table_gfn: int, index: int) -> int:
        """Read entry ``index`` of the table in frame ``table_gfn``."""

    def write_pte(self, table_gfn: int, index: int, value: int) -> None:
        """Write entry ``index`` of the table in frame ``table_gfn``."""

    def peek_pte(self, table_gfn: int, index: int) -> int:
        """The entry as ``read_pte`` would return it, with no exit or other effect (inspection only)."""

    def load_cr3(self, value: int) -> None:
        """MOV to CR3: ``value`` holds the root's guest-physical address, the PCID and bit 63 (no-flush)."""

    def invlpg(self, va: int) -> None:
        """INVLPG ``va`` in the current address space."""

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> None:
        """INVPCID of type ``kind`` (0 address, 1 context, 2 all with globals, 3 all but globals)."""
