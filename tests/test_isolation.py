"""Isolation is a security property: adversarial guests never reach memory that is not theirs.

Two VMs share one machine (one host, one MMU, one hypervisor pool): a victim
running an ordinary workload, and an attacker whose guest kernel writes
arbitrary bits into its own page tables through its paging port, the only
way a guest reaches them.  Its page-fault handler is replaced by one that,
driven by Hypothesis, writes random 64-bit values and crafted entries (frames
beyond its memory, the *host* frame numbers of the other VM's memory written
as guest-physical addresses, the hypervisor's frames, reserved bits, PS at
every level, self-referencing tables, tables pointing at data pages), loads
crafted CR3 values, invalidates or does not, kills its process or retries.
Entries are also rewritten between slices of the run.

After every slice, and on every batch of accesses the hardware completes:

- every host frame a completed access reached belongs to the VM that made it;
- every final translation held in a TLB (attributed by VPID, or to the VM on
  the CPU for the modes without VPID), in the nested TLB (by EPT tag), and
  every leaf of the tables the mode keeps for the hardware (real tables,
  shadow tables, EPT: ``Mode.mapped_frames``) maps frames owned by that VM;
  paging-structure caches of host tables point at that VM's tables or its
  shadow frames;
- the hypervisor's frames stay in its pool.

And each VM gets an architectural outcome: the attacker's run ends normally,
its processes are killed, or it is terminated with a recorded reason; never a
Python exception out of ``Machine.run``, never a loop without progress.  The
victim ends normally with exactly the guest-visible history (page faults with
their error codes, guest statistics) it has when it runs alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from deadlines import deadline
from hypothesis import HealthCheck, Phase, event, given, seed, settings
from hypothesis import strategies as st

from fastmmu.arch import ADDR_MASK, PTE
from fastmmu.guest.os import Process
from fastmmu.hypervisor.machine import VM, Machine, VMTerminated
from fastmmu.workloads import Accesses, Mmap, StepList, churn, sequential, zipf

MODES = ("native", "brute_force", "shadow", "nested")
HOST = "1GiB"
POOL = "4MiB"  # a small hypervisor pool: the VMs' host frames start at frame 1024
VICTIM_MEMORY = "6MiB"  # 1536 frames, 512 for processes: its workload runs under memory pressure
ATTACKER_MEMORY = "64MiB"  # 16384 frames: more than the victim's host frame numbers when the victim is first
HYPERVISOR = {"memory": POOL, "vm_slice": 500, "shadow_cache": 4}
CHUNK = 700  # accesses per slice of the run between two checks
MAX_CHUNKS = 400
MAX_ROUNDS = 40  # attackers, one after the other (each destroyed when it is done)
EXAMPLES = int(os.environ.get("FASTMMU_ISOLATION_EXAMPLES", "60"))  # per mode; raise it for a long hunt
# Examples are derandomized, so a failure replays as it is; shrinking one of these long runs takes
# minutes, so it is on only when asked for (FASTMMU_ISOLATION_SHRINK=1).
PHASES = tuple(Phase) if os.environ.get("FASTMMU_ISOLATION_SHRINK") else (Phase.explicit, Phase.reuse, Phase.generate)
TIME_LIMIT = float(os.environ.get("FASTMMU_TEST_DEADLINE", 300))  # one example: longer is a loop

P, RW, US, PS = int(PTE.P), int(PTE.RW), int(PTE.US), int(PTE.PS)
TABLE = P | RW | US
U64 = (1 << 64) - 1
SIZE_FRAMES = {"4K": 1, "2M": 512, "1G": 512 * 512, "region": 1}

REGION = 0x0000_0040_0000_0000  # the attacker's 4 KiB pages: 16 in each of 4 2 MiB regions of one PD
REGION_PAGES = 64
REGION_SPAN = 4 << 21
HUGE_REGION = 0x0000_0080_0000_0000  # its 2 MiB region (4 MiB)
SELF_SLOT = 5  # PML4 slot where the attacker likes to put a self-reference
SELF_VA = SELF_SLOT << 39
SPREAD = 2_654_435_761  # small drawn numbers -> frames all over the VM's memory


# -- the victim ------------------------------------------------------------------------


def victim_programs() -> list[Any]:
    """A scan that does not fit (the clock evicts), a hot set, and map/unmap churn."""
    return [sequential(pages=530, n=800, stride=4096, writes=0.2, seed=2),
            zipf(pages=120, n=400, seed=3, base=0x0000_2000_0000_0000),
            churn(pages=16, n=80, rounds=2, seed=4, base=0x0000_3000_0000_0000)]


def make_victim(m: Machine, backing: str) -> tuple[VM, list[Process]]:
    vm = m.create_vm(VICTIM_MEMORY, m._test_mode, backing=backing, seed=11, name="victim",  # type: ignore[attr-defined]
                     guest={"quantum": 250})
    return vm, [vm.spawn(program, name=f"v{i}") for i, program in enumerate(victim_programs())]


def new_machine(mode: str, overcommit: bool = False) -> Machine:
    m = Machine(HOST, tlb="skylake", hypervisor={**HYPERVISOR, "overcommit": overcommit}, record_faults=True)
    m._test_mode = mode  # type: ignore[attr-defined]
    return m


_solo: dict[tuple[str, str, bool], tuple[list[Any], dict[str, int]]] = {}


def solo_victim(mode: str, backing: str, overcommit: bool) -> tuple[list[Any], dict[str, int]]:
    """The victim's guest-visible history when it runs alone."""
    key = (mode, backing, overcommit)
    if key not in _solo:
        m = new_machine(mode, overcommit)
        vm, processes = make_victim(m, backing)
        m.run()
        assert vm.terminated is None
        assert all(p.done and p.exit_reason == "exit" for p in processes)
        assert vm.guest.fault_log
        _solo[key] = (list(vm.guest.fault_log), dict(vm.guest.stats))
    return _solo[key]


# -- invariants -----------------------------------------------------------------------


def span(frame: int, frames: int) -> range | list[int]:
    """The frames of a translation of ``frames`` frames (a sample of a 1 GiB one)."""
    if frames <= 512:
        return range(frame, frame + frames)
    return [*range(frame, frame + frames, 509), frame + frames - 1]


def assert_owned(m: Machine, vm: VM, frames: Any, what: str) -> None:
    for frame in frames:
        owner = m.mem.owner_of(int(frame))
        assert owner == vm.id, (f"{what}: host frame {int(frame):#x} is owned by {owner}, not by "
                                f"{vm.name} (id {vm.id}, mode {vm.mode.name})")


def check_machine(m: Machine) -> None:
    """Every translation the hardware or the hypervisor holds maps frames of its own VM."""
    vms = list(m.vms.values())
    by_vpid = {vm.vpid: vm for vm in vms if vm.mode.uses_vpid}
    by_eptag = {vm.mode.ept.config.eptag: vm for vm in vms if hasattr(vm.mode, "ept")}
    pool = m.pool_frames
    seen_hv: set[int] = set()
    for vm in vms:
        for structure, frame in vm.mode.mapped_frames():
            assert_owned(m, vm, [frame], f"{structure} entry of {vm.name}")
        assert not seen_hv & vm.hv_frames, "two VMs share a hypervisor frame"
        seen_hv |= vm.hv_frames
        for frame in vm.hv_frames:
            assert frame < pool and m.mem.owner_of(frame) == 0, f"hypervisor frame {frame:#x} outside the pool"
        assert m.mem.frames_owned(vm.id) <= vm.memory.frames
    for name, tlb in m.mmu.structures().items():
        for row in tlb.contents():
            if name == "nested":
                vm = by_eptag.get(row["eptag"])
                assert vm is not None, f"nested TLB entry with EPT tag {row['eptag']} of no VM: {row}"
                assert_owned(m, vm, span(row["frame"], SIZE_FRAMES[row["size"]]), f"nested TLB {row}")
                continue
            if row["vpid"]:
                vm = by_vpid.get(row["vpid"])
                assert vm is not None, f"{name} entry with VPID {row['vpid']} of no VM: {row}"
            else:
                vm = m.current
                assert vm is not None and not vm.mode.uses_vpid, f"{name}: untagged entry {row}"
            if name.startswith("psc."):
                if vm.mode.name == "nested":
                    continue  # guest-physical table addresses: every use goes through the EPT
                if vm.mode.name == "shadow":
                    assert row["frame"] in vm.hv_frames, f"{name}: {row} is not a shadow table of {vm.name}"
                elif row["frame"] not in vm.hv_frames:  # else a hidden table of a guest large page's pieces
                    assert_owned(m, vm, [row["frame"]], f"{name} {row}")
                continue
            assert_owned(m, vm, span(row["frame"], SIZE_FRAMES[row["size"]]), f"{name} {row}")


def batch_checker(m: Machine) -> Callable[..., None]:
    """``on_batch``: every host frame a completed access reached is its VM's."""

    def on_batch(vm: VM, process: Process, addresses: np.ndarray, kinds: np.ndarray, out: np.ndarray,
                 start: int, stop: int) -> None:
        frames = np.unique(out[start:stop] >> np.uint64(12))
        assert_owned(m, vm, frames, f"an access of {process.name} at {int(addresses[start]):#x}..")

    return on_batch


# -- the attacker ---------------------------------------------------------------------

FLAGS = st.one_of(st.just(TABLE), st.just(TABLE | PS), st.integers(0, 0xFFF).map(lambda f: f | P),
                  st.integers(0, 0xFFF))
NX = st.sampled_from([0, 1 << 63])
RESERVED_BIT = st.integers(46, 62)  # 46..51: beyond MAXPHYADDR; 52..62: ignored or protection keys
OWN = st.tuples(st.just("own"), st.integers(0, 1 << 14), FLAGS, NX)  # its own memory: the guest lives on
OWN_LARGE = st.tuples(st.just("own_large"), st.integers(0, 31),
                      st.sampled_from([TABLE | PS, P | PS, TABLE | PS | 1 << 12, TABLE | PS | 1 << 13]))
HOSTILE = st.one_of(
    st.tuples(st.just("victim"), st.integers(0, 4095), FLAGS, NX),
    st.tuples(st.just("hv"), st.integers(0, 1 << 16), FLAGS, NX),
    st.tuples(st.just("self"), FLAGS),
    st.tuples(st.just("root"), FLAGS),
    st.tuples(st.just("parent"), FLAGS),
    st.tuples(st.just("raw"), st.integers(0, U64)),
    st.tuples(st.just("beyond"), st.integers(0, (1 << 20) - 1), FLAGS, NX),
    st.tuples(st.just("own_host"), st.integers(0, 1 << 14), FLAGS, NX),
    st.tuples(st.just("reserved"), RESERVED_BIT, st.integers(0, 1 << 14), FLAGS),
)
# Weighted towards entries a guest survives (most hostile ones stop the VM at once in the modes
# whose hardware walks the guest's tables), so that each attacker lives for a while.
VALUES = st.one_of(OWN, OWN, OWN_LARGE, st.tuples(st.just("data"), st.integers(0, 1 << 10), FLAGS), HOSTILE)
LEVEL = st.integers(1, 5)
WRITE = st.tuples(st.just("write"), LEVEL, st.one_of(st.just(None), st.just(None),
                                                     st.tuples(st.integers(0, 1 << 14), st.integers(0, 511))),
                  VALUES, st.sampled_from(["retry", "invlpg", "handle", "invpcid"]))
OPS = st.one_of(
    WRITE, WRITE, WRITE, WRITE, WRITE, WRITE,
    st.tuples(st.just("handle")),
    st.tuples(st.just("handle")),
    st.tuples(st.just("retry")),
    st.tuples(st.just("kill")),
    st.tuples(st.just("cr3"), VALUES, st.booleans()),
    st.tuples(st.just("self_map"), st.integers(0, 511)),
    st.tuples(st.just("rewire"), st.integers(2, 4), st.one_of(st.just(("raw", 0)), VALUES), st.integers(0, 1 << 12)),
)


def host_frame(vm: VM, number: int) -> int:
    """One of ``vm``'s host frames: planned (partitions) or held now (overcommit)."""
    layout = vm.memory
    if layout.base is not None:
        return layout.planned(number % layout.frames)
    frames = layout.host_frames()
    return int(frames[number % len(frames)]) if len(frames) else number


class Attacker:
    """A guest kernel that writes what it likes into its page tables (through its port)."""

    def __init__(self, vm: VM, victim: VM, ops: list[tuple[Any, ...]], rng: np.random.Generator) -> None:
        self.vm, self.victim, self.ops, self.rng = vm, victim, ops, rng  # ops: shared by the attackers, popped
        self.port = vm.mode
        self.levels = vm.guest_config.levels
        self.pcid = vm.guest_config.pcid
        self.handle = vm.guest.page_fault
        vm.guest.page_fault = self.page_fault  # type: ignore[method-assign]
        self.done = 0

    @property
    def frames(self) -> int:
        return self.vm.memory.frames

    # -- where to write, and what ------------------------------------------------------

    def locate(self, process: Process, va: int, level: int, target: Any) -> tuple[int, int, int, int | None]:
        """(table gfn, index, its level, parent table gfn): the table at ``level`` on the walk of ``va``
        (or the deepest one there is), or a frame picked by ``target``."""
        level = min(level, self.levels)
        if target is not None:
            gfn, index = target
            return gfn % self.frames, index, level, None
        table, current, parent = process.root, self.levels, None
        while current > level:
            entry = self.port.read_pte(table, (va >> (12 + 9 * (current - 1))) & 511)
            gfn = (entry & ADDR_MASK) >> 12
            if not entry & P or (current <= 3 and entry & PS) or gfn >= self.frames:
                break
            table, parent, current = gfn, table, current - 1
        return table, (va >> (12 + 9 * (current - 1))) & 511, current, parent

    def value(self, spec: tuple[Any, ...], process: Process, table: int, parent: int | None) -> int:
        kind = spec[0]
        if kind == "raw":
            return int(spec[1])
        if kind == "own_large":
            return (spec[1] * 512 % self.frames) << 12 | spec[2]
        if kind in ("self", "root", "parent"):
            gfn = {"self": table, "root": process.root, "parent": parent if parent is not None else table}[kind]
            return gfn << 12 | spec[1] | P
        if kind == "data":
            pages = sorted(page.gfn for page in process.pages.values())
            gfn = pages[spec[1] % len(pages)] if pages else spec[1] % self.frames
            return gfn << 12 | spec[2] | P
        if kind == "reserved":
            return (1 << spec[1]) | (spec[2] % self.frames) << 12 | spec[3] | P
        number, flags, nx = spec[1], spec[2], spec[3]
        if kind == "beyond":
            gfn = self.frames + number
        elif kind == "victim":  # the victim's host frame, written as a guest-physical address
            gfn = host_frame(self.victim, number)
        elif kind == "hv":  # a frame of the hypervisor's pool (a shadow table, an EPT page...)
            hv = sorted(self.vm.hv_frames | self.victim.hv_frames) or [number]
            gfn = hv[number % len(hv)]
        elif kind == "own_host":  # its own host frame, written as a guest-physical address
            gfn = host_frame(self.vm, number)
        else:  # "own": small numbers (what Hypothesis likes) spread over the whole memory
            gfn = number * SPREAD % self.frames
        return ((gfn << 12) & ADDR_MASK) | flags | P | nx

    # -- one adversarial step --------------------------------------------------------

    def write(self, process: Process, va: int, op: tuple[Any, ...]) -> None:
        _, level, target, spec, _after = op
        table, index, level, parent = self.locate(process, va, level, target)
        self.port.write_pte(table, index, self.value(spec, process, table, parent) & U64)
        self.done += 1

    def rewire(self, process: Process, va: int, op: tuple[Any, ...]) -> None:
        """Unlink a table on the walk of ``va`` without INVLPG (the paging-structure caches may keep
        it), then write a large-page entry into it: to the hypervisor it is no table of that level any
        more, to a stale cached walk it still is."""
        _, level, spec, index = op
        table, slot, reached, parent = self.locate(process, va, level, None)
        if parent is not None:
            self.port.write_pte(parent, (va >> (12 + 9 * reached)) & 511, self.value(spec, process, parent, None) & U64)
        if index % 3 == 1:  # the slot of another of its 2 MiB regions: perhaps cached at this level only
            slot = ((REGION + (index % 4 << 21)) >> (12 + 9 * (reached - 1))) & 511
        elif index % 3 == 2:
            slot = index % 512
        gfn = process.root if index % 4 == 0 else (index * 512 * SPREAD) % self.frames & ~511
        self.port.write_pte(table, slot, gfn << 12 | TABLE | PS)
        self.done += 2

    def page_fault(self, process: Process, va: int, error_code: int) -> bool:
        if not self.ops:
            return self.handle(process, va, error_code)
        op = self.ops.pop()
        kind = op[0]
        if kind == "handle":
            return self.handle(process, va, error_code)
        if kind == "retry":
            return True
        if kind == "kill":
            self.vm.guest.exit(process, reason="killed by its hostile kernel")
            return False
        if kind == "cr3":
            # the root's address and whatever high bits the value has (52..62 are reserved in CR3)
            root = self.value(op[1], process, process.root, None) & ~0xFFF & ~(1 << 63) & U64
            # bit 63 (no flush) even without PCIDs, where it is reserved
            self.port.load_cr3(root | (process.pcid if self.pcid else 0) | (1 << 63 if op[2] else 0))
            self.done += 1
            return True
        if kind == "rewire":
            self.rewire(process, va, op)
            return True
        if kind == "self_map":  # a PML4 entry pointing at the PML4 itself, then an access through it
            self.port.write_pte(process.root, SELF_SLOT, process.root << 12 | TABLE)
            self.done += 1
            return True
        self.write(process, va, op)
        after = op[4]
        if after == "invlpg":
            self.port.invlpg(va)
        elif after == "invpcid":
            self.port.invpcid(1, process.pcid if self.pcid else 0)
        elif after == "handle":
            return self.handle(process, va, error_code)
        return True

    def between_slices(self, processes: list[Process]) -> None:
        """Rewrite entries while the VM is not running (as another CPU of the guest would)."""
        live = [p for p in processes if p.alive and not p.done]
        for _ in range(2):
            if not live or not self.ops or self.vm.terminated is not None:
                return
            op = self.ops[-1]
            if op[0] != "write":
                return
            self.ops.pop()
            process = live[int(self.rng.integers(len(live)))]
            va = REGION + (int(self.rng.integers(4)) << 21) + (int(self.rng.integers(16)) << 12)
            try:
                self.write(process, va, op)
            except VMTerminated:
                assert self.vm.terminated


def attacker_program(rng: np.random.Generator, n: int, huge: bool) -> StepList:
    """Mostly its own region, some of its huge region, unmapped and self-mapped space, a few
    non-canonical addresses (a #GP kills the process)."""
    pick = rng.random(n)
    page = rng.integers(0, REGION_PAGES, n, dtype=np.uint64)
    region = REGION + (page // np.uint64(16) << np.uint64(21)) + (page % np.uint64(16) << np.uint64(12))
    large = HUGE_REGION + rng.integers(0, 4 << 20, n, dtype=np.uint64)
    anywhere = rng.integers(0, 1 << 47, n, dtype=np.uint64)
    self_mapped = SELF_VA + rng.integers(0, 1 << 39, n, dtype=np.uint64)
    noncanonical = (np.uint64(1) << np.uint64(47)) + rng.integers(0, 1 << 40, n, dtype=np.uint64)
    addresses = np.where(pick < 0.7, region, np.where(pick < 0.82, large, np.where(
        pick < 0.88, anywhere, np.where(pick < 0.995, self_mapped, noncanonical))))
    addresses &= ~np.uint64(7)
    kinds = rng.choice(np.array([0, 1, 2], dtype=np.uint8), n, p=[0.5, 0.4, 0.1])
    return StepList([Mmap(REGION, REGION_SPAN, executable=True),
                     Mmap(HUGE_REGION, 4 << 20, huge=huge), Accesses(addresses, kinds)])


# -- the test -------------------------------------------------------------------------


def new_attacker(m: Machine, mode: str, victim: VM | None, config: dict[str, Any], ops: list[tuple[Any, ...]],
                 rng: np.random.Generator) -> tuple[VM, list[Process], Attacker | None]:
    vm = m.create_vm(ATTACKER_MEMORY, mode, backing=config["backing"], allocation=config["allocation"],
                     guest=config["guest"], seed=int(rng.integers(1 << 16)), name="attacker")
    processes = [vm.spawn(attacker_program(rng, 100, huge=True), name=f"a{i}")
                 for i in range(3)]
    return vm, processes, None if victim is None else Attacker(vm, victim, ops, rng)


def finished(vm: VM) -> bool:
    return vm.terminated is not None or not vm.guest.runnable()


def check_outcome(vm: VM, processes: list[Process], hostile: Attacker) -> None:
    """The attacker got an architectural outcome: terminated with a reason, or its processes ended
    (normally, or killed by a segfault, a #GP or its own kernel)."""
    event("attacker: " + (f"terminated: {re.sub('0x[0-9a-f]+', 'X', vm.terminated)[:70]}" if vm.terminated else
                          ", ".join(sorted({p.exit_reason.split(" at ")[0] for p in processes}))))
    if vm.terminated is not None:
        assert isinstance(vm.terminated, str) and vm.terminated
        assert vm.exits["termination"] == 1
    else:
        for p in processes:
            assert not p.alive and p.exit_reason, p


def check_destroyed(m: Machine, vm: VM, eptag: int | None) -> None:
    """Nothing of a destroyed VM is left: no frame, no cached translation tagged with it."""
    assert m.mem.frames_owned(vm.id) == 0
    for name, tlb in m.mmu.structures().items():
        for row in tlb.contents():
            assert not (vm.mode.uses_vpid and row["vpid"] == vm.vpid), f"{name}: {row} of destroyed {vm.name}"
            assert eptag is None or row["eptag"] != eptag, f"{name}: {row} of destroyed {vm.name}'s EPT"


def attack(mode: str, data: st.DataObject) -> None:
    victim_backing = data.draw(st.sampled_from(["contiguous", "scattered"]), label="victim backing")
    victim_first = data.draw(st.booleans(), label="victim created first")
    backing = data.draw(st.sampled_from(["contiguous", "scattered"]), label="attacker backing")
    config = {"backing": backing,
              "allocation": data.draw(st.sampled_from(["eager", "on_demand"]), label="attacker allocation"),
              "guest": {"levels": data.draw(st.sampled_from([4, 5]), label="levels"),
                        "pcid": data.draw(st.booleans(), label="pcid"),
                        "huge_pages": data.draw(st.booleans(), label="huge pages")}}
    ops = data.draw(st.lists(OPS, min_size=60, max_size=200), label="ops")[::-1]  # popped from the end
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="accesses seed"))

    # With overcommit there are no partitions: both VMs take frames from one free list, interleaved.
    overcommit = data.draw(st.booleans(), label="overcommit")
    expected_log, expected_stats = solo_victim(mode, victim_backing, overcommit)
    m = new_machine(mode, overcommit)
    if victim_first:
        victim, victim_processes = make_victim(m, victim_backing)
    attacker, processes, _ = new_attacker(m, mode, None, config, ops, rng)
    if not victim_first:
        victim, victim_processes = make_victim(m, victim_backing)
    hostile = Attacker(attacker, victim, ops, rng)

    on_batch = batch_checker(m)
    rounds, steps = 1, 0
    with deadline(TIME_LIMIT):
        for _ in range(MAX_CHUNKS):
            result = m.run(max_accesses=CHUNK, on_batch=on_batch)
            check_machine(m)
            if finished(attacker):
                check_outcome(attacker, processes, hostile)
                steps += hostile.done
                if not ops or rounds == MAX_ROUNDS:
                    if not result.partial:
                        break
                    continue
                # The next attacker: it gets the frames of the last one, which must have left nothing behind.
                eptag = attacker.mode.ept.config.eptag if mode == "nested" else None
                m.destroy_vm(attacker)
                check_destroyed(m, attacker, eptag)
                check_machine(m)
                attacker, processes, hostile = new_attacker(m, mode, victim, config, ops, rng)
                rounds += 1
                continue
            hostile.between_slices(processes)
            check_machine(m)
        else:
            pytest.fail(f"no end after {MAX_CHUNKS} slices of {CHUNK} accesses")
    event(f"attackers: {rounds}")
    event(f"adversarial steps: {min(steps // 10 * 10, 100)}+")

    # The victim noticed nothing.
    assert victim.terminated is None
    assert all(p.done and not p.alive and p.exit_reason == "exit" for p in victim_processes)
    assert victim.guest.fault_log == expected_log
    assert victim.guest.stats == expected_stats


@pytest.mark.parametrize("mode", MODES)
@seed(20240611)
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, phases=PHASES,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_guest_stays_in_its_memory(mode: str, data: st.DataObject) -> None:
    attack(mode, data)


# -- address spaces under pressure: CR3 and PCID juggling, a small hypervisor pool ----------

JUGGLE_SPACE = 1 << 39  # the processes all map [2^39, 7 * 2^39): every PML4 slot 1..6


def juggling_program(rng: np.random.Generator, n: int) -> StepList:
    """Accesses over few PML4/PDPT/PD slots and a few pages each, so that tables and cached
    paging-structure entries are shared, evicted and reused all the time."""
    i4 = rng.integers(1, 7, n, dtype=np.uint64)
    i3 = rng.integers(0, 2, n, dtype=np.uint64)
    i2 = rng.integers(0, 2, n, dtype=np.uint64)
    i1 = rng.integers(0, 4, n, dtype=np.uint64)
    addresses = i4 << np.uint64(39) | i3 << np.uint64(30) | i2 << np.uint64(21) | i1 << np.uint64(12)
    return StepList([Mmap(JUGGLE_SPACE, 6 * JUGGLE_SPACE),
                     Accesses(addresses, rng.integers(0, 2, n, dtype=np.uint8))])


JUGGLE_OPS = st.lists(st.one_of(
    st.tuples(st.just("cr3"), st.integers(0, 3), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("handle")), st.tuples(st.just("handle")),
    st.tuples(st.just("invpcid"), st.integers(0, 3), st.integers(0, 3)),
), min_size=30, max_size=100)


@pytest.mark.parametrize("mode", MODES)
@seed(20240612)
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, phases=PHASES,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_cr3_and_pcid_juggling_under_pool_pressure(mode: str, data: st.DataObject) -> None:
    """A guest that loads any of its roots with any PCID, with or without the no-flush bit, while the
    hypervisor's pool is small (shadows are evicted and cleared to make room) never reaches a frame
    that is not its own: not through a stale TLB entry, not through a stale paging-structure cache
    entry that points at a hypervisor table since freed and reused at another level."""
    pool = data.draw(st.sampled_from(["64KiB", "96KiB", "128KiB", "256KiB", "4MiB"]), label="pool")
    cache = data.draw(st.integers(1, 4), label="shadow cache")
    pcid = data.draw(st.booleans(), label="pcid")
    ops = data.draw(JUGGLE_OPS, label="ops")[::-1]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="accesses seed"))
    m = Machine(HOST, tlb="skylake", hypervisor={"memory": pool, "shadow_cache": cache, "vm_slice": 300})
    vm = m.create_vm("16MiB", mode, guest={"pcid": pcid, "quantum": 40})
    processes = [vm.spawn(juggling_program(rng, 150)) for _ in range(3)]
    handle = vm.guest.page_fault
    done = [0]

    def juggle(op: tuple[Any, ...], process: Process | None) -> None:
        if op[0] == "cr3":
            root = processes[op[1] % len(processes)].root
            vm.mode.load_cr3(root << 12 | (op[2] if pcid else 0) | (1 << 63 if op[3] and pcid else 0))
        elif op[0] == "invpcid":
            vm.mode.invpcid(op[1], op[2])
        done[0] += 1

    def hostile(process: Process, va: int, error_code: int) -> bool:
        op = ops.pop() if ops else ("handle",)
        if op[0] == "handle":
            return handle(process, va, error_code)
        juggle(op, process)
        return True

    vm.guest.page_fault = hostile  # type: ignore[method-assign]
    on_batch = batch_checker(m)
    with deadline(TIME_LIMIT):
        for _ in range(MAX_CHUNKS):
            result = m.run(max_accesses=60, on_batch=on_batch)
            check_machine(m)
            if not result.partial:
                break
            if ops and ops[-1][0] != "handle" and vm.alive:  # between slices too
                try:
                    juggle(ops.pop(), None)
                except VMTerminated:
                    pass
                check_machine(m)
        else:
            pytest.fail(f"no end after {MAX_CHUNKS} slices")
    event(f"juggling steps: {min(done[0] // 10 * 10, 50)}+")
    event(f"outcome: {'terminated' if vm.terminated else 'ran'}")
    if vm.terminated is not None:
        assert vm.terminated and vm.exits["termination"] == 1
    else:
        assert all(not p.alive and p.exit_reason for p in processes)


def test_shadow_pool_pressure_does_not_leave_stale_paging_structure_entries() -> None:
    """Regression (found by the test above): with a pool too small for the shadow, the hypervisor
    clears the current shadow's tables to make room and reuses their frames at other levels; the
    paging-structure caches still pointed at them, so a walk could end on a shadow table: the guest
    read and wrote the hypervisor's memory."""
    m = Machine(HOST, tlb="skylake", hypervisor={"memory": "64KiB"}, guest={"pcid": True})
    vm = m.create_vm("16MiB", "shadow")
    addresses = np.array([0x30040203000, 0x30040002000, 0x20040002000, 0x10040202000, 0x18000200000,
                          0x8000201000, 0x20040001000], dtype=np.uint64)
    vm.spawn(StepList([Mmap(JUGGLE_SPACE, 6 * JUGGLE_SPACE), Accesses(addresses, 0)]))
    reached: list[tuple[int, int]] = []

    def on_batch(vm: VM, process: Process, addresses: np.ndarray, kinds: np.ndarray, out: np.ndarray,
                 start: int, stop: int) -> None:
        reached.extend((int(addresses[i]), int(out[i]) >> 12) for i in range(start, stop))

    m.run(on_batch=on_batch)
    assert vm.terminated is None
    assert [(hex(va), frame) for va, frame in reached if m.mem.owner_of(frame) != vm.id] == []


# -- regressions: each a minimal reproduction of a hole the tests above found --------------------

L4, L3, L2, L1 = 1 << 39, 1 << 30, 1 << 21, 1 << 12
NOFLUSH = 1 << 63


def accesses(*vas: int) -> Accesses:
    return Accesses(np.array(vas, dtype=np.uint64), 0)


def owners_reached(m: Machine) -> tuple[Callable[..., None], dict[int, dict[int, int]]]:
    """``on_batch`` counting, per VM, the owners of the host frames its accesses reached."""
    reached: dict[int, dict[int, int]] = {}

    def on_batch(vm: VM, process: Process, addresses: np.ndarray, kinds: np.ndarray, out: np.ndarray,
                 start: int, stop: int) -> None:
        counts = reached.setdefault(vm.id, {})
        for frame in (out[start:stop] >> np.uint64(12)).tolist():
            owner = m.mem.owner_of(frame)
            counts[owner] = counts.get(owner, 0) + 1

    return on_batch, reached


def test_nested_vms_never_share_an_ept_tag() -> None:
    """The nested TLB (guest-physical -> host-physical) is tagged by the EPT only.  The first VM's
    EPT root is host frame 0 and the second's frame 1: both EPTs got tag 1, and the second VM's
    walks and accesses used the first VM's nested-TLB entries, i.e. its memory."""
    m = Machine(HOST, hypervisor={"vm_slice": 3})
    a, b = m.create_vm("16MiB", "nested"), m.create_vm("16MiB", "nested")
    assert a.mode.ept.config.eptag != b.mode.ept.config.eptag
    program = StepList([Mmap(0x1000_0000, 16 * L1), accesses(*range(0x1000_0000, 0x1001_0000, L1))])
    a.spawn(program)
    b.spawn(program)
    on_batch, reached = owners_reached(m)
    m.run(on_batch=on_batch)
    assert (a.terminated, b.terminated) == (None, None)
    assert reached == {a.id: {a.id: 16}, b.id: {b.id: 16}}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("pcid", "bits"), [(True, 1 << 46), (True, 1 << 52), (False, NOFLUSH)],
                         ids=["beyond-maxphyaddr", "bit-52", "no-flush-without-pcid"])
def test_mov_to_cr3_with_reserved_bits_gets_an_architectural_outcome(mode: str, pcid: bool, bits: int) -> None:
    """MOV to CR3 with reserved bits set is a #GP in the guest kernel.  It must not raise
    ValueError out of Machine.run (nested: any such value; direct modes: bit 63 without PCIDs and
    bits 52..62; shadow: bits 52..62, which later reach CpuState through its software walk)."""
    m = Machine(HOST, guest={"pcid": pcid})
    vm = m.create_vm("16MiB", mode)
    process = vm.spawn(StepList([Mmap(L4, 16 * L1), accesses(*range(L4, L4 + 16 * L1, L1))]))
    handle = vm.guest.page_fault

    def hostile(p: Process, va: int, error_code: int) -> bool:
        vm.guest.page_fault = handle  # type: ignore[method-assign]
        vm.mode.load_cr3(process.root << 12 | bits | (process.pcid if pcid else 0))
        return True

    vm.guest.page_fault = hostile  # type: ignore[method-assign]
    m.run()  # no exception: a #GP, a termination or (for bits the mode ignores) a run to the end
    assert vm.terminated is not None or not process.alive


def test_shadow_cache_of_one_does_not_hang() -> None:
    """hypervisor.shadow_cache=1 is accepted; with two processes the second CR3 load looped for
    ever in Shadow._new_space (the only cached shadow is the current one, which it never evicts)."""
    m = Machine(HOST, hypervisor={"shadow_cache": 1})
    vm = m.create_vm("16MiB", "shadow")
    processes = [vm.spawn(zipf(pages=16, n=200, seed=s)) for s in (1, 2)]
    with deadline(10):
        m.run()
    assert vm.terminated is None and all(p.exit_reason == "exit" for p in processes)


def test_evicted_shadow_leaves_no_cached_walk_behind() -> None:
    """A guest may load two roots with one PCID and the no-flush bit (stale translations are then
    its own business).  When the hypervisor evicted one of those shadows, paging-structure cache
    entries tagged with that PCID still pointed at its freed tables; a new shadow reused them at
    other levels, and a walk through the stale PDE entry ended on a shadow table."""
    m = Machine(HOST, hypervisor={"shadow_cache": 2}, guest={"pcid": True})
    vm = m.create_vm("16MiB", "shadow")
    z, w, x, y = L4, L4 + L2, 2 * L4, 3 * L4 + 5 * L3
    p0 = vm.spawn(StepList([Mmap(L4, 3 * L4), accesses(z, w, x, y), accesses(z, w), accesses(x, y),
                            accesses(w + 5 * L1)]))
    p1 = vm.spawn(None)  # only its (empty) address space
    r0, r1 = p0.root << 12, p1.root << 12
    on_batch, reached = owners_reached(m)
    mode = vm.mode
    m.run(max_accesses=4, on_batch=on_batch)  # p0 maps z w x y; its shadow A = (r0, PCID 1) holds them
    mode.load_cr3(r1 | 1)  # C = (r1, 1) is made: PCID 1 is flushed
    mode.load_cr3(r0 | 1 | NOFLUSH)  # back to A
    m.run(max_accesses=2, on_batch=on_batch)  # z, w through A: the PSCs point at A's tables
    mode.load_cr3(r1 | 1 | NOFLUSH)  # C (cached): PCID 1's entries are kept
    mode.load_cr3(r0 | 2)  # D = (r0, 2): the cache is full and A, not current, is evicted
    m.run(max_accesses=2, on_batch=on_batch)  # x, y through D: new tables in A's frames
    mode.load_cr3(r1 | 1 | NOFLUSH)  # C again: PCID 1 still tags the walks made through A
    m.run(on_batch=on_batch)  # w + 5 pages: p1's tables map nothing, so a fault is the right answer
    assert set(reached[vm.id]) == {vm.id}, reached


@pytest.mark.parametrize("mode", ["native", "brute_force"])
def test_unlinked_table_is_not_walked_at_its_old_level(mode: str) -> None:
    """The real tables hold host frames.  A guest unlinks a page directory without INVLPG (the
    PDPTE cache keeps it, as x86 allows) and writes an entry into it with bit 7 set: to the
    hypervisor the frame is now a page table where bit 7 is PAT, so the entry is converted as a
    4 KiB mapping of its own frame; the stale cached walk reads it as a PDE with PS, a 2 MiB page
    over that frame and the 511 after it.  With overcommit those are the next VM's frames."""
    m = Machine(HOST, hypervisor={"overcommit": True})
    attacker, victim = m.create_vm("64MiB", mode), m.create_vm("64MiB", mode)
    base, region = L4, L4 + 3 * L2
    p = attacker.spawn(StepList([Mmap(base, L3), accesses(base), accesses(*range(region, region + L2, L1))]))
    victim.spawn(StepList([Mmap(base, 64 * L1), accesses(*range(base, base + 64 * L1, L1))]))
    m.run(vms=[victim])  # with overcommit its frames come right after the attacker's root (2 MiB aligned)
    port, handle = attacker.mode, attacker.guest.page_fault

    def hostile(process: Process, va: int, error_code: int) -> bool:
        if va < region:
            return handle(process, va, error_code)
        attacker.guest.page_fault = handle  # type: ignore[method-assign]
        pdpt = (port.read_pte(p.root, 1) & ADDR_MASK) >> 12
        pd = (port.read_pte(pdpt, 0) & ADDR_MASK) >> 12
        port.write_pte(pdpt, 0, 0)  # unlink the PD, no INVLPG
        port.write_pte(pd, 3, p.root << 12 | TABLE | PS)
        return True

    attacker.guest.page_fault = hostile  # type: ignore[method-assign]
    on_batch, reached = owners_reached(m)
    m.run(vms=[attacker], on_batch=on_batch)
    assert set(reached.get(attacker.id, {attacker.id: 0})) == {attacker.id}, reached
