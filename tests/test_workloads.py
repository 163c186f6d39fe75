"""Workloads (fastmmu.workloads): the seeded generators, the program steps and the default scenario."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastmmu.arch import Access
from fastmmu.units import parse_size
from fastmmu.workloads import (
    Accesses,
    Churn,
    Mmap,
    Munmap,
    Phases,
    Sequential,
    StepList,
    Uniform,
    Zipf,
    churn,
    default_scenario,
    sequential,
    uniform,
    zipf,
)
from fastmmu.workloads.generators import DEFAULT_BASE
from fastmmu.workloads.program import as_program

PAGE = 4096


def batches(program):
    return [s for s in program.steps() if isinstance(s, Accesses)]


def joined(program):
    parts = batches(program)
    return (np.concatenate([b.addresses for b in parts]), np.concatenate([b.kinds for b in parts]))


GENERATORS = {
    "zipf": lambda **kw: Zipf(pages=300, n=5000, **kw),
    "uniform": lambda **kw: Uniform(pages=300, n=5000, **kw),
    "sequential": lambda **kw: Sequential(pages=300, n=5000, writes=0.4, **kw),
    "churn": lambda **kw: Churn(pages=300, n=1000, rounds=5, **kw),
}


# -- every generator ---------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATORS)
def test_the_same_seed_gives_the_same_program_and_another_seed_another(name):
    make = GENERATORS[name]
    one, again, other = joined(make(seed=5)), joined(make(seed=5)), joined(make(seed=6))
    assert np.array_equal(one[0], again[0]) and np.array_equal(one[1], again[1])
    assert not (np.array_equal(one[0], other[0]) and np.array_equal(one[1], other[1]))
    program = make(seed=5)  # steps() starts over each time: one program runs under every mode
    assert np.array_equal(joined(program)[0], joined(program)[0])


@pytest.mark.parametrize("name", GENERATORS)
def test_addresses_stay_inside_the_region_the_program_maps(name):
    program = GENERATORS[name](seed=2)
    mapped = None
    seen = 0
    for step in program.steps():
        if isinstance(step, Mmap):
            assert mapped is None
            mapped = (step.base, step.base + step.length)
            assert step.length == 300 * PAGE and step.writable and not step.huge
        elif isinstance(step, Munmap):
            assert (step.base, step.base + step.length) == mapped
            mapped = None
        else:
            assert mapped is not None
            assert step.addresses.dtype == np.uint64
            assert (step.addresses >= mapped[0]).all() and (step.addresses < mapped[1]).all()
            assert (step.addresses % 8 == 0).all()
            seen += len(step)
    assert seen == (5 * 1000 if name == "churn" else 5000)


@pytest.mark.parametrize("name", GENERATORS)
def test_kinds_are_only_reads_and_writes_in_the_asked_proportion(name):
    _, kinds = joined(GENERATORS[name](seed=3))
    assert kinds.dtype == np.uint8
    assert set(np.unique(kinds)) == {int(Access.READ), int(Access.WRITE)}
    share = {"zipf": 0.3, "uniform": 0.3, "sequential": 0.4, "churn": 0.5}[name]
    assert abs(kinds.mean() - share) < 0.03


@pytest.mark.parametrize("writes, expected", [(0.0, {0}), (1.0, {1})])
def test_all_reads_or_all_writes(writes, expected):
    _, kinds = joined(Uniform(pages=10, n=500, writes=writes, seed=1))
    assert set(np.unique(kinds)) == expected


@pytest.mark.parametrize("cls", [Zipf, Uniform, Sequential])
def test_a_long_program_comes_in_chunks(cls):
    program = cls(pages=64, n=2500, chunk=1000, seed=1)
    steps = program.steps()
    first = next(steps)
    assert isinstance(first, Mmap) and first.base == DEFAULT_BASE  # lazily: one step at a time
    assert [len(s) for s in steps] == [1000, 1000, 500]
    whole = joined(cls(pages=64, n=2500, chunk=2500, seed=1))
    assert len(whole[0]) == 2500 and len(batches(cls(pages=64, n=2500, chunk=2500, seed=1))) == 1
    assert [len(s) for s in batches(cls(pages=64, n=0, seed=1))] == []


# Every parameter of every generator, out of range: the exact message (the CLI prints the same after
# "--workload: ", see test_workload_registry).
BAD_PARAMETERS = [
    ("zipf", dict(pages=0, n=10), "zipf: pages: expected an integer in [1, 2**26], got 0"),
    ("zipf", dict(pages=-1, n=10), "zipf: pages: expected an integer in [1, 2**26], got -1"),
    ("zipf", dict(pages=(1 << 26) + 1, n=10), "zipf: pages: expected an integer in [1, 2**26], got 67108865"),
    ("zipf", dict(pages=10, n=-1), "zipf: n: expected an integer >= 0, got -1"),
    ("zipf", dict(pages=10, n=2.5), "zipf: n: expected an integer >= 0, got 2.5"),
    ("zipf", dict(pages=10, n=10, alpha=-1), "zipf: alpha: expected a number > 0, got -1"),
    ("zipf", dict(pages=10, n=10, alpha=0), "zipf: alpha: expected a number > 0, got 0"),
    ("zipf", dict(pages=10, n=10, alpha=float("inf")), "zipf: alpha: expected a number > 0, got inf"),
    ("zipf", dict(pages=10, n=10, writes=2), "zipf: writes: expected a number in [0, 1], got 2"),
    ("zipf", dict(pages=10, n=10, writes=-0.1), "zipf: writes: expected a number in [0, 1], got -0.1"),
    ("zipf", dict(pages=10, n=10, seed=-1), "zipf: seed: expected an integer >= 0, got -1"),
    ("zipf", dict(pages=10, n=10, base=0x1001), "zipf: base: expected a multiple of 4096 (a page boundary), "
                                                "got 0x1001"),
    ("zipf", dict(pages=10, n=10, base=-4096), "zipf: base: expected an integer >= 0, got -0x1000"),
    ("zipf", dict(pages=10, n=10, chunk=0), "zipf: chunk: expected an integer in [1, 2**26], got 0"),
    ("zipf", dict(pages=10, n=10, seed="1"), "zipf: seed: expected an integer >= 0, got '1'"),
    ("zipf", dict(pages=True, n=10), "zipf: pages: expected an integer in [1, 2**26], got True"),
    ("uniform", dict(pages=0, n=10), "uniform: pages: expected an integer >= 1, got 0"),
    ("uniform", dict(pages=1 << 44, n=10), "uniform: pages: expected a region that ends by 0x100000000000000 "
                                           "(the lower canonical half of 5-level paging) from base 0x100000000000, "
                                           "got 17592186044416"),
    ("uniform", dict(pages=10, n=10, writes=1.5), "uniform: writes: expected a number in [0, 1], got 1.5"),
    ("sequential", dict(pages=4, n=10, stride=0), "sequential: stride: expected a multiple of 8 from 8 to the "
                                                  "region's 16384 bytes, got 0"),
    ("sequential", dict(pages=4, n=10, stride=12), "sequential: stride: expected a multiple of 8 from 8 to the "
                                                   "region's 16384 bytes, got 12"),
    ("sequential", dict(pages=4, n=10, stride=16392), "sequential: stride: expected a multiple of 8 from 8 to "
                                                      "the region's 16384 bytes, got 16392"),
    ("strided", dict(pages=100, n=1000, stride=0), "strided: stride: expected a multiple of 8 from 8 to the "
                                                   "region's 409600 bytes, got 0"),
    ("working_sets", dict(pages=100, n=10, phases=0), "working_sets: phases: expected an integer >= 1, got 0"),
    ("working_sets", dict(pages=100, n=10, set_pages=0), "working_sets: set_pages: expected an integer >= 1, "
                                                         "got 0"),
    ("working_sets", dict(pages=100, n=10, keep=1.5), "working_sets: keep: expected a number in [0, 1], got 1.5"),
    ("working_sets", dict(pages=100, n=10, set_pages=60), "working_sets: pages: expected room for each phase's "
                                                          "new pages: at least set_pages + the pages not kept = 120 "
                                                          "(phases=4, set_pages=60, keep=0.0), got 100"),
    ("churn", dict(pages=0, n=10), "churn: pages: expected an integer >= 1, got 0"),
    ("churn", dict(pages=10, n=10, rounds=0), "churn: rounds: expected an integer >= 1, got 0"),
    ("churn", dict(pages=10, n=10, writes=7), "churn: writes: expected a number in [0, 1], got 7"),
]


@pytest.mark.parametrize("name, params, message", BAD_PARAMETERS)
def test_every_generator_parameter_is_checked_when_it_is_made(name, params, message):
    from fastmmu.workloads import GENERATORS

    with pytest.raises(ValueError) as caught:
        GENERATORS[name](**params)
    assert str(caught.value) == message


def test_parameters_on_their_bounds_are_accepted_and_made_plain_ints():
    program = Zipf(pages=np.int64(1), n=1e3, alpha=1e-9, writes=1, seed=0, chunk=1 << 26)
    assert (program.pages, program.n, program.writes) == (1, 1000, 1.0)
    assert type(program.pages) is int and type(program.n) is int and type(program.writes) is float
    assert Sequential(pages=1, n=1, stride=4096).stride == 4096          # the whole region
    assert Uniform(pages=(1 << 44) - (DEFAULT_BASE >> 12), n=1).pages == (1 << 44) - (DEFAULT_BASE >> 12)


def test_a_scan_of_a_huge_stride_has_no_overflow():
    """offsets are (i * stride) mod the region, exactly, even where i * stride passes 2**64."""
    pages, stride = 1 << 40, (1 << 52) - 8
    program = Sequential(pages=pages, n=5000, stride=stride, chunk=3000, base=0)
    addresses = np.concatenate([s.addresses for s in program.steps() if isinstance(s, Accesses)])
    expected = [(i * stride) % (pages << 12) for i in range(5000)]
    assert addresses.tolist() == expected


def test_the_lowercase_helpers_build_the_generators():
    assert zipf(10, 20, seed=3) == Zipf(10, 20, seed=3)
    assert uniform(10, 20, writes=0.1) == Uniform(10, 20, writes=0.1)
    assert sequential(10, 20, stride=128) == Sequential(10, 20, stride=128)
    assert churn(10, 20, rounds=2) == Churn(10, 20, rounds=2)


# -- Zipf, Sequential, Churn -------------------------------------------------------------


def page_counts(program, pages):
    addresses, _ = joined(program)
    return np.bincount(((addresses - np.uint64(program.base)) >> np.uint64(12)).astype(np.int64), minlength=pages)


def test_zipf_gives_the_top_one_percent_of_pages_a_large_share():
    pages, n = 10_000, 200_000
    counts = np.sort(page_counts(Zipf(pages=pages, n=n, alpha=1.0, seed=4), pages))[::-1]
    top = counts[: pages // 100].sum() / n
    expected = (1 / np.arange(1, 101)).sum() / (1 / np.arange(1, pages + 1)).sum()  # 0.53
    assert abs(top - expected) < 0.02
    steeper = np.sort(page_counts(Zipf(pages=pages, n=n, alpha=1.3, seed=4), pages))[::-1]
    assert steeper[: pages // 100].sum() / n > top + 0.2
    flat = np.sort(page_counts(Uniform(pages=pages, n=n, seed=4), pages))[::-1]
    assert flat[: pages // 100].sum() / n < 0.02


def test_zipf_spreads_its_popular_pages_over_the_region():
    counts = page_counts(Zipf(pages=1000, n=50_000, seed=7), 1000)
    hottest = np.argsort(counts)[::-1][:20]
    assert hottest.max() - hottest.min() > 500  # not the first pages of the region
    other = page_counts(Zipf(pages=1000, n=50_000, seed=8), 1000)
    assert np.argmax(counts) != np.argmax(other) or not np.array_equal(counts, other)


@pytest.mark.parametrize("stride", [8, 64, 4096, 12288])
def test_sequential_strides_through_the_region_and_wraps(stride):
    pages = 16
    program = Sequential(pages=pages, n=3000, stride=stride, chunk=700, base=0x5000_0000)
    addresses, _ = joined(program)
    offsets = addresses - np.uint64(0x5000_0000)
    assert np.array_equal(offsets, (np.arange(3000, dtype=np.uint64) * np.uint64(stride)) % np.uint64(pages * PAGE))
    steps = np.diff(offsets.astype(np.int64))
    assert set(np.unique(steps)) <= {stride, stride - pages * PAGE}


@pytest.mark.parametrize("stride", [0, -8, 12, 4097])
def test_sequential_rejects_a_stride_that_is_not_a_positive_multiple_of_8(stride):
    with pytest.raises(ValueError, match="stride"):
        list(Sequential(pages=4, n=10, stride=stride).steps())


def test_churn_maps_touches_and_unmaps_each_round_in_four_places():
    program = Churn(pages=8, n=50, rounds=6, seed=1, base=0x3000_0000)
    steps = list(program.steps())
    assert [type(s).__name__ for s in steps] == ["Mmap", "Accesses", "Munmap"] * 6
    length = 8 * PAGE
    bases = [s.base for s in steps if isinstance(s, Mmap)]
    assert bases == [0x3000_0000 + (r % 4) * (length + (2 << 20)) for r in range(6)]
    for mapped, accesses, unmapped in zip(steps[0::3], steps[1::3], steps[2::3], strict=True):
        assert (unmapped.base, unmapped.length) == (mapped.base, mapped.length) and mapped.length == length
        assert len(accesses) == 50
        assert ((accesses.addresses >= mapped.base) & (accesses.addresses < mapped.base + length)).all()
    regions = sorted(set(bases))
    assert all(b - a > length for a, b in zip(regions, regions[1:], strict=False))  # never overlapping


def test_phases_run_programs_one_after_the_other():
    a = Uniform(pages=4, n=10, seed=1)
    b = Sequential(pages=4, n=5, base=0x2000_0000)
    steps = list(Phases((a, b)).steps())
    assert [type(s).__name__ for s in steps] == ["Mmap", "Accesses", "Mmap", "Accesses"]
    assert steps[2].base == 0x2000_0000 and len(steps[1]) == 10 and len(steps[3]) == 5


# -- Accesses, Mmap and programs ---------------------------------------------------------


def test_accesses_take_one_kind_for_all_or_one_per_address():
    batch = Accesses([0x1000, 0x2008, 0x3010], 1)
    assert batch.addresses.dtype == np.uint64 and batch.kinds.dtype == np.uint8
    assert list(batch.kinds) == [1, 1, 1] and len(batch) == 3
    mixed = Accesses(np.array([[0x1000, 0x2000]]), [0, 2])
    assert mixed.addresses.shape == (2,) and list(mixed.kinds) == [0, 2]
    assert mixed.addresses.flags.c_contiguous


@pytest.mark.parametrize("kinds", [[0, 1], [0, 1, 2, 0]])
def test_accesses_reject_a_kind_count_that_does_not_match(kinds):
    with pytest.raises(ValueError, match=f"expected 3 access kinds, got {len(kinds)}"):
        Accesses([1, 2, 3], kinds)


@pytest.mark.parametrize("bad", [3, 4, 5, 8, 255])
def test_accesses_reject_kinds_other_than_read_write_fetch(bad):
    with pytest.raises(ValueError, match=r"READ \(0\), WRITE \(1\) or FETCH \(2\)"):
        Accesses([1, 2], [0, bad])
    with pytest.raises(ValueError, match="READ"):
        Accesses([1, 2], bad)


@pytest.mark.parametrize("base, length", [(0x1001, PAGE), (0x1000, 0), (0x1000, -PAGE), (0x1000, 100)])
def test_mmap_needs_page_multiples(base, length):
    with pytest.raises(ValueError, match="multiples of 4 KiB"):
        Mmap(base, length)


def test_as_program_accepts_a_list_an_accesses_batch_or_a_program():
    batch = Accesses([0x1000], 0)
    steps = [Mmap(0x1000, PAGE), batch]
    from_list = as_program(steps)
    assert isinstance(from_list, StepList) and list(from_list.steps()) == steps
    assert list(from_list.steps()) == steps  # again from the start
    assert list(as_program(batch).steps()) == [batch]
    program = Uniform(pages=2, n=3)
    assert as_program(program) is program
    assert list(as_program(s for s in steps).steps()) == steps  # a one-shot iterable is kept


# -- the default scenario ----------------------------------------------------------------


def test_the_default_scenario_has_two_vms_with_three_processes_each():
    scenario = default_scenario()
    web, batch = scenario.vms
    assert (web.name, web.memory, web.backing) == ("web", "512MiB", "contiguous")
    assert (batch.name, batch.backing) == ("batch", "scattered")
    assert parse_size(batch.memory) < parse_size(web.memory)
    assert [p.name for p in web.processes] == ["db", "scan", "churn"]
    assert [p.name for p in batch.processes] == ["sort", "hash", "cron"]
    # the batch VM is under memory pressure: its sort alone touches more than its memory
    assert batch.processes[0].program.pages * PAGE > parse_size(batch.memory)
    first = [next(iter(p.program.steps())) for vm in scenario.vms for p in vm.processes]
    assert all(isinstance(step, Mmap) for step in first)
    assert len({step.base for step in first[:3]}) == 3  # one VM's processes use different regions
    assert json.loads(json.dumps(scenario.to_dict()))["vms"][1]["processes"][2]["name"] == "cron"
    assert scenario.description


def test_the_scale_multiplies_the_accesses_and_the_seed_moves_every_seed():
    full, tenth = default_scenario(1.0), default_scenario(0.1)
    for big, small in zip(full.vms, tenth.vms, strict=True):
        for p, q in zip(big.processes, small.processes, strict=True):
            assert q.program.n == max(1, int(p.program.n * 0.1))
            assert q.program.pages == p.program.pages
    assert full.vms[0].processes[0].program.n == 900_000
    assert all(p.program.n == 1 for vm in default_scenario(0.0).vms for p in vm.processes)
    seeds = [p.program.seed for vm in default_scenario(seed=10).vms for p in vm.processes]
    assert seeds == [10, 11, 12, 13, 14, 15]
    assert sum(p.program.n for vm in full.vms for p in vm.processes) == \
        900_000 + 600_000 + 4_000 + 400_000 + 300_000 + 2_000


def test_a_small_default_scenario_runs_under_compare():
    from fastmmu.comparison import compare

    table = compare(default_scenario(scale=0.002), modes="native,shadow")
    assert list(table.results) == ["native", "shadow"]
    native, shadow = table.results["native"], table.results["shadow"]
    assert native.overhead == 0.0 and shadow.overhead > 0
    assert native.stats["guest"]["page_faults"] == shadow.stats["guest"]["page_faults"] > 0
    assert native.stats["accesses"] == shadow.stats["accesses"] == sum(
        p.program.n * (p.program.rounds if isinstance(p.program, Churn) else 1)
        for vm in default_scenario(scale=0.002).vms for p in vm.processes)
