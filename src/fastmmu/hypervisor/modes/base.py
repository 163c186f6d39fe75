"""The interface every way of virtualizing memory implements.

A mode is one VM's memory virtualization.  It plays two roles:

- the guest's ``PagingPort`` (``read_pte``, ``write_pte``, ``load_cr3``,
  ``invlpg``, ...): each mode decides which of these trap, and counts the
  exits;
- the hypervisor's side of the hardware: ``enter`` loads what the MMU walks
  (CR3, and the EPT pointer and VPID if any), ``on_fault`` handles a stop of
  the batch run loop (a page fault, an EPT violation, a trapped frame), and
  ``destroy`` returns everything the mode allocated.

The port's public methods live here, once for every mode: they check their
arguments (``fastmmu.guest.port`` says what a bad one gets), count the exit
when the mode's class says the instruction exits (``cr3_exits``,
``invalidation_exits``), give the guest kernel the #GP(0) an operand would
raise on hardware (the VM is stopped with the reason), and only then call the
mode's hook (``_read_pte``, ``_write_pte``, ``_load_cr3``, ``_invlpg``, ...).

A new mode is one module with a ``Mode`` subclass, registered in
``fastmmu.hypervisor.modes.MODES``.  Its class docstring states what traps,
what the hardware walks, what the hypervisor keeps, and what a VM switch costs.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from fastmmu.arch import CR3_NOFLUSH, Status, is_canonical
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.guest.port import ENTRIES, check_frame, check_slot, check_u64
from fastmmu.translation import Walk

if TYPE_CHECKING:
    from fastmmu.guest.os import Process
    from fastmmu.hypervisor.machine import VM

MAX_PCID = 4095
PIECE = 4096
LARGE_2M = 2 << 20


class Outcome(Enum):
    """What the run loop does after a mode handled a stop."""

    RETRY = "retry"  # run the same access again
    DONE = "done"  # the access was carried out by software: go on with the next
    KILLED = "killed"  # the guest killed the process
    TERMINATED = "terminated"  # the VM was stopped


def fault_record(result: BatchResult) -> Walk:
    """The fault record of a stopped batch (the core gives one with every stop)."""
    if result.fault is None:
        raise RuntimeError(f"simulator bug: the batch stopped with {result.status.name} and no fault record")
    return result.fault


def invpcid_fault(kind: int, pcid: int, va: int, pcide: bool, levels: int) -> str | None:
    """Why INVPCID with these operands raises #GP(0) on hardware (SDM Vol. 2, INVPCID), or None."""
    if kind > 3:
        return f"type {kind} is not 0..3"
    if pcid > MAX_PCID:
        return f"descriptor {pcid:#x} sets reserved bits 63:12"
    if kind <= 1 and pcid and not pcide:
        return f"type {kind} names PCID {pcid} while CR4.PCIDE=0"
    if kind == 0 and not is_canonical(va, levels):
        return f"type 0 address {va:#x} is not canonical"
    return None


class Mode:
    """Base class: the guest port and the hypervisor hooks, with the shared defaults."""

    name = ""
    uses_vpid = False
    """Whether TLB entries are tagged with the VM's VPID, so that a VM switch keeps them."""
    cr3_exits = False
    """Whether MOV to CR3 exits to the hypervisor (``cr3_load``)."""
    invalidation_exits = False
    """Whether INVLPG and INVPCID exit to the hypervisor (``invlpg``)."""
    stale_walks = False
    """Set when cached walks may be wrong: the run loop calls ``forget_cached_walks`` before it
    lets the hardware walk again."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self.mem = vm.machine.mem
        self.layout = vm.memory
        self.levels = vm.guest_config.levels
        self.frames = vm.memory.frames
        self.cr3: int | None = None  # the guest's CR3 (guest-physical root | PCID); None until it loads one

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

    def stop_beyond_memory(self, va: int, gpa: int) -> NoReturn:
        """An access at ``va`` reached guest-physical address ``gpa``, which the VM does not have: it
        is stopped, with the same words in every mode."""
        self.vm.terminate(f"access at {va:#x} to guest-physical address {gpa:#x}, beyond the VM's memory")

    def flush_vm_translations(self) -> None:
        """Drop every translation this VM has cached (its VPID's, or all without VPIDs)."""
        mmu = self.vm.machine.mmu
        if self.uses_vpid:
            mmu.invvpid(1, vpid=self.vm.vpid)
        else:
            mmu.flush()

    def invalidate_pieces(self, base: int, size: int, pcid: int | None = None) -> None:
        """Drop every TLB entry of the guest page of ``size`` at ``base`` that the hardware caches in
        pieces (SDM Vol. 3A 4.10.4.1: INVLPG of any address of a page invalidates all its entries):
        each 4 KiB piece of a 2 MiB page (for ``pcid``, with INVPCID; else as INVLPG does), every
        translation of the VM for a 1 GiB page (512 x 512 pieces: a superset, as the SDM allows)."""
        if size > LARGE_2M:
            self.flush_vm_translations()
            return
        mmu = self.hw()
        if pcid is None:
            for offset in range(0, size, PIECE):
                mmu.invlpg(base + offset)
        else:
            for offset in range(0, size, PIECE):
                mmu.invpcid(0, pcid=pcid, va=base + offset)

    # -- the guest's port: checked here, once for every mode ----------------------------

    def new_table(self, gfn: int) -> None:
        if type(gfn) is not int or not 0 <= gfn < self.frames:
            gfn = check_frame(gfn, self.frames, "new_table")
        self._new_table(gfn)

    def release_table(self, gfn: int) -> None:
        if type(gfn) is not int or not 0 <= gfn < self.frames:
            gfn = check_frame(gfn, self.frames, "release_table")
        self._release_table(gfn)

    def read_pte(self, table_gfn: int, index: int) -> int:
        if type(index) is not int or not 0 <= index < ENTRIES or type(table_gfn) is not int \
                or not 0 <= table_gfn < self.frames:
            table_gfn, index = check_slot(table_gfn, index, self.frames, "read_pte")
        return self._read_pte(table_gfn, index)

    def write_pte(self, table_gfn: int, index: int, value: int) -> None:
        if type(index) is not int or not 0 <= index < ENTRIES or type(table_gfn) is not int \
                or not 0 <= table_gfn < self.frames:
            table_gfn, index = check_slot(table_gfn, index, self.frames, "write_pte")
        if type(value) is not int or value < 0 or value >> 64:
            value = check_u64(value, "write_pte: value")
        self._write_pte(table_gfn, index, value)

    def clear_ptes(self, table_gfns: np.ndarray, indices: np.ndarray) -> None:
        """``write_pte(table, index, 0)`` for each pair, in order, in one call (an exiting process's
        leaf entries: millions of them for a large one)."""
        tables = np.asarray(table_gfns, dtype=np.int64)
        entries = np.asarray(indices, dtype=np.int64)
        if tables.shape != entries.shape or tables.ndim != 1:
            raise ValueError("clear_ptes: expected two 1-D arrays of the same length")
        if not len(tables):
            return
        if int(tables.min()) < 0 or int(tables.max()) >= self.frames or int(entries.min()) < 0 \
                or int(entries.max()) >= ENTRIES:  # the first bad pair gets write_pte's error, after the good ones
            for table, index in zip(tables.tolist(), entries.tolist(), strict=True):
                self.write_pte(table, index, 0)
            return
        self._clear_ptes(tables, entries)

    def peek_pte(self, table_gfn: int, index: int) -> int:
        """The entry as the guest would read it, without any exit or side effect (inspection)."""
        if type(index) is not int or not 0 <= index < ENTRIES or type(table_gfn) is not int \
                or not 0 <= table_gfn < self.frames:
            table_gfn, index = check_slot(table_gfn, index, self.frames, "peek_pte")
        return self._peek_pte(table_gfn, index)

    def load_cr3(self, value: int) -> None:
        value = check_u64(value, "load_cr3")
        if self.cr3_exits:
            self.exit("cr3_load")  # the exit comes first; the hypervisor checks the value (KVM's kvm_set_cr3)
        self.check_cr3(value)
        self._load_cr3(value)

    def check_cr3(self, value: int) -> None:
        """MOV to CR3 with reserved bits set is a #GP in the guest kernel: the VM is stopped."""
        if (value & ~CR3_NOFLUSH) >> self.mem.maxphyaddr or (value & CR3_NOFLUSH and not self.vm.guest_config.pcid):
            self.vm.terminate(f"MOV to CR3 {value:#x} sets reserved bits (#GP in the guest kernel)")

    def invlpg(self, va: int) -> None:
        va = check_u64(va, "invlpg")
        if self.invalidation_exits:
            self.exit("invlpg")
        if is_canonical(va, self.levels):  # else a no-op, as on hardware (and in KVM's emulation)
            self._invlpg(va)

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> None:
        kind = check_u64(kind, "invpcid: type")
        pcid = check_u64(pcid, "invpcid: descriptor PCID")
        va = check_u64(va, "invpcid: descriptor address")
        if self.invalidation_exits:
            # With INVPCID exiting ("INVLPG exiting" and "enable INVPCID"), the type and descriptor are
            # checked by the instruction's execution, which the VM exit pre-empts (SDM Vol. 3C 26.1.1:
            # only #UD, CPL and memory-operand faults come before the exit): the exit is taken, and the
            # hypervisor finds the #GP and injects it, as KVM's kvm_handle_invpcid does.
            self.exit("invlpg")
        fault = invpcid_fault(kind, pcid, va, self.vm.guest_config.pcid, self.levels)
        if fault is not None:
            self.vm.terminate(f"INVPCID: {fault} (#GP(0) in the guest kernel)")
        self._invpcid(kind, pcid, va)

    # -- what each mode does behind the port (arguments checked) ------------------------

    def _new_table(self, gfn: int) -> None:
        frame = self.layout.hfn(gfn)
        self.mem.write_run(frame << 12, 512, 0, 0)

    def _release_table(self, gfn: int) -> None:
        pass

    def _read_pte(self, table_gfn: int, index: int) -> int:
        return self.mem.read(self.layout.hfn(table_gfn) << 12 | index << 3)

    def _write_pte(self, table_gfn: int, index: int, value: int) -> None:
        self.mem.write(self.layout.hfn(table_gfn) << 12 | index << 3, value)

    def _peek_pte(self, table_gfn: int, index: int) -> int:
        return Mode._read_pte(self, table_gfn, index)

    def _clear_ptes(self, tables: np.ndarray, indices: np.ndarray) -> None:
        """The checked pairs of ``clear_ptes``; a mode whose ``_write_pte`` is a plain store may use
        ``_store_zeros`` instead of this loop."""
        for table, index in zip(tables.tolist(), indices.tolist(), strict=True):
            self._write_pte(table, index, 0)

    def _store_zeros(self, tables: np.ndarray, indices: np.ndarray) -> None:
        """``Mode._write_pte(table, index, 0)`` of each pair, as one store."""
        frames = self.layout.hfn_array(tables)
        self.mem.write_entries(frames << np.uint64(12) | indices.astype(np.uint64) << np.uint64(3), 0)

    def _load_cr3(self, value: int) -> None:
        raise NotImplementedError

    def _invlpg(self, va: int) -> None:
        self.hw().invlpg(va)

    def _invpcid(self, kind: int, pcid: int, va: int) -> None:
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
        fault = fault_record(result)
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
        isolation tests check each frame belongs to the VM.  Tables of the hypervisor's pool that
        the hardware walks (shadow tables, EPT tables, hidden tables) are accounted to the VM
        (``VM.hv_frames``) and not listed."""
        return iter(())
