"""Exact memory-reference counts of the compiled walkers, per dimension and per level.

Every combination of guest levels (4, 5), EPT levels (4, 5) and page sizes
(4 KiB, 2 MiB, 1 GiB) on each side: a 2D walk with n guest levels, m EPT
levels and 4 KiB pages makes n*m + n + m references (24 for 4/4, 35 for
5/5); a large page removes the levels below its leaf, in its own dimension.
Paging-structure caches skip guest levels (and the EPT walks of the entries
they skip); a nested-TLB hit costs no EPT reference at all.
"""

from __future__ import annotations

import importlib

import pytest
import worlds
from worlds import GVA, RAM, URW, GiB, KiB4, MiB2

from fastmmu.arch import Access, Status
from fastmmu.cpu import CpuState
from fastmmu.tables import PageTable

paging = importlib.import_module("fastmmu._core.paging")
HostMemory = importlib.import_module("fastmmu._core.memory").HostMemory
TLB = importlib.import_module("fastmmu._core.tlb").TLB

USER = int(Access.USER)
SIZES = {"4K": KiB4, "2M": MiB2, "1G": GiB}
LEAF_LEVEL = {KiB4: 1, MiB2: 2, GiB: 3}
PSC_SHIFT = {"pde": 21, "pdpte": 30, "pml4e": 39, "pml5e": 48}


def psc(name: str) -> TLB:
    return TLB(16, 4, sizes=("region",), region_shift=PSC_SHIFT[name], name=name)


def nested_tlb(sizes=("4K", "2M", "1G")) -> TLB:
    return TLB(32, 4, sizes=sizes, kind="ntlb", name="nested")


def native_world(levels: int, size: int, *, also=()):
    """GVA's page mapped at 1 GiB (and each page of ``also`` anywhere)."""
    mem = HostMemory("64MiB")
    pt = PageTable(mem, levels)
    pt.map(GVA & ~(size - 1), 1 << 30, URW, page_size=size)
    for va in also:
        pt.map(va & ~0xFFF, 2 << 30, URW)
    return mem, CpuState(cr3=pt.root, levels=levels)


def nested_world(guest_levels: int, ept_levels: int, guest_size: int, ept_size: int, *, ad: bool = False):
    return worlds.nested_world(HostMemory, guest_levels, ept_levels, guest_size, ept_size, ad=ad)


def per_level(levels: range) -> tuple:
    """(refs at level 1, ..., refs at level 5) with one reference at each level in ``levels``."""
    return tuple(1 if level in levels else 0 for level in range(1, 6))


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("size", list(SIZES))
def test_native_counts(levels, size):
    mem, cpu = native_world(levels, SIZES[size])
    leaf = LEAF_LEVEL[SIZES[size]]
    walk = paging.walk(mem, cpu, GVA, USER)
    assert walk.status == Status.OK
    assert walk.guest_refs == per_level(range(leaf, levels + 1))
    assert walk.ept_refs == (0, 0, 0, 0, 0)
    assert walk.references == levels - leaf + 1
    assert walk.host_address == (1 << 30) + (GVA & (SIZES[size] - 1))
    assert walk.page_size == SIZES[size]


@pytest.mark.parametrize("guest_levels", [4, 5])
@pytest.mark.parametrize("ept_levels", [4, 5])
@pytest.mark.parametrize("guest_size", list(SIZES))
@pytest.mark.parametrize("ept_size", list(SIZES))
def test_nested_counts(guest_levels, ept_levels, guest_size, ept_size):
    world = nested_world(guest_levels, ept_levels, SIZES[guest_size], SIZES[ept_size])
    guest_leaf, ept_leaf = LEAF_LEVEL[SIZES[guest_size]], LEAF_LEVEL[SIZES[ept_size]]
    guest_entries = guest_levels - guest_leaf + 1
    translations = guest_entries + 1  # each guest entry's GPA, then the final GPA
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER)
    assert walk.status == Status.OK, walk
    assert walk.guest_refs == per_level(range(guest_leaf, guest_levels + 1))
    assert walk.ept_refs == tuple(translations * n for n in per_level(range(ept_leaf, ept_levels + 1)))
    assert walk.references == guest_entries + translations * (ept_levels - ept_leaf + 1)
    assert walk.host_address == RAM + (GVA & (SIZES[guest_size] - 1))
    assert walk.page_size == min(SIZES[guest_size], SIZES[ept_size])


@pytest.mark.parametrize(("n", "m", "total"), [(4, 4, 24), (5, 5, 35), (4, 5, 29), (5, 4, 29)])
def test_two_dimensional_walk_is_n_times_m_plus_n_plus_m(n, m, total):
    world = nested_world(n, m, KiB4, KiB4)
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA)
    assert walk.references == n * m + n + m == total
    assert sum(walk.guest_refs) == n and sum(walk.ept_refs) == (n + 1) * m


@pytest.mark.parametrize("ad", [False, True])
def test_counts_do_not_depend_on_access_kind_or_flags(ad):
    """Reads, writes, fetches; first walk (flags to set) or later ones: the same references."""
    world = nested_world(4, 4, KiB4, KiB4, ad=ad)
    for access in (0, int(Access.WRITE), int(Access.FETCH), USER | int(Access.WRITE), 0):
        walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, access)
        assert walk.status == Status.OK and walk.references == 24


def test_faulting_walks_count_the_references_they_made():
    world = nested_world(4, 4, KiB4, KiB4)
    # A not-present guest PML4E: the EPT walk of its GPA and the entry itself count.
    other = GVA - (1 << 39)  # another PML4 slot: not present in the guest
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, other)
    assert walk.status == Status.PAGE_FAULT
    assert walk.guest_refs == (0, 0, 0, 1, 0) and walk.ept_refs == (1, 1, 1, 1, 0)
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, 1 << 63)  # non-canonical: nothing at all
    assert walk.status == Status.GP and walk.references == 0


# -- caches skip levels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "name", "resume"),
    [
        (4, "pde", 1),
        (4, "pdpte", 2),
        (4, "pml4e", 3),
        (5, "pde", 1),
        (5, "pdpte", 2),
        (5, "pml4e", 3),
        (5, "pml5e", 4),
    ],
)
def test_native_paging_structure_cache_skips_levels(levels, name, resume):
    mem, cpu = native_world(levels, KiB4)
    caches = {name: psc(name)}
    first = paging.walk(mem, cpu, GVA, USER, caches=caches)
    assert first.guest_refs == per_level(range(1, levels + 1))
    second = paging.walk(mem, cpu, GVA + 8, USER, caches=caches)
    assert second.status == Status.OK and second.host_address == first.host_address + 8
    assert second.guest_refs == per_level(range(1, resume + 1))


def test_native_lowest_cache_level_wins():
    mem, cpu = native_world(4, KiB4, also=[GVA ^ (1 << 21)])
    caches = {name: psc(name) for name in ("pde", "pdpte", "pml4e")}
    paging.walk(mem, cpu, GVA, USER, caches=caches)
    assert paging.walk(mem, cpu, GVA, USER, caches=caches).guest_refs == (1, 0, 0, 0, 0)
    # Another 2 MiB region in the same 1 GiB: the PDE cache misses, the PDPTE cache gives the PD.
    assert paging.walk(mem, cpu, GVA ^ (1 << 21), USER, caches=caches).guest_refs == (1, 1, 0, 0, 0)


@pytest.mark.parametrize(("n", "m"), [(4, 4), (5, 5)])
def test_nested_paging_structure_cache_skips_guest_levels_and_their_ept_walks(n, m):
    world = nested_world(n, m, KiB4, KiB4)
    caches = {"pde": psc("pde")}
    assert paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, caches=caches).references == n * m + n + m
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, caches=caches)
    assert walk.guest_refs == (1, 0, 0, 0, 0)
    assert walk.ept_refs == tuple(2 * x for x in per_level(range(1, m + 1)))  # the PTE's GPA and the final GPA


@pytest.mark.parametrize(("n", "m"), [(4, 4), (5, 5), (4, 5)])
def test_nested_tlb_hits_cost_no_ept_reference(n, m):
    world = nested_world(n, m, KiB4, KiB4)
    caches = {"nested": nested_tlb()}
    paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, caches=caches)
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, caches=caches)
    assert walk.status == Status.OK
    assert walk.guest_refs == per_level(range(1, n + 1)) and walk.ept_refs == (0, 0, 0, 0, 0)
    # Both caches: one guest reference is all that is left.
    caches["pde"] = psc("pde")
    paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, caches=caches)
    walk = paging.walk_nested(world.mem, world.cpu, world.ept.config, GVA, caches=caches)
    assert walk.references == 1 and walk.guest_refs == (1, 0, 0, 0, 0)


def test_walk_ept_counts():
    world = nested_world(4, 5, KiB4, MiB2)
    walk = paging.walk_ept(world.mem, world.ept.config, 0x1234)
    assert walk.status == Status.OK and walk.ept_refs == (0, 1, 1, 1, 1) and walk.guest_refs == (0,) * 5
    caches = {"nested": nested_tlb()}
    paging.walk_ept(world.mem, world.ept.config, 0x1234, caches=caches)
    assert paging.walk_ept(world.mem, world.ept.config, 0x5678, caches=caches).references == 0
