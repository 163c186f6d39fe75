"""The machine: host memory, one CPU's MMU, a hypervisor, and the VMs it runs.

``Machine.run`` is the hypervisor's scheduler and the KVM_RUN-style loop of
design.md: it gives each VM a time slice, the VM's guest kernel gives its
processes quanta, and each quantum's accesses go to the compiled core in one
call.  The core stops only at an access that needs software; the VM's mode
handles it (as hypervisor, or by passing a page fault to the guest kernel)
and the batch resumes from there.  No Python runs per access otherwise.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, NoReturn

import numpy as np

from fastmmu.arch import FrameKind, Status
from fastmmu.guest.config import GuestConfig
from fastmmu.guest.os import GuestOS, Process, user_kinds
from fastmmu.guest.port import GuestMemoryError
from fastmmu.hypervisor.config import HypervisorConfig, MachineConfig, VMConfig, check_mode
from fastmmu.hypervisor.costs import EXIT_REASONS, CostModel
from fastmmu.hypervisor.layout import HostExhausted, Partitions, VMMemory
from fastmmu.hypervisor.modes import MODES, Mode, Outcome
from fastmmu.hypervisor.result import RunResult
from fastmmu.settings import ConfigError, check_size, from_dict
from fastmmu.tlbconfig import TLBConfig
from fastmmu.units import format_size
from fastmmu.workloads.program import Accesses, ProgramError, as_program

_OK = Status.OK
GAUGES = ("page_tables", "resident_pages")  # guest stats that are levels, not counts
MAX_RETRIES = 16  # the same access faulting this often in a row means the VM cannot make progress
GIB = 1 << 30

BatchHook = Callable[["VM", Process, np.ndarray, np.ndarray, np.ndarray, int, int], None]
"""``hook(vm, process, addresses, kinds, host_addresses, start, stop)``: accesses [start, stop) done
(``kinds`` as the MMU saw them: with the CPL-3 bit)."""


class VMTerminated(Exception):
    """A VM was stopped for good; ``reason`` says why."""

    def __init__(self, vm: VM, reason: str) -> None:
        super().__init__(f"{vm.name}: {reason}")
        self.vm, self.reason = vm, reason


class VM:
    """A virtual machine: its memory, its guest kernel and its mode of memory virtualization."""

    def __init__(self, machine: Machine, vm_id: int, config: VMConfig, mode: str, guest: GuestConfig,
                 memory: VMMemory, vpid: int, *, record_faults: bool = False) -> None:
        self.machine = machine
        self.id = vm_id
        self.config = config
        self.name = config.name or f"vm{vm_id}"
        self.guest_config = guest
        self.memory = memory
        self.vpid = vpid
        self.exits: Counter[str] = Counter()
        self.terminated: str | None = None
        self.hv_frames: set[int] = set()
        self.hv_frames_peak = 0
        try:
            self.mode: Mode = MODES[mode](self)
        except HostExhausted:
            self.free_hv_frames(list(self.hv_frames))
            raise
        self.guest = GuestOS(self.mode, memory.frames, guest, record_faults=record_faults)
        self._idle: int | None = None

    def __repr__(self) -> str:
        return f"VM({self.name}, {format_size(self.memory.size)}, mode={self.mode.name})"

    @property
    def alive(self) -> bool:
        return self.terminated is None

    # -- what modes use ----------------------------------------------------------------

    def count_exit(self, reason: str, count: int = 1) -> None:
        self.exits[reason] += count

    def terminate(self, reason: str) -> NoReturn:
        """Stop this VM for good with ``reason`` (recorded); raises ``VMTerminated``."""
        if self.terminated is None:
            self.terminated = reason
            self.count_exit("termination")
        raise VMTerminated(self, reason)

    def alloc_hv_frame(self, kind: int) -> int:
        """A zeroed frame of the hypervisor's pool, accounted to this VM."""
        frame = self.machine._alloc_pool_frame(kind)
        self.hv_frames.add(frame)
        self.hv_frames_peak = max(self.hv_frames_peak, len(self.hv_frames))
        return frame

    def free_hv_frames(self, frames: Iterable[int]) -> None:
        frames = [f for f in frames if f in self.hv_frames]
        if frames:
            self.hv_frames.difference_update(frames)
            self.machine.mem.free(np.asarray(frames, dtype=np.uint64))

    def idle_root(self) -> int:
        """A zeroed hypervisor frame used as CR3 before the guest loads one (nothing maps)."""
        if self._idle is None:
            self._idle = self.alloc_hv_frame(FrameKind.HYPERVISOR)
        return self._idle << 12

    # -- running -----------------------------------------------------------------------

    def spawn(self, program: Any = None, *, name: str = "") -> Process:
        """A new guest process, optionally with its program (see ``fastmmu.workloads``)."""
        return self.guest.spawn(program, name=name)

    def run(self, process: Process | None = None, program: Any = None, **options: Any) -> RunResult:
        """Run this VM's processes (``program`` is given to ``process`` first) until they end."""
        if process is not None and program is not None:
            process.steps = as_program(program).steps()
            process.current, process.done = None, False
        return self.machine.run(vms=[self], **options)

    def destroy(self) -> None:
        self.machine.destroy_vm(self)


class Machine:
    """Host memory, an MMU with its TLBs, a hypervisor, and VMs.

    >>> m = Machine(host_memory="4GiB")
    >>> vm = m.create_vm(memory="512MiB", mode="shadow")
    >>> vm
    VM(vm1, 512MiB, mode=shadow)
    """

    def __init__(self, host_memory: int | str | None = None, *, tlb: TLBConfig | str | None = None,
                 hypervisor: HypervisorConfig | dict[str, Any] | None = None,
                 costs: CostModel | dict[str, Any] | None = None, guest: GuestConfig | dict[str, Any] | None = None,
                 maxphyaddr: int = 46, record_faults: bool = False) -> None:
        from fastmmu import MMU, HostMemory

        size = check_size(host_memory, "machine.host_memory") if host_memory is not None else 16 << 30
        config = MachineConfig(host_memory=size,
                               maxphyaddr=maxphyaddr, tlb=tlb if isinstance(tlb, str) else "skylake")
        self.config = config
        self.hypervisor = from_dict(HypervisorConfig, hypervisor, "hypervisor")
        self.costs = from_dict(CostModel, costs, "costs")
        self.guest_defaults = from_dict(GuestConfig, guest, "guest")
        self.record_faults = record_faults
        if isinstance(tlb, TLBConfig):
            self.tlb = tlb
        else:
            self.tlb = TLBConfig.none() if config.tlb == "none" else TLBConfig.skylake()
        self.mem = HostMemory(config.host_memory, maxphyaddr=config.maxphyaddr)
        self.mmu = MMU(self.mem, tlb=self.tlb)
        pool = self.hypervisor.memory >> 12
        if pool >= self.mem.nframes:
            raise ConfigError(f"hypervisor.memory: {format_size(self.hypervisor.memory)} leaves nothing of "
                              f"the host's {format_size(config.host_memory)} for VMs")
        self.pool_frames = pool
        self.partitions = Partitions(pool, self.mem.nframes)
        self.vms: dict[int, VM] = {}
        self._done = 0  # accesses completed in the current run()
        self._next_id = 1
        self.current: VM | None = None  # the VM whose context the CPU holds
        self.scheduled: VM | None = None  # the VM the scheduler last ran (switches are counted from it)
        self.committed = 0  # bytes of VM memory promised (partitions)

    def __repr__(self) -> str:
        return f"Machine({format_size(self.config.host_memory)}, {len(self.vms)} VMs)"

    # -- VMs ---------------------------------------------------------------------------

    def create_vm(self, memory: int | str = 1 << 30, mode: str = "nested", *, backing: str = "contiguous",
                  allocation: str = "eager", guest: GuestConfig | dict[str, Any] | None = None, seed: int = 0,
                  name: str = "") -> VM:
        """A VM with guest-physical memory [0, ``memory``), backed by host frames given to it alone."""
        check_mode(mode)
        config = VMConfig(memory=check_size(memory, "vm.memory"), backing=backing, allocation=allocation,
                          seed=seed, name=name)
        taken = {vm.name for vm in self.vms.values()}
        if (name or f"vm{self._next_id}") in taken:
            raise ConfigError(f"vm.name: this machine already has a VM named {name or f'vm{self._next_id}'!r} "
                              "(VM names are unique: results and traces name VMs by them)")
        guest_config = from_dict(GuestConfig, guest, "guest") if guest is not None else self.guest_defaults
        if guest_config.reserved >= config.memory:
            raise ConfigError(f"guest.reserved: {format_size(guest_config.reserved)} is not less than the VM's "
                              f"memory ({format_size(config.memory)})")
        frames = config.memory >> 12
        vm_id = self._next_id
        if self.hypervisor.overcommit:
            layout = VMMemory(self.mem, vm_id, frames, backing=backing, allocation="on_demand", base=None,
                              seed=seed, overcommit_lo=self.pool_frames)
        else:
            align = 512 * 512 if config.memory >= GIB else 512
            base = self.partitions.take(frames, align) or self.partitions.take(frames, 512)
            if base is None:
                raise ConfigError(
                    f"vm.memory: cannot back {format_size(config.memory)}: the host has "
                    f"{format_size(self.partitions.available << 12)} left for VMs (host_memory "
                    f"{format_size(self.config.host_memory)}, hypervisor.memory "
                    f"{format_size(self.hypervisor.memory)}); set hypervisor.overcommit=true to allow it")
            layout = VMMemory(self.mem, vm_id, frames, backing=backing, allocation=allocation, base=base,
                              seed=seed)
            self.committed += config.memory
        try:
            vm = VM(self, vm_id, config, mode, guest_config, layout, vpid=vm_id, record_faults=self.record_faults)
        except HostExhausted as exc:  # its hypervisor tables (shadow's map, an eager EPT) do not fit
            layout.release()
            if layout.base is not None:
                self.partitions.give_back(layout.base, layout.frames)
                self.committed -= config.memory
            raise ConfigError(f"hypervisor.memory: {exc} (creating a {format_size(config.memory)} {mode} VM)"
                              ) from None
        self._next_id += 1
        self.vms[vm_id] = vm
        return vm

    def destroy_vm(self, vm: VM) -> None:
        """Return everything of ``vm`` to the host and drop its translations from every cache."""
        if self.vms.get(vm.id) is not vm:
            raise ValueError(f"{vm.name} is not a VM of this machine")
        vm.mode.destroy()
        vm.free_hv_frames(list(vm.hv_frames))
        vm.memory.release()
        if vm.memory.base is not None:
            self.partitions.give_back(vm.memory.base, vm.memory.frames)
            self.committed -= vm.memory.size
        if vm.mode.uses_vpid:
            self.mmu.invvpid(1, vpid=vm.vpid)
        else:
            self.mmu.flush()
        if hasattr(vm.mode, "ept"):
            self.mmu.invept(1, eptag=vm.mode.ept.config.eptag)
        del self.vms[vm.id]
        if self.current is vm:
            self.current = None
        if self.scheduled is vm:
            self.scheduled = None
        if vm.terminated is None:
            vm.terminated = "destroyed"

    def _alloc_pool_frame(self, kind: int) -> int:
        try:
            return self.mem.alloc_frame(owner=0, kind=kind, lo=0, hi=self.pool_frames)
        except MemoryError as exc:
            raise HostExhausted(f"the hypervisor's memory ({format_size(self.hypervisor.memory)}) is "
                                "exhausted; raise hypervisor.memory") from exc

    # -- running -----------------------------------------------------------------------

    def _enter(self, vm: VM, *, charge: bool = True) -> None:
        """Put ``vm`` on the CPU.  The scheduler's switches (``charge``) cost what the mode says; a
        guest driven by hand outside a run enters its VM for free and does not count as scheduled."""
        if charge:
            if self.scheduled is not None and self.scheduled is not vm:
                vm.mode.switch_cost()
            self.scheduled = vm
        if self.current is not vm:
            if not vm.mode.uses_vpid:
                self.mmu.flush()  # no VPID: nothing of another VM may stay
            self.current = vm
        vm.mode.enter()

    def run(self, *, vms: Iterable[VM] | None = None, max_accesses: int | None = None,
            on_batch: BatchHook | None = None) -> RunResult:
        """Run every runnable process of ``vms`` (default: all) until all programs end.

        ``max_accesses`` stops early (the result is marked partial); so does Ctrl-C.
        ``on_batch`` sees the host address of every access done (tests, trace writers).
        """
        chosen = list(self.vms.values()) if vms is None else list(vms)
        self.mmu.reset_counters()
        before = {vm.id: (Counter(vm.exits), dict(vm.guest.stats)) for vm in chosen}
        running = {vm.id: (vm.terminated, [p for p in vm.guest.processes.values() if p.alive and not p.done])
                   for vm in chosen}
        started = time.perf_counter()
        self._done = 0  # accesses completed: counted as they complete, so an interruption loses none
        partial, interrupted, error = False, False, None
        limit = max_accesses if max_accesses is not None else -1
        try:
            while limit < 0 or self._done < limit:
                active = [vm for vm in chosen if vm.alive and vm.guest.runnable()]
                if not active:
                    break
                for vm in active:
                    budget = self.hypervisor.vm_slice if limit < 0 else min(self.hypervisor.vm_slice,
                                                                            limit - self._done)
                    if budget <= 0:
                        break
                    self._run_slice(vm, budget, on_batch)
            partial = limit >= 0 and any(vm.alive and vm.guest.runnable() for vm in chosen)
        except KeyboardInterrupt:
            partial = interrupted = True
        except ProgramError as exc:  # e.g. a malformed trace: keep what was done, say why it stopped
            partial, error = True, str(exc)
        stopped = _stopped(chosen, running)
        result = self._result(chosen, before, self._done, partial or bool(stopped), time.perf_counter() - started,
                              stopped)
        return replace(result, interrupted=interrupted, error=error) if interrupted or error else result

    def _run_slice(self, vm: VM, budget: int, on_batch: BatchHook | None) -> int:
        """Run ``vm`` for up to ``budget`` accesses; the number done."""
        done = 0
        try:
            self._enter(vm)
            guest = vm.guest
            while done < budget and vm.alive:
                process = guest.schedule()
                if process is None:
                    break
                ran = self._run_process(vm, process, min(budget - done, guest.quantum_left), on_batch)
                guest.quantum_left -= ran
                done += ran
        except VMTerminated:
            pass
        except (GuestMemoryError, HostExhausted) as exc:
            try:
                vm.terminate(str(exc))
            except VMTerminated:
                pass
        return done

    def _run_process(self, vm: VM, process: Process, limit: int, on_batch: BatchHook | None) -> int:
        """Up to ``limit`` accesses of ``process``: the batch loop."""
        guest, mmu, mode = vm.guest, self.mmu, vm.mode
        done = 0
        while done < limit and process.alive:
            item = guest.next_accesses(process, limit - done)
            if item is None:
                guest.exit(process)
                break
            batch, start, stop = item
            addresses = batch.addresses[start:stop]
            kinds = process_kinds(process, batch)[start:stop]
            count = stop - start
            out = np.zeros(count, dtype=np.uint64)
            status = np.zeros(count, dtype=np.uint8)
            address_of, kind_of = addresses.data, kinds.data  # one access at a time, as Python ints
            index, retries = 0, 0
            while index < count and process.alive:
                if mode.stale_walks:
                    mode.forget_cached_walks()
                result = mmu.translate(addresses, kinds, out=out, status=status, start=index)
                stopped = result.stopped
                if on_batch is not None and stopped > index:
                    on_batch(vm, process, addresses, kinds, out, index, stopped)
                done += stopped - index
                self._done += stopped - index
                process.accesses_done += stopped - index
                if result.status is _OK:
                    index = count
                    break
                if stopped != index:
                    retries = 0
                index = stopped
                outcome = mode.on_fault(process, result, address_of[index], kind_of[index])
                if outcome is Outcome.DONE:
                    if on_batch is not None:
                        on_batch(vm, process, addresses, kinds, out, index, index + 1)
                    index, done, retries = index + 1, done + 1, 0
                    self._done += 1
                    process.accesses_done += 1
                elif outcome is Outcome.RETRY:
                    retries += 1
                    if retries > MAX_RETRIES:
                        vm.terminate(f"the access at {int(addresses[index]):#x} faulted {MAX_RETRIES} times "
                                     "in a row: no progress")
            process.position = start + index
        return done

    # -- results -----------------------------------------------------------------------

    def _result(self, vms: list[VM], before: dict[int, Any], accesses: int, partial: bool,
                seconds: float, stopped: list[dict[str, Any]] | None = None) -> RunResult:
        counters = self.mmu.counters()
        tlb = {
            "lookups": counters["accesses"],
            "l1_hits": counters["l1i"]["hits"] + counters["l1d"]["hits"],
            "l1_misses": counters["l1i"]["misses"] + counters["l1d"]["misses"],
            "l2_hits": counters["l2"]["hits"],
            "l2_misses": counters["l2"]["misses"],
            "walks": counters["walks"],
            "walk_references": counters["walk_references"],
            "rights_drops": counters["tlb_rights_drops"],
            "faults": dict(counters["faults"]),
        }
        tlb["miss_rate"] = tlb["walks"] / tlb["lookups"] if tlb["lookups"] else 0.0
        tlb["references_per_walk"] = tlb["walk_references"] / tlb["walks"] if tlb["walks"] else 0.0
        histogram = [int(n) for n in counters["walk_refs_histogram"]]
        while histogram and not histogram[-1]:
            histogram.pop()
        tlb["walk_refs_histogram"] = histogram
        exits: dict[str, int] = {reason: 0 for reason in EXIT_REASONS}
        guest_total: Counter[str] = Counter()
        hypervisor: Counter[str] = Counter()
        per_vm = []
        for vm in vms:
            old_exits, old_guest = before[vm.id]
            vm_exits = {r: n - old_exits.get(r, 0) for r, n in vm.exits.items() if n - old_exits.get(r, 0)}
            vm_guest = {k: v if k in GAUGES else v - old_guest.get(k, 0) for k, v in vm.guest.stats.items()}
            for reason, n in vm_exits.items():
                exits[reason] = exits.get(reason, 0) + n
            guest_total.update(vm_guest)
            mode_stats = vm.mode.stats()
            hypervisor.update({k: v for k, v in mode_stats.items() if isinstance(v, int)})
            per_vm.append({"id": vm.id, "name": vm.name, "mode": vm.mode.name, "memory": vm.memory.size,
                           "backed_bytes": vm.memory.backed_frames << 12, "vm_exits": vm_exits,
                           "guest": vm_guest, "hypervisor": mode_stats, "hypervisor_bytes": len(vm.hv_frames) << 12,
                           "terminated": vm.terminated})
        exits["total"] = sum(exits.values())
        hv = {key: 0 for key in ("shadow_cache_hits", "shadow_cache_misses", "shadow_cache_evictions",
                                 "shadow_tables_built", "shadow_bytes", "ept_bytes")}
        hv.update(hypervisor)
        hv["hypervisor_bytes"] = sum(len(vm.hv_frames) for vm in vms) << 12
        hv["hypervisor_bytes_peak"] = sum(vm.hv_frames_peak for vm in vms) << 12
        stats: dict[str, Any] = {"accesses": accesses, "tlb": tlb, "guest": dict(guest_total), "vm_exits": exits,
                 "hypervisor": hv, "vms": per_vm,
                 "structures": {name: t.stats() for name, t in self.mmu.structures().items()}}
        for key in ("page_faults", "pt_reads", "pt_writes", "context_switches"):
            stats["guest"].setdefault(key, 0)
        breakdown = self.costs.estimate(stats)
        modes = sorted({vm.mode.name for vm in vms})
        return RunResult(mode=modes[0] if len(modes) == 1 else "+".join(modes), stats=stats,
                         cycles=breakdown["total"], breakdown=breakdown, partial=partial, seconds=seconds,
                         stopped=stopped or [])


def _stopped(vms: list[VM], running: dict[int, tuple[str | None, list[Process]]]) -> list[dict[str, Any]]:
    """Every process that was running when the run began and was stopped during it before its
    program ended: killed by its guest kernel (#GP, segfault, out of memory), or in a VM the
    hypervisor stopped; and a VM stopped with no such process.  ``accesses``: how many of its
    program's accesses completed, so the one it stopped at is number ``accesses + 1``."""
    out: list[dict[str, Any]] = []
    for vm in vms:
        was_terminated, processes = running[vm.id]
        vm_stopped = vm.terminated is not None and was_terminated is None
        entries = []
        for process in processes:
            if process.done:
                continue
            if not process.alive:
                reason = process.exit_reason
            elif vm_stopped:
                reason = f"its VM was stopped: {vm.terminated}"
            else:
                continue   # still running: a run cut short (max_accesses, Ctrl-C) says so itself
            entries.append({"vm": vm.name, "process": process.name, "pid": process.pid, "reason": reason,
                            "accesses": process.accesses_done})
        if vm_stopped and not entries:
            entries.append({"vm": vm.name, "process": None, "pid": None, "reason": vm.terminated,
                            "accesses": None})
        out += entries
    return out


def process_kinds(process: Process, batch: Accesses) -> np.ndarray:
    """The batch's access kinds as a CPL-3 process makes them (cached per batch)."""
    if process.kinds_of is not batch:
        process.kinds_of, process.kinds = batch, user_kinds(batch.kinds)
        process.kinds.flags.writeable = False  # validated once by the MMU, not again at every resume
    return process.kinds  # type: ignore[return-value]
