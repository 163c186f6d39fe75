"""brute force (trap-and-emulate): every guest page-table access and CR3 load traps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastmmu.arch import Access, Status
from fastmmu.batch import BatchResult
from fastmmu.hypervisor.modes.base import Outcome
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
      layout (host frame -> guest frame) and converts every write.
    - The hypervisor keeps: the VM's memory layout and which frames are page
      tables at which level.
    - VM switch: an exit that switches layouts; with no VPID, the TLBs are
      flushed.
    """

    name = "brute_force"
    uses_vpid = False

    def read_pte(self, table_gfn: int, index: int) -> int:
        self.exit("pt_read")
        return super().read_pte(table_gfn, index)

    def peek_pte(self, table_gfn: int, index: int) -> int:
        return super().read_pte(table_gfn, index)

    def write_pte(self, table_gfn: int, index: int, value: int) -> None:
        self.exit("pt_write")
        super().write_pte(table_gfn, index, value)

    def load_cr3(self, value: int) -> None:
        self.exit("cr3_load")
        super().load_cr3(value)

    def invlpg(self, va: int) -> None:
        self.exit("invlpg")
        super().invlpg(va)

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> None:
        self.exit("invlpg")
        super().invpcid(kind, pcid, va)

    def on_protect(self, frame: int) -> None:
        self.mem.set_trap(frame, True)

    def on_unprotect(self, frame: int) -> None:
        self.mem.set_trap(frame, False)

    def on_fault(self, process: Process, result: BatchResult, va: int, access: int) -> Outcome:
        if result.status != Status.TRAP:
            return super().on_fault(process, result, va, access)
        assert result.fault is not None
        frame = result.fault.host_address >> 12
        if frame in self.links or frame in self.roots:
            # a data access to a live page table: emulated (the simulator carries no data values)
            self.exit("pt_write" if access & Access.WRITE else "pt_read")
        else:
            self.exit("unprotect")
            self.mem.set_trap(frame, False)
        return Outcome.DONE

    def destroy(self) -> None:
        for frame in set(self.level_of) | self.roots:
            if self.mem.is_trapped(frame):
                self.mem.set_trap(frame, False)
