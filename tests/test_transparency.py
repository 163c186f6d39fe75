"""Transparency: the differential test across the four modes (design.md, "The hypervisor and the guest").

For the same scenario and seed, every mode gives the guest the same
experience as native; only the costs differ.  Each case runs once per mode on
a fresh machine and compares, against native:

- the guest's page-fault log, per VM (process, faulting address, error code);
- the guest's mappings (page va -> guest-physical address and the entry's
  flags as the guest reads them, accessed and dirty flags included) of every
  process: at a stop point in the middle of the run (``max_accesses``), when
  each process exits (captured just before its tables are torn down) and at
  the end for the processes still alive;
- the host-physical address every access reached, in order, per (VM, process);
- the guest kernel's counters (page faults, evictions, major faults, page-table
  reads and writes, context switches, ...) and how each process ended.

The cases cover memory pressure (the clock evicts), scattered and contiguous
backing, on-demand allocation, map/unmap churn, several processes per VM and
two VMs, PCIDs on and off, guest huge pages (over contiguous and scattered
host frames), a self-referencing root through which the kernel reads its
tables, TLBs on and off, a tiny shadow cache, eager and lazy EPTs and 2 MiB
EPT pages.  Besides the mappings, every entry of every table reachable from
each root is compared (upper-level accessed flags included).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from deadlines import deadline

from fastmmu.arch import ADDR_MASK, PTE
from fastmmu.comparison import build
from fastmmu.config import Config
from fastmmu.hypervisor.machine import Machine
from fastmmu.workloads import Churn, Phases, Sequential, Uniform, Zipf
from fastmmu.workloads.program import Accesses, Mmap, Munmap, StepList
from fastmmu.workloads.scenario import ProcessSpec, Scenario, VMSpec, default_scenario

MODES = ("native", "brute_force", "shadow", "nested")
FLAGS = int(PTE.P | PTE.RW | PTE.US | PTE.A | PTE.D | PTE.NX | PTE.PS)
SEEDS = (0, 1, 2, 3, 5, 8)  # the main cases run with all of them, the variations with the first two

B1 = 0x0000_1000_0000_0000
B2 = 0x0000_2000_0000_0000
B3 = 0x0000_3000_0000_0000
B4 = 0x0000_4000_0000_0000
MiB = 1 << 20


# -- what the guest experiences --------------------------------------------------------------


@dataclass
class Experience:
    """Everything the guest can observe in one run, plus where its accesses went on the host."""

    fault_logs: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    mappings: dict[tuple[str, str, int], dict[int, tuple[int, int]]] = field(default_factory=dict)
    host: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    guest_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    ends: dict[tuple[str, int], tuple[bool, str]] = field(default_factory=dict)
    accesses: list[int] = field(default_factory=list)
    self_mapped: int = 0  # accesses through PML4 slot SELF (the kernel reading its tables)
    tables: dict[tuple[str, str, int], dict[tuple[int, int], int]] = field(default_factory=dict)
    terminated: dict[str, str | None] = field(default_factory=dict)
    exits: dict[str, dict[str, int]] = field(default_factory=dict)
    hypervisor: dict[str, dict[str, Any]] = field(default_factory=dict)


def guest_view(vm: Any, process: Any) -> dict[int, tuple[int, int]]:
    """The process's mappings as the guest sees them: va -> (gpa, flags)."""
    return {va: (gpa, flags & FLAGS) for va, (gpa, flags) in vm.guest.mappings(process).items()}


def guest_tables(vm: Any, process: Any) -> dict[tuple[int, int], int]:
    """Every present entry of every table reachable from the process's root, as the guest reads it
    ((table gfn, index) -> entry): upper-level accessed flags, self-references and all."""
    levels = vm.guest_config.levels
    seen: dict[tuple[int, int], int] = {}
    todo, visited = [(process.root, levels)], set()
    while todo:
        table, level = todo.pop()
        if (table, level) in visited:
            continue
        visited.add((table, level))
        for index in range(512):
            entry = vm.mode.peek_pte(table, index)
            if not entry & PTE.P:
                continue
            seen[(table, index)] = entry
            if level > 1 and not entry & PTE.PS:
                todo.append(((entry & ADDR_MASK) >> 12, level - 1))
    return seen


def observe(machine: Machine, stops: tuple[int, ...] = ()) -> Experience:
    """Run ``machine`` to the end (pausing at each of ``stops`` accesses to look at the mappings)."""
    seen = Experience()
    chunks: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)

    def on_batch(vm: Any, process: Any, addresses: np.ndarray, kinds: np.ndarray, host: np.ndarray,
                 start: int, stop: int) -> None:
        chunks[(vm.name, process.pid)].append(host[start:stop].copy())
        seen.self_mapped += int(np.count_nonzero((addresses[start:stop] >> np.uint64(39)) & np.uint64(511) == SELF))

    for vm in machine.vms.values():
        guest = vm.guest
        original_exit = guest.exit

        def exit_hook(process: Any, reason: str = "exit", *, _vm: Any = vm, _exit: Any = original_exit) -> None:
            if process.alive:  # the last look at its tables before they are torn down
                seen.mappings[(_vm.name, "exit", process.pid)] = guest_view(_vm, process)
                seen.tables[(_vm.name, "exit", process.pid)] = guest_tables(_vm, process)
            _exit(process, reason)

        guest.exit = exit_hook

    with deadline():
        for n, stop in enumerate(stops):
            result = machine.run(max_accesses=stop, on_batch=on_batch)
            assert result.partial, "a stop point after the end of the run checks nothing"
            seen.accesses.append(result.stats["accesses"])
            for vm in machine.vms.values():
                for pid, process in vm.guest.processes.items():
                    if process.alive:
                        seen.mappings[(vm.name, f"stop{n}", pid)] = guest_view(vm, process)
                        seen.tables[(vm.name, f"stop{n}", pid)] = guest_tables(vm, process)
        result = machine.run(on_batch=on_batch)
    assert not result.partial
    seen.accesses.append(result.stats["accesses"])
    for vm in machine.vms.values():
        seen.fault_logs[vm.name] = list(vm.guest.fault_log)
        seen.guest_stats[vm.name] = dict(vm.guest.stats)
        seen.terminated[vm.name] = vm.terminated
        seen.exits[vm.name] = dict(vm.exits)
        seen.hypervisor[vm.name] = {"shadow_cache_evictions": 0, **vm.mode.stats()}
        for pid, process in vm.guest.processes.items():
            seen.ends[(vm.name, pid)] = (process.alive, process.exit_reason)
            if process.alive:
                seen.mappings[(vm.name, "end", pid)] = guest_view(vm, process)
                seen.tables[(vm.name, "end", pid)] = guest_tables(vm, process)
    seen.host = {key: np.concatenate(parts) for key, parts in chunks.items()}
    return seen


def assert_same_experience(mode: str, got: Experience, native: Experience) -> None:
    assert got.terminated == native.terminated, f"{mode}: VMs stopped"
    assert got.accesses == native.accesses, f"{mode}: accesses done per run"
    assert got.ends == native.ends, f"{mode}: how the processes ended"
    for name, log in native.fault_logs.items():
        mine = got.fault_logs[name]
        if mine != log:
            first = next((i for i, (a, b) in enumerate(zip(mine, log, strict=False)) if a != b),
                         min(len(mine), len(log)))
            pytest.fail(f"{mode}: VM {name}: fault logs differ at #{first} of {len(log)} (native) / {len(mine)}: "
                        f"{mine[first:first + 3]} vs native {log[first:first + 3]}")
    assert got.guest_stats == native.guest_stats, f"{mode}: guest kernel counters"
    assert got.mappings.keys() == native.mappings.keys(), f"{mode}: the snapshots taken"
    for key, expected in native.mappings.items():
        mine = got.mappings[key]
        if mine != expected:
            diff = sorted((va, mine.get(va), expected.get(va)) for va in set(mine) | set(expected)
                          if mine.get(va) != expected.get(va))
            pytest.fail(f"{mode}: mappings of {key} differ at {len(diff)} pages, "
                        f"(va, {mode}, native): {[(hex(v), m, n) for v, m, n in diff[:4]]}")
    assert got.tables.keys() == native.tables.keys(), f"{mode}: the table snapshots taken"
    for key, expected_tables in native.tables.items():
        mine_tables = got.tables[key]
        if mine_tables != expected_tables:
            diff = sorted((slot, mine_tables.get(slot), expected_tables.get(slot))
                          for slot in set(mine_tables) | set(expected_tables)
                          if mine_tables.get(slot) != expected_tables.get(slot))
            pytest.fail(f"{mode}: tables of {key} differ at {len(diff)} entries, ((gfn, index), {mode}, native): "
                        f"{[(s, hex(a or 0), hex(b or 0)) for s, a, b in diff[:4]]}")
    assert got.host.keys() == native.host.keys(), f"{mode}: processes that made accesses"
    for key, expected in native.host.items():
        mine = got.host[key]
        assert len(mine) == len(expected), f"{mode}: {key}: {len(mine)} accesses, native {len(expected)}"
        wrong = np.flatnonzero(mine != expected)
        assert not len(wrong), (f"{mode}: {key}: {len(wrong)} accesses reached another host address, the first "
                                f"#{wrong[0]}: {int(mine[wrong[0]]):#x} vs native {int(expected[wrong[0]]):#x}")


# -- the scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A machine configuration and a scenario; ``stops``: runs of that many accesses before the last
    run to the end, the mappings being compared after each."""

    scenario: Any  # seed -> Scenario
    tlb: str = "skylake"
    hypervisor: dict[str, Any] = field(default_factory=dict)
    guest: dict[str, Any] = field(default_factory=dict)
    stops: tuple[int, ...] = ()
    prepare: Any = None  # machine -> None: what the guest kernels do before the run (e.g. their self-maps)


def pressure(seed: int) -> Scenario:
    """One small VM (4 MiB for processes) with three processes wanting far more: the clock evicts."""
    return Scenario([VMSpec("small", memory="8MiB", backing="scattered", seed=seed, processes=[
        ProcessSpec("hot", Zipf(pages=900, n=8_000, alpha=0.9, writes=0.3, seed=seed)),
        ProcessSpec("wide", Uniform(pages=700, n=5_000, writes=0.5, seed=seed + 100, base=B2)),
        ProcessSpec("scan", Sequential(pages=300, n=4_000, stride=256, writes=0.2, seed=seed + 200, base=B3)),
    ])])


def two_vms(seed: int) -> Scenario:
    """Two VMs: one roomy (contiguous, on demand) with churn, one under pressure (scattered)."""
    roomy = VMSpec("roomy", memory="64MiB", backing="contiguous", allocation="on_demand", seed=seed, processes=[
        ProcessSpec("db", Zipf(pages=2_000, n=8_000, alpha=1.1, writes=0.3, seed=seed)),
        ProcessSpec("churn", Churn(pages=96, n=600, rounds=8, seed=seed + 1, base=B3)),
        ProcessSpec("phases", Phases((Sequential(pages=64, n=2_000, stride=512, writes=0.4, seed=seed + 2, base=B2),
                                      Uniform(pages=128, n=3_000, seed=seed + 3, base=B4)))),
    ])
    tight = VMSpec("tight", memory="6MiB", backing="scattered", allocation="on_demand", seed=seed + 7, processes=[
        ProcessSpec("sort", Zipf(pages=1_200, n=7_000, alpha=1.0, writes=0.5, seed=seed + 4)),
        ProcessSpec("cron", Churn(pages=40, n=300, rounds=6, seed=seed + 5, base=B3)),
    ])
    return Scenario([roomy, tight])


def huge(seed: int) -> Scenario:
    """Guest 2 MiB pages (contiguous backing) under pressure, next to a region too small for them."""
    rng = np.random.default_rng(seed)
    odd = B4 + 0x3000  # not 2 MiB aligned: 4 KiB pages only
    addresses = odd + (rng.integers(0, 40, 3_000, dtype=np.uint64) << np.uint64(12))
    kinds = (rng.random(3_000) < 0.4).astype(np.uint8)
    return Scenario([VMSpec("big", memory="32MiB", backing="contiguous", seed=seed, processes=[
        ProcessSpec("heap", Uniform(pages=12 * 512, n=6_000, writes=0.3, seed=seed)),
        ProcessSpec("odd", StepList([Mmap(odd, 40 << 12), Accesses(addresses, kinds), Munmap(odd, 40 << 12),
                                     Mmap(odd, 40 << 12), Accesses(addresses[::-1].copy(), kinds)])),
        ProcessSpec("scan", Sequential(pages=3 * 512, n=4_000, stride=4096, writes=0.5, base=B2)),
    ])])


def huge_scattered(seed: int) -> Scenario:
    """The huge scenario over scattered frames: the guest's 2 MiB pages are not one host run."""
    scenario = huge(seed)
    for spec in scenario.vms:
        spec.backing = "scattered"
    return scenario


SELF = 5  # the PML4 slot of the self-map
SELF_VA = SELF << 39 | SELF << 30 | SELF << 21 | SELF << 12  # the PML4 itself, as a page


def through_self_map(va: int, times: int) -> int:
    """The linear address of the table ``times`` levels above ``va``'s page, seen through the self-map."""
    for _ in range(times):
        va = SELF << 39 | (va >> 9) & ((1 << 39) - 1) & ~0xFFF
    return va


def self_map(seed: int) -> Scenario:
    """Windows' self-map: each root holds an entry pointing at itself, and the kernel reads its page
    tables (and the root) as pages through it, between its processes' own accesses."""
    rng = np.random.default_rng(seed)
    heap = B1 + (rng.integers(0, 600, 4_000, dtype=np.uint64) << np.uint64(12))
    touched = np.unique(heap)
    tables = [through_self_map(int(va), times) for va in touched[::37] for times in (1, 2, 3)] + [SELF_VA]
    views = np.array(tables * 8, dtype=np.uint64)
    rng.shuffle(views)
    mixed = np.concatenate([heap[2_000:], views])
    rng.shuffle(mixed)
    kinds = (rng.random(len(mixed)) < 0.3).astype(np.uint8)
    kinds[np.isin(mixed, views)] = 0  # reads of the tables (the simulator carries no data to write)
    program = StepList([Mmap(B1, 600 << 12), Accesses(heap[:2_000], (rng.random(2_000) < 0.3).astype(np.uint8)),
                        Accesses(mixed, kinds)])
    return Scenario([VMSpec("windows", memory="6MiB", backing="scattered", seed=seed, processes=[
        ProcessSpec("explorer", program),
        ProcessSpec("svchost", Uniform(pages=300, n=3_000, writes=0.4, seed=seed + 1, base=B2)),
    ])])


def self_map_huge(seed: int) -> Scenario:
    """The self-map with guest 2 MiB pages over contiguous frames: a page directory read as a page
    table shows each 2 MiB entry as a 4 KiB page (its first frame)."""
    scenario = self_map(seed)
    for spec in scenario.vms:
        spec.backing, spec.memory = "contiguous", "16MiB"
    return scenario


def add_self_maps(machine: Machine) -> None:
    """Every guest kernel maps each process's root at PML4 slot SELF, and takes the entry out before
    the process's tables are torn down (its kernel knows the slot is no region of the process)."""
    for vm in machine.vms.values():
        guest, port = vm.guest, vm.mode
        for process in guest.processes.values():
            port.write_pte(process.root, SELF, process.root << 12 | int(PTE.P | PTE.RW | PTE.US))
        original_exit = guest.exit

        def exit_without_self_map(process: Any, reason: str = "exit", *, _port: Any = port,
                                  _exit: Any = original_exit) -> None:
            if process.alive:
                _port.write_pte(process.root, SELF, 0)
            _exit(process, reason)

        guest.exit = exit_without_self_map


def many(seed: int) -> Scenario:
    """One VM with five processes (more address spaces than a small shadow cache holds)."""
    return Scenario([VMSpec("busy", memory="16MiB", backing="scattered", seed=seed, processes=[
        ProcessSpec(f"p{i}", Uniform(pages=300 + 50 * i, n=3_000, writes=0.3, seed=seed * 10 + i, base=B1 + (i << 32)))
        for i in range(5)
    ])])


def default(seed: int) -> Scenario:
    return default_scenario(scale=0.01, seed=seed)


SMALL_SLICES = {"vm_slice": 2_500}
MAIN = SEEDS
VARIATION = SEEDS[:2]
CASES = {
    # name: (case, seeds, what the native run must show, so that the comparison covers it)
    "pressure": (Case(pressure, guest={"quantum": 1_500}, stops=(6_000,)), MAIN, {"evictions", "major_faults"}),
    "pressure-nopcid": (Case(pressure, guest={"quantum": 1_500, "pcid": False}, stops=(6_000,)), VARIATION,
                        {"evictions"}),
    "pressure-notlb": (Case(pressure, tlb="none", guest={"quantum": 1_500}, stops=(6_000,)), VARIATION,
                       {"evictions"}),
    "two-vms": (Case(two_vms, hypervisor=SMALL_SLICES, guest={"quantum": 1_000}, stops=(7_000, 9_000)), MAIN,
                {"evictions", "vm_switches", "tables_freed"}),
    "two-vms-nopcid": (Case(two_vms, hypervisor=SMALL_SLICES, guest={"quantum": 1_000, "pcid": False},
                            stops=(7_000,)), VARIATION, {"evictions", "vm_switches"}),
    "two-vms-notlb": (Case(two_vms, tlb="none", hypervisor=SMALL_SLICES, guest={"quantum": 1_000}, stops=(7_000,)),
                      VARIATION, {"evictions", "vm_switches"}),
    "two-vms-ept-eager": (Case(two_vms, hypervisor={**SMALL_SLICES, "ept": "eager"}, guest={"quantum": 1_000}),
                          VARIATION, {"no_ept_violations"}),
    "two-vms-ept-2M": (Case(two_vms, hypervisor={**SMALL_SLICES, "ept_page_size": "2M"}, guest={"quantum": 1_000}),
                       VARIATION, {"evictions"}),
    "huge": (Case(huge, guest={"huge_pages": True, "quantum": 700}, stops=(5_000,)), VARIATION,
             {"huge_pages", "evictions"}),
    "huge-ept-2M": (Case(huge, hypervisor={"ept_page_size": "2M"}, guest={"huge_pages": True, "quantum": 700},
                         stops=(5_000,)), VARIATION, {"huge_pages", "evictions"}),
    "huge-notlb": (Case(huge, tlb="none", guest={"huge_pages": True, "quantum": 700}), VARIATION,
                   {"huge_pages", "evictions"}),
    "huge-scattered": (Case(huge_scattered, guest={"huge_pages": True, "quantum": 700}, stops=(5_000,)), MAIN,
                       {"huge_pages", "evictions", "splinters"}),
    "huge-scattered-nopcid": (Case(huge_scattered, guest={"huge_pages": True, "quantum": 700, "pcid": False},
                                   stops=(5_000,)), VARIATION, {"huge_pages", "evictions", "splinters"}),
    "self-map": (Case(self_map, guest={"quantum": 900}, stops=(2_500, 2_500), prepare=add_self_maps), MAIN,
                 {"evictions", "self_map"}),
    "self-map-notlb": (Case(self_map, tlb="none", guest={"quantum": 900}, stops=(3_000,), prepare=add_self_maps),
                       VARIATION, {"evictions", "self_map"}),
    "self-map-huge": (Case(self_map_huge, guest={"quantum": 900, "huge_pages": True}, stops=(2_500,),
                           prepare=add_self_maps), VARIATION, {"self_map", "huge_pages"}),
    "shadow-cache-2": (Case(many, hypervisor={"shadow_cache": 2}, guest={"quantum": 400}, stops=(4_000,)), VARIATION,
                       {"shadow_evictions"}),
    "shadow-cache-1": (Case(many, hypervisor={"shadow_cache": 1}, guest={"quantum": 400}, stops=(4_000,)),
                       SEEDS[:1], {"shadow_evictions"}),
    "default-scenario": (Case(default, hypervisor={"vm_slice": 4_000}, guest={"quantum": 2_000}, stops=(10_000,)),
                         VARIATION, {"vm_switches", "tables_freed"}),
}


def facts(runs: dict[str, Experience]) -> set[str]:
    """What the runs exercised (asserted per case, so a workload change cannot quietly test less)."""
    native = runs["native"].guest_stats.values()
    nested = runs["nested"]
    seen = set()
    if any(stats["evictions"] for stats in native):
        seen.add("evictions")
    if any(stats["major_faults"] for stats in native):
        seen.add("major_faults")
    if any(stats["huge_pages"] for stats in native):
        seen.add("huge_pages")
    if any(exits.get("vm_switch") for exits in nested.exits.values()):
        seen.add("vm_switches")
    if not any(exits.get("ept_violation") for exits in nested.exits.values()):
        seen.add("no_ept_violations")
    if any(hv["shadow_cache_evictions"] for hv in runs["shadow"].hypervisor.values()):
        seen.add("shadow_evictions")
    if runs["native"].self_mapped:
        seen.add("self_map")
    if any(hv.get("splinters_built") for hv in runs["native"].hypervisor.values()):
        seen.add("splinters")  # guest large pages given to the hardware in pieces
    if any(stats["pt_writes"] > stats["page_faults"] + stats["evictions"] for stats in native):
        seen.add("tables_freed")  # page-table entries cleared beyond faults and evictions: munmap and exit
    return seen


def run_case(case: Case, seed: int) -> dict[str, Experience]:
    config = Config.from_dict({"machine": {"host_memory": "4GiB", "tlb": case.tlb}, "hypervisor": case.hypervisor,
                               "guest": case.guest})
    scenario = case.scenario(seed)
    runs = {}
    for mode in MODES:
        machine = build(scenario, mode, config, record_faults=True)
        if case.prepare is not None:
            case.prepare(machine)
        runs[mode] = observe(machine, case.stops)
    return runs


@pytest.mark.parametrize(("case", "seed"), [(name, seed) for name, (_, seeds, _) in CASES.items() for seed in seeds])
def test_every_mode_gives_the_guest_the_native_experience(case: str, seed: int) -> None:
    spec, _, expected = CASES[case]
    runs = run_case(spec, seed)
    native = runs["native"]
    assert all(log for log in native.fault_logs.values()), "every VM takes page faults"
    for mode in MODES[1:]:
        assert_same_experience(mode, runs[mode], native)
    assert expected <= facts(runs), f"the case no longer exercises {expected - facts(runs)}"


# -- focused reproductions of differences found by the cases above ------------------------------------


@pytest.mark.parametrize("mode", MODES[1:])
def test_unmapping_a_guest_huge_page_drops_every_cached_piece_of_it(mode: str) -> None:
    """A guest 2 MiB page that the TLB holds as 4 KiB pieces (nested paging with 4 KiB EPT pages)
    must be invalidated whole by the guest's INVLPG of its address (SDM Vol. 3A 4.10.4.1: "If the
    paging structures map the linear address using a page larger than 4 KBytes and there are
    multiple TLB entries for that page, the instruction invalidates all of them").  After munmap,
    touching another piece of the old page is a page fault, as natively."""
    piece = B1 + 0x5000
    program = StepList([Mmap(B1, 2 * MiB), Accesses(np.array([B1, piece], dtype=np.uint64), 0),
                        Munmap(B1, 2 * MiB), Mmap(B1, 2 * MiB), Accesses(np.array([piece], dtype=np.uint64), 0)])
    logs, huge_pages = {}, {}
    for name in ("native", mode):
        machine = Machine("1GiB", tlb="skylake", guest={"huge_pages": True}, record_faults=True)
        vm = machine.create_vm("64MiB", name)
        vm.spawn(program)
        with deadline():
            machine.run()
        logs[name] = [(pid, hex(va), code) for pid, va, code in vm.guest.fault_log]
        huge_pages[name] = vm.guest.stats["huge_pages"]
    assert logs["native"] == [(1, hex(B1), 4), (1, hex(piece), 4)]
    assert huge_pages["native"] == 2
    assert logs[mode] == logs["native"]
    assert huge_pages[mode] == 2
