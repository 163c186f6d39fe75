"""The interface every way of virtualizing memory implements.

A mode is one VM's memory virtualization.  It plays two roles:

- the guest's ``PagingPort`` (``read_pte``, ``write_pte``, ``load_cr3``,
  ``invlpg``, ...): each mode decides which of these trap, and counts the
  exits;
- the hypervisor's side of the hardware: ``enter`` loads what the MMU walks
  (CR3, and the EPT pointer and VPID if any), ``on_fault`` handles a stop of
  the batch run loop (a page fault, an EPT violation, a trapped frame), and
  ``destroy`` returns everything the mode allocated.

A new mode is one module with a ``Mode`` subclass, registered in
``fastmmu.hypervisor.modes.MODES``.  Its class docstring states what traps,
what the hardware walks, what the hypervisor keeps, and what a VM switch costs.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING, Any

from fastmmu.arch import Status
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig

if TYPE_CHECKING:
    from fastmmu.guest.os import Process
    from fastmmu.hypervisor.machine import VM


class Outcome(Enum):
    """What the run loop does after a mode handled a stop."""

    RETRY = "retry"  # run the same access again
    DONE = "done"  # the access was carried out by software: go on with the next
    KILLED = "killed"  # the guest killed the process
    TERMINATED = "terminated"  # the VM was stopped


class Mode:
    """Base class: the guest port and the hypervisor hooks, with the shared defaults."""

    name = ""
    uses_vpid = False
    """Whether TLB entries are tagged with the VM's VPID, so that a VM switch keeps them."""
    stale_walks = False
    """Set when cached walks may be wrong: the run loop calls ``forget_cached_walks`` before it
    lets the hardware walk again."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self.mem = vm.machine.mem
        self.layout = vm.memory
        self.levels = vm.guest_config.levels
        self.cr3 = 0  # the guest's CR3 (guest-physical root | PCID)

    # -- helpers -------------------------------------------------------------------

    def exit(self, reason: str, count: int = 1) -> None:
        self.vm.count_exit(reason, count)

    def hw(self) -> Any:
        """The MMU, with this VM on it: the guest's instructions (MOV to CR3, INVLPG) act on it.
        Outside a run (a guest driven by hand) this enters the VM without charging a switch."""
        machine = self.vm.machine
        if machine.current is not self.vm:
            machine._enter(self.vm, charge=False)
        return machine.mmu

    def cpu_state(self, cr3: int) -> CpuState:
        return CpuState(cr3=cr3, levels=self.levels, cr4_pcide=self.vm.guest_config.pcid)

    def vpid(self) -> int:
        return self.vm.vpid if self.uses_vpid else 0

    # -- the guest's port ----------------------------------------------------------

    def new_table(self, gfn: int) -> None:
        frame = self.layout.hfn(gfn)
        self.mem.write_run(frame << 12, 512, 0, 0)

    def release_table(self, gfn: int) -> None:
        pass

    def read_pte(self, table_gfn: int, index: int) -> int:
        return self.mem.read(self.layout.hfn(table_gfn) << 12 | index << 3)

    def write_pte(self, table_gfn: int, index: int, value: int) -> None:
        self.mem.write(self.layout.hfn(table_gfn) << 12 | index << 3, value)

    def peek_pte(self, table_gfn: int, index: int) -> int:
        """The entry as the guest would read it, without any exit or side effect (inspection)."""
        return self.read_pte(table_gfn, index)

    def load_cr3(self, value: int) -> None:
        raise NotImplementedError

    def check_cr3(self, value: int) -> None:
        """MOV to CR3 with reserved bits set is a #GP in the guest kernel: the VM is stopped."""
        if (value & ~(1 << 63)) >> self.mem.maxphyaddr or (value >> 63 and not self.vm.guest_config.pcid):
            self.vm.terminate(f"MOV to CR3 {value:#x} sets reserved bits (#GP in the guest kernel)")

    def invlpg(self, va: int) -> None:
        self.hw().invlpg(va)

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> None:
        self.hw().invpcid(kind, pcid=pcid, va=va)

    # -- the hypervisor's hooks ----------------------------------------------------

    def context(self) -> tuple[CpuState, EptConfig | None]:
        """What the MMU runs this VM with now."""
        raise NotImplementedError

    def enter(self) -> None:
        """Load this VM's context into the MMU (VM entry after a switch)."""
        cpu, ept = self.context()
        self.vm.machine.mmu.set_context(cpu, ept=ept, vpid=self.vpid())

    def switch_cost(self) -> None:
        """Count what switching to this VM costs (exits); the default: one VM-switch exit."""
        self.exit("vm_switch")

    def on_fault(self, process: Process, result: BatchResult, va: int, access: int) -> Outcome:
        """A stop of the run loop at ``va``.  The default: page faults go to the guest."""
        fault = result.fault
        assert fault is not None
        if result.status == Status.PAGE_FAULT:
            return self.deliver_page_fault(process, va, fault.error_code)
        if result.status == Status.GP:
            self.vm.guest.exit(process, reason=f"general protection fault at {va:#x} (non-canonical)")
            return Outcome.KILLED
        return self.vm.terminate(f"unexpected {result.status.name} at {va:#x} in {self.name} mode")

    def deliver_page_fault(self, process: Process, va: int, error_code: int) -> Outcome:
        return Outcome.RETRY if self.vm.guest.page_fault(process, va, error_code) else Outcome.KILLED

    def forget_cached_walks(self) -> None:
        self.stale_walks = False

    def destroy(self) -> None:
        """Return every frame the mode allocated to the hypervisor's pool."""

    def stats(self) -> dict[str, Any]:
        """Mode-specific counters (shadow cache, EPT size, ...)."""
        return {}

    def mapped_frames(self) -> Iterator[tuple[str, int]]:
        """(structure, host frame) for every translation this mode keeps for the hardware: the
        isolation tests check each frame belongs to the VM."""
        return iter(())

