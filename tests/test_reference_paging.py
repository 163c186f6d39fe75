"""The reference walkers on their own: exact reference counts, A/D bits, caches, arguments, traces.

(tests/test_walk_counts.py holds the same kind of counts for the compiled core.)
"""

from __future__ import annotations

import itertools
import re

import pytest
import worlds
from worlds import GVA, RAM, URW, GiB, KiB4, MiB2

from fastmmu.arch import EPT, PTE, Access, Attr, Status
from fastmmu.cpu import CpuState, EptConfig, VMEntryFailure
from fastmmu.reference import paging
from fastmmu.reference.memory import HostMemory
from fastmmu.reference.tlb import TLB
from fastmmu.tables import EptTable, PageTable
from fastmmu.translation import Reference

A, D = int(PTE.A), int(PTE.D)
USER, WRITE, FETCH = int(Access.USER), int(Access.WRITE), int(Access.FETCH)
SIZES = {"4K": KiB4, "2M": MiB2, "1G": GiB}
LEAF = {KiB4: 1, MiB2: 2, GiB: 3}


def psc(level: str, entries: int = 16, ways: int = 4) -> TLB:
    shift = {"pde": 21, "pdpte": 30, "pml4e": 39, "pml5e": 48}[level]
    return TLB(entries, ways, sizes=("region",), region_shift=shift, name=level)


def ntlb(sizes=("4K", "2M", "1G"), entries: int = 32, ways: int = 4) -> TLB:
    return TLB(entries, ways, sizes=sizes, kind="ntlb", name="nested")


def nested_world(guest_levels=4, ept_levels=4, guest_size=KiB4, ept_size=KiB4, *, ad=False, leaf=URW):
    return worlds.nested_world(HostMemory, guest_levels, ept_levels, guest_size, ept_size, ad=ad, leaf=leaf)


def native_world(levels=4, size=KiB4, leaf=URW):
    mem = HostMemory("64MiB")
    pt = PageTable(mem, levels)
    pt.map(GVA & ~(size - 1), 1 << 30, leaf, page_size=size)
    return mem, pt, CpuState(cr3=pt.root, levels=levels)


def snapshot(mem) -> dict:
    return {pfn: mem.read_frame(pfn).tolist() for pfn in mem._content}


# -- exact reference counts ------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("size", list(SIZES))
def test_native_counts(levels, size):
    mem, pt, cpu = native_world(levels, SIZES[size])
    walk = paging.walk(mem, cpu, GVA, USER)
    leaf = LEAF[SIZES[size]]
    assert walk.guest_refs == tuple(1 if leaf <= level <= levels else 0 for level in range(1, 6))
    assert walk.ept_refs == (0,) * 5 and walk.references == levels - leaf + 1
    assert (walk.page_size, walk.host_address) == (SIZES[size], (1 << 30) + (GVA & (SIZES[size] - 1)))


@pytest.mark.parametrize(("guest_levels", "ept_levels"), list(itertools.product((4, 5), repeat=2)))
@pytest.mark.parametrize("guest_size", list(SIZES))
@pytest.mark.parametrize("ept_size", list(SIZES))
def test_nested_counts(guest_levels, ept_levels, guest_size, ept_size):
    """n*m + n + m with 4 KiB pages; large pages remove levels of their own dimension."""
    world = nested_world(guest_levels, ept_levels, SIZES[guest_size], SIZES[ept_size])
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER | WRITE)
    assert walk.ok
    guest_leaf, ept_leaf = LEAF[SIZES[guest_size]], LEAF[SIZES[ept_size]]
    guest_entries = guest_levels - guest_leaf + 1  # guest references
    per_translation = ept_levels - ept_leaf + 1  # EPT references for each guest-physical address
    assert walk.guest_refs == tuple(1 if guest_leaf <= level <= guest_levels else 0 for level in range(1, 6))
    assert walk.ept_refs == tuple(guest_entries + 1 if ept_leaf <= level <= ept_levels else 0
                                  for level in range(1, 6))
    assert walk.references == guest_entries + (guest_entries + 1) * per_translation
    assert walk.page_size == min(SIZES[guest_size], SIZES[ept_size])
    assert walk.host_address == RAM + (GVA & (SIZES[guest_size] - 1))
    assert walk.guest_physical_address == GVA & (SIZES[guest_size] - 1)


@pytest.mark.parametrize(("guest_levels", "ept_levels", "total"), [(4, 4, 24), (4, 5, 29), (5, 4, 29), (5, 5, 35)])
def test_the_famous_numbers(guest_levels, ept_levels, total):
    world = nested_world(guest_levels, ept_levels)
    assert paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER).references == total


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("size", list(SIZES))
def test_ept_only_counts(levels, size):
    mem = HostMemory("64MiB")
    ept = EptTable(mem, levels)
    ept.map(0, RAM, page_size=size)
    walk = paging.walk_ept(mem, ept.config, 0x238, WRITE)
    leaf = LEAF[SIZES[size]]
    assert walk.ept_refs == tuple(1 if leaf <= level <= levels else 0 for level in range(1, 6))
    assert (walk.host_address, walk.page_size, walk.guest_physical_address) == (RAM + 0x238, SIZES[size], 0x238)


def test_counts_stop_at_the_fault():
    world = nested_world()
    world.pt.write_entry(GVA, 2, 0)  # the guest PDE is not present
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER)
    assert walk.status == Status.PAGE_FAULT
    assert walk.guest_refs == (0, 1, 1, 1, 0) and walk.ept_refs == (3, 3, 3, 3, 0)


# -- accessed and dirty flags, exactly ---------------------------------------------------------------


def test_native_flags_exactly():
    mem, pt, cpu = native_world(5)
    before = snapshot(mem)
    assert paging.walk(mem, cpu, GVA, USER).ok
    after_read = snapshot(mem)
    changed = {(pfn, i) for pfn in before for i in range(512) if before[pfn][i] != after_read[pfn][i]}
    assert len(changed) == 5  # A in each of the five entries, nothing else
    assert all(after_read[pfn][i] == before[pfn][i] | A for pfn, i in changed)
    assert paging.walk(mem, cpu, GVA, USER | WRITE).ok
    assert pt.read_entry(GVA, 1) == pt.read_entry(GVA, 1) | A | D
    assert all(not pt.read_entry(GVA, level) & D for level in (2, 3, 4, 5))


@pytest.mark.parametrize("ad", [False, True])
def test_nested_flags_exactly(ad):
    world = nested_world(ad=ad)
    before = snapshot(world.mem)
    assert paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER | WRITE).ok
    after = snapshot(world.mem)
    changes = sorted((after[pfn][i] ^ before[pfn][i]) for pfn in before for i in range(512)
                     if after[pfn][i] != before[pfn][i])
    guest = [A] * 3 + [A | D]  # three upper guest entries, the guest PTE
    if not ad:
        assert changes == sorted(guest)
        return
    # EPT: the entries used get A; the EPT leaves of the four table pages and the data page get D.
    ept_upper = {(level, world.ept.entry_address(gpa, level)) for gpa in (0, 1 << 20) for level in (4, 3, 2)}
    ept_leaves = {world.ept.entry_address(gpa, 1) for gpa in (*(world.pt.entry_address(GVA, lv) & ~0xFFF
                                                                for lv in (4, 3, 2, 1)), world.data)}
    want = guest + [int(EPT.A)] * len(ept_upper) + [int(EPT.A | EPT.D)] * len(ept_leaves)
    assert changes == sorted(want)


FAULTS = {
    "guest not present": lambda w: w.pt.write_entry(GVA, 1, 0),
    "guest protection": lambda w: w.pt.write_entry(GVA, 1, w.pt.read_entry(GVA, 1) & ~PTE.RW),
    "guest reserved bit": lambda w: w.pt.write_entry(GVA, 3, w.pt.read_entry(GVA, 3) | 1 << 50),
    "EPT violation on a table": lambda w: w.ept.write_entry(w.pt.entry_address(GVA, 2), 1, 0),
    "EPT misconfiguration on a table": lambda w: w.ept.write_entry(
        w.pt.entry_address(GVA, 3), 1, w.ept.read_entry(w.pt.entry_address(GVA, 3), 1) & ~EPT.R),
    "EPT violation on the data": lambda w: w.ept.write_entry(w.data, 1, w.ept.read_entry(w.data, 1) & ~EPT.W),
    "A/D write to a read-only table page": lambda w: w.ept.write_entry(
        w.pt.entry_address(GVA, 1), 1, w.ept.read_entry(w.pt.entry_address(GVA, 1), 1) & ~EPT.W),
}


@pytest.mark.parametrize("ad", [False, True])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_changes_nothing(fault, ad):
    world = nested_world(ad=ad)
    FAULTS[fault](world)
    nested = ntlb()
    caches = {"pde": psc("pde"), "pdpte": psc("pdpte"), "pml4e": psc("pml4e"), "nested": nested}
    before = snapshot(world.mem)
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER | WRITE, caches=caches)
    assert not walk.ok and snapshot(world.mem) == before
    assert all(cache.contents() == [] for key, cache in caches.items())


# -- caches skipping levels --------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [4, 5])
def test_paging_structure_caches_skip_levels(levels):
    mem, pt, cpu = native_world(levels)
    names = ["pde", "pdpte", "pml4e", "pml5e"][: levels - 1]
    caches = {name: psc(name) for name in names}
    first = paging.walk(mem, cpu, GVA, USER, caches=caches)
    assert first.guest_refs == tuple(1 if level <= levels else 0 for level in range(1, 6))
    assert {name: caches[name].stats()["fills"] for name in names} == dict.fromkeys(names, 1)
    # Drop the lower caches one by one: each hit resumes one level below the cached entry.
    for skipped, name in enumerate(names, start=1):
        walk = paging.walk(mem, cpu, GVA, USER, caches={key: caches[key] for key in names[skipped - 1:]})
        assert walk.guest_refs == tuple(1 if level <= skipped else 0 for level in range(1, 6)), name
        assert walk.host_address == first.host_address
    # A neighbour in the same 2 MiB shares the PDE; one in the next 1 GiB shares the PML4E.
    pt.map((GVA & ~0xFFF) + KiB4, 1 << 30)
    assert paging.walk(mem, cpu, GVA + KiB4, USER, caches=caches).references == 1
    pt.map((GVA & ~0xFFF) + GiB, 1 << 30)
    assert paging.walk(mem, cpu, GVA + GiB, USER, caches=caches).guest_refs[:3] == (1, 1, 1)


def test_cache_hits_keep_the_rights_of_the_skipped_levels():
    mem, pt, cpu = native_world()
    pt.write_entry(GVA, 3, pt.read_entry(GVA, 3) & ~PTE.RW)  # read-only at the PDPTE
    caches = {"pde": psc("pde")}
    assert paging.walk(mem, cpu, GVA, USER, caches=caches).ok
    assert caches["pde"].contents()[0]["attrs"] == Attr.U  # not writable, user, not XD
    walk = paging.walk(mem, cpu, GVA, USER | WRITE, caches=caches)
    assert (walk.status, walk.error_code, walk.references) == (Status.PAGE_FAULT, 0x07, 1)


def test_paging_structure_caches_are_tagged_by_pcid_and_vpid():
    mem, pt, _ = native_world()
    pde = psc("pde")
    cpu = CpuState(cr3=pt.root | 5, cr4_pcide=True)
    paging.walk(mem, cpu, GVA, USER, caches={"pde": pde, "vpid": 9})
    assert (pde.contents()[0]["pcid"], pde.contents()[0]["vpid"]) == (5, 9)
    assert paging.walk(mem, cpu, GVA, USER, caches={"pde": pde, "vpid": 9}).references == 1
    assert paging.walk(mem, cpu, GVA, USER, caches={"pde": pde, "vpid": 8}).references == 4
    assert paging.walk(mem, cpu, GVA, USER, caches={"pde": pde, "vpid": 9, "pcid": 6}).references == 4


def test_nested_tlb_and_paging_structure_caches_together():
    world = nested_world()
    nested = ntlb()
    caches = {"pde": psc("pde"), "nested": nested}
    first = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches=caches)
    assert first.references == 24 and nested.stats()["fills"] == 5
    # The PDE cache gives the guest PT's guest-physical frame; the nested TLB every host frame.
    second = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches=caches)
    assert (second.guest_refs, second.ept_refs) == ((1, 0, 0, 0, 0), (0,) * 5)
    assert second.host_address == first.host_address and second.attrs == first.attrs
    # Without the PDE cache: every guest entry is read, no EPT entry.
    third = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches={"nested": nested})
    assert (third.guest_refs, third.ept_refs) == ((1, 1, 1, 1, 0), (0,) * 5)


@pytest.mark.parametrize(("sizes", "fills"), [(("4K", "2M"), 1), (("4K",), 5)])
def test_one_nested_fill_per_region_cached(sizes, fills):
    """The guest tables (GPA 1 MiB + 0..16 KiB) and the data (GPA 0) share one 2 MiB EPT page."""
    world = nested_world(ept_size=MiB2)
    nested = ntlb(sizes=sizes)
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches={"nested": nested})
    assert walk.references == 4 + 5 * 3 and nested.stats()["fills"] == fills
    again = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches={"nested": nested})
    assert again.references == 4 and again.host_address == walk.host_address


def test_nested_tlb_hit_gives_the_size_of_the_entry_that_hit():
    world = nested_world(guest_size=MiB2, ept_size=MiB2)
    nested = ntlb(sizes=("4K",))  # splinters every 2 MiB EPT page into 4 KiB pieces
    first = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches={"nested": nested})
    second = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches={"nested": nested})
    assert (first.page_size, second.page_size) == (MiB2, KiB4)
    assert second.host_address == first.host_address and second.references == 3


def test_nested_tlb_entry_without_the_right_is_dropped_and_the_ept_walked():
    world = nested_world()
    leaf = world.ept.read_entry(world.data, 1)
    world.ept.write_entry(world.data, 1, leaf & ~EPT.W)
    nested = ntlb()
    assert paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches={"nested": nested}).ok
    world.ept.write_entry(world.data, 1, leaf)  # made writable again, without INVEPT
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER | WRITE, caches={"nested": nested})
    assert walk.ok and walk.ept_refs == (1, 1, 1, 1, 0) and walk.attrs & Attr.EPT_W
    assert nested.stats()["invalidated"] == 1 and nested.stats()["fills"] == 6


def test_nested_tlb_entry_with_ept_dirty_clear_is_dropped_for_a_write():
    world = nested_world(ad=True)
    nested = ntlb()
    caches = {"nested": nested}
    assert not paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, caches=caches).attrs & Attr.EPT_D
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER | WRITE, caches=caches)
    assert walk.ept_refs == (1, 1, 1, 1, 0) and walk.attrs & Attr.EPT_D
    assert world.ept.read_entry(world.data, 1) & EPT.D


def test_each_lookup_and_fill_advances_the_clock():
    mem, pt, cpu = native_world()
    pde, pdpte = psc("pde"), psc("pdpte")
    paging.walk(mem, cpu, GVA, USER, caches={"pde": pde, "pdpte": pdpte})
    assert (pde.clock, pdpte.clock) == (3, 3)  # a lookup and a fill each
    paging.walk(mem, cpu, GVA, USER, caches={"pde": pde, "pdpte": pdpte})
    assert (pde.clock, pdpte.clock) == (4, 3)  # the PDE cache hit; the PDPTE cache was not asked


def test_structures_a_walk_cannot_use_are_ignored():
    mem, pt, cpu = native_world()
    nested, pml5e = ntlb(), psc("pml5e")
    assert paging.walk(mem, cpu, GVA, USER, caches={"nested": nested, "pml5e": pml5e}).ok
    assert (nested.clock, pml5e.clock, nested.contents(), pml5e.contents()) == (1, 1, [], [])


CACHE_ERRORS = [
    ({"pte": None}, ValueError, "caches: unknown key 'pte'; expected some of pde, pdpte, pml4e, pml5e, nested"),
    ({"pde": object()}, TypeError, "caches['pde']: expected a fastmmu.reference.tlb.TLB, got object"),
    ({"pde": TLB(4, 4)}, ValueError, "caches['pde']: expected a TLB of kind 'psc', got kind 'tlb'"),
    ({"pde": psc("pdpte")}, ValueError, "caches['pde']: a PDE cache holds regions of 2MiB (region_shift=21), "
                                        "got region_shift=30"),
    ({"nested": TLB(4, 4)}, ValueError, "caches['nested']: expected a TLB of kind 'ntlb', got kind 'tlb'"),
    ({"vpid": 1 << 16}, ValueError, "caches['vpid']: expected 0 <= caches['vpid'] < 0x10000, got 0x10000"),
    ({"pcid": -1}, ValueError, "caches['pcid']: expected a non-negative integer, got -1"),
    (42, TypeError, "caches: expected a dict such as {'pde': TLB, 'nested': TLB} or None, got int"),
]


@pytest.mark.parametrize(("caches", "error", "message"), CACHE_ERRORS)
def test_cache_argument_errors(caches, error, message):
    mem, pt, cpu = native_world()
    with pytest.raises(error, match=re.escape(message)):
        paging.walk(mem, cpu, GVA, USER, caches=caches)


# -- arguments, results, traces --------------------------------------------------------------------------

ARGUMENT_ERRORS = [
    (lambda m, c, e: paging.walk(m, c, GVA, 16), ValueError,
     "access: bits 4..7 must be zero (WRITE=1, FETCH=2, USER=4, IMPLICIT=8), got 0x10"),
    (lambda m, c, e: paging.walk(m, c, GVA, WRITE | FETCH), ValueError,
     "access: WRITE and FETCH together is not an access kind, got 0x3"),
    (lambda m, c, e: paging.walk(m, c, GVA, 256), ValueError, "access: expected 0 <= access < 0x100, got 0x100"),
    (lambda m, c, e: paging.walk(m, c, GVA, "write"), TypeError, "access: expected an integer, got str 'write'"),
    (lambda m, c, e: paging.walk(m, c, -1, 0), ValueError, "va: expected a non-negative integer, got -1"),
    (lambda m, c, e: paging.walk(m, c, 1 << 64, 0), ValueError, "va: expected 0 <= va < 0x10000000000000000"),
    (lambda m, c, e: paging.walk_nested(m, c, e, 1.0, 0), TypeError, "gva: expected an integer, got float 1.0"),
    (lambda m, c, e: paging.walk_ept(m, e, -5, 0), ValueError, "gpa: expected a non-negative integer, got -5"),
    (lambda m, c, e: paging.walk(m, "cpu", GVA), TypeError, "cpu: expected a fastmmu.cpu.CpuState, got str"),
    (lambda m, c, e: paging.walk_ept(m, c, 0), TypeError, "ept: expected a fastmmu.cpu.EptConfig, got CpuState"),
    (lambda m, c, e: paging.walk(object(), c, GVA), TypeError, "mem: expected a fastmmu.HostMemory, got object"),
    (lambda m, c, e: paging.walk(m, CpuState(cr3=1 << 46), GVA), ValueError, "cr3: 0x400000000000 sets bits beyond"),
    (lambda m, c, e: paging.walk(m, CpuState(cr3=1 << 30), GVA), ValueError,
     "cpu.cr3: root table 0x40000000 is beyond host memory (64MiB)"),
    (lambda m, c, e: paging.walk_ept(m, EptConfig(root=1 << 30), 0), ValueError,
     "ept.root: root table 0x40000000 is beyond host memory (64MiB)"),
    (lambda m, c, e: paging.walk_ept(m, EptConfig(root=1 << 47), 0), VMEntryFailure,
     "EPTP address (root): 0x800000000000 sets reserved bits 51:46"),
]


@pytest.mark.parametrize(("call", "error", "message"), ARGUMENT_ERRORS)
def test_argument_errors(call, error, message):
    mem, pt, cpu = native_world()
    ept = EptTable(mem)
    with pytest.raises(error, match=re.escape(message)):
        call(mem, cpu, ept.config)


def test_mutated_state_is_checked_again():
    mem, pt, cpu = native_world()
    cpu.levels = 3
    with pytest.raises(ValueError, match=re.escape("cpu.levels: expected 4 or 5 paging levels, got 3")):
        paging.walk(mem, cpu, GVA)
    ept = EptTable(mem)
    ept.config.memtype = 2
    with pytest.raises(VMEntryFailure, match=re.escape("EPTP memory type (bits 2:0): 2; expected UC (0) or WB (6)")):
        paging.walk_ept(mem, ept.config, 0)


def test_result_fields_and_trace():
    mem, pt, cpu = native_world(leaf=URW | PTE.G | 9 << 59)
    entries = [(level, pt.entry_address(GVA, level), pt.read_entry(GVA, level)) for level in (4, 3, 2, 1)]
    walk = paging.walk(mem, cpu, GVA, USER | WRITE, trace=True)
    assert walk.trace == tuple(Reference("guest", level, address, value) for level, address, value in entries)
    assert (walk.host_address, walk.guest_physical_address, walk.guest_linear_address) == (
        (1 << 30) + (GVA & 0xFFF), 0, GVA)
    assert (walk.is_global, walk.pkey, walk.memtype, walk.error_code, walk.fault_address) == (True, 9, 0, 0, 0)
    assert walk.attrs == (Attr.W | Attr.U | Attr.D | Attr.G | 9 << 8 | Attr.EPT_R | Attr.EPT_W | Attr.EPT_X
                          | Attr.EPT_D)
    assert paging.walk(mem, cpu, GVA, USER).trace == ()  # no trace unless asked


def test_nested_result_fields():
    world = nested_world(leaf=URW | PTE.NX)
    world.ept.write_entry(0, 1, (world.ept.read_entry(0, 1) & ~0x38) | 4 << 3)  # WT for the data page
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER, trace=True)
    assert walk.ok and walk.memtype == 4
    assert walk.attrs == Attr.W | Attr.U | Attr.XD | Attr.EPT_R | Attr.EPT_W | Attr.EPT_X | Attr.EPT_D | 4 << 20
    assert [ref.dimension for ref in walk.trace] == (["ept"] * 4 + ["guest"]) * 4 + ["ept"] * 4
    assert walk.guest_physical_address == GVA & 0xFFF and walk.guest_linear_address == GVA


def test_check_access_examples():
    cpu = CpuState(cr4_smap=True, cr4_pke=True, pkru=0b01 << 6)  # key 3: access disabled
    assert paging.check_access(Attr.U | Attr.W, USER | WRITE, cpu) == 0
    assert paging.check_access(Attr.U | Attr.W, WRITE, cpu) == 0x03  # SMAP
    assert paging.check_access(Attr.U | Attr.W | 3 << 8, USER, cpu) == 0x25  # key 3
    assert paging.check_access(Attr.W | 3 << 8, 0, cpu) == 0  # keys: user-mode addresses only
    with pytest.raises(ValueError, match="access"):
        paging.check_access(0, 0x30, cpu)
