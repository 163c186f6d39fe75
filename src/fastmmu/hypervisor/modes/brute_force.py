"""brute force (trap-and-emulate): every guest page-table access and CR3 load traps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastmmu.arch import Access, Status
from fastmmu.batch import BatchResult
from fastmmu.hypervisor.modes.base import Outcome, fault_record
from fastmmu.hypervisor.modes.direct import DirectMode

if TYPE_CHECKING:
    from fastmmu.guest.os import Process


class BruteForce(DirectMode):
    """Guest page tables are read- and write-protected.

    - Traps: every guest read or write of a page-table entry (``pt_read``,
      ``pt_write``), every MOV to CR3 (``cr3_load``), INVLPG and INVPCID
      (``invlpg``), and any data access to a frame in use as a page table
      (the frames are marked as traps in host memory).
    - The hardware walks: the guest's tables, which the hypervisor keeps
      holding host addresses; it answers the guest's reads from its memory
      layout (host frame -> guest frame) and converts every write.  Guest
      large pages over host frames that are not one aligned run are given to
      the hardware in pieces (hidden tables in hypervisor frames).
    - The hypervisor keeps: the VM's memory layout, the levels each frame is
      a table at, the entries the hardware cannot be given as they are, and
      the hidden tables.
    - VM switch: an exit that switches layouts; with no VPID, the TLBs are
      flushed.
    - A hostile guest (``direct.py`` says what each entry becomes) gets the
      hardware's faults, or its VM stopped with the reason: for memory beyond
      the VM, for a #GP in its kernel (a CR3 value or INVPCID operand that
      faults), and for an access through an entry its table's levels read two
      ways that cannot share one real entry.
    """

    name = "brute_force"
    uses_vpid = False
    cr3_exits = True
    invalidation_exits = True

    def _read_pte(self, table_gfn: int, index: int) -> int:
        self.exit("pt_read")
        return super()._read_pte(table_gfn, index)

    def _write_pte(self, table_gfn: int, index: int, value: int) -> None:
        self.exit("pt_write")
        super()._write_pte(table_gfn, index, value)

    def _count_pt_writes(self, count: int) -> None:
        self.exit("pt_write", count)

    def on_protect(self, frame: int) -> None:
        self.mem.set_trap(frame, True)

    def on_unprotect(self, frame: int) -> None:
        self.mem.set_trap(frame, False)

    def on_fault(self, process: Process, result: BatchResult, va: int, access: int) -> Outcome:
        if result.status != Status.TRAP:
            return super().on_fault(process, result, va, access)
        frame = fault_record(result).host_address >> 12
        if frame in self.links or frame in self.roots:
            # a data access to a live page table: emulated (the simulator carries no data values)
            self.exit("pt_write" if access & Access.WRITE else "pt_read")
        else:
            self.exit("unprotect")
            self.mem.set_trap(frame, False)
        return Outcome.DONE

    def destroy(self) -> None:
        for frame in set(self.links) | self.roots:
            if self.mem.is_trapped(frame):
                self.mem.set_trap(frame, False)
