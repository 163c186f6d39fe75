"""The claims design.md makes about each mode, checked as exact counts.

- Shadow paging runs with no VM exit at all while nothing faults: once every
  page is warm, a second pass costs nothing but walks of the shadow tables.
- Brute force traps every guest page-table read and write and every CR3 load.
- Nested paging never exits for a guest page fault; only EPT violations (none
  with an eager EPT) and VM switches.  A TLB miss is a two-dimensional walk of
  n*m + n + m references (24 for 4/4 levels, 35 for 5/5); large pages shorten
  it.  A native walk is one reference per level.
- The shadow cache: a process scheduled again finds its shadow, so hidden
  faults do not grow with context switches; with room for one shadow, every
  switch rebuilds it.
- VM switches: every mode but native pays an exit per switch, and only the
  modes with VPID-tagged TLB entries (native, nested) keep them across it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from deadlines import deadline

from fastmmu.arch import Access
from fastmmu.hypervisor.costs import EXIT_REASONS
from fastmmu.hypervisor.machine import Machine
from fastmmu.workloads import Churn, Uniform, Zipf
from fastmmu.workloads.program import Accesses, Mmap, StepList

B1 = 0x0000_1000_0000_0000
B2 = 0x0000_2000_0000_0000
B3 = 0x0000_3000_0000_0000
MiB = 1 << 20
READ, WRITE = int(Access.READ), int(Access.WRITE)


def exits(**counts: int) -> dict[str, int]:
    """A run's ``vm_exits`` with these counts and every other reason at zero."""
    out = {reason: 0 for reason in EXIT_REASONS}
    out.update(counts)
    out["total"] = sum(counts.values())
    return out


def accesses_of(program: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every access a generator's program makes, in order (addresses, kinds)."""
    steps = [s for s in program.steps() if isinstance(s, Accesses)]
    return np.concatenate([s.addresses for s in steps]), np.concatenate([s.kinds for s in steps])


def distinct_pages(addresses: np.ndarray) -> int:
    return len(np.unique(addresses >> np.uint64(12)))


def warm_then(region: int, n: int, *, seed: int = 0, base: int = B1) -> tuple[StepList, int]:
    """A program that maps ``region`` bytes, writes every 4 KiB page of it once (so every page is
    present, accessed and dirty: the warm-up), then makes ``n`` random reads and writes in it.
    Returns the program and the warm-up's length."""
    pages = region >> 12
    rng = np.random.default_rng(seed)
    warm = np.uint64(base) + (np.arange(pages, dtype=np.uint64) << np.uint64(12))
    hot = (np.uint64(base) + (rng.integers(0, pages, n, dtype=np.uint64) << np.uint64(12))
           + (rng.integers(0, 512, n, dtype=np.uint64) << np.uint64(3)))
    kinds = (rng.random(n) < 0.5).astype(np.uint8)
    return StepList([Mmap(base, region), Accesses(warm, WRITE), Accesses(hot, kinds)]), pages


# -- (a) shadow paging: no exit while nothing faults --------------------------------------------


@pytest.mark.parametrize("tlb", ["skylake", "none"])
def test_shadow_second_pass_over_warm_pages_makes_no_vm_exit(tlb: str) -> None:
    machine = Machine("1GiB", tlb=tlb, guest={"quantum": 1 << 30})
    vm = machine.create_vm("64MiB", "shadow")
    program, pages = warm_then(256 << 12, 20_000, seed=3)
    vm.spawn(program)
    with deadline():
        warm = machine.run(max_accesses=pages)
        second = machine.run(max_accesses=20_000)
    # the warm-up: one CR3 load, and per page the guest's fault (injected) and then the shadow's fill
    assert warm.stats["accesses"] == pages
    assert warm.stats["vm_exits"] == exits(cr3_load=1, fault_injection=pages, hidden_fault=pages)
    assert warm.stats["guest"]["page_faults"] == pages
    # the second pass: reads and writes to the same pages, the process still running afterwards
    assert second.partial and second.stats["accesses"] == 20_000
    assert second.stats["vm_exits"] == exits()
    assert second.stats["guest"]["page_faults"] == 0
    assert second.stats["hypervisor"]["shadow_tables_built"] == warm.stats["hypervisor"]["shadow_tables_built"]
    if tlb == "none":  # every access is a walk of the shadow tables, which have it all
        assert second.stats["tlb"]["walks"] == 20_000
        assert second.stats["tlb"]["walk_refs_histogram"] == [0, 0, 0, 0, 20_000]


def test_shadow_first_write_to_a_clean_page_exits_once() -> None:
    """Dirty flags stay exact: a page the guest only read is mapped read-only in the shadow, so
    the first write to it is one hidden fault (which sets the guest's D flag), and no more."""
    pages, n = 128, 6_000
    rng = np.random.default_rng(7)
    warm = np.uint64(B1) + (np.arange(pages, dtype=np.uint64) << np.uint64(12))
    hot = np.uint64(B1) + (rng.integers(0, pages, n, dtype=np.uint64) << np.uint64(12))
    kinds = (rng.random(n) < 0.1).astype(np.uint8)
    written = distinct_pages(hot[kinds == WRITE])
    machine = Machine("1GiB", tlb="skylake", guest={"quantum": 1 << 30})
    vm = machine.create_vm("64MiB", "shadow")
    process = vm.spawn(StepList([Mmap(B1, pages << 12), Accesses(warm, READ), Accesses(hot, kinds)]))
    with deadline():
        machine.run(max_accesses=pages)
        second = machine.run(max_accesses=n)
    assert 0 < written < pages
    assert second.stats["vm_exits"] == exits(hidden_fault=written)
    dirty = sum(1 for _, flags in vm.guest.mappings(process).values() if flags & 0x40)
    assert dirty == written


# -- (b) brute force: every page-table access and CR3 load traps -------------------------------


def busy_vm(machine: Machine, mode: str) -> Any:
    """One small VM under memory pressure with map/unmap churn and three processes."""
    vm = machine.create_vm("8MiB", mode, backing="scattered", seed=4)
    vm.spawn(Zipf(pages=900, n=8_000, alpha=0.9, writes=0.4, seed=1), name="hot")
    vm.spawn(Churn(pages=64, n=400, rounds=6, seed=2, base=B2), name="churn")
    vm.spawn(Uniform(pages=400, n=4_000, writes=0.3, seed=3, base=B3), name="wide")
    return vm


@pytest.mark.parametrize("pcid", [True, False])
def test_brute_force_traps_every_page_table_access_and_cr3_load(pcid: bool) -> None:
    results = {}
    for mode in ("brute_force", "shadow", "nested", "native"):
        machine = Machine("1GiB", tlb="skylake", guest={"quantum": 1_000, "pcid": pcid})
        vm = busy_vm(machine, mode)
        with deadline():
            results[mode] = machine.run()
        assert results[mode].stats["guest"] == results["brute_force"].stats["guest"]  # the same guest work
        assert vm.terminated is None
    stats = results["brute_force"].stats
    guest, trapped = stats["guest"], stats["vm_exits"]
    assert guest["evictions"] > 0 and guest["pt_reads"] > 0 and guest["pt_writes"] > 0
    assert trapped["pt_read"] == guest["pt_reads"]
    assert trapped["pt_write"] == guest["pt_writes"]
    assert trapped["cr3_load"] == guest["context_switches"] > 3
    assert trapped["invlpg"] > 0
    assert trapped["total"] == trapped["pt_read"] + trapped["pt_write"] + trapped["cr3_load"] + trapped["invlpg"]
    # shadow paging traps the same CR3 loads and invalidations, but no page-table access
    shadow = results["shadow"].stats["vm_exits"]
    assert (shadow["cr3_load"], shadow["invlpg"]) == (trapped["cr3_load"], trapped["invlpg"])
    assert shadow["pt_read"] == shadow["pt_write"] == 0
    # nested paging and native trap none of them
    for mode in ("nested", "native"):
        counts = results[mode].stats["vm_exits"]
        assert counts["pt_read"] == counts["pt_write"] == counts["cr3_load"] == counts["invlpg"] == 0
    assert results["native"].stats["vm_exits"]["total"] == 0


# -- (c) nested paging: no exit for guest faults; the length of a 2D walk ------------------------


@pytest.mark.parametrize("ept", ["lazy", "eager"])
def test_nested_guest_page_faults_do_not_exit(ept: str) -> None:
    machine = Machine("1GiB", tlb="skylake", hypervisor={"ept": ept}, guest={"quantum": 1_000})
    vm = busy_vm(machine, "nested")
    with deadline():
        result = machine.run()
    stats = result.stats
    assert stats["guest"]["page_faults"] > 1_000 and stats["guest"]["evictions"] > 0
    if ept == "eager":
        assert stats["vm_exits"] == exits()
    else:  # one violation per guest frame, the first time the guest or the hardware touches it
        assert stats["vm_exits"]["total"] == stats["vm_exits"]["ept_violation"] > 0
        assert vm.exits["ept_violation"] == vm.mode.stats()["ept_mapped_bytes"] >> 12


@pytest.mark.parametrize("page_size", ["4K", "2M"])
def test_nested_lazy_ept_exits_once_per_guest_frame_or_chunk(page_size: str) -> None:
    """Without pressure, the guest's frames are handed out lowest first from just above its reserved
    4 MiB: page tables and data pages, each met once by an EPT violation (4 KiB EPT pages), or
    once per 2 MiB chunk of guest-physical memory they fall in (2 MiB EPT pages)."""
    machine = Machine("1GiB", tlb="skylake", hypervisor={"ept_page_size": page_size})
    vm = machine.create_vm("64MiB", "nested")
    vm.spawn(Uniform(pages=3_000, n=12_000, writes=0.3, seed=5))
    with deadline():
        result = machine.run(max_accesses=11_000)  # stop before it exits: its frames are still held
    used = vm.guest.stats["page_tables"] + vm.guest.stats["resident_pages"]
    first = 4 * MiB >> 12
    assert used > 2_000
    expected = used if page_size == "4K" else (first + used - 1) // 512 - first // 512 + 1
    assert vm.exits == {"ept_violation": expected}
    assert result.stats["guest"]["page_faults"] == vm.guest.stats["resident_pages"]


WALKS = [
    # mode, guest levels, EPT levels, guest 2 MiB pages, EPT page size, references per walk
    ("native", 4, 4, False, "4K", 4),
    ("native", 5, 4, False, "4K", 5),
    ("native", 4, 4, True, "4K", 3),
    ("brute_force", 4, 4, False, "4K", 4),
    ("brute_force", 5, 4, False, "4K", 5),
    ("shadow", 4, 4, False, "4K", 4),
    ("shadow", 5, 4, False, "4K", 5),
    ("shadow", 4, 4, True, "4K", 3),
    ("nested", 4, 4, False, "4K", 24),  # n*m + n + m
    ("nested", 5, 5, False, "4K", 35),
    ("nested", 4, 5, False, "4K", 29),
    ("nested", 5, 4, False, "4K", 29),
    ("nested", 4, 4, True, "4K", 3 + 3 * 4 + 4),  # the guest leaf is a PDE: 3 guest levels
    ("nested", 4, 4, False, "2M", 4 + 4 * 3 + 3),  # each EPT walk ends at a 2 MiB page: 3 EPT levels
    ("nested", 4, 4, True, "2M", 3 + 3 * 3 + 3),
]


@pytest.mark.parametrize(("mode", "levels", "ept_levels", "huge", "ept_page_size", "refs"), WALKS)
def test_every_walk_of_a_warm_address_space_makes_the_documented_references(
        mode: str, levels: int, ept_levels: int, huge: bool, ept_page_size: str, refs: int) -> None:
    """With no TLB or walk cache, every access walks; once all pages are present, no walk faults,
    so every one makes exactly the references of a full walk."""
    n = 3_000
    machine = Machine("1GiB", tlb="none", hypervisor={"ept_levels": ept_levels, "ept_page_size": ept_page_size},
                      guest={"levels": levels, "huge_pages": huge, "quantum": 1 << 30})
    vm = machine.create_vm("64MiB", mode)
    program, pages = warm_then(4 * MiB, n, seed=levels)
    vm.spawn(program)
    with deadline():
        machine.run(max_accesses=pages)
        second = machine.run(max_accesses=n)
    tlb = second.stats["tlb"]
    assert vm.guest.stats["huge_pages"] == (2 if huge else 0)
    assert second.stats["vm_exits"] == exits()
    assert tlb["walks"] == n
    assert tlb["walk_refs_histogram"] == [0] * refs + [n]
    assert tlb["walk_references"] == refs * n


# -- (d) the shadow cache ----------------------------------------------------------------------------


def alternating(shadow_cache: int, quantum: int, n: int = 6_000) -> tuple[Any, Any, list[np.ndarray]]:
    """Two processes of one VM, reads only, switched every ``quantum`` accesses under shadow paging.
    Returns the run, the VM and the addresses of each scheduling segment, in the order they ran."""
    programs = [Uniform(pages=96, n=n, writes=0.0, seed=11), Uniform(pages=80, n=n, writes=0.0, seed=12, base=B2)]
    machine = Machine("1GiB", tlb="skylake", hypervisor={"shadow_cache": shadow_cache},
                      guest={"quantum": quantum})
    vm = machine.create_vm("64MiB", "shadow")
    for program in programs:
        vm.spawn(program)
    with deadline():
        result = machine.run()
    streams = [accesses_of(program)[0] for program in programs]
    segments = [streams[k % 2][(k // 2) * quantum:(k // 2 + 1) * quantum] for k in range(2 * (n // quantum))]
    return result, vm, segments


def switches(n: int, quantum: int) -> int:
    """Context switches of two processes of ``n`` accesses each, ``quantum`` apart: one per
    segment, then each is scheduled once more to find its program over (and exits)."""
    assert n % quantum == 0
    return 2 * (n // quantum) + 2


@pytest.mark.parametrize("quantum", [1_000, 500])
def test_shadow_cache_keeps_a_rescheduled_process_shadow(quantum: int) -> None:
    result, vm, segments = alternating(16, quantum)
    stats, hv = result.stats, result.stats["hypervisor"]
    pages = distinct_pages(np.concatenate(segments[0::2])) + distinct_pages(np.concatenate(segments[1::2]))
    assert stats["guest"]["context_switches"] == switches(6_000, quantum)
    assert stats["vm_exits"]["cr3_load"] == switches(6_000, quantum)
    assert (hv["shadow_cache_misses"], hv["shadow_cache_evictions"]) == (2, 0)  # one per address space
    assert hv["shadow_cache_hits"] == switches(6_000, quantum) - 2
    # hidden faults: one per page, however often the processes were switched
    assert stats["guest"]["page_faults"] == stats["vm_exits"]["fault_injection"] == pages
    assert stats["vm_exits"]["hidden_fault"] == pages


@pytest.mark.parametrize("quantum", [1_000, 500])
def test_shadow_cache_of_one_rebuilds_the_shadow_at_every_switch(quantum: int) -> None:
    result, vm, segments = alternating(1, quantum)
    stats, hv = result.stats, result.stats["hypervisor"]
    pages = distinct_pages(np.concatenate(segments[0::2])) + distinct_pages(np.concatenate(segments[1::2]))
    count = switches(6_000, quantum)
    assert stats["vm_exits"]["cr3_load"] == count
    assert (hv["shadow_cache_hits"], hv["shadow_cache_misses"], hv["shadow_cache_evictions"]) == (0, count, count - 1)
    # the guest does the same work (its faults do not depend on the cache) ...
    assert stats["guest"]["page_faults"] == stats["vm_exits"]["fault_injection"] == pages
    # ... but every segment starts from an empty shadow: a hidden fault per page per segment
    assert stats["vm_exits"]["hidden_fault"] == sum(distinct_pages(s) for s in segments) > pages


def test_shadow_cache_of_two_with_three_processes_evicts_the_least_recently_used() -> None:
    """Three processes round robin, room for two shadows: the one needed next is always the one
    used least recently, so every switch misses and evicts (LRU's worst case)."""
    n, quantum = 3_000, 1_000
    machine = Machine("1GiB", tlb="skylake", hypervisor={"shadow_cache": 2}, guest={"quantum": quantum})
    vm = machine.create_vm("64MiB", "shadow")
    for i in range(3):
        vm.spawn(Uniform(pages=40, n=n, writes=0.0, seed=20 + i, base=B1 + (i << 36)))
    with deadline():
        result = machine.run()
    hv = result.stats["hypervisor"]
    count = 3 * (n // quantum) + 3  # a switch per segment, then one each to exit
    assert result.stats["guest"]["context_switches"] == count
    assert (hv["shadow_cache_hits"], hv["shadow_cache_misses"], hv["shadow_cache_evictions"]) == (0, count, count - 2)


# -- (e) VM switches ----------------------------------------------------------------------------------


def two_vm_machine(mode: str, n: int = 4_500, vm_slice: int = 1_000, pages: int = 8) -> tuple[Machine, Any]:
    machine = Machine("1GiB", tlb="skylake", hypervisor={"vm_slice": vm_slice, "ept": "eager"})
    for i in range(2):
        vm = machine.create_vm("32MiB", mode, name=f"vm{i}")
        vm.spawn(Uniform(pages=pages, n=n, writes=0.0, seed=30 + i))
    with deadline():
        result = machine.run()
    return machine, result


@pytest.mark.parametrize("mode", ["native", "brute_force", "shadow", "nested"])
def test_vm_switches_cost_an_exit_in_every_mode_but_native(mode: str) -> None:
    """4,500 accesses each, 1,000 a slice: five slices per VM (the fifth ends the program), run
    alternately; ten slices make nine VM switches, four into vm0 and five into vm1."""
    _, result = two_vm_machine(mode)
    per_vm = {vm["name"]: vm["vm_exits"].get("vm_switch", 0) for vm in result.stats["vms"]}
    if mode == "native":
        assert result.stats["vm_exits"] == exits()
        assert per_vm == {"vm0": 0, "vm1": 0}
    else:
        assert result.stats["vm_exits"]["vm_switch"] == 9
        assert per_vm == {"vm0": 4, "vm1": 5}
    if mode == "nested":  # eager EPT, and guest page faults do not exit: the switches are all
        assert result.stats["vm_exits"] == exits(vm_switch=9)
    if mode == "shadow":  # each switch finds the VM's shadow in the cache, but the first into vm1 (none yet)
        assert result.stats["hypervisor"]["shadow_cache_hits"] == 8
        assert result.stats["hypervisor"]["shadow_cache_misses"] == 2


@pytest.mark.parametrize("mode", ["native", "brute_force", "shadow", "nested"])
def test_only_vpid_tagged_modes_keep_tlb_entries_across_vm_switches(mode: str) -> None:
    """Eight pages per VM: all fit in the TLB.  With VPIDs (native, nested) a page is walked twice
    in the whole run: the walk that faults, and the one after the guest mapped it.  Without
    (brute force, shadow) the TLB is flushed at every VM switch, so each slice walks its pages
    again; shadow paging also walks once more per new page (the hidden fault after the guest's)."""
    n, vm_slice, pages = 4_500, 1_000, 8
    _, result = two_vm_machine(mode, n, vm_slice, pages)
    slices = []  # per slice of each VM: the pages it touched
    for i in range(2):
        addresses, _ = accesses_of(Uniform(pages=pages, n=n, writes=0.0, seed=30 + i))
        slices += [addresses[k:k + vm_slice] >> np.uint64(12) for k in range(0, n, vm_slice)]
    touched = sum(len(np.unique(s)) for s in slices)
    assert touched > 2 * pages
    walks = result.stats["tlb"]["walks"]
    if mode in ("native", "nested"):
        assert walks == 2 * 2 * pages
    elif mode == "brute_force":
        assert walks == touched + 2 * pages
    else:
        assert walks == touched + 2 * 2 * pages
