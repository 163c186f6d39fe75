"""Exact behaviour of the TLB, written from the Intel SDM scopes (Vol. 3A 4.10.4, Vol. 3C 29.4.3).

Every test runs against both backends: the compiled ``fastmmu._core.tlb``
and the pure-Python ``fastmmu.reference.tlb``.
"""

import pytest

from fastmmu._core import tlb as compiled
from fastmmu.reference import tlb as reference

PAGE = 0x7F00_0000_0000  # a canonical user address, 1 GiB aligned
MASK64 = (1 << 64) - 1


@pytest.fixture(params=["compiled", "reference"])
def impl(request):
    return compiled if request.param == "compiled" else reference


def vpns(t):
    """The set of (vpn, size, pcid, global, vpid, eptag) cached."""
    return {(e["vpn"], e["size"], e["pcid"], e["global"], e["vpid"], e["eptag"]) for e in t.contents()}


def frames(t):
    return sorted(e["frame"] for e in t.contents())


# -- constants and geometry -----------------------------------------------------------


def test_constants_are_the_same_in_both_backends():
    names = [n for n in dir(reference) if n.startswith(("INV_", "POLICY_", "SIZE_", "MAX_SIZES"))]
    assert len(names) >= 20
    for name in names:
        if name != "INV_ALL_FLAGS":
            assert getattr(compiled, name) == getattr(reference, name), name


@pytest.mark.parametrize(
    "entries, ways, sets",
    [(1536, 12, 128), (1536, 6, 256), (12, 3, 4), (24, 4, 6), (64, 64, 1), (7, 1, 7)],
)
def test_any_number_of_sets(impl, entries, ways, sets):
    t = impl.TLB(entries, ways)
    assert (t.sets, t.ways, t.entries) == (sets, ways, entries)


def test_non_power_of_two_sets_index_by_modulo(impl):
    t = impl.TLB(24, 4)  # 6 sets
    for page in (0, 5, 6, 13, 1000):
        t.fill(page << 12, page)
    assert {e["vpn"]: e["set"] for e in t.contents()} == {0: 0, 5: 5, 6: 0, 13: 1, 1000: 1000 % 6}
    for page in (0, 5, 6, 13, 1000):
        assert t.lookup((page << 12) | 0xABC) == (page, 0, "4K")


def test_sizes_are_probed_smallest_first(impl):
    t = impl.TLB(12, 3, sizes=("1G", "4k", "2M"))
    assert t.sizes == ("4K", "2M", "1G")
    t.fill(PAGE, 0x40000, size="1G")
    t.fill(PAGE, 0x1234, size="4K")
    assert t.lookup(PAGE + 0x10) == (0x1234, 0, "4K")  # the 4K entry wins: it is probed first
    assert t.lookup(PAGE + 0x1000) == (0x40000, 0, "1G")


def test_properties_and_repr(impl):
    t = impl.TLB(8, 2, sizes="region", region_shift=30, policy="PLRU", name="pdpte", seed=7)
    assert (t.kind, t.sizes, t.region_shift, t.policy, t.name, t.seed, t.clock) == (
        "psc",
        ("region",),
        30,
        "plru",
        "pdpte",
        7,
        1,
    )
    assert repr(t) == ("TLB(8, 2, sizes=('region',), policy='plru', name='pdpte', kind='psc', region_shift=30)")


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((0, 1), {}, ValueError, "entries: expected a positive number of entries up to 16777216, got 0"),
        ((-4, 1), {}, ValueError, "entries: expected a positive number of entries up to 16777216, got -4"),
        ((64, 0), {}, ValueError, "ways: expected 1..entries (64), got 0"),
        ((64, 128), {}, ValueError, "ways: expected 1..entries (64), got 128"),
        (
            (1536, 10),
            {},
            ValueError,
            "entries: 1536 entries cannot be split into sets of 10 ways; "
            "expected a multiple of ways (e.g. 1530 or 1540)",
        ),
        (("64", 4), {}, TypeError, "entries: expected an integer, got '64'"),
        ((64, 4.0), {}, TypeError, "ways: expected an integer, got 4.0"),
        ((64, True), {}, TypeError, "ways: expected an integer, got True"),
        ((64, 4), {"sizes": ("4K", "8K")}, ValueError, "sizes: expected one of '4K', '2M', '1G', 'region', got '8K'"),
        ((64, 4), {"sizes": ()}, ValueError, "sizes: expected at least one of '4K', '2M', '1G' (or 'region' alone)"),
        ((64, 4), {"sizes": ("4K", "4K")}, ValueError, "sizes: each size at most once, got ('4K', '4K')"),
        ((64, 4), {"sizes": 4}, TypeError, "sizes: expected a tuple of size names such as ('4K', '2M'), got 4"),
        (
            (64, 4),
            {"sizes": ("region",)},
            ValueError,
            "region_shift: a 'region' cache needs 21 (PDE), 30 (PDPTE), 39 (PML4E) or 48 (PML5E), got 0",
        ),
        (
            (64, 4),
            {"sizes": ("region", "4K"), "region_shift": 21},
            ValueError,
            "sizes: 'region' (a paging-structure cache) cannot be mixed with page sizes, got ('region', '4K')",
        ),
        ((64, 4), {"region_shift": 21}, ValueError, "region_shift: only meaningful with sizes=('region',), got 21"),
        ((64, 4), {"policy": "mru"}, ValueError, "policy: expected one of 'lru', 'plru', 'fifo', 'random', got 'mru'"),
        ((64, 4), {"seed": 0}, ValueError, "seed: expected 1..2**64-1 (xorshift64 never leaves state 0), got 0"),
        ((64, 4), {"kind": "stlb"}, ValueError, "kind: expected one of 'tlb', 'psc', 'ntlb', got 'stlb'"),
        (
            (64, 4),
            {"kind": "psc"},
            ValueError,
            "kind: 'psc' does not fit sizes=('4K',); a paging-structure cache ('psc') holds "
            "sizes=('region',), a TLB or nested TLB holds page sizes",
        ),
        ((64, 4), {"name": 3}, TypeError, "name: expected a string, got 3"),
    ],
)
def test_impossible_geometries_are_rejected_with_a_clear_message(impl, args, kwargs, error, message):
    with pytest.raises(error) as excinfo:
        impl.TLB(*args, **kwargs)
    assert str(excinfo.value) == message


# -- lookup and fill ---------------------------------------------------------------------


def test_fill_then_lookup_and_stats(impl):
    t = impl.TLB(64, 4)
    assert t.lookup(PAGE + 0x123) is None
    t.fill(PAGE + 0x123, 0x42, attrs=0x1F)
    assert t.lookup(PAGE + 0xFFF) == (0x42, 0x1F, "4K")
    assert t.lookup(PAGE + 0x1000) is None
    assert t.stats() == {"hits": 1, "misses": 2, "rights_drops": 0, "fills": 1, "evictions": 0,
                         "invalidated": 0}
    assert t.clock == 5  # every lookup and fill takes one tick
    t.reset_stats()
    assert t.stats() == {"hits": 0, "misses": 0, "rights_drops": 0, "fills": 0, "evictions": 0,
                         "invalidated": 0}


def test_context_must_match_unless_global(impl):
    t = impl.TLB(64, 4)
    t.fill(PAGE, 1, pcid=3, vpid=5, eptag=7)
    assert t.lookup(PAGE, pcid=3, vpid=5, eptag=7) == (1, 0, "4K")
    assert t.lookup(PAGE, pcid=4, vpid=5, eptag=7) is None
    assert t.lookup(PAGE, pcid=3, vpid=6, eptag=7) is None
    assert t.lookup(PAGE, pcid=3, vpid=5, eptag=8) is None
    t.fill(PAGE + 0x1000, 2, pcid=3, vpid=5, global_=True)
    assert t.lookup(PAGE + 0x1000, pcid=99, vpid=5) == (2, 0, "4K")  # a global entry serves any PCID
    assert t.lookup(PAGE + 0x1000, pcid=3, vpid=6) is None  # ...but only its VPID


def test_2m_fill_into_a_4k_only_tlb_caches_the_4k_piece_that_holds_the_address(impl):
    t = impl.TLB(64, 4)
    va = PAGE + (3 << 21) + (5 << 12) + 0x123
    t.fill(va, 0x800, size="2M", attrs=3)
    piece = 3 | impl.TLB_ATTR_FRACTURED  # marked: INVLPG of any address of the 2 MiB page must remove it
    assert t.lookup(va) == (0x805, piece, "4K")
    assert t.lookup(va + 0x1000) is None  # the rest of the 2 MiB page is not cached
    assert [(e["vpn"], e["size"]) for e in t.contents()] == [((va >> 12) & ((1 << 48) - 1), "4K")]
    t.fill(va + 0x1000, 0x800, size="2M", attrs=3)
    assert t.invlpg(va + (100 << 12)) == 2  # another address of the page: both pieces go


def test_1g_fill_into_a_4k_2m_tlb_caches_the_2m_piece(impl):
    t = impl.TLB(16, 4, sizes=("4K", "2M"))
    va = PAGE + (7 << 21) + 0x5432
    t.fill(va, 0x40000, size="1G")
    piece = impl.TLB_ATTR_FRACTURED
    assert t.lookup(va) == (0x40000 + (7 << 9), piece, "2M")
    assert t.lookup(PAGE + (7 << 21) + 0x1F_F000) == (0x40000 + (7 << 9), piece, "2M")
    assert t.lookup(PAGE + (8 << 21)) is None


def test_a_page_smaller_than_every_size_held_is_not_cached(impl):
    t = impl.TLB(16, 4, sizes=("2M", "1G"))
    t.fill(PAGE, 0x42, size="4K")
    assert t.contents() == []
    assert t.stats()["fills"] == 0


def test_fill_argument_errors(impl):
    t = impl.TLB(16, 4)
    with pytest.raises(ValueError, match=r"^frame: a 2M page starts at a frame that is a multiple of 512, got 0x201$"):
        t.fill(PAGE, 0x201, size="2M")
    with pytest.raises(ValueError, match=r"^size: expected one of '4K', '2M', '1G', 'region', got '3M'$"):
        t.fill(PAGE, 0, size="3M")
    with pytest.raises(ValueError, match=r"^size: a 'tlb' holds pages \('4K', '2M', '1G'\), got 'region'$"):
        t.fill(PAGE, 0, size="region")
    with pytest.raises(ValueError, match=r"^frame: expected a frame number below 2\*\*52, got 4503599627370496$"):
        t.fill(PAGE, 1 << 52)
    with pytest.raises(ValueError, match=r"^pcid: expected 0..4095, got 4096$"):
        t.fill(PAGE, 0, pcid=4096)
    with pytest.raises(ValueError, match=r"^vpid: expected 0..65535, got 65536$"):
        t.lookup(PAGE, vpid=65536)
    with pytest.raises(ValueError, match=r"^va: expected 0..18446744073709551615, got -1$"):
        t.lookup(-1)
    with pytest.raises(TypeError, match=r"^va: expected an integer, got 1.5$"):
        t.lookup(1.5)
    psc = impl.TLB(8, 2, sizes=("region",), region_shift=21)
    with pytest.raises(ValueError, match=r"^global_: only a TLB holds global entries, not a 'psc'$"):
        psc.fill(PAGE, 5, size="region", global_=True)
    ntlb = impl.TLB(8, 2, kind="ntlb")
    with pytest.raises(ValueError, match=r"^vpid: a nested TLB is tagged by EPT tag only; expected 0, got 2$"):
        ntlb.lookup(PAGE, vpid=2)
    assert t.clock == 1  # rejected calls take no tick


# -- replacement ----------------------------------------------------------------------


def fill_pages(t, pages):
    for page in pages:
        t.fill(page << 12, page)


def ways_by_page(t):
    return {e["way"]: e["vpn"] for e in t.contents()}


def test_lru_victim_order_is_exact(impl):
    t = impl.TLB(4, 4)  # one set of 4 ways
    fill_pages(t, [10, 11, 12, 13])
    assert t.lookup(10 << 12) is not None  # 10 is now the most recent
    assert t.lookup(12 << 12) is not None
    t.fill(14 << 12, 14)  # evicts 11, the least recently used
    assert ways_by_page(t) == {0: 10, 1: 14, 2: 12, 3: 13}
    t.fill(15 << 12, 15)  # then 13
    assert ways_by_page(t) == {0: 10, 1: 14, 2: 12, 3: 15}
    assert t.stats()["evictions"] == 2
    assert [e["stamp"] for e in t.contents()] == [5, 7, 6, 8]  # clock of the last use


def test_invalid_ways_are_filled_first_whatever_the_policy(impl):
    for policy in ("lru", "plru", "fifo", "random"):
        t = impl.TLB(4, 4, policy=policy)
        fill_pages(t, [1, 2, 3, 4])
        t.invlpg(2 << 12)
        t.fill(9 << 12, 9)
        assert ways_by_page(t) == {0: 1, 1: 9, 2: 3, 3: 4}, policy


def test_fifo_ignores_hits(impl):
    t = impl.TLB(4, 4, policy="fifo")
    fill_pages(t, [10, 11, 12, 13])
    t.lookup(10 << 12)
    t.fill(14 << 12, 14)
    assert ways_by_page(t) == {0: 14, 1: 11, 2: 12, 3: 13}


def test_bit_plru_sequence(impl):
    t = impl.TLB(4, 4, policy="plru")
    fill_pages(t, [10, 11, 12, 13])  # the 4th fill sets every MRU bit: all but way 3 clear
    assert [e["stamp"] for e in t.contents()] == [0, 0, 0, 1]
    t.fill(14 << 12, 14)  # first way with a clear bit: way 0
    t.lookup(12 << 12)  # way 2
    assert [e["stamp"] for e in t.contents()] == [1, 0, 1, 1]
    t.fill(15 << 12, 15)  # way 1; now all set, so the others clear
    assert ways_by_page(t) == {0: 14, 1: 15, 2: 12, 3: 13}
    assert [e["stamp"] for e in t.contents()] == [0, 1, 0, 0]


def xorshift64(x):
    x ^= (x << 13) & MASK64
    x ^= x >> 7
    x ^= (x << 17) & MASK64
    return x


def test_random_uses_xorshift64_from_the_seed(impl):
    seed = 0x1234_5678
    t = impl.TLB(4, 4, policy="random", seed=seed)
    fill_pages(t, [0, 1, 2, 3])  # free ways: no random draw
    state, expected = seed, {0: 0, 1: 1, 2: 2, 3: 3}
    for page in range(4, 12):
        state = xorshift64(state)
        expected[state % 4] = page
        t.fill(page << 12, page)
        assert ways_by_page(t) == expected


# -- invalidation (SDM Vol. 3A 4.10.4, Vol. 3C 29.4.3) -----------------------------------


@pytest.fixture
def populated(impl):
    """A fully associative TLB with entries of several contexts, two pages."""
    t = impl.TLB(16, 16)
    t.fill(PAGE, 1, pcid=1, vpid=1)  # A: PCID 1
    t.fill(PAGE, 2, pcid=2, vpid=1)  # B: PCID 2, same page
    t.fill(PAGE, 3, pcid=2, vpid=1, global_=True)  # C: global, tagged PCID 2
    t.fill(PAGE + 0x1000, 4, pcid=1, vpid=1)  # D: PCID 1, next page
    t.fill(PAGE + 0x1000, 5, pcid=1, vpid=1, global_=True)  # E: global, next page
    t.fill(PAGE, 6, pcid=1, vpid=2)  # F: another VPID
    t.fill(PAGE, 7, pcid=1, vpid=0)  # G: VPID 0 (the host)
    t.fill(PAGE, 8, pcid=1, vpid=1, eptag=9)  # H: derived from EPT 9
    return t


def test_invlpg_removes_globals_of_any_pcid_but_not_other_pcids_non_global_entries(populated):
    # INVLPG in PCID 1, VPID 1: A (same PCID), C (global, other PCID), H (EPT tag does not matter) go;
    # B (non-global, PCID 2) stays; the next page (D, E), VPID 2 (F) and VPID 0 (G) stay.
    assert populated.invlpg(PAGE + 0x800, pcid=1, vpid=1) == 3
    assert frames(populated) == [2, 4, 5, 6, 7]
    assert populated.stats()["invalidated"] == 3


def test_invlpg_of_a_non_canonical_address_is_a_no_op(impl, populated):
    assert populated.invlpg(0x8000_0000_0000, pcid=1, vpid=1) == 0
    assert populated.invlpg(0x0080_0000_0000_0000, pcid=1, vpid=1, la57=True) == 0
    assert len(populated.contents()) == 8


def test_mov_cr3_no_flush_keeps_everything(populated):
    assert populated.mov_cr3(1, 1, pcide=True, noflush=True) == 0
    assert len(populated.contents()) == 8


def test_mov_cr3_drops_the_new_pcids_non_global_entries(populated):
    assert populated.mov_cr3(1, 1, pcide=True) == 3  # A, D, H; globals C, E stay
    assert frames(populated) == [2, 3, 5, 6, 7]


def test_mov_cr3_without_pcide(impl):
    t = impl.TLB(64, 4)
    t.fill(PAGE, 1)
    t.fill(PAGE + 0x1000, 2, global_=True)
    assert t.mov_cr3(0, 0, pcide=False) == 1
    assert frames(t) == [2]
    with pytest.raises(
        ValueError, match=r"^pcid: with CR4.PCIDE=0 the PCID is 0 \(CR3 bits 11:0 are PWT/PCD\), got 5$"
    ):
        t.mov_cr3(5, 0, pcide=False)
    with pytest.raises(ValueError, match=r"^noflush: CR3 bit 63 is reserved when CR4.PCIDE=0$"):
        t.mov_cr3(0, 0, pcide=False, noflush=True)


def test_invpcid_type_0_removes_one_page_of_one_pcid_and_keeps_globals(populated):
    assert populated.invpcid(0, pcid=1, va=PAGE, vpid=1) == 2  # A, H; not C (global), not B
    assert frames(populated) == [2, 3, 4, 5, 6, 7]


def test_invpcid_type_1_removes_a_pcids_non_global_entries(populated):
    assert populated.invpcid(1, pcid=2, vpid=1) == 1  # B; C is global
    assert frames(populated) == [1, 3, 4, 5, 6, 7, 8]


def test_invpcid_type_2_removes_globals_and_type_3_keeps_them(impl, populated):
    assert populated.invpcid(3, vpid=1) == 4  # A, B, D, H
    assert frames(populated) == [3, 5, 6, 7]
    assert populated.invpcid(2, vpid=1) == 2  # C, E
    assert frames(populated) == [6, 7]


def test_invpcid_type_0_rejects_a_non_canonical_address(impl):
    t = impl.TLB(64, 4)
    with pytest.raises(ValueError, match=r"^va: INVPCID type 0 needs a canonical 48-bit address, got 0x800000000000$"):
        t.invpcid(0, pcid=1, va=0x8000_0000_0000)
    assert t.invpcid(0, pcid=1, va=0x8000_0000_0000, la57=True) == 0  # canonical with 5 levels
    with pytest.raises(ValueError, match=r"^type: INVPCID type must be 0 or 1 or 2 or 3, got 4$"):
        t.invpcid(4)


def test_invvpid_scopes(populated):
    assert populated.invvpid(0, vpid=1, va=PAGE) == 4  # A, B, C, H: every PCID, globals too
    assert frames(populated) == [4, 5, 6, 7]
    assert populated.invvpid(3, vpid=1) == 1  # D; E is global
    assert frames(populated) == [5, 6, 7]
    assert populated.invvpid(1, vpid=1) == 1  # E
    assert frames(populated) == [6, 7]


def test_invvpid_type_2_keeps_vpid_0(populated):
    assert populated.invvpid(2) == 7
    assert frames(populated) == [7]


def test_invvpid_fails_with_vpid_0_and_non_canonical_addresses(impl):
    t = impl.TLB(64, 4)
    for kind in (0, 1, 3):
        with pytest.raises(ValueError, match=rf"^vpid: INVVPID type {kind} fails with VPID 0 \(the host's\); "):
            t.invvpid(kind, vpid=0)
    with pytest.raises(ValueError, match=r"^va: INVVPID type 0 needs a canonical 48-bit address, got 0x800000000000$"):
        t.invvpid(0, vpid=1, va=0x8000_0000_0000)
    with pytest.raises(
        ValueError, match=r"^va: INVVPID type 0 needs a canonical 57-bit address, got 0x100000000000000$"
    ):
        t.invvpid(0, vpid=1, va=0x0100_0000_0000_0000, la57=True)
    assert t.invvpid(0, vpid=1, va=0xFFFF_8000_0000_0000) == 0


def test_invept_single_context_removes_only_that_ept_tag(impl):
    t = impl.TLB(64, 4)
    t.fill(PAGE, 1, eptag=1, vpid=1)
    t.fill(PAGE, 2, eptag=2, vpid=1, global_=True)
    t.fill(PAGE, 3, eptag=0)
    assert t.invept(1, eptag=2) == 1
    assert frames(t) == [1, 3]
    assert t.invept(2) == 1  # every EPT-derived entry; the native one (tag 0) stays
    assert frames(t) == [3]
    with pytest.raises(ValueError, match=r"^eptag: EPT tag 0 marks translations made without EPT"):
        t.invept(1, eptag=0)
    with pytest.raises(ValueError, match=r"^type: INVEPT type must be 1 or 2, got 0$"):
        t.invept(0, eptag=1)


def test_paging_structure_caches_ignore_the_address(impl):
    psc = impl.TLB(8, 8, sizes=("region",), region_shift=21)
    psc.fill(PAGE, 10, size="region", pcid=1, vpid=1)
    psc.fill(PAGE + (1 << 30), 11, size="region", pcid=1, vpid=1)
    psc.fill(PAGE, 12, size="region", pcid=2, vpid=1)
    assert psc.lookup(PAGE + 0x1F_FFFF, pcid=1, vpid=1) == (10, 0, "region")
    assert psc.invlpg(PAGE + (5 << 30), pcid=1, vpid=1) == 2  # INVLPG: all of PCID 1, whatever the address
    assert frames(psc) == [12]
    assert psc.invpcid(3, vpid=1) == 1  # no globals in a PSC: type 3 clears the VPID
    psc.fill(PAGE, 13, size="region", pcid=1, vpid=1, eptag=4)
    assert psc.mov_cr3(1, 1, pcide=True, noflush=True) == 0
    assert psc.invvpid(0, vpid=1, va=PAGE + (9 << 30)) == 1


def test_nested_tlb_is_only_touched_by_invept(impl):
    ntlb = impl.TLB(16, 4, kind="ntlb", sizes=("4K", "2M"))
    ntlb.fill(0x1000, 0x99, eptag=1)
    ntlb.fill(0x20_0000, 0x200, size="2M", eptag=2)
    assert ntlb.mov_cr3(0, 0, pcide=False) == 0
    assert ntlb.invlpg(0x1000) == 0
    assert ntlb.invpcid(2) == 0
    assert ntlb.invvpid(2) == 0
    assert ntlb.invept(1, eptag=1) == 1
    ntlb.fill(0x3000, 0x98, eptag=0)
    assert ntlb.invept(2) == 2  # INVEPT all-context empties the nested TLB, tag 0 included


def test_page_fault_removes_what_would_translate_its_address_in_its_context(populated):
    # A page fault in PCID 1, VPID 1, native (EPT tag 0): A (the page, PCID 1) and C (global, other
    # PCID) go; B (PCID 2), D and E (the next page), F and G (other VPIDs), H (EPT 9) stay.
    assert populated.page_fault(PAGE + 0x800, 1, 1) == 2
    assert frames(populated) == [2, 4, 5, 6, 7, 8]
    assert populated.page_fault(PAGE + 0x800, 1, 1, eptag=9) == 1  # under EPT 9: H
    assert populated.page_fault(PAGE + 0x1000, 1, 1) == 2  # D and E (global)
    assert frames(populated) == [2, 6, 7]


def test_page_fault_removes_every_piece_of_a_larger_page_of_its_context(impl):
    t = impl.TLB(16, 4)
    for offset in (0, 0x5000, 0x1F_F000):
        t.fill(PAGE + offset, 0x200, size="2M", pcid=1)  # pieces of one 2 MiB page, in three sets
    t.fill(PAGE + 0x3000, 0x400, size="2M", pcid=2)  # a piece of another PCID
    t.fill(PAGE + 0x7000, 0x7, pcid=1)  # a whole 4 KiB page of this PCID, elsewhere
    assert t.page_fault(PAGE + 0x1000, 1, 0) == 3
    assert frames(t) == [0x7, 0x403]


def test_page_fault_in_a_paging_structure_cache_takes_the_regions_that_cover_the_address(impl):
    psc = impl.TLB(8, 8, sizes=("region",), region_shift=21)
    psc.fill(PAGE, 10, size="region", pcid=1, vpid=1)
    psc.fill(PAGE + (1 << 21), 11, size="region", pcid=1, vpid=1)  # the next 2 MiB region
    psc.fill(PAGE, 12, size="region", pcid=2, vpid=1)
    psc.fill(PAGE, 13, size="region", pcid=1, vpid=1, eptag=3)
    assert psc.page_fault(PAGE + 0x1F_F000, 1, 1) == 1  # unlike INVLPG: only the region of the address
    assert frames(psc) == [11, 12, 13]
    ntlb = impl.TLB(8, 4, kind="ntlb")
    ntlb.fill(PAGE, 0x99, eptag=3)
    assert ntlb.page_fault(PAGE, 0, 0, eptag=3) == 0  # a nested TLB holds no linear address


def test_ept_violation_removes_the_guest_physical_entry_and_with_a_linear_address_the_combined_ones(impl):
    ntlb = impl.TLB(8, 4, kind="ntlb", sizes=("4K", "2M"))
    ntlb.fill(0x40_0000, 0x400, size="2M", eptag=3)
    ntlb.fill(0x40_0000, 0x600, size="2M", eptag=4)
    ntlb.fill(0x1000, 0x10, eptag=3)
    assert ntlb.ept_violation(0x5F_F008, eptag=3) == 1 and frames(ntlb) == [0x10, 0x600]
    assert ntlb.ept_violation(0x1000, eptag=3, va=PAGE, pcid=1, vpid=1) == 1
    t = impl.TLB(8, 4)
    t.fill(PAGE, 1, pcid=1, vpid=1, eptag=3)
    t.fill(PAGE, 2, pcid=1, vpid=1, eptag=4)
    assert t.ept_violation(0x1000, eptag=3) == 0  # a guest paging-structure address: no linear one
    assert t.ept_violation(0x1000, eptag=3, va=PAGE, pcid=1, vpid=1) == 1
    assert frames(t) == [2]
    with pytest.raises(ValueError, match=r"^gpa: expected 0..18446744073709551615, got -1$"):
        t.ept_violation(-1, eptag=3)


def test_raw_invalidate_selectors(impl):
    t = impl.TLB(64, 4)
    t.fill(PAGE, 1, pcid=1, vpid=1)
    t.fill(PAGE, 2, pcid=2, vpid=1, global_=True)
    how = impl.INV_MATCH_VPID | impl.INV_MATCH_ADDR | impl.INV_MATCH_PCID
    assert t.invalidate(how, va=PAGE, pcid=1, vpid=1) == 1
    assert t.invalidate(how | impl.INV_GLOBAL_ANY_PCID, va=PAGE, pcid=1, vpid=1) == 1
    with pytest.raises(ValueError, match=r"^how: expected a combination of INV_\* flags \(0..511\), got 512$"):
        t.invalidate(512)


def test_flush_removes_everything(populated):
    assert populated.flush() == 8
    assert populated.contents() == []
    assert populated.stats()["invalidated"] == 8
