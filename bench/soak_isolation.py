"""The isolation soak: hostile guest kernels in every mode, and a victim beside them that must not notice.

    python bench/soak_isolation.py                                   # 10^6 hostile writes per mode
    python bench/soak_isolation.py --writes 10000 --modes native,shadow --seed 7

Each round is a fresh machine with a victim VM (an ordinary guest kernel running ordinary
programs, created first) and two attacker VMs whose kernels, through their paging ports (the only
way a guest reaches its tables), write at random: random 64-bit entries, frames past their memory,
the other VMs' frames (host and guest frame numbers), reserved bits, PS at every level,
self-references, cross-links between their tables, releases of live tables and roots, tables
zeroed while live, hostile CR3 values and INVPCID/INVLPG operands, and port calls with malformed
arguments; some in bursts between slices of the run, some in their page-fault handlers while
their programs run (so the hardware walks what they wrote).  An attacker that ends (stopped, or
its processes dead) is destroyed, checked to have left nothing, and replaced.

What is checked, incrementally and in full sweeps:

- every hostile write: the real entry it left (where the hardware walks the guest's frames) maps
  the attacker's frames or its hidden tables only; every burst: no byte of host memory outside
  the attacker's frames and its hypervisor frames changed (``HostMemory.entries``);
- every completed access (``on_batch``): its host frame belongs to the VM that made it;
- every slice: every TLB, nested-TLB and paging-structure-cache entry (``MMU.structures()``)
  belongs to its VM (by VPID, EPT tag, or the VM on the CPU);
- every sweep (at intervals and at the end of each round): ``Mode.mapped_frames()``, and an
  independent walk of everything the hardware can reach (the real tables from the real CR3 and
  from every cached paging-structure entry, the shadow tables, the EPT): leaves map the VM's
  frames, tables are the VM's frames or hypervisor frames accounted to it; hypervisor frames stay
  in the pool, disjoint between VMs;
- every round: the victim ends exactly as it does alone on a fresh machine (page-fault log with
  error codes, guest counters, the mappings of each process when it exits).

The only exceptions expected out of the port are the documented ones (``guest/port.py``):
``ValueError`` for a malformed argument, ``GuestMemoryError`` for a frame beyond the VM, and
``VMTerminated`` for a CR3 or INVPCID operand that is a #GP in the guest kernel; they are counted.
Any other exception, anywhere, counts as one; nothing may leave ``Machine.run``.

Prints JSON (per mode: hostile writes, other hostile operations, port errors, escapes, exceptions,
accesses, rounds, attackers, seconds, writes per second; and the totals with the seed).  The exit
status is 0 when there were no escapes and no exceptions, else 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastmmu.arch import ADDR_MASK, EPT, PTE
from fastmmu.guest.os import Process
from fastmmu.guest.port import GuestMemoryError
from fastmmu.hypervisor.machine import VM, Machine, VMTerminated
from fastmmu.workloads import Accesses, Mmap, StepList, churn, sequential, zipf

MODES = ("native", "brute_force", "shadow", "nested")
DIRECT = ("native", "brute_force")
P, RW, US, PS, NX = int(PTE.P), int(PTE.RW), int(PTE.US), int(PTE.PS), int(PTE.NX)
TABLE = P | RW | US
U64 = (1 << 64) - 1
EPT_ADDR = 0x000F_FFFF_FFFF_F000
L4, L3, L2, L1 = 1 << 39, 1 << 30, 1 << 21, 1 << 12
SIZE_FRAMES = {"4K": 1, "2M": 512, "1G": 512 * 512, "region": 1}
PSC_LEVEL = {"psc.pde": 1, "psc.pdpte": 2, "psc.pml4e": 3, "psc.pml5e": 4}  # the level of the table cached

HOST = "1GiB"
HYPERVISOR = {"memory": "8MiB", "vm_slice": 300, "shadow_cache": 4}
SLICE = 1500  # accesses per run between two checks (all VMs)
SWEEP_EVERY = 8  # slices between full sweeps
BURST = 300  # hostile operations per attacker between two slices
ATTACKER_MEMORY = "8MiB"
VICTIM_MEMORY = "6MiB"

REGION = 1 << 39  # the attackers' 4 KiB pages: PML4 slot 1, four page directories' worth
HUGE_REGION = 2 << 39  # their 2 MiB pages
SELF = 5  # where they like their self-maps
HOT_INDEXES = (0, 1, 2, 3, 5, 511)  # indexes their accesses walk through at some level


# -- the victim ---------------------------------------------------------------------------------


VICTIMS = [  # (backing, allocation, guest settings)
    ("contiguous", "eager", {"pcid": True}),
    ("scattered", "eager", {"pcid": True}),
    ("scattered", "on_demand", {"pcid": False}),
    ("contiguous", "on_demand", {"pcid": True, "huge_pages": True}),
]


def victim_programs(variant: int) -> list[Any]:
    """A scan that does not fit (the clock evicts), a hot set, and map/unmap churn."""
    return [sequential(pages=530, n=1_600, stride=4096, writes=0.2, seed=2 + variant),
            zipf(pages=120, n=1_200, seed=3 + variant, base=0x0000_2000_0000_0000),
            churn(pages=16, n=200, rounds=3, seed=4 + variant, base=0x0000_3000_0000_0000)]


@dataclass
class History:
    """What the victim's guest sees: its faults, its counters, each process's mappings at exit."""

    faults: list[tuple[int, int, int]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    mappings: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    exits: dict[int, str] = field(default_factory=dict)


def make_victim(m: Machine, variant: int) -> tuple[VM, History]:
    backing, allocation, guest = VICTIMS[variant]
    vm = m.create_vm(VICTIM_MEMORY, m.soak_mode, backing=backing, allocation=allocation, seed=11 + variant,  # type: ignore[attr-defined]
                     name="victim", guest={"quantum": 250, **guest})
    history = History()
    original_exit = vm.guest.exit

    def exit_with_a_look(process: Process, reason: str = "exit") -> None:
        if process.alive:
            history.mappings[process.pid] = vm.guest.mappings(process)
            history.exits[process.pid] = reason
        original_exit(process, reason)

    vm.guest.exit = exit_with_a_look  # type: ignore[method-assign]
    for i, program in enumerate(victim_programs(variant)):
        vm.spawn(program, name=f"v{i}")
    return vm, history


def finish(vm: VM, history: History) -> History:
    history.faults = list(vm.guest.fault_log or [])
    history.stats = dict(vm.guest.stats)
    return history


def new_machine(mode: str, settings: dict[str, Any]) -> Machine:
    m = Machine(HOST, tlb="skylake", hypervisor={**HYPERVISOR, **settings}, record_faults=True)
    m.soak_mode = mode  # type: ignore[attr-defined]
    return m


_solo: dict[tuple[Any, ...], History] = {}


def solo(mode: str, variant: int, settings: dict[str, Any]) -> History:
    """The victim's history alone on a fresh machine."""
    key = (mode, variant, *sorted(settings.items()))
    if key not in _solo:
        m = new_machine(mode, settings)
        vm, history = make_victim(m, variant)
        m.run()
        _solo[key] = finish(vm, history)
    return _solo[key]


# -- the checks ---------------------------------------------------------------------------------


class Escape(Exception):
    """A translation, a cached entry or a byte of memory outside the VM's frames."""


class Checker:
    """Ownership checks against the host's frame owners (cached per VM; the owner is the authority)."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.nframes = m.mem.nframes
        self.owned: dict[int, np.ndarray] = {}
        self.escapes: list[str] = []

    def fail(self, message: str) -> None:
        self.escapes.append(message)
        raise Escape(message)

    def _array(self, vm: VM) -> np.ndarray:
        owned = self.owned.get(vm.id)
        if owned is None:
            owned = self.owned[vm.id] = np.zeros(self.nframes, dtype=bool)
            owned[vm.memory.host_frames().astype(np.int64)] = True
        return owned

    def is_owned(self, vm: VM, frames: np.ndarray | list[int]) -> bool:
        frames = np.asarray(frames, dtype=np.int64)
        if not len(frames):
            return True
        if frames.min() < 0 or frames.max() >= self.nframes:
            return False
        owned = self._array(vm)
        missing = frames[~owned[frames]]
        for frame in missing.tolist():  # backed since the cache was made, or not the VM's
            if self.m.mem.owner_of(frame) != vm.id:
                return False
            owned[frame] = True
        return True

    def own_or_hidden(self, vm: VM, frame: int) -> bool:
        return frame in vm.hv_frames or self.is_owned(vm, [frame])

    def span(self, vm: VM, frame: int, frames: int, what: str) -> None:
        if not self.is_owned(vm, np.arange(frame, frame + frames, dtype=np.int64)):
            self.fail(f"{what}: frames {frame:#x}..+{frames:#x} are not all {vm.name}'s ({vm.mode.name})")

    # -- per access, per slice -----------------------------------------------------------------

    def on_batch(self, vm: VM, process: Process, addresses: np.ndarray, kinds: np.ndarray, out: np.ndarray,
                 start: int, stop: int) -> None:
        frames = (out[start:stop] >> np.uint64(12)).astype(np.int64)
        if not self.is_owned(vm, frames):
            bad = [int(f) for f in frames if not self.is_owned(vm, [int(f)])]
            self.fail(f"an access of {vm.name} ({vm.mode.name}) reached host frame {bad[0]:#x}, owner "
                      f"{self.m.mem.owner_of(bad[0]) if bad[0] < self.nframes else '-'}")

    def caches(self) -> None:
        """Every entry of every TLB and translation cache maps (or points into) its VM's frames."""
        m = self.m
        vms = list(m.vms.values())
        by_vpid = {vm.vpid: vm for vm in vms if vm.mode.uses_vpid}
        by_eptag = {vm.mode.ept.config.eptag: vm for vm in vms if hasattr(vm.mode, "ept")}
        for name, tlb in m.mmu.structures().items():
            for row in tlb.contents():
                if name == "nested":
                    vm = by_eptag.get(row["eptag"])
                    if vm is None:
                        self.fail(f"nested TLB entry with EPT tag {row['eptag']} of no VM: {row}")
                    self.span(vm, row["frame"], SIZE_FRAMES[row["size"]], f"nested TLB {row}")
                    continue
                vm = by_vpid.get(row["vpid"]) if row["vpid"] else m.current
                if vm is None or (not row["vpid"] and vm.mode.uses_vpid):
                    self.fail(f"{name}: entry {row} of no VM")
                if name.startswith("psc."):
                    if vm.mode.name == "nested":
                        continue  # guest-physical: every use goes through the EPT
                    if not self.own_or_hidden(vm, row["frame"]):
                        self.fail(f"{name}: {row} points at a frame not {vm.name}'s ({vm.mode.name})")
                    continue
                self.span(vm, row["frame"], SIZE_FRAMES[row["size"]], f"{name} {row}")

    # -- full sweeps ------------------------------------------------------------------------------

    def sweep(self) -> None:
        m = self.m
        pool = m.pool_frames
        seen_hv: set[int] = set()
        for vm in m.vms.values():
            for structure, frame in vm.mode.mapped_frames():
                if not self.is_owned(vm, [frame]):
                    self.fail(f"{vm.name} ({vm.mode.name}): {structure} maps host frame {frame:#x}")
            if seen_hv & vm.hv_frames:
                self.fail("two VMs share a hypervisor frame")
            seen_hv |= vm.hv_frames
            if any(frame >= pool or m.mem.owner_of(frame) != 0 for frame in vm.hv_frames):
                self.fail(f"{vm.name}: a hypervisor frame outside the pool")
            if m.mem.frames_owned(vm.id) > vm.memory.frames:
                self.fail(f"{vm.name} owns more frames than its memory")
            self.reachable(vm)

    def reachable(self, vm: VM) -> None:
        """Walk everything the hardware can reach for ``vm``, as the hardware reads it."""
        m, mode = self.m, vm.mode
        if mode.name == "nested":
            self._walk_ept(vm)
            return
        starts: list[tuple[int, int]] = []
        levels = vm.guest_config.levels
        if mode.cr3 is None:
            return  # no CR3 loaded yet: the hardware walks nothing of it
        if mode.name in DIRECT:
            cpu, _ = mode.context()
            starts.append((cpu.cr3 >> 12 & (EPT_ADDR >> 12), levels))
        else:
            starts += [(space.root, levels) for space in list(mode.cache.values()) + [mode.idle] if space]
        for name, tlb in m.mmu.structures().items():
            level = PSC_LEVEL.get(name)
            if level is None:
                continue
            for row in tlb.contents():
                owner = (next((v for v in m.vms.values() if v.mode.uses_vpid and v.vpid == row["vpid"]), None)
                         if row["vpid"] else m.current)
                if owner is vm:
                    starts.append((row["frame"], level))
        self._walk_tables(vm, starts)

    def _walk_tables(self, vm: VM, starts: list[tuple[int, int]]) -> None:
        m = self.m
        limit = 1 << m.mem.maxphyaddr
        visited: set[tuple[int, int]] = set()
        todo = list(starts)
        while todo:
            table, level = todo.pop()
            if (table, level) in visited:
                continue
            visited.add((table, level))
            if not self.own_or_hidden(vm, table):
                self.fail(f"{vm.name} ({vm.mode.name}): a table of level {level} in host frame {table:#x}")
            row = m.mem.read_frame(table)
            for index in np.flatnonzero(row & np.uint64(P)).tolist():
                entry = int(row[index])
                frame = (entry & ADDR_MASK) >> 12
                if entry & ADDR_MASK >= limit:
                    continue  # reserved address bits: the walk faults here
                large = level in (2, 3) and entry & PS
                if level == 1 or large:
                    span = 1 if level == 1 else 512 ** (level - 1)
                    base = frame & ~1 if large else frame
                    if large and base % span:
                        if not self.is_owned(vm, [frame]):  # reserved bits below the page: RSVD
                            self.fail(f"{vm.name}: a faulting large entry {entry:#x} holds a foreign frame")
                        continue
                    self.span(vm, base, span if span <= 512 else 1, f"leaf {entry:#x} at level {level}")
                    if span > 512:
                        self.span(vm, base + span - 1, 1, f"leaf {entry:#x} at level {level}")
                        self.span(vm, base, 512, f"leaf {entry:#x} at level {level}")
                    continue
                if level >= 4 and entry & PS:
                    if not self.is_owned(vm, [frame]):  # PS is reserved here: the walk faults
                        self.fail(f"{vm.name}: a faulting entry {entry:#x} holds a foreign frame")
                    continue
                todo.append((frame, level - 1))

    def _walk_ept(self, vm: VM) -> None:
        m, ept = self.m, vm.mode.ept  # type: ignore[attr-defined]
        todo = [(ept.root >> 12, ept.levels)]
        while todo:
            table, level = todo.pop()
            if table not in vm.hv_frames:
                self.fail(f"{vm.name}: an EPT table in host frame {table:#x}, not the VM's")
            row = m.mem.read_frame(table)
            for index in np.flatnonzero(row & np.uint64(int(EPT.RWX))).tolist():
                entry = int(row[index])
                frame = (entry & EPT_ADDR) >> 12
                if level == 1 or entry & int(EPT.PS):
                    span = 512 ** (level - 1)
                    self.span(vm, frame, min(span, 512), f"EPT leaf {entry:#x}")
                    if span > 512:
                        self.span(vm, frame + span - 1, 1, f"EPT leaf {entry:#x}")
                else:
                    todo.append((frame, level - 1))

    # -- what a burst of hostile writes changed ---------------------------------------------------

    @contextmanager
    def only_its_memory(self, vm: VM) -> Iterator[None]:
        """No frame outside ``vm``'s own and its hypervisor frames changes in the block."""
        m = self.m
        before_hv = set(vm.hv_frames)
        frames = self._others(vm, before_hv)
        snapshot = self._rows(frames)
        had_content = m.mem.content_frames()
        yield
        after = self._rows(frames)
        changed = frames[np.flatnonzero((after != snapshot).any(axis=1))].tolist()
        changed += np.setdiff1d(m.mem.content_frames(), had_content).tolist()  # frames written for the first time
        for frame in map(int, changed):
            if frame in vm.hv_frames or m.mem.owner_of(frame) == vm.id:
                continue  # the attacker's (or became its during the burst)
            self.fail(f"{vm.name}'s kernel changed host frame {frame:#x} (owner {m.mem.owner_of(frame)})")

    def _others(self, vm: VM, hv: set[int]) -> np.ndarray:
        frames = self.m.mem.content_frames().astype(np.int64)
        mine = self._array(vm)[frames]
        if hv:
            mine |= np.isin(frames, np.fromiter(hv, dtype=np.int64, count=len(hv)))
        return frames[~mine]

    def _rows(self, frames: np.ndarray) -> np.ndarray:
        mem = self.m.mem
        if mem.layout == "flat":
            return np.asarray(mem.entries)[frames]
        return np.array([mem.read_frame(int(f)) for f in frames]).reshape(len(frames), 512)

    def destroyed(self, vm: VM, eptag: int | None) -> None:
        """Nothing of a destroyed VM is left: no frame, no cached translation tagged with it."""
        if self.m.mem.frames_owned(vm.id):
            self.fail(f"destroyed {vm.name} still owns frames")
        for name, tlb in self.m.mmu.structures().items():
            for row in tlb.contents():
                if (vm.mode.uses_vpid and row["vpid"] == vm.vpid) or (eptag is not None and row["eptag"] == eptag):
                    self.fail(f"{name}: {row} of destroyed {vm.name}")
        self.owned.pop(vm.id, None)


# -- the attackers -------------------------------------------------------------------------------


@dataclass
class Tally:
    writes: int = 0
    other_ops: int = 0
    port_errors: Counter[str] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)  # malformed port calls that raised nothing


def attacker_program(rng: np.random.Generator, n: int) -> StepList:
    """Mostly its own 4 KiB region, some of its 2 MiB region, the self-map slot, anywhere, and a
    few non-canonical addresses (a #GP kills the process)."""
    pick = rng.random(n)
    page = rng.integers(0, 64, n, dtype=np.uint64)
    region = REGION + (page // np.uint64(16) << np.uint64(21)) + (page % np.uint64(16) << np.uint64(12))
    large = HUGE_REGION + rng.integers(0, 4 << 20, n, dtype=np.uint64)
    self_mapped = (SELF << 39) + rng.integers(0, 1 << 39, n, dtype=np.uint64)
    anywhere = rng.integers(0, 1 << 47, n, dtype=np.uint64)
    noncanonical = (np.uint64(1) << np.uint64(47)) + rng.integers(0, 1 << 40, n, dtype=np.uint64)
    addresses = np.where(pick < 0.65, region, np.where(pick < 0.8, large, np.where(
        pick < 0.9, self_mapped, np.where(pick < 0.997, anywhere, noncanonical))))
    addresses &= ~np.uint64(7)
    kinds = rng.choice(np.array([0, 1, 2], dtype=np.uint8), n, p=[0.5, 0.4, 0.1])
    return StepList([Mmap(REGION, 4 * L2, executable=True), Mmap(HUGE_REGION, 4 << 20, huge=True),
                     Accesses(addresses, kinds)])


def reason_kind(reason: str) -> str:
    """A termination reason without its numbers (for counting kinds of outcomes)."""
    words = re.sub(r"0x[0-9a-f]+|\d+", "N", reason)
    return words.split(":")[0][:60] if words.startswith(("INVPCID", "MOV")) else words[:60]


def pick(rng: np.random.Generator, values: list[Any]) -> Any:
    """One of ``values`` (Python ints: numpy would turn 64-bit ones into floats)."""
    return values[int(rng.integers(len(values)))]


class Attacker:
    """A guest kernel that writes what it likes into its page tables, through its port."""

    def __init__(self, vm: VM, others: list[VM], rng: np.random.Generator, tally: Tally, checker: Checker) -> None:
        self.vm, self.others, self.rng, self.tally, self.checker = vm, others, rng, tally, checker
        self.port = vm.mode
        self.frames = vm.memory.frames
        self.levels = vm.guest_config.levels
        self.pcid = vm.guest_config.pcid
        self.direct = vm.mode.name in DIRECT
        self.patient = bool(rng.random() < 0.5)  # no operand that stops its VM: it lives to build more
        self.tables: list[int] = []
        original_new_table = self.port.new_table

        def new_table(gfn: int) -> None:  # the tables its own kernel makes: targets of choice
            original_new_table(gfn)
            self.tables.append(gfn)

        self.port.new_table = new_table  # type: ignore[method-assign]
        self.handle = vm.guest.page_fault
        vm.guest.page_fault = self.page_fault  # type: ignore[method-assign]

    # -- what to write -----------------------------------------------------------------------------

    def table(self) -> int:
        r = self.rng.random()
        roots = [p.root for p in self.vm.guest.processes.values()]
        if r < 0.75 and self.tables:
            return self.tables[int(self.rng.integers(len(self.tables)))]
        if r < 0.9 and roots:
            return roots[int(self.rng.integers(len(roots)))]
        return int(self.rng.integers(self.frames))

    def index(self) -> int:
        if self.rng.random() < 0.7:
            return HOT_INDEXES[int(self.rng.integers(len(HOT_INDEXES)))]
        return int(self.rng.integers(512))

    def flags(self) -> int:
        rng = self.rng
        low = int(rng.integers(0, 0x1000)) | P if rng.random() < 0.9 else int(rng.integers(0, 0x1000))
        if rng.random() < 0.5:
            low = low & ~PS | (TABLE if rng.random() < 0.7 else 0) | P
        high = (int(rng.integers(0, 16)) << 59 if rng.random() < 0.2 else 0) | (NX if rng.random() < 0.3 else 0)
        return low | high

    def gfn(self) -> int:
        rng, r = self.rng, self.rng.random()
        if r < 0.3:
            return int(rng.integers(self.frames))
        if r < 0.55 and self.tables:
            return self.tables[int(rng.integers(len(self.tables)))]
        if r < 0.65:
            return self.frames + int(rng.integers(1 << 20))  # past its memory
        if r < 0.8 and self.others:  # another VM's frame, by host number or by its own guest number
            other = self.others[int(rng.integers(len(self.others)))]
            host = other.memory.host_frames()
            if len(host) and rng.random() < 0.7:
                return int(host[int(rng.integers(len(host)))])
            return int(rng.integers(other.memory.frames))
        if r < 0.87:
            return int(rng.integers(self.vm.machine.pool_frames))  # a hypervisor frame's number
        if r < 0.95:
            return int(rng.integers(self.frames)) & ~511  # 2 MiB aligned
        return 0

    def value(self) -> int:
        rng, r = self.rng, self.rng.random()
        if r < 0.08:
            return int(rng.integers(0, 1 << 63)) << 1 | int(rng.integers(2))  # any 64 bits
        if r < 0.15:
            return 1 << int(rng.integers(46, 52)) | self.gfn() << 12 & ADDR_MASK | self.flags()  # reserved bits
        if r < 0.3:  # PS, at whatever level the table is at, over aligned or unaligned frames
            gfn = self.gfn() & ~(511 if rng.random() < 0.7 else 0)
            return (gfn << 12) & ADDR_MASK | TABLE | PS | (int(rng.integers(2)) << 12)
        return (self.gfn() << 12) & ADDR_MASK | self.flags()

    # -- one hostile operation -------------------------------------------------------------------

    def write(self, table: int, index: int, value: int) -> None:
        self.port.write_pte(table, index, value & U64)
        self.tally.writes += 1
        if self.direct:  # the real entry it left holds the VM's frames or its hidden tables only
            slot = self.vm.memory.hfn(table) << 12 | index << 3
            real = self.vm.machine.mem.read(slot)
            if real & P and not self.checker.own_or_hidden(self.vm, (real & ADDR_MASK) >> 12):
                self.checker.fail(f"{self.vm.name}: write of {value:#x} left real entry {real:#x}")

    def operation(self) -> None:
        rng, port = self.rng, self.port
        r = rng.random()
        if r < 0.76:
            self.write(self.table(), self.index(), self.value())
            if rng.random() < 0.2:
                port.invlpg(REGION + (int(rng.integers(64)) << 12))
            return
        self.tally.other_ops += 1
        roots = [p.root for p in self.vm.guest.processes.values() if p.alive] or [self.table()]
        root = roots[int(rng.integers(len(roots)))]
        if r < 0.80:  # a self-reference
            table = self.table() if rng.random() < 0.5 else root
            self.tally.other_ops -= 1
            self.write(table, SELF if rng.random() < 0.6 else self.index(), table << 12 | self.flags() & ~PS | P)
        elif r < 0.85:  # a cross-link: a table pointing at another (or at the root, at any level)
            self.tally.other_ops -= 1
            target = root if rng.random() < 0.3 else self.table()
            self.write(self.table(), self.index(), target << 12 | TABLE)
        elif r < 0.87:
            port.release_table(root if rng.random() < 0.5 else self.table())  # a live table, often
        elif r < 0.88:
            port.new_table(self.table())  # zeroed while live
        elif r < 0.91 and self.patient:
            self.tally.other_ops -= 1
            self.write(self.table(), self.index(), self.value())  # in place of an operand that may stop it
        elif r < 0.895:
            self.hostile_cr3(root)
        elif r < 0.91:
            kind = pick(rng, [0, 1, 2, 3, 4, 7, U64])
            pcid = pick(rng, [0, 1, 5, 4095, 4096, 1 << 63])
            va = pick(rng, [0, REGION, 1 << 47, 0xFFFF_8000_0000_0000, int(rng.integers(0, 1 << 63))])
            self.expect(lambda: port.invpcid(kind, pcid, va), VMTerminated)
        elif r < 0.94:
            port.invlpg(int(rng.integers(0, 1 << 63)) << 1)  # canonical or not: never more than a no-op
        else:
            self.malformed()

    def hostile_cr3(self, root: int) -> None:
        rng = self.rng
        value = self.gfn() << 12 & ADDR_MASK if rng.random() < 0.4 else root << 12
        if self.pcid:
            value |= int(rng.integers(4096))
        if rng.random() < 0.15:
            value |= 1 << int(rng.integers(46, 63))  # reserved
        if rng.random() < 0.3:
            value |= 1 << 63  # no-flush (reserved without PCIDs)
        self.expect(lambda: self.port.load_cr3(value), (VMTerminated, GuestMemoryError))

    def malformed(self) -> None:
        """A port call no instruction could encode, or naming a frame the VM does not have."""
        rng, port, frames = self.rng, self.port, self.frames
        calls: list[Callable[[], Any]] = [
            lambda: port.write_pte(*self.aimed_at_another_vm(), self.value() | P),
            lambda: port.write_pte(self.table(), 512 + int(rng.integers(1 << 20)), self.value() | P),
            lambda: port.write_pte(self.table(), -1 - int(rng.integers(1 << 10)), self.value() | P),
            lambda: port.read_pte(self.table(), 512),
            lambda: port.write_pte(self.table(), 0, (1 << 64) + int(rng.integers(1 << 20))),
            lambda: port.write_pte(self.table(), 0, -1),
            lambda: port.write_pte(frames + int(rng.integers(1 << 20)), 0, TABLE),
            lambda: port.read_pte(-1, 0),
            lambda: port.new_table(frames),
            lambda: port.load_cr3(1 << 64),
            lambda: port.invpcid(0, -1, 0),
        ]
        self.expect(calls[int(rng.integers(len(calls)))], (ValueError, GuestMemoryError), required=True)

    def aimed_at_another_vm(self) -> tuple[int, int]:
        """(table, index) whose entry, were the index not checked, would be one of another VM's table
        frames' (its host frame minus the table's, in entries: what repro f2_index did)."""
        table = self.table()
        here = self.vm.memory.hfn(table)
        targets = [other.memory.hfn(p.root) for other in self.others if other.terminated is None
                   for p in other.guest.processes.values() if other.memory.is_backed(p.root)]
        above = [t for t in targets if t > here]  # an index reaches up only
        if not above:
            return table, 512
        return table, (above[int(self.rng.integers(len(above)))] - here) << 9 | int(self.rng.integers(512))

    def expect(self, call: Callable[[], Any], allowed: type[BaseException] | tuple[type[BaseException], ...],
               required: bool = False) -> None:
        try:
            call()
        except allowed as exc:
            self.tally.port_errors[type(exc).__name__] += 1
            return
        if required:  # the port took it: a finding (counted with the exceptions); the checks go on
            self.tally.accepted.append(f"{self.vm.name} ({self.vm.mode.name}): a malformed port call was accepted")

    def burst(self, count: int) -> None:
        for _ in range(count):
            if self.vm.terminated is not None:
                return
            self.operation()

    # -- inside the run: its page-fault handler ---------------------------------------------------

    def page_fault(self, process: Process, va: int, error_code: int) -> bool:
        r = self.rng.random()
        if r < 0.6:
            return self.handle(process, va, error_code)
        level = int(self.rng.integers(1, self.levels + 1))
        table, index = self.on_path(process, va, level)
        self.write(table, index, self.value())
        if r < 0.65:
            self.in_handler()
        if r < 0.75 and not self.patient:
            return True  # retry without a fix (16 in a row stop the VM: no progress)
        if r < 0.9:
            self.port.invlpg(va & ~0xFFF & U64)
            return True
        return self.handle(process, va, error_code)

    def in_handler(self) -> None:
        """What its kernel does besides writing, inside the run: a #GP it causes stops its VM there
        (VMTerminated goes to the run loop, as does a frame beyond its memory); nothing else may leave."""
        rng, port = self.rng, self.port
        roots = [p.root for p in self.vm.guest.processes.values() if p.alive] or [self.table()]
        r = rng.random()
        self.tally.other_ops += 1
        if r < 0.3:
            port.release_table(roots[int(rng.integers(len(roots)))])
        elif r < 0.4:
            port.new_table(self.table())
        elif r < 0.6 and not self.patient:
            port.load_cr3(roots[int(rng.integers(len(roots)))] << 12 | (1 << int(rng.integers(40, 64))))
        elif r < 0.8 and not self.patient:
            port.invpcid(pick(rng, [0, 1, 2, 3, 4]), pick(rng, [0, 1, 4096]), pick(rng, [0, 1 << 47, REGION]))
        else:
            port.invlpg(int(rng.integers(0, 1 << 63)) << 1)

    def on_path(self, process: Process, va: int, level: int) -> tuple[int, int]:
        """The slot at ``level`` on the guest's walk of ``va`` (or the deepest one there is)."""
        table, current = process.root, self.levels
        while current > level:
            entry = self.port.peek_pte(table, (va >> (12 + 9 * (current - 1))) & 511)
            gfn = (entry & ADDR_MASK) >> 12
            if not entry & P or (current <= 3 and entry & PS) or gfn >= self.frames:
                break
            table, current = gfn, current - 1
        return table, (va >> (12 + 9 * (current - 1))) & 511


# -- the soak -------------------------------------------------------------------------------------


@dataclass
class ModeReport:
    writes: int = 0
    other_ops: int = 0
    port_errors: dict[str, int] = field(default_factory=dict)
    escapes: int = 0
    exceptions: int = 0
    accesses: int = 0
    rounds: int = 0
    attackers: int = 0
    attacker_outcomes: dict[str, int] = field(default_factory=dict)
    victim_mismatches: int = 0
    seconds: float = 0.0
    writes_per_second: float = 0.0
    problems: list[str] = field(default_factory=list)


class Round:
    """One machine: the victim and two attackers, replaced as they end."""

    def __init__(self, mode: str, rng: np.random.Generator, tally: Tally, report: ModeReport) -> None:
        self.mode, self.rng, self.tally, self.report = mode, rng, tally, report
        self.settings = {"overcommit": bool(rng.random() < 0.1), "ept": pick(rng, ["lazy", "lazy", "eager"]),
                         "ept_page_size": pick(rng, ["4K", "2M", "1G"])}
        self.variant = int(rng.integers(len(VICTIMS)))
        self.m = new_machine(mode, self.settings)
        self.checker = Checker(self.m)
        first = self.new_attacker() if rng.random() < 0.5 else None  # below the victim's frames, or above
        self.victim, self.history = make_victim(self.m, self.variant)
        self.attackers: list[Attacker] = [first or self.new_attacker(), self.new_attacker()]
        for attacker in self.attackers:
            attacker.others = [vm for vm in self.m.vms.values() if vm is not attacker.vm]

    def new_attacker(self) -> Attacker:
        rng = self.rng
        backing = str(rng.choice(["contiguous", "scattered"]))
        guest = {"levels": int(rng.choice([4, 5])), "pcid": bool(rng.random() < 0.7),
                 "huge_pages": bool(rng.random() < 0.3), "quantum": 200, "reserved": 1 << 20}
        vm = self.m.create_vm(ATTACKER_MEMORY, self.mode, backing=backing,
                              allocation=str(rng.choice(["eager", "on_demand"])), guest=guest,
                              seed=int(rng.integers(1 << 16)), name=f"attacker{self.report.attackers}")
        self.report.attackers += 1
        others = [v for v in self.m.vms.values() if v is not vm]
        attacker = Attacker(vm, others, rng, self.tally, self.checker)
        for i in range(2):
            vm.spawn(attacker_program(rng, 3_000), name=f"a{i}")
        vm.guest.switch_to(next(iter(vm.guest.processes.values())))  # its first CR3, before its writes
        return attacker

    def replace_finished(self) -> None:
        for i, attacker in enumerate(self.attackers):
            vm = attacker.vm
            if vm.terminated is None and vm.guest.runnable():
                continue
            outcome = f"terminated: {reason_kind(vm.terminated)}" if vm.terminated else "processes ended"
            self.report.attacker_outcomes[outcome] = self.report.attacker_outcomes.get(outcome, 0) + 1
            eptag = vm.mode.ept.config.eptag if hasattr(vm.mode, "ept") else None
            self.m.destroy_vm(vm)
            self.checker.destroyed(vm, eptag)
            self.attackers[i] = self.new_attacker()
            for attacker in self.attackers:
                attacker.others = [v for v in self.m.vms.values() if v is not attacker.vm]

    def step(self, burst: int, sweep: bool) -> None:
        """A burst per attacker, a slice of the run, the checks."""
        for attacker in self.attackers:
            if attacker.vm.terminated is None and burst:
                with self.checker.only_its_memory(attacker.vm):
                    attacker.burst(burst)
        result = self.m.run(max_accesses=SLICE, on_batch=self.checker.on_batch)
        self.report.accesses += result.stats["accesses"]
        self.checker.caches()
        if sweep:
            self.checker.sweep()
        self.replace_finished()

    def victim_runnable(self) -> bool:
        return self.victim.terminated is None and bool(self.victim.guest.runnable())

    def end(self) -> None:
        """Run the victim to its end beside the attackers, sweep, and compare it with its solo run."""
        while self.victim_runnable():
            self.step(0, sweep=False)
        self.checker.sweep()
        got, expected = finish(self.victim, self.history), solo(self.mode, self.variant, self.settings)
        if self.victim.terminated is not None or got != expected:
            self.report.victim_mismatches += 1
            what = [name for name in ("faults", "stats", "mappings", "exits")
                    if getattr(got, name) != getattr(expected, name)]
            self.checker.escapes.append(f"the victim's history differs from its solo run ({', '.join(what)}; "
                                        f"terminated: {self.victim.terminated})")


def soak_mode(mode: str, writes: int, seed: int) -> ModeReport:
    rng = np.random.default_rng([seed, MODES.index(mode) if mode in MODES else 9])
    report, tally = ModeReport(), Tally()
    started = time.perf_counter()
    while tally.writes < writes:
        report.rounds += 1
        current: Round | None = None
        try:
            current = Round(mode, rng, tally, report)
            slices = 0
            while tally.writes < writes and current.victim_runnable():
                slices += 1
                current.step(BURST, sweep=slices % SWEEP_EVERY == 0)
            current.end()
        except Escape:
            pass  # recorded; the round's machine is not to be trusted further
        except Exception:  # noqa: BLE001 - every exception is a finding: counted, shown, and a fresh machine
            report.exceptions += 1
            report.problems.append(" | ".join(line.strip() for line in traceback.format_exc().splitlines()[-5:]))
        if current is not None:
            report.escapes += len(current.checker.escapes)
            report.problems += current.checker.escapes[:3]
    report.seconds = round(time.perf_counter() - started, 2)
    report.exceptions += len(tally.accepted)
    report.problems += tally.accepted[:3]
    report.writes, report.other_ops = tally.writes, tally.other_ops
    report.port_errors = dict(tally.port_errors)
    report.writes_per_second = round(tally.writes / report.seconds) if report.seconds else 0
    report.problems = report.problems[:10]
    return report


def soak(modes: list[str], writes: int, seed: int, *, progress: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    reports = {}
    for mode in modes:
        reports[mode] = report = soak_mode(mode, writes, seed)
        if progress:
            print(f"{mode}: {report.writes} hostile writes, {report.escapes} escapes, {report.exceptions} exceptions, "
                  f"{report.seconds} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    return {"seed": seed, "writes_per_mode": writes,
            "modes": {mode: report.__dict__ for mode, report in reports.items()},
            "writes": sum(r.writes for r in reports.values()),
            "escapes": sum(r.escapes for r in reports.values()),
            "exceptions": sum(r.exceptions for r in reports.values()),
            "seconds": round(seconds, 2),
            "writes_per_second": round(sum(r.writes for r in reports.values()) / seconds) if seconds else 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=1_000_000, help="hostile writes per mode (default 10^6)")
    parser.add_argument("--seed", type=int, default=20_251_207, help="the soak's seed (default 20251207)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default: all four)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or args.writes < 1:
        what = f"--modes: unknown mode {unknown[0]!r}; expected {', '.join(MODES)}" if unknown else \
            f"--writes: expected a positive number, got {args.writes}"
        print(f"soak_isolation.py: {what}", file=sys.stderr)
        return 2
    result = soak(modes, args.writes, args.seed, progress=True)
    print(json.dumps(result, indent=2))
    return 0 if result["escapes"] == 0 and result["exceptions"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
