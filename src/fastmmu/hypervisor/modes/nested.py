"""nested paging (EPT): the hardware walks the guest's tables and the EPT, in two dimensions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from fastmmu.arch import EPT, Status
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.hypervisor.ept import PAGE_FRAMES, VmEpt
from fastmmu.hypervisor.modes.base import Mode, Outcome, fault_record

if TYPE_CHECKING:
    from fastmmu.guest.os import Process
    from fastmmu.hypervisor.machine import VM

_CR3_NOFLUSH = 1 << 63


class Nested(Mode):
    """Nested paging with EPT.

    - Traps: EPT violations only (``ept_violation``): the hypervisor maps the
      guest frame to its host frame, with a large EPT page where the backing
      is contiguous and ``hypervisor.ept_page_size`` allows.  Guest page
      faults, CR3 loads and INVLPG never leave the guest.
    - The hardware walks: the guest's tables (guest VA -> guest PA), every
      reference translated by the EPT (guest PA -> host PA): up to
      ``n*m + n + m`` references per TLB miss.
    - The hypervisor keeps: one EPT per VM in its pool, built on violations
      (``hypervisor.ept = "lazy"``) or all at creation (``"eager"``).
    - VM switch: an exit and an EPTP switch; TLB entries are tagged with the
      VM's VPID (and EPT), so they survive.
    - A hostile guest: the hardware walks whatever it writes, and every
      guest-physical address it reaches goes through the EPT, which maps the
      VM's own frames only; an address beyond the VM's memory stops the VM,
      and so does a #GP in its kernel (a CR3 value or INVPCID operand that
      faults).
    """

    name = "nested"
    uses_vpid = True

    def __init__(self, vm: VM) -> None:
        super().__init__(vm)
        hv = vm.machine.hypervisor
        self.ept = VmEpt(vm, hv.ept_levels, ad=hv.ept_ad, max_frames=PAGE_FRAMES[hv.ept_page_size])
        self.violations = 0
        if hv.ept == "eager":
            self.ept.map_all()

    # -- the EPT -----------------------------------------------------------------------

    def _touch(self, gfn: int) -> None:
        """The guest's kernel touches guest frame ``gfn`` itself (its page tables)."""
        if not 0 <= gfn < self.frames:
            self.layout.check(gfn)
        if not self.ept.is_mapped[gfn]:
            self.exit("ept_violation")
            self.violations += 1
            self.ept.map_frame(gfn)

    # -- the guest's port: nothing traps, but memory the EPT lacks does ---------------

    def _new_table(self, gfn: int) -> None:
        self._touch(gfn)
        super()._new_table(gfn)

    def _read_pte(self, table_gfn: int, index: int) -> int:
        if not self.ept.is_mapped[table_gfn]:  # (the port checked the frame: _touch's check is not needed)
            self._touch(table_gfn)
        return self.mem.read(self.layout.hfn(table_gfn) << 12 | index << 3)

    def _write_pte(self, table_gfn: int, index: int, value: int) -> None:
        if not self.ept.is_mapped[table_gfn]:
            self._touch(table_gfn)
        self.mem.write(self.layout.hfn(table_gfn) << 12 | index << 3, value)

    def _clear_ptes(self, tables: np.ndarray, indices: np.ndarray) -> None:
        _, first = np.unique(tables, return_index=True)
        for table in tables[np.sort(first)].tolist():  # each table touched, in the order the loop would
            self._touch(table)
        self._store_zeros(tables, indices)

    def _load_cr3(self, value: int) -> None:
        self.cr3 = value & ~_CR3_NOFLUSH
        self.hw().mov_cr3(value)

    # -- the hardware side -------------------------------------------------------------

    def context(self) -> tuple[CpuState, EptConfig | None]:
        # before the guest loads CR3 nothing runs; its reset value, 0, is as good as any
        return self.cpu_state(self.cr3 if self.cr3 is not None else 0), self.ept.config

    def on_fault(self, process: Process, result: BatchResult, va: int, access: int) -> Outcome:
        if result.status == Status.EPT_VIOLATION:
            gpa = fault_record(result).fault_address
            if gpa >> 12 >= self.layout.frames:
                self.stop_beyond_memory(va, gpa)
            self.exit("ept_violation")
            self.violations += 1
            self.ept.map_frame(gpa >> 12)
            return Outcome.RETRY
        if result.status == Status.EPT_MISCONFIG:
            self.vm.terminate(f"EPT misconfiguration at {va:#x}: a hypervisor bug")
        return super().on_fault(process, result, va, access)

    def destroy(self) -> None:
        self.ept.release()

    def stats(self) -> dict[str, Any]:
        frames = len(self.ept.frames)
        return {"ept_frames": frames, "ept_bytes": frames << 12, "ept_mapped_bytes": int(self.ept.mapped.sum()) << 12}

    def mapped_frames(self) -> Iterator[tuple[str, int]]:
        mem = self.mem
        stack = [(self.ept.root >> 12, self.ept.levels)]
        while stack:
            table, level = stack.pop()
            row = mem.read_frame(table)
            for index in map(int, (row & int(EPT.RWX)).nonzero()[0]):
                entry = int(row[index])
                frame = (entry & 0x000F_FFFF_FFFF_F000) >> 12
                if level == 1 or entry & EPT.PS:
                    yield "ept", frame
                    if level > 1:
                        yield "ept", frame + 512 ** (level - 1) - 1
                else:
                    stack.append((frame, level - 1))
