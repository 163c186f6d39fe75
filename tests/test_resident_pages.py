"""The guest kernel's per-frame records (``ResidentPages``), its frame stack and the bulk memory calls,
each against a straightforward model: any wrong entry shows as a difference."""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import pytest

import fastmmu
from fastmmu.arch import ADDR_MASK, PTE
from fastmmu.guest.frames import FrameAllocator
from fastmmu.guest.resident import ResidentPages
from fastmmu.workloads.generators import Churn, Uniform, Zipf
from fastmmu.workloads.program import StepList

SEED = 20261207


@pytest.mark.parametrize("seed", [SEED, SEED + 1, SEED + 2])
def test_the_clock_queue_orders_pages_as_an_ordered_dict_with_move_to_end(seed):
    rng = random.Random(seed)
    resident = ResidentPages(100)  # more pages than frames: the records grow (a hostile guest's case)
    model: OrderedDict[int, tuple[int, int, int]] = OrderedDict()  # record -> (pid, va, gfn)
    for step in range(5000):
        op = rng.random()
        if op < 0.45 and len(model) < 300:
            gfn, pid, va = rng.randrange(100), rng.randrange(1, 5), rng.randrange(1 << 36) << 12
            record = resident.add(gfn, pid, va, rng.randrange(1 << 20), rng.randrange(512), rng.random() < 0.1)
            assert record not in model
            model[record] = (pid, va, gfn)
        elif op < 0.7 and model:
            record = rng.choice(list(model))
            resident.remove(record)
            del model[record]
        elif model:
            record = next(iter(model)) if rng.random() < 0.5 else rng.choice(list(model))
            resident.to_tail(record)
            model.move_to_end(record)
        assert resident.first() == next(iter(model), None), f"seed {seed}, step {step}"
        assert resident.count == len(model)
        if step % 97 == 0:
            assert resident.clock_order().tolist() == list(model), f"seed {seed}, step {step}"
            for record, (pid, va, gfn) in model.items():
                assert (resident.owner(record), resident.page_va(record), resident.frame(record)) == (pid, va, gfn)


def test_a_page_records_its_leaf_slot_and_size():
    resident = ResidentPages(1024)
    huge = resident.add(512, 3, 0x7F00_0020_0000, 0x3FF_FFFF, 511, True)
    small = resident.add(7, 3, 0xFFFF_FFFF_FFFF_F000, 1, 0, False)
    resident.remove(huge)
    again = resident.add(9, 3, 0x5000, 2, 5, False)  # reuses the record given back
    assert again == huge
    assert resident.leaf(again) == (2, 5, False) and resident.frame(again) == 9
    assert resident.leaf(small) == (1, 0, False)
    assert resident.page_va(small) == 0xFFFF_FFFF_FFFF_F000
    assert resident.of_process(3).tolist() == [small, again]  # in the order mapped


def test_the_frame_stack_gives_what_a_list_would():
    rng = random.Random(SEED)
    frames = FrameAllocator(10, 5000)
    model: list[int] = []
    next_frame = 10
    held: list[int] = []
    for _ in range(20_000):
        if rng.random() < 0.55:
            gfn = frames.alloc()
            if model:
                expected = model.pop()
            elif next_frame < 5000:
                expected, next_frame = next_frame, next_frame + 1
            else:
                expected = None
            assert gfn == expected
            if gfn is not None:
                held.append(gfn)
        elif held:
            if rng.random() < 0.1:
                batch = [held.pop(rng.randrange(len(held))) for _ in range(min(len(held), rng.randrange(1, 50)))]
                frames.free_many(np.array(batch, dtype=np.int64))
                model.extend(batch)
            else:
                gfn = held.pop(rng.randrange(len(held)))
                frames.free(gfn)
                model.append(gfn)
        assert frames._free == model
        assert frames.available == len(model) + 5000 - next_frame


def _leaves(vm, process):
    """Every present leaf of ``process``'s tables, read from the tables themselves:
    va -> (gfn, table gfn, index, huge)."""
    out = {}
    levels = vm.guest.levels
    peek = vm.mode.peek_pte
    stack = [(process.root, levels, 0)]
    while stack:
        table, level, base = stack.pop()
        for index in range(512):
            entry = peek(table, index)
            if not entry & PTE.P:
                continue
            va = base | index << (12 + 9 * (level - 1))
            if level == 1 or (level == 2 and entry & PTE.PS):
                out[va] = ((entry & ADDR_MASK) >> 12, table, index, level == 2)
            else:
                stack.append(((entry & ADDR_MASK) >> 12, level - 1, va))
    return out


def _check_records(vm):
    guest = vm.guest
    resident = guest.resident
    owners = set()
    for process in guest.processes.values():
        if not process.alive:
            assert not process.pages and process.resident == 0
            continue
        recorded = {va: (page.gfn, page.table, page.index, page.huge) for va, page in process.pages.items()}
        assert recorded == _leaves(vm, process), process.name
        assert process.resident == len(recorded)
        owners.update(page.gfn for page in process.pages.values())
    assert sorted(resident.gfn[resident.clock_order()].tolist()) == sorted(owners)
    assert resident.count == guest.stats["resident_pages"] == len(owners)
    live = np.flatnonzero(resident.pid[:resident.high])
    assert sorted(resident.gfn[live].tolist()) == sorted(owners)


@pytest.mark.parametrize("mode", ["native", "brute_force", "shadow", "nested"])
def test_the_records_match_the_page_tables_through_eviction_munmap_and_exit(mode):
    machine = fastmmu.Machine(host_memory="1GiB")
    vm = machine.create_vm("6MiB", mode, guest={"huge_pages": False, "quantum": 700})
    vm.spawn(Zipf(pages=900, n=6000, writes=0.3, seed=SEED))  # more than fits: the clock evicts
    vm.spawn(Churn(pages=64, n=800, rounds=4, seed=SEED + 1, base=0x3000_0000_0000))
    vm.spawn(Uniform(pages=200, n=3000, seed=SEED + 2, base=0x2000_0000_0000))
    checked = 0

    def check(vm_, process, *rest):
        nonlocal checked
        checked += 1
        if checked % 7 == 0:
            _check_records(vm_)

    result = machine.run(on_batch=check)
    assert not result.partial and vm.guest.stats["evictions"] > 0
    assert checked > 20
    _check_records(vm)


def test_huge_pages_are_recorded_by_their_first_frame():
    machine = fastmmu.Machine(host_memory="1GiB")
    vm = machine.create_vm("64MiB", "native")
    process = vm.spawn()
    program = StepList([fastmmu.workloads.program.Mmap(0x4000_0000, 4 << 20, huge=True),
                        fastmmu.workloads.program.Accesses(np.array([0x4000_0000, 0x4020_1000], dtype=np.uint64),
                                                           0)])
    vm.run(process, program, max_accesses=2)  # stops before the program's end: the process still lives
    pages = vm.guest.pages_of(process)
    assert all(page.huge and page.gfn % 512 == 0 for page in pages.values()) and len(pages) == 2
    assert {va: (p.gfn, p.table, p.index, p.huge) for va, p in pages.items()} == _leaves(vm, process)


def test_write_entries_and_read_entries_do_what_write_and_read_do_one_at_a_time():
    rng = np.random.default_rng(SEED)
    bulk, single = fastmmu.HostMemory("64MiB"), fastmmu.HostMemory("64MiB")
    for mem in (bulk, single):
        mem.alloc_at(np.arange(100, 140, dtype=np.uint64), owner=1, kind=2)
    addresses = (rng.integers(100, 140, 3000).astype(np.uint64) << np.uint64(12)) \
        | (rng.integers(0, 512, 3000).astype(np.uint64) << np.uint64(3))
    values = rng.integers(0, 1 << 63, 3000, dtype=np.uint64)
    values[::3] = 0
    bulk.write_entries(addresses, values)
    for address, value in zip(addresses.tolist(), values.tolist(), strict=True):
        single.write(address, value)
    assert np.array_equal(bulk.entries[100:140], single.entries[100:140])
    assert bulk.table_frames == single.table_frames
    assert bulk.read_entries(addresses).tolist() == [single.read(a) for a in addresses.tolist()]
    bulk.write_entries(addresses[:10], 0)
    assert not bulk.read_entries(addresses[:10]).any()


def test_write_entries_checks_every_address_before_writing_any():
    mem = fastmmu.HostMemory("64MiB")
    mem.alloc_at(np.arange(100, 102, dtype=np.uint64), owner=1, kind=2)
    good = 100 << 12
    with pytest.raises(ValueError, match="write_entries: frame 0x66 .* is not allocated"):
        mem.write_entries(np.array([good, 102 << 12], dtype=np.uint64), 5)
    assert mem.read(good) == 0
    with pytest.raises(ValueError, match="not 8-byte aligned"):
        mem.write_entries(np.array([good, good + 4], dtype=np.uint64), 5)
    with pytest.raises(ValueError, match="beyond host memory"):
        mem.read_entries(np.array([1 << 40], dtype=np.uint64))
    with pytest.raises(ValueError, match="2 values for 1 addresses"):
        mem.write_entries(np.array([good], dtype=np.uint64), np.array([1, 2], dtype=np.uint64))
    with pytest.raises(ValueError, match="non-negative"):
        mem.write_entries(np.array([-8]), 0)
    assert mem.read(good) == 0


@pytest.mark.parametrize("mode", ["native", "brute_force", "shadow", "nested"])
def test_a_teardown_in_small_chunks_and_blocks_does_what_one_in_a_single_chunk_does(mode, monkeypatch):
    from fastmmu.guest import os as guest_os
    from fastmmu.guest import resident as resident_module

    def run(chunk, block):
        monkeypatch.setattr(guest_os, "TEARDOWN_CHUNK", chunk)
        monkeypatch.setattr(resident_module, "_SCAN_BLOCK", block)
        machine = fastmmu.Machine(host_memory="1GiB")
        vm = machine.create_vm("6MiB", mode, guest={"quantum": 300})
        vm.spawn(Zipf(pages=700, n=3000, writes=0.3, seed=SEED))  # evicts: frames are reused out of order
        vm.spawn(Uniform(pages=100, n=2000, seed=SEED + 1, base=0x2000_0000_0000))
        result = machine.run()
        return (vm.guest.frames._free, dict(vm.guest.stats), dict(vm.exits), result.stats["tlb"],
                machine.mem.content_frames().tolist())

    assert run(5, 3) == run(1 << 20, 1 << 20)


def test_replace_gives_the_new_frame_the_old_ones_place_in_both_orders():
    resident = ResidentPages(64)
    a, b, c = (resident.add(gfn, 1, va, 9, va >> 12, False) for gfn, va in ((3, 0x1000), (4, 0x2000), (5, 0x3000)))
    resident.to_tail(a)  # clock: b, c, a
    resident.replace(resident.find(1, 0x2000), 40, 10, 7, False)
    assert resident.of_process(1).tolist() == [a, b, c]
    assert resident.clock_order().tolist() == [b, c, a]
    assert resident.frame(b) == 40 and resident.leaf(b) == (10, 7, False) and resident.page_va(b) == 0x2000
    assert resident.count == 3


@pytest.mark.parametrize("reuse", [False, True])
def test_runs_of_gives_of_process_in_runs_with_or_without_reused_records(reuse, monkeypatch):
    from fastmmu.guest import resident as resident_module

    monkeypatch.setattr(resident_module, "_SCAN_BLOCK", 7)
    rng = random.Random(SEED)
    resident = ResidentPages(500)
    records = [resident.add(gfn, 1 + gfn % 3, gfn << 12, 0, 0, False) for gfn in range(200)]
    if reuse:  # records given back and taken again: their numbers are no longer in mapping order
        for record in rng.sample(records, 50):
            resident.remove(record)
        for gfn in range(300, 350):
            resident.add(gfn, 1 + gfn % 3, gfn << 12, 0, 0, False)
    for pid in (1, 2, 3):
        expected = resident.of_process(pid).tolist()
        count = len(expected)
        runs = []
        for run in resident.runs_of(pid, count, 9):
            assert 0 < len(run) <= 9
            runs.extend(run.tolist())
            resident.remove_many(np.asarray(run, dtype=np.int64))  # consumed before the next is asked for
        assert runs == expected
    assert resident.count == 0 and resident.high == 0
