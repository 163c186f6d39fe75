"""simulate(): the batch, GIL-free TLB-only loop, against the reference and against limit.c's numbers.

The traces are the limit anchor's (../shared/limit/traces.py, bit-identical
to limit.c's); the tests that need them are skipped where that folder is absent.
"""

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fastmmu._core import tlb as compiled
from fastmmu.reference import tlb as reference

LIMIT = Path(__file__).resolve().parents[2] / "shared" / "limit"
if not (LIMIT / "traces.py").exists():
    LIMIT = Path("/work/shared/limit")

CONFIGS = {"L1 64e/4w": [(64, 4)], "L2 1536e/12w": [(1536, 12)], "L1+L2": [(64, 4), (1536, 12)]}


@pytest.fixture(scope="module")
def traces():
    """The first 1,000,000 accesses of limit.c's three traces (prefix-stable generators)."""
    if not (LIMIT / "traces.py").exists():
        pytest.skip(f"the limit anchor's traces.py is not at {LIMIT}")
    sys.path.insert(0, str(LIMIT))
    try:
        import traces as limit_traces
    finally:
        sys.path.remove(str(LIMIT))
    n = 1_000_000
    return {
        "sequential": limit_traces.sequential(n),
        "uniform": limit_traces.uniform(n),
        "Zipf": limit_traces.zipf(n),
    }


def levels_of(module, geometry, **kwargs):
    return [module.TLB(entries, ways, name=f"L{k + 1}", **kwargs) for k, (entries, ways) in enumerate(geometry)]


@pytest.mark.parametrize("trace_name", ["sequential", "uniform", "Zipf"])
@pytest.mark.parametrize("config", CONFIGS)
def test_simulate_matches_the_reference_on_limit_trace_prefixes(traces, config, trace_name):
    prefix = np.ascontiguousarray(traces[trace_name][:20_000])
    fast, ref = levels_of(compiled, CONFIGS[config]), levels_of(reference, CONFIGS[config])
    assert compiled.simulate(prefix, fast) == reference.simulate(prefix, ref)
    for f, r in zip(fast, ref, strict=True):
        assert f.stats() == r.stats()
        assert f.contents() == r.contents()
        assert f.clock == r.clock == 20_001


# Exact rates printed by `./limit -n 1000000` (the README's table is for 10 M accesses):
# L1 hit rate, L2 hit rate of its own lookups, walks per access.
LIMIT_1M = {
    ("L1 64e/4w", "sequential"): ("99.805%", None, "0.00195"),
    ("L1 64e/4w", "uniform"): ("0.024%", None, "0.99976"),
    ("L1 64e/4w", "Zipf"): ("15.254%", None, "0.84746"),
    ("L2 1536e/12w", "sequential"): (None, "99.805%", "0.00195"),
    ("L2 1536e/12w", "uniform"): (None, "0.589%", "0.99411"),
    ("L2 1536e/12w", "Zipf"): (None, "36.570%", "0.63430"),
    ("L1+L2", "sequential"): ("99.805%", "0.000%", "0.00195"),
    ("L1+L2", "uniform"): ("0.024%", "0.565%", "0.99411"),
    ("L1+L2", "Zipf"): ("15.254%", "25.148%", "0.63434"),
}


@pytest.mark.parametrize("row", LIMIT_1M, ids=lambda row: f"{row[0]}-{row[1]}")
def test_hit_rates_equal_limit_c_for_a_million_accesses(traces, row):
    config, trace_name = row
    trace = traces[trace_name]
    n = len(trace)
    result = compiled.simulate(trace, levels_of(compiled, CONFIGS[config]))
    hits = result["hits"]
    l1, l2 = (hits[0], hits[1]) if len(hits) == 2 else ((hits[0], None) if config.startswith("L1") else (None, hits[0]))
    lookups_l2 = n - (l1 or 0)
    got = (
        None if l1 is None else f"{100 * l1 / n:.3f}%",
        None if l2 is None else f"{100 * l2 / lookups_l2:.3f}%",
        f"{result['misses'] / n:.5f}",
    )
    assert got == LIMIT_1M[row]
    assert result["accesses"] == n and result["misses"] == n - sum(hits)


def test_a_hit_refills_the_upper_levels_with_the_entry_itself():
    for module in (compiled, reference):
        l1, l2 = module.TLB(4, 4), module.TLB(16, 4)
        l2.fill(0x5000, 0x77, attrs=9, pcid=5, global_=True)  # a global entry of another PCID
        result = module.simulate(np.array([0x5123, 0x5FFF], dtype=np.uint64), [l1, l2], pcid=1)
        assert result == {"accesses": 2, "hits": [1, 1], "misses": 0}
        (entry,) = l1.contents()
        assert (entry["frame"], entry["attrs"], entry["pcid"], entry["global"]) == (0x77, 9, 5, True)


def test_a_2m_hit_in_l2_is_splintered_into_a_4k_l1():
    for module in (compiled, reference):
        l1, l2 = module.TLB(4, 4), module.TLB(16, 4, sizes=("4K", "2M"))
        l2.fill(0x20_0000, 0x1000, size="2M")
        module.simulate(np.array([0x20_3456], dtype=np.uint64), [l1, l2])
        assert [(e["vpn"], e["frame"], e["size"]) for e in l1.contents()] == [(0x203, 0x1003, "4K")]


def test_three_levels_and_other_policies_match_the_reference():
    rng = np.random.default_rng(12345)
    trace = (0x7F00_0000_0000 + (rng.integers(0, 600, 8000, dtype=np.uint64) << np.uint64(12))).astype(np.uint64)
    spec = [
        {"entries": 8, "ways": 2, "policy": "plru"},
        {"entries": 24, "ways": 4, "policy": "fifo"},
        {"entries": 60, "ways": 5, "policy": "random", "seed": 99, "sizes": ("4K", "2M")},
    ]
    fast = [compiled.TLB(**s) for s in spec]
    ref = [reference.TLB(**s) for s in spec]
    assert compiled.simulate(trace, fast, vpid=3) == reference.simulate(trace, ref, vpid=3)
    for f, r in zip(fast, ref, strict=True):
        assert f.contents() == r.contents() and f.stats() == r.stats()


def test_clock_and_stats_follow_the_accesses():
    l1, l2 = compiled.TLB(64, 4), compiled.TLB(1536, 12)
    l1.lookup(0)  # l1.clock is now 2
    trace = np.arange(100, dtype=np.uint64) << np.uint64(12)
    result = compiled.simulate(trace, [l1, l2])
    assert l1.clock == l2.clock == 102  # started at the largest clock, 2
    assert max(e["stamp"] for e in l2.contents()) == 101  # the last access's clock
    assert l1.stats() == {"hits": 0, "misses": 101, "rights_drops": 0, "fills": 100, "evictions": 36,
                          "invalidated": 0}
    assert l2.stats()["hits"] + l2.stats()["misses"] == 100  # L2 is looked up on L1 misses only
    assert result == {"accesses": 100, "hits": [0, 0], "misses": 100}
    compiled.simulate(trace, [l1, l2], start_clock=1000)
    assert l1.clock == 1100


def test_empty_and_read_only_traces():
    t = compiled.TLB(16, 4)
    assert compiled.simulate(np.zeros(0, dtype=np.uint64), [t]) == {"accesses": 0, "hits": [0], "misses": 0}
    trace = np.full(10, 0x1234, dtype=np.uint64)
    trace.flags.writeable = False
    assert compiled.simulate(trace, [t]) == {"accesses": 10, "hits": [9], "misses": 1}


def test_simulate_releases_the_gil():
    trace = np.arange(3_000_000, dtype=np.uint64) << np.uint64(12)
    levels = [compiled.TLB(64, 4), compiled.TLB(1536, 12)]
    worker = threading.Thread(target=compiled.simulate, args=(trace, levels))
    worker.start()
    time.sleep(0.001)
    spins = 0
    while worker.is_alive():
        spins += 1  # runs only if simulate does not hold the GIL
    worker.join()
    assert spins > 1000


@pytest.mark.parametrize("module", [compiled, reference], ids=["compiled", "reference"])
@pytest.mark.parametrize(
    "addresses, levels, kwargs, error, message",
    [
        ([1, 2], "one", {}, TypeError, "addresses: expected a numpy array of uint64, got list"),
        (
            np.zeros(4, dtype=np.int64),
            "one",
            {},
            TypeError,
            "addresses: expected dtype uint64, got int64 (convert with addresses.astype(np.uint64))",
        ),
        (np.zeros((2, 2), dtype=np.uint64), "one", {}, ValueError, "addresses: expected a 1-D array, got 2 dimensions"),
        (
            np.zeros(8, dtype=np.uint64)[::2],
            "one",
            {},
            ValueError,
            "addresses: expected a C-contiguous array (use np.ascontiguousarray(addresses))",
        ),
        (np.zeros(4, dtype=np.uint64), "bare", {}, TypeError, "levels: expected a list of TLB objects, got TLB"),
        (np.zeros(4, dtype=np.uint64), "empty", {}, ValueError, "levels: expected 1..8 TLBs, level 0 first, got 0"),
        (np.zeros(4, dtype=np.uint64), "nine", {}, ValueError, "levels: expected 1..8 TLBs, level 0 first, got 9"),
        (np.zeros(4, dtype=np.uint64), "twice", {}, ValueError, "levels: the same TLB object appears twice"),
        (
            np.zeros(4, dtype=np.uint64),
            "psc",
            {},
            ValueError,
            "levels[0]: 'pde' is a paging-structure cache; simulate needs TLBs that hold pages",
        ),
        (np.zeros(4, dtype=np.uint64), "one", {"pcid": 4096}, ValueError, "pcid: expected 0..4095, got 4096"),
        (
            np.zeros(4, dtype=np.uint64),
            "one",
            {"start_clock": 0},
            ValueError,
            "start_clock: expected 1..2**64-1-len(addresses) (18446744073709551611), got 0",
        ),
        (
            np.zeros(4, dtype=np.uint64),
            "ntlb",
            {"vpid": 3},
            ValueError,
            "vpid: a nested TLB is tagged by EPT tag only; expected 0, got 3",
        ),
    ],
    ids=lambda value: None,
)
def test_bad_input_gets_a_clear_error(module, addresses, levels, kwargs, error, message):
    t = module.TLB(16, 4)
    levels = {
        "one": [t],
        "bare": t,
        "empty": [],
        "nine": [module.TLB(4, 4) for _ in range(9)],
        "twice": [t, t],
        "psc": [module.TLB(8, 2, sizes=("region",), region_shift=21, name="pde")],
        "ntlb": [module.TLB(8, 2, kind="ntlb")],
    }[levels]
    with pytest.raises(error) as excinfo:
        module.simulate(addresses, levels, **kwargs)
    assert str(excinfo.value) == message


def test_the_backends_do_not_mix():
    with pytest.raises(
        TypeError, match=r"^levels\[1\]: expected a fastmmu._core.tlb.TLB, got fastmmu.reference.tlb.TLB$"
    ):
        compiled.simulate(np.zeros(1, dtype=np.uint64), [compiled.TLB(4, 4), reference.TLB(4, 4)])
