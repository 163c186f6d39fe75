"""The hypervisor's software walk of a guest's page tables, with the hardware's rules.

Shadow paging needs it on every hidden fault, and the direct-table modes when
an entry could not be given to the hardware.  It is the reference walker of
``fastmmu.reference.paging`` run over the guest-physical view of a VM: the
permission rules, reserved bits, error codes and accessed/dirty updates are
the SDM's, exactly as the hardware would apply them.  A table outside the
VM's memory raises ``GuestMemoryError`` (the VM is stopped).
"""

from __future__ import annotations

from collections.abc import Callable

from fastmmu.cpu import CpuState
from fastmmu.reference.paging import walk as reference_walk
from fastmmu.translation import Walk

ReadEntry = Callable[[int, int], int]
WriteEntry = Callable[[int, int, int], None]


class GuestPhysicalView:
    """Guest-physical memory as the reference walker reads it: entry by entry."""

    def __init__(self, read: ReadEntry, write: WriteEntry, maxphyaddr: int) -> None:
        self._read, self._write = read, write
        self.maxphyaddr = maxphyaddr
        self.nframes = 1 << (maxphyaddr - 12)  # every address is handed to read(): the VM decides

    def read(self, gpa: int) -> int:
        return self._read(gpa >> 12, (gpa >> 3) & 511)

    def write(self, gpa: int, value: int) -> None:
        self._write(gpa >> 12, (gpa >> 3) & 511, value)


def software_walk(read: ReadEntry, write: WriteEntry, cpu: CpuState, va: int, access: int,
                  maxphyaddr: int) -> Walk:
    """Walk the guest tables from ``cpu.cr3`` (guest-physical) for ``va``; on success the
    accessed/dirty flags are written back through ``write`` and ``host_address`` is the
    guest-physical address."""
    return reference_walk(GuestPhysicalView(read, write, maxphyaddr), cpu, va, access)
