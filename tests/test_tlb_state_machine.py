"""The compiled TLB and the pure-Python reference, driven side by side (pattern: pyroaring's
test/test_state_machine.py).

Every step runs the same operation on both, compares the return values (or
the exceptions, message included), then the stats, the clock and the whole
contents (every valid way with its replacement stamp).  Runs are derandomized,
so a failure reproduces; Hypothesis prints the failing steps.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from fastmmu._core import tlb as compiled
from fastmmu.reference import tlb as reference

GEOMETRIES = {
    "16e-4w": {"entries": 16, "ways": 4},
    "24e-4w-6sets": {"entries": 24, "ways": 4},
    "12e-3w-4K2M1G": {"entries": 12, "ways": 3, "sizes": ("4K", "2M", "1G")},
    "10e-2w-2M1G-5sets": {"entries": 10, "ways": 2, "sizes": ("1G", "2M")},
    "5e-1w-direct": {"entries": 5, "ways": 1},
    "8e-8w-full-4K2M": {"entries": 8, "ways": 8, "sizes": ("4K", "2M")},
    "psc-6e-2w": {"entries": 6, "ways": 2, "sizes": ("region",), "region_shift": 30},
    "ntlb-12e-4w": {"entries": 12, "ways": 4, "sizes": ("4K", "2M"), "kind": "ntlb"},
}
POLICIES = ("lru", "plru", "fifo", "random")

SETTINGS = settings(
    max_examples=30,
    stateful_step_count=50,
    derandomize=True,  # reproducible: the same examples on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

BASE = 0x7F00_0000_0000
# A small universe of addresses, so that lookups hit, sets collide and pages overlap across sizes;
# a quarter of the draws are edge cases (zero, the kernel half, non-canonical with 4 or 5 levels).
in_universe = st.builds(
    lambda g, m, k, off: BASE + (g << 30) + (m << 21) + (k << 12) + off,
    st.integers(0, 1),
    st.integers(0, 1),
    st.integers(0, 3),
    st.sampled_from([0, 0x123, 0xFFF]),
)
edge_cases = st.sampled_from([0, 0xFFFF_8000_0000_1000, 0x8000_0000_0000, 0x0100_0000_0000_0000, (1 << 64) - 1])
addresses = st.one_of(in_universe, in_universe, in_universe, edge_cases)
small = st.integers(0, 2)  # PCIDs and INVEPT tags
tiny = st.integers(0, 1)  # VPIDs and EPT tags of entries: 0 is special (host, native), 1 is not
page_sizes = st.sampled_from(["4K", "2M", "1G"])
flags = st.integers(0, 255)


class TLBComparison(RuleBasedStateMachine):
    CONFIG: dict = {}

    def __init__(self):
        super().__init__()
        self.fast = compiled.TLB(**self.CONFIG)
        self.ref = reference.TLB(**self.CONFIG)
        self.kind = self.ref.kind

    def both(self, call):
        """Run ``call`` on both TLBs; they must agree on the result or on the exception."""
        outcomes = []
        for t in (self.fast, self.ref):
            try:
                outcomes.append(("ok", call(t)))
            except (TypeError, ValueError) as error:
                outcomes.append((type(error).__name__, str(error)))
        assert outcomes[0] == outcomes[1]
        return outcomes[0]

    def context(self, data):
        if self.kind == "ntlb":
            return {"pcid": 0, "vpid": 0, "eptag": data.draw(tiny, "eptag")}
        return {"pcid": data.draw(small, "pcid"), "vpid": data.draw(tiny, "vpid"), "eptag": data.draw(tiny, "eptag")}

    @invariant()
    def same_state(self):
        assert self.fast.stats() == self.ref.stats()
        assert self.fast.clock == self.ref.clock
        assert self.fast.contents() == self.ref.contents()

    # Lookups and fills come in bursts of 1..4, so that sets fill up against the 7 invalidation rules.

    @rule(data=st.data(), count=st.integers(1, 4))
    def lookup(self, data, count):
        for _ in range(count):
            va = data.draw(addresses, "va")
            ctx = self.context(data)  # drawn once: both TLBs must see the same context
            self.both(lambda t, va=va, ctx=ctx: t.lookup(va, **ctx))

    @rule(data=st.data(), count=st.integers(1, 4))
    def fill(self, data, count):
        for _ in range(count):
            va = data.draw(addresses, "va")
            frame = data.draw(st.integers(0, 40), "frame")
            attrs = data.draw(st.integers(0, 0xFFFF_FFFF), "attrs")
            if self.kind == "psc":
                size, is_global = "region", False
            else:
                size = data.draw(page_sizes, "size")
                frame *= {"4K": 1, "2M": 512, "1G": 512 * 512}[size]
                is_global = self.kind == "tlb" and data.draw(st.booleans(), "global_")
            ctx = self.context(data)
            self.both(
                lambda t, va=va, frame=frame, size=size, attrs=attrs, is_global=is_global, ctx=ctx: t.fill(
                    va, frame, size=size, attrs=attrs, global_=is_global, **ctx
                )
            )

    @rule(data=st.data(), how=flags, va=addresses)
    def invalidate(self, data, how, va):
        ctx = self.context(data)
        self.both(lambda t: t.invalidate(how, va=va, **ctx))

    @rule(pcid=small, vpid=tiny, pcide=st.booleans(), noflush=st.booleans())
    def mov_cr3(self, pcid, vpid, pcide, noflush):
        self.both(lambda t: t.mov_cr3(pcid, vpid, pcide=pcide, noflush=noflush))

    @rule(va=addresses, pcid=small, vpid=tiny, la57=st.booleans())
    def invlpg(self, va, pcid, vpid, la57):
        self.both(lambda t: t.invlpg(va, pcid, vpid, la57=la57))

    @rule(kind=st.integers(0, 4), va=addresses, pcid=small, vpid=tiny, la57=st.booleans())
    def invpcid(self, kind, va, pcid, vpid, la57):
        self.both(lambda t: t.invpcid(kind, pcid=pcid, va=va, vpid=vpid, la57=la57))

    @rule(kind=st.integers(0, 4), va=addresses, vpid=tiny, la57=st.booleans())
    def invvpid(self, kind, va, vpid, la57):
        self.both(lambda t: t.invvpid(kind, vpid=vpid, va=va, la57=la57))

    @rule(kind=st.integers(0, 3), eptag=small)
    def invept(self, kind, eptag):
        self.both(lambda t: t.invept(kind, eptag=eptag))

    @rule(data=st.data(), va=addresses)
    def page_fault(self, data, va):
        ctx = self.context(data)
        pcid, vpid = (0, 0) if self.kind == "ntlb" else (ctx["pcid"], ctx["vpid"])
        self.both(lambda t: t.page_fault(va, pcid, vpid, eptag=ctx["eptag"]))

    @rule(gpa=addresses, eptag=tiny, linear=st.one_of(st.none(), addresses), pcid=small, vpid=tiny)
    def ept_violation(self, gpa, eptag, linear, pcid, vpid):
        self.both(lambda t: t.ept_violation(gpa, eptag=eptag, va=linear, pcid=pcid, vpid=vpid))

    @rule()
    def flush(self):
        self.both(lambda t: t.flush())

    @rule()
    def reset_stats(self):
        self.both(lambda t: t.reset_stats())

    @rule(data=st.data(), trace=st.lists(addresses, min_size=0, max_size=30))
    def simulate_alone(self, data, trace):
        """The batch loop on this one TLB (a paging-structure cache is rejected: same message)."""
        ctx = self.context(data)
        array = np.array(trace, dtype=np.uint64)
        self.both(lambda t: (compiled if t is self.fast else reference).simulate(array, [t], **ctx))

    def teardown(self):
        self.same_state()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_compiled_tlb_matches_the_reference_step_by_step(geometry, policy):
    config = dict(GEOMETRIES[geometry], policy=policy, seed=0x9E37_79B9)
    machine = type(f"TLBComparison_{geometry}_{policy}", (TLBComparison,), {"CONFIG": config})
    run_state_machine_as_test(machine, settings=SETTINGS)


# The hierarchy machine's contexts: mostly one, so that the entries a batch meets are the ones the
# other steps made and invalidate; mostly 2 MiB fills, so that a 4 KiB L1 takes pieces of them.
mostly_zero = st.sampled_from([0, 0, 0, 1])
mostly_2m = st.sampled_from(["2M", "2M", "4K", "1G"])


class TwoLevelSimulation(RuleBasedStateMachine):
    """simulate() over an L1 and an L2 (the fast loop when both are 4 KiB-only LRU), interleaved with
    lookups, fills of every page size (an L2 hit on a page larger than the L1 holds refills the L1 with
    a piece of it: a fractured entry) and every invalidation, compared entry by entry after every step."""

    LEVELS: tuple = ()

    def __init__(self):
        super().__init__()
        self.fast = [compiled.TLB(**config) for config in self.LEVELS]
        self.ref = [reference.TLB(**config) for config in self.LEVELS]

    @invariant()
    def same_state(self):
        for fast, ref in zip(self.fast, self.ref, strict=True):
            assert fast.stats() == ref.stats()
            assert fast.clock == ref.clock
            assert fast.contents() == ref.contents()

    def each(self, call):
        """``call(tlb)`` on every level of both hierarchies: the same results, level by level."""
        results = [[call(t) for t in tlbs] for tlbs in (self.fast, self.ref)]
        assert results[0] == results[1]

    @rule(trace=st.lists(addresses, min_size=1, max_size=8), vpid=mostly_zero, pcid=mostly_zero, eptag=mostly_zero)
    def run(self, trace, vpid, pcid, eptag):
        array = np.array(trace, dtype=np.uint64)
        assert compiled.simulate(array, self.fast, pcid=pcid, vpid=vpid, eptag=eptag) == reference.simulate(
            array, self.ref, pcid=pcid, vpid=vpid, eptag=eptag
        )

    @rule(va=addresses, pcid=mostly_zero, vpid=mostly_zero, eptag=mostly_zero)
    def lookup(self, va, pcid, vpid, eptag):
        self.each(lambda t: t.lookup(va, pcid=pcid, vpid=vpid, eptag=eptag))

    @rule(va=addresses, frame=st.integers(0, 40), size=mostly_2m, is_global=st.booleans(), level=st.integers(0, 1),
          pcid=mostly_zero, vpid=mostly_zero, eptag=mostly_zero)
    def fill(self, va, frame, size, is_global, level, pcid, vpid, eptag):
        """Entries the batch did not make (large pages, global, other contexts); a batch that hits
        them refills the levels above with their own ctx, and with pieces where they hold smaller pages.
        The L1 is filled with 4 KiB pages only: pieces made here would hide a loop that loses its own."""
        if level == 0:
            size = "4K"
        frame *= {"4K": 1, "2M": 512, "1G": 512 * 512}[size]
        for tlbs in (self.fast, self.ref):
            tlbs[level].fill(va, frame, size=size, pcid=pcid, vpid=vpid, eptag=eptag, global_=is_global)

    @rule(va=addresses, pcid=mostly_zero, vpid=mostly_zero, la57=st.booleans())
    def invlpg(self, va, pcid, vpid, la57):
        self.each(lambda t: t.invlpg(va, pcid, vpid, la57=la57))

    @rule(kind=st.integers(0, 3), va=in_universe, pcid=mostly_zero, vpid=mostly_zero)
    def invpcid(self, kind, va, pcid, vpid):
        self.each(lambda t: t.invpcid(kind, pcid=pcid, va=va, vpid=vpid))

    @rule(pcid=mostly_zero, vpid=mostly_zero, pcide=st.booleans(), noflush=st.booleans())
    def mov_cr3(self, pcid, vpid, pcide, noflush):
        pcid = pcid if pcide else 0
        noflush = noflush and pcide
        self.each(lambda t: t.mov_cr3(pcid, vpid, pcide=pcide, noflush=noflush))

    @rule(kind=st.integers(0, 3), va=in_universe, vpid=st.integers(1, 2))
    def invvpid(self, kind, va, vpid):
        self.each(lambda t: t.invvpid(kind, vpid=vpid, va=va))

    @rule(single=st.booleans(), eptag=st.integers(1, 2))
    def invept(self, single, eptag):
        self.each(lambda t: t.invept(1 if single else 2, eptag=eptag))


@pytest.mark.parametrize(
    "levels",
    [
        ({"entries": 8, "ways": 2}, {"entries": 24, "ways": 4}),  # fast loop, 6-set L2
        ({"entries": 12, "ways": 4}, {"entries": 16, "ways": 4}),  # fast loop, 3-set L1 (no mask)
        ({"entries": 4, "ways": 4, "policy": "fifo"}, {"entries": 16, "ways": 4}),  # generic loop
        ({"entries": 6, "ways": 3, "sizes": ("4K", "2M")}, {"entries": 12, "ways": 2, "policy": "plru"}),
        # The generic loop over a 4 KiB L1 and an L2 of every size: the L1 takes pieces of L2 pages.
        ({"entries": 8, "ways": 2}, {"entries": 12, "ways": 3, "sizes": ("4K", "2M", "1G")}),
        ({"entries": 4, "ways": 1, "sizes": ("4K", "2M")}, {"entries": 6, "ways": 2, "sizes": ("2M", "1G"),
                                                             "policy": "random"}),
    ],
    ids=["lru-fast", "lru-fast-3sets", "fifo-generic", "mixed-plru", "fractured-lru", "fractured-random"],
)
def test_two_level_simulate_matches_the_reference(levels):
    machine = type("TwoLevelSimulation_", (TwoLevelSimulation,), {"LEVELS": levels})
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=100))


@pytest.mark.parametrize("l2_sizes", [("4K", "2M"), ("4K",)], ids=["generic-loop", "fast-loop"])
@pytest.mark.parametrize("module", [compiled, reference], ids=["compiled", "reference"])
def test_invlpg_after_simulate_removes_the_pieces_it_filled(module, l2_sizes):
    """simulate() refills a 4 KiB L1 with a piece of a 2 MiB page the L2 holds (whole, or as a piece
    itself); INVLPG of another address of that page must remove every piece (the compiled loops once
    lost the count of pieces: on their tlb_t copies, and in the fast loop's L2-hit refill)."""
    page = BASE + (1 << 21)
    l1 = module.TLB(8, 2, name="l1")
    l2 = module.TLB(12, 3, sizes=l2_sizes, name="l2")
    l2.fill(page + 0x3000, 0x200, size="2M")
    result = module.simulate(np.array([page + 0x3000], dtype=np.uint64), [l1, l2])
    assert result == {"accesses": 1, "hits": [0, 1], "misses": 0}
    assert [(row["vpn"], row["frame"]) for row in l1.contents()] == [((page + 0x3000) >> 12, 0x203)]
    assert l1.invlpg(page + 0x1000) == 1  # another 4 KiB of the same 2 MiB page: its set holds nothing
    assert l1.contents() == []
    assert l2.invlpg(page + 0x1000) == 1 and l2.contents() == []
