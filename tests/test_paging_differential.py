"""The compiled walkers against the reference model, walk by walk, on random and hostile tables.

A few frames hold random entries at the slots walks use (indexes 0..5 and
511): pointers into those frames (so tables reference themselves and each
other, and guest tables alias EPT tables), into free frames and past the end
of memory, large pages, reserved and ignored bits, and plain garbage.  Every
field of every Walk (the trace included) must be equal, and so must memory
(the A/D bits) after every walk.  A state machine then changes entries
between walks and adds paging-structure caches and a nested TLB.

Hypothesis runs derandomized (a failure reproduces as is, shown as the
smallest example found); FASTMMU_TEST_SEED=<n> explores with that seed.
"""

from __future__ import annotations

import importlib
import os

from hypothesis import HealthCheck, given, note, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fastmmu.arch import PTE, FrameKind
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.reference import paging as ref_paging
from fastmmu.reference.memory import HostMemory as RefMemory
from fastmmu.reference.tlb import TLB as RefTLB
from fastmmu.tables import EptTable, PageTable

comp_paging = importlib.import_module("fastmmu._core.paging")
CompMemory = importlib.import_module("fastmmu._core.memory").HostMemory
CompTLB = importlib.import_module("fastmmu._core.tlb").TLB

MEMORY_FRAMES = 48  # 192 KiB: the base world uses the low frames; the rest are free (they read as zeros)
U64 = (1 << 64) - 1
MiB, GiB = 1 << 20, 1 << 30

# Derandomized by default (a failure reproduces as is).  FASTMMU_TEST_SEED=<n> explores other examples
# with that seed instead; the seed is printed with every run's output.
SEED = os.environ.get("FASTMMU_TEST_SEED")
_SETTINGS = settings(derandomize=SEED is None, database=None, deadline=None, max_examples=600,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def DIFFERENTIAL(test):  # noqa: N802 - used like the settings object it wraps
    test = _SETTINGS(test)
    if SEED is not None:
        print(f"hypothesis seed = {SEED}  (replay: FASTMMU_TEST_SEED={SEED})")
        test = hypothesis_seed(int(SEED))(test)
    return test


# -- the base world: valid tables, which each example then damages ------------------------------------

URW = int(PTE.P | PTE.RW | PTE.US)
# Guest mappings: (linear address, guest-physical address, flags, page size).  Both EPTs map guest-physical
# memory 1:1: the 4-level one with 4 KiB pages, the 5-level one with a 2 MiB page (so that all the guest
# tables share one EPT page); both have a 2 MiB page at 2 MiB and a 1 GiB page at 1 GiB.
MAPPINGS = [
    (0x0000_0040_0020_3000, 0x0000_5000, URW, 4096),  # a data page that is also a table frame
    (0x0000_0040_0020_4000, 0x0002_F000, URW | int(PTE.A | PTE.D), 4096),
    (0x0000_0080_0040_0000, 0x0020_0000, URW, 2 * MiB),
    (0x0000_00C0_0000_0000, 0x4000_0000, URW | int(PTE.G), GiB),
    (0xFFFF_8000_0000_1000, 0x0000_7000, int(PTE.P) | (1 << 63) | 5 << 59, 4096),  # supervisor, read-only, XD
    (0x0000_0040_0020_5000, 0x0100_0000, URW, 4096),  # its guest-physical page is not in the EPT
]


def _base_world() -> tuple[dict, dict]:
    mem = RefMemory(MEMORY_FRAMES << 12, maxphyaddr=52)
    epts = {levels: EptTable(mem, levels) for levels in (4, 5)}
    epts[4].map_range(0, 0, 16 << 12)  # the frames the EPT tables use (more are mapped as needed)
    epts[5].map(0, 0, page_size="2M")
    for ept in epts.values():
        ept.map(2 * MiB, 2 * MiB, page_size="2M")
        ept.map(GiB, GiB, page_size="1G")

    def alloc_gpa() -> int:  # guest tables: GPA == HPA
        gpa = mem.alloc_frame(kind=FrameKind.GUEST_PT) << 12
        epts[4].map(gpa, gpa)
        return gpa

    roots = {}
    for levels in (4, 5):
        pt = PageTable(mem, levels, ept=epts[4], alloc_gpa=alloc_gpa)
        for va, gpa, flags, size in MAPPINGS:
            pt.map(va, gpa, flags, page_size=size)
        roots[levels] = pt.root
    assert mem.nframes - mem.free_frames <= MEMORY_FRAMES - 8, "leave some free frames"
    image = {(pfn, slot): int(value) for pfn in range(MEMORY_FRAMES)
             for slot, value in enumerate(mem.read_frame(pfn)) if value}
    return image, {"cr3": roots, "eptp": {levels: ept.root for levels, ept in epts.items()}}


BASE, ROOTS = _base_world()
USED_SLOTS = sorted(BASE)  # every entry some walk goes through
TABLE_FRAMES = sorted({pfn for pfn, _ in BASE})


def flip_masks():
    return st.one_of(
        st.integers(0, 63).map(lambda bit: 1 << bit),
        # P/R, RW/W, US/X and their combinations; PS; A|D; memory types 6 -> 1, 5, 7, 2, 4, 3; A; XD/SVE;
        # keys; reserved address bits; reserved bits of large pages.
        st.sampled_from([0x1, 0x2, 0x4, 0x6, 0x7, 0x80, 0x60, 0x38, 0x18, 0x08, 0x20, 0x10, 0x28, 0x100,
                         1 << 63, 0xF << 59, 1 << 51, 1 << 46, 1 << 39, 1 << 36, 0x1FE000, 0x3FFFE000]),
    )


new_values = st.one_of(
    st.just(0),
    st.integers(0, U64),
    # A pointer with common low bits: to another table (or the same), a free frame, past the end, far away.
    st.builds(lambda frame, low: frame << 12 | low,
              st.one_of(st.sampled_from(TABLE_FRAMES), st.integers(0, MEMORY_FRAMES + 4),
                        st.sampled_from([512, 1 << 18, (1 << 34) - 1, (1 << 40) - 1])),
              st.sampled_from([0x007, 0x027, 0x067, 0x0E7, 0x087, 0x005, 0x001, 0x037, 0x0B7, 0x137,
                               0x004, 0x002, 0x003, 0x006, 0x035, 0x03F, 0x017, 0x01F, 0x00F, 0x0BF])),
)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("xor"), st.sampled_from(USED_SLOTS), flip_masks()),
        st.tuples(st.just("set"), st.sampled_from(USED_SLOTS), new_values),
        st.tuples(st.just("set"), st.tuples(st.sampled_from(TABLE_FRAMES), st.integers(0, 511)), new_values),
    ),
    max_size=5,
)
maxphyaddrs = st.sampled_from([36, 40, 46, 52])


def apply(image: dict, changes: list) -> dict:
    image = dict(image)
    for kind, slot, operand in changes:
        image[slot] = (image.get(slot, 0) ^ operand) if kind == "xor" else operand
    return image


def build(memory_class, image: dict, maxphyaddr: int):
    mem = memory_class(MEMORY_FRAMES << 12, maxphyaddr=maxphyaddr)
    mem.alloc_at(TABLE_FRAMES, kind=FrameKind.GUEST_PT)
    for (frame, slot), value in image.items():
        mem.write((frame << 12) + 8 * slot, value)
    return mem


images = st.builds(apply, st.just(BASE), mutations)  # damaged anywhere (the state machine's start)


def memory_words(mem) -> list:
    return [mem.read_frame(pfn).tolist() for pfn in TABLE_FRAMES]


# -- random processor state and addresses ------------------------------------------------------------


@st.composite
def cpu_states(draw):
    levels = draw(st.sampled_from([4, 5]))
    table_levels = levels if draw(st.integers(0, 9)) else 9 - levels  # now and then the other tables
    pcide = draw(st.booleans())
    return CpuState(
        cr3=ROOTS["cr3"][table_levels] | (draw(st.integers(0, 0xFFF)) if pcide else 0),
        levels=levels, cr0_wp=draw(st.booleans()), efer_nxe=draw(st.booleans()), cr4_pge=draw(st.booleans()),
        cr4_pcide=pcide, cr4_smep=draw(st.booleans()), cr4_smap=draw(st.booleans()),
        cr4_pke=draw(st.booleans()), eflags_ac=draw(st.booleans()),
        pkru=draw(st.one_of(st.just(0), st.integers(0, (1 << 32) - 1))))


@st.composite
def ept_configs(draw):
    levels = draw(st.sampled_from([4, 5]))
    table_levels = levels if draw(st.integers(0, 9)) else 9 - levels
    return EptConfig(root=ROOTS["eptp"][table_levels], levels=levels, ad=draw(st.booleans()),
                     execute_only=draw(st.booleans()), advanced_exit_info=draw(st.booleans()))


accesses = st.integers(0, 15).filter(lambda access: not (access & 1 and access & 2))


@st.composite
def addresses(draw):
    """Mostly a mapped linear address (any offset in its page), sometimes a neighbour or anything at all."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        if draw(st.booleans()):
            return draw(st.integers(0, U64))
        high = draw(st.sampled_from([1 << 47, 1 << 56, 1 << 63, 0xFFFF_0000_0000_0000]))  # non-canonical
        return high | draw(st.integers(0, (1 << 47) - 1))
    va, _, _, size = draw(st.sampled_from(MAPPINGS))
    if choice == 1:
        return va ^ (1 << draw(st.integers(12, 56)))  # a neighbour: another entry at some level
    return va + draw(st.integers(0, size - 1))


@st.composite
def guest_physical_addresses(draw):
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.integers(0, U64))
    if choice == 1:
        return draw(st.sampled_from([1 << 48, 1 << 57, 0x100_0000])) + draw(st.integers(0, 4095))
    return draw(st.sampled_from([*(pfn << 12 for pfn in TABLE_FRAMES), 2 * MiB, GiB, 0x2F000])) + draw(
        st.integers(0, 4095))


# -- comparing -------------------------------------------------------------------------------------------

FIELDS = ("status", "host_address", "guest_physical_address", "page_size", "error_code", "fault_address",
          "exit_qualification", "guest_linear_address", "attrs", "is_global", "pkey", "memtype", "guest_refs",
          "ept_refs")


def fields(walk) -> dict:
    out = {name: getattr(walk, name) for name in FIELDS}
    out["status"] = int(out["status"])
    out["trace"] = [(ref.dimension, ref.level, ref.address, ref.value) for ref in walk.trace]
    return {name: (int(value) if isinstance(value, int) else value) for name, value in out.items()}


def assert_same(ref_walk, comp_walk, what: str) -> None:
    want, got = fields(ref_walk), fields(comp_walk)
    differences = {name: (want[name], got[name]) for name in want if want[name] != got[name]}
    assert not differences, f"{what}: reference != compiled: {differences}"


def outcome(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        return exc


def compare_calls(what, ref_call, comp_call, ref_mem, comp_mem, *args, **kwargs):
    """Run one walk on each backend; compare results (or errors) and then all of memory."""
    ref_walk = outcome(ref_call, ref_mem, *args, trace=True, **kwargs)
    comp_walk = outcome(comp_call, comp_mem, *args, trace=True, **kwargs)
    if isinstance(ref_walk, Exception) or isinstance(comp_walk, Exception):
        assert (type(ref_walk), str(ref_walk)) == (type(comp_walk), str(comp_walk)), what
    else:
        assert_same(ref_walk, comp_walk, what)
    assert memory_words(ref_mem) == memory_words(comp_mem), f"{what}: memory differs afterwards"
    return ref_walk


# -- single walks on damaged tables ------------------------------------------------------------------------

WALKERS = {"native": (ref_paging.walk, comp_paging.walk), "ept": (ref_paging.walk_ept, comp_paging.walk_ept),
           "nested": (ref_paging.walk_nested, comp_paging.walk_nested)}


@st.composite
def scenarios(draw, kind: str):
    """Processor state, walks, and tables damaged mostly where those walks go (found by tracing them)."""
    maxphyaddr = draw(maxphyaddrs)
    cpu, ept = draw(cpu_states()), draw(ept_configs())
    targets = guest_physical_addresses() if kind == "ept" else addresses()
    walks = draw(st.lists(st.tuples(targets, accesses), min_size=1, max_size=5))
    context = {"native": (cpu,), "ept": (ept,), "nested": (cpu, ept)}[kind]
    clean = build(RefMemory, BASE, maxphyaddr)
    on_path = set()
    for address, access in walks:
        for ref in WALKERS[kind][0](clean, *context, address, access, trace=True).trace:
            on_path.add((ref.address >> 12, (ref.address >> 3) & 511))
    slots = st.sampled_from(sorted(on_path)) if on_path else st.sampled_from(USED_SLOTS)
    changes = draw(st.lists(st.one_of(
        st.tuples(st.just("xor"), slots, flip_masks()),
        st.tuples(st.just("xor"), slots, flip_masks()),
        st.tuples(st.just("set"), slots, new_values),
        st.tuples(st.just("set"), st.tuples(st.sampled_from(TABLE_FRAMES), st.integers(0, 511)), new_values),
    ), max_size=4))
    return kind, maxphyaddr, context, walks, apply(BASE, changes)


def check_scenario(scenario) -> None:
    kind, maxphyaddr, context, walks, image = scenario
    ref_mem, comp_mem = build(RefMemory, image, maxphyaddr), build(CompMemory, image, maxphyaddr)
    for address, access in walks:
        note(f"{kind} walk of {address:#x}, access {access:#x}")
        compare_calls(f"{kind}({address:#x}, {access:#x})", *WALKERS[kind], ref_mem, comp_mem, *context,
                      address, access)


@DIFFERENTIAL
@given(scenarios("native"))
def test_native_walks(scenario):
    check_scenario(scenario)


@DIFFERENTIAL
@given(scenarios("ept"))
def test_ept_walks(scenario):
    check_scenario(scenario)


@DIFFERENTIAL
@given(scenarios("nested"))
def test_nested_walks(scenario):
    check_scenario(scenario)


def test_the_random_tables_reach_every_outcome():
    """The generator is worth something only if walks end in every way: count them on a fixed sample."""
    seen = set()

    @settings(derandomize=True, deadline=None, max_examples=1000, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(image=images, maxphyaddr=maxphyaddrs, cpu=cpu_states(), ept=ept_configs(), gva=addresses(),
           access=accesses)
    def sample(image, maxphyaddr, cpu, ept, gva, access):
        mem = build(RefMemory, image, maxphyaddr)
        walk = ref_paging.walk_nested(mem, cpu, ept, gva, access)
        seen.add(walk.status.name)
        if walk.status.name == "PAGE_FAULT":
            seen.add("RSVD" if walk.error_code & 8 else "PK" if walk.error_code & 32 else "PF")
        if walk.ok:
            seen.add(f"OK-{walk.page_size}")

    sample()
    assert {"OK", "PAGE_FAULT", "GP", "EPT_VIOLATION", "EPT_MISCONFIG", "RSVD", "PF", "PK", "OK-4096",
            "OK-2097152", "OK-1073741824"} <= seen, seen


# -- a state machine: entries change between walks, and the caches remember ---------------------------------

PSC_SHIFTS = {"pde": 21, "pdpte": 30, "pml4e": 39, "pml5e": 48}


class WalksWithCaches(RuleBasedStateMachine):
    """Both backends, each with its own paging-structure caches and nested TLB, driven identically."""

    @initialize(image=images, maxphyaddr=maxphyaddrs, ept=ept_configs(),
                policy=st.sampled_from(["lru", "plru", "fifo", "random"]),
                nested_sizes=st.sampled_from([("4K",), ("4K", "2M"), ("4K", "2M", "1G"), ("2M", "1G")]),
                ways=st.sampled_from([1, 2, 4]), vpid=st.integers(0, 3))
    def setup(self, image, maxphyaddr, ept, policy, nested_sizes, ways, vpid):
        self.mem = {"ref": build(RefMemory, image, maxphyaddr), "comp": build(CompMemory, image, maxphyaddr)}
        self.ept, self.vpid = ept, vpid
        self.caches = {}
        for side, tlb_class in (("ref", RefTLB), ("comp", CompTLB)):
            caches = {name: tlb_class(4 * ways, ways, sizes=("region",), region_shift=shift, policy=policy,
                                      name=name) for name, shift in PSC_SHIFTS.items()}
            caches["nested"] = tlb_class(8 * ways, ways, sizes=nested_sizes, policy=policy, kind="ntlb",
                                         name="nested")
            self.caches[side] = caches

    def _walk(self, what, function, *args):
        self.last = (what, function, args)
        results = {}
        for side, module in (("ref", ref_paging), ("comp", comp_paging)):
            caches = dict(self.caches[side], vpid=self.vpid)
            results[side] = outcome(getattr(module, function), self.mem[side], *args, caches=caches, trace=True)
        if isinstance(results["ref"], Exception) or isinstance(results["comp"], Exception):
            assert (type(results["ref"]), str(results["ref"])) == (type(results["comp"]), str(results["comp"]))
        else:
            assert_same(results["ref"], results["comp"], what)
        assert memory_words(self.mem["ref"]) == memory_words(self.mem["comp"]), f"{what}: memory differs"

    @rule(cpu=cpu_states(), va=addresses(), access=accesses)
    def native(self, cpu, va, access):
        self._walk(f"walk({va:#x}, {access:#x})", "walk", cpu, va, access)

    @rule(cpu=cpu_states(), gva=addresses(), access=accesses)
    def nested(self, cpu, gva, access):
        self._walk(f"walk_nested({gva:#x}, {access:#x})", "walk_nested", cpu, self.ept, gva, access)

    @rule(gpa=guest_physical_addresses(), access=accesses)
    def ept_only(self, gpa, access):
        self._walk(f"walk_ept({gpa:#x}, {access:#x})", "walk_ept", self.ept, gpa, access)

    @precondition(lambda self: getattr(self, "last", None) is not None)
    @rule()
    def again_as_a_write(self):
        """The same walk, writing: cached translations with D clear (or without W) are dropped and walked."""
        what, function, args = self.last
        *context, address, access = args
        self._walk(f"{what} again, writing", function, *context, address, (access & ~2) | 1)

    @rule(slot=st.sampled_from(USED_SLOTS), value=new_values)
    def write_entry(self, slot, value):
        for mem in self.mem.values():
            mem.write((slot[0] << 12) + 8 * slot[1], value)

    @rule(slot=st.sampled_from(USED_SLOTS), mask=flip_masks())
    def flip_bits(self, slot, mask):
        for mem in self.mem.values():
            address = (slot[0] << 12) + 8 * slot[1]
            mem.write(address, mem.read(address) ^ mask)

    @rule(slot=st.sampled_from(USED_SLOTS))
    def unmap(self, slot):
        for mem in self.mem.values():
            mem.write((slot[0] << 12) + 8 * slot[1], 0)

    @rule(operation=st.sampled_from(["flush", "invept", "mov_cr3", "invlpg", "vpid"]), va=addresses(),
          pcid=st.integers(0, 3))
    def invalidate(self, operation, va, pcid):
        for caches in self.caches.values():
            for cache in caches.values():
                if operation == "flush":
                    cache.flush()
                elif operation == "invept":
                    cache.invept(1, eptag=self.ept.eptag)
                elif operation == "mov_cr3" and cache.kind == "psc":
                    cache.mov_cr3(pcid, self.vpid, pcide=True)
                elif operation == "invlpg" and cache.kind == "psc":
                    cache.invlpg(va, pcid, self.vpid)
        if operation == "vpid":
            self.vpid = (self.vpid + 1) % 4

    @precondition(lambda self: hasattr(self, "caches"))
    @invariant()
    def caches_agree(self):
        for name, ref_cache in self.caches["ref"].items():
            comp_cache = self.caches["comp"][name]
            assert ref_cache.contents() == comp_cache.contents(), f"{name}: contents differ"
            assert ref_cache.stats() == comp_cache.stats(), f"{name}: counters differ"
            assert ref_cache.clock == comp_cache.clock, f"{name}: clocks differ"


WalksWithCaches.TestCase.settings = settings(
    derandomize=True, deadline=None, max_examples=400, stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_walks_with_caches = WalksWithCaches.TestCase
