"""The page-table builders: the same tables in both memories, the mapping API, speed, errors."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from fastmmu.arch import EPT, PTE, FrameKind, MemType
from fastmmu.reference.memory import HostMemory as RefMemory
from fastmmu.tables import EptTable, PageTable

compiled = pytest.importorskip("fastmmu._core.memory")
CMemory = compiled.HostMemory

URW = PTE.P | PTE.RW | PTE.US
GiB, MiB = 1 << 30, 1 << 20


@pytest.fixture(params=["reference", "compiled"])
def make_memory(request):
    return RefMemory if request.param == "reference" else CMemory


def snapshot(mem) -> tuple:
    """Every allocated frame: (number, kind, owner, content)."""
    rows = []
    for pfn in range(mem.nframes):
        if mem.kind_of(pfn):
            rows.append((pfn, mem.kind_of(pfn), mem.owner_of(pfn), mem.read_frame(pfn).tolist()))
    return tuple(rows), mem.table_frames, mem.free_frames


def build_everything(mem):
    """One of each: native 4- and 5-level tables, an EPT with every page size, a guest table through it."""
    pt4 = PageTable(mem, 4, owner=1)
    pt4.map(0x7F00_0000_0000, 0x1234_5000, PTE.P | PTE.US | PTE.NX | 3 << 59)
    pt4.map_range(0x4000_0000, 0x20_0000, 3 * MiB + 8 * 4096, URW)
    pt4.map(0x8000_0000, 0x4000_0000, URW | PTE.G, page_size="1G")
    pt4.map_range(0xC000_0000, 0x8000_0000, 6 * MiB, URW, page_size="2M")
    pt4.write_entry(0x1_0000_0000, 1, 0xDEAD_BEEF_0000_0FFF)
    pt5 = PageTable(mem, 5, kind=FrameKind.SHADOW)
    pt5.map(0xFF00_0000_0000_0000, 0x5000)
    pt5.map_range(0x00F0_0000_0000_0000, 0x6000, 64 * 4096)
    ept = EptTable(mem, 4, owner=2, ad=True)
    guest = mem.alloc(64, owner=2)
    ept.map_range(0, int(guest[0]) << 12, 64 * 4096, EPT.RWX)
    ept.map(2 * MiB, 512 * MiB, EPT.R | EPT.X, memtype=MemType.UC, page_size="2M")
    ept.map(GiB, GiB, EPT.RWX, page_size="1G")
    gpas = iter(range(0, 64 * 4096, 4096))
    gpt = PageTable(mem, 4, ept=ept, alloc_gpa=lambda: next(gpas))
    gpt.map_range(0x40_0000, 0x1000, 40 * 4096)
    gpt.map(0x7FFF_FFFF_F000, 0x3000, PTE.P)
    return pt4, pt5, ept, gpt


def test_identical_tables_in_both_memories():
    ref, comp = RefMemory("4GiB"), CMemory("4GiB")
    build_everything(ref)
    build_everything(comp)
    assert snapshot(ref) == snapshot(comp)


def test_map_and_translate(make_memory):
    mem = make_memory("4GiB")
    pt4, pt5, ept, gpt = build_everything(mem)
    assert pt4.translate(0x7F00_0000_0FFF) == 0x1234_5FFF
    assert pt4.read_entry(0x7F00_0000_0000, 1) == 0x1234_5000 | PTE.P | PTE.US | PTE.NX | 3 << 59
    assert pt4.translate(0x4000_0000 + 3 * MiB + 7 * 4096 + 5) == 0x20_0000 + 3 * MiB + 7 * 4096 + 5
    assert pt4.translate(0x4000_0000 + 3 * MiB + 8 * 4096) is None
    assert pt4.translate(0x8765_4321) == 0x4765_4321
    assert pt4.read_entry(0x8000_0000, 3) == 0x4000_0000 | URW | PTE.G | PTE.PS
    assert pt4.read_entry(0x8000_0000, 2) is None  # a 1 GiB page: no PD below
    assert pt4.translate(0xC050_0000) == 0x8050_0000
    assert pt4.translate(0x1_0000_0000) == 0xDEAD_BEEF_0000_0000 & 0x000F_FFFF_FFFF_F000
    assert pt5.translate(0xFF00_0000_0000_0ABC) == 0x5ABC
    assert pt5.translate(0x00F0_0000_0003_F000) == 0x6000 + 0x3F000
    assert ept.translate(63 * 4096 + 8) is not None and ept.translate(64 * 4096) is None
    assert ept.translate(2 * MiB + 0x1234) == 512 * MiB + 0x1234
    assert ept.read_entry(2 * MiB, 2) == 512 * MiB | EPT.R | EPT.X | MemType.UC << 3 | EPT.PS
    assert ept.translate(GiB + 77) == GiB + 77
    assert ept.config.root == ept.root and ept.config.ad
    # The guest's table lives in guest-physical pages; its entries are at the host address EPT gives.
    assert gpt.root == 0 and gpt.translate(0x40_0000 + 39 * 4096 + 1) == 0x1000 + 39 * 4096 + 1
    pte = gpt.entry_address(0x40_0000, 1)
    assert mem.read(ept.translate(pte)) == 0x1000 | URW
    assert gpt.translate(0x7FFF_FFFF_FFFF) == 0x3FFF


def test_native_tables_are_host_frames_of_the_given_kind(make_memory):
    mem = make_memory("64MiB")
    pt = PageTable(mem, 4, owner=7, kind=FrameKind.SHADOW)
    pt.map(0x1000, 0x2000)
    tables = [pfn for pfn in range(mem.nframes) if mem.kind_of(pfn)]
    assert [mem.kind_of(pfn) for pfn in tables] == [FrameKind.SHADOW] * 4
    assert mem.frames_owned(7) == 4 and pt.root == tables[0] << 12
    ept = EptTable(mem, 5, owner=3)
    assert mem.kind_of(ept.root >> 12) == FrameKind.EPT and ept.config.levels == 5


def test_unmap_entry_address_write_entry(make_memory):
    mem = make_memory("64MiB")
    pt = PageTable(mem)
    pt.map(0x20_0000, 0x40_0000, URW, page_size="2M")
    pt.map(0x1000, 0x5000)
    assert pt.unmap(0x20_1234) == 0x40_0000 | URW | PTE.PS
    assert pt.unmap(0x20_1234) == 0 and pt.translate(0x20_0000) is None
    assert pt.unmap(0x7000_0000_0000) == 0
    pd = pt.read_entry(0x1000, 2) & ~0xFFF
    assert pt.entry_address(0x1000, 1) == pd + 8
    assert pt.entry_address(0x4000_0000, 1) is None  # no PDPT entry there yet
    pt.write_entry(0x4000_0000, 1, 0xFFFF_FFFF_FFFF_FFFF)  # garbage, missing tables created
    assert pt.read_entry(0x4000_0000, 1) == 0xFFFF_FFFF_FFFF_FFFF
    assert pt.read_entry(0x4000_0000, 2) & URW == URW
    pt.write_entry(0x1000, 4, 0)  # cut the PML4E: the rest is unreachable
    assert pt.translate(0x1000) is None and pt.read_entry(0x1000, 1) is None
    ept = EptTable(mem)
    ept.map(0x3000, 0x9000, EPT.R)
    assert ept.unmap(0x3FFF) == 0x9000 | EPT.R | MemType.WB << 3
    ept.write_entry(0x3000, 1, 0x9000 | EPT.W)  # write-only: a misconfiguration, but writable
    assert ept.read_entry(0x3000, 1) == 0x9000 | EPT.W and ept.translate(0x3000) == 0x9000


def test_remap_overwrites_a_leaf(make_memory):
    mem = make_memory("64MiB")
    pt = PageTable(mem)
    pt.map(0x1000, 0x5000)
    pt.map(0x1000, 0x6000, PTE.P)
    assert pt.read_entry(0x1000, 1) == 0x6000 | PTE.P


def test_guest_tables_are_zeroed_and_need_mapped_pages(make_memory):
    mem = make_memory("64MiB")
    ept = EptTable(mem)
    backing = mem.alloc(8, kind=FrameKind.DATA)
    ept.map_range(0, int(backing[0]) << 12, 8 * 4096)
    mem.write_run(int(backing[3]) << 12, 512, 0x1111, 0)  # a reused guest page holding data
    pt = PageTable(mem, ept=ept, alloc_gpa=lambda: 3 * 4096)
    assert pt.root == 3 * 4096 and not mem.read_frame(int(backing[3])).any()
    with pytest.raises(ValueError, match="guest table page 0x9000 is not mapped by the EPT"):
        PageTable(mem, ept=ept, alloc_gpa=lambda: 9 * 4096)
    with pytest.raises(ValueError, match="not 4 KiB aligned"):
        PageTable(mem, ept=ept, alloc_gpa=lambda: 0x10)
    pt.alloc_gpa = None  # a public attribute: changed after the fact, it is a clear error, not an assert
    with pytest.raises(TypeError, match=r"^alloc_gpa: a guest page table needs a function .* got None$"):
        pt.map(1 << 30, 0x5000)


def test_map_range_crosses_tables_and_large_pages(make_memory):
    mem = make_memory("8GiB")
    pt = PageTable(mem, 5)
    start = (1 << 48) - 3 * 4096  # crosses a PML4E boundary in 5-level paging
    pt.map_range(start, 0x10_0000, 6 * 4096)
    assert [pt.translate(start + i * 4096) for i in range(6)] == [0x10_0000 + i * 4096 for i in range(6)]
    pt.map_range(0, 0, 2 * GiB, URW, page_size="1G")
    assert pt.translate(5) == 5 and pt.translate(GiB + 5) == GiB + 5


def test_map_range_speed_16GiB_of_4K_pages():
    """4 Mi entries through one write_run per leaf table: seconds at most, not minutes."""
    mem = CMemory("64GiB")
    pt = PageTable(mem)
    began = time.perf_counter()
    pt.map_range(0x1000_0000_0000, 0, 16 * GiB, URW)
    elapsed = time.perf_counter() - began
    assert elapsed < 10, f"mapping 16 GiB of 4 KiB pages took {elapsed:.1f} s"
    assert mem.table_frames == 1 + 1 + 16 + 16 * 512
    assert pt.translate(0x1000_0000_0000 + 16 * GiB - 1) == 16 * GiB - 1
    assert pt.translate(0x1000_0000_0000 + 16 * GiB) is None
    last = pt.read_entry(0x1000_0000_0000 + 16 * GiB - 4096, 1)
    assert last == (16 * GiB - 4096) | URW


def test_ept_map_range_speed():
    mem = CMemory("64GiB")
    ept = EptTable(mem)
    began = time.perf_counter()
    ept.map_range(0, 0, 16 * GiB)
    assert time.perf_counter() - began < 10
    assert ept.translate(16 * GiB - 8) == 16 * GiB - 8


# -- errors ------------------------------------------------------------------------------------

ERRORS = [
    (lambda pt, ept: PageTable(pt.mem, 3), ValueError, "levels: expected 4 or 5 paging levels, got 3"),
    (lambda pt, ept: EptTable(pt.mem, 6), ValueError, "levels: expected 4 or 5 paging levels, got 6"),
    (lambda pt, ept: pt.map(0x1001, 0x2000), ValueError, "va: 0x1001 is not aligned to the 4KiB page size"),
    (lambda pt, ept: pt.map(0x1000, 0x2001), ValueError, "pa: 0x2001 is not aligned to the 4KiB page size"),
    (lambda pt, ept: pt.map(0x1000, 0x1000, page_size="2M"), ValueError, "va: 0x1000 is not aligned to the 2MiB"),
    (lambda pt, ept: pt.map(0, 0x1000, page_size="1G"), ValueError, "pa: 0x1000 is not aligned to the 1GiB"),
    (lambda pt, ept: pt.map(0, 0, page_size=8192), ValueError, "page_size: expected 4096, 2 MiB or 1 GiB"),
    (lambda pt, ept: pt.map(0, 0, page_size="4M"), ValueError, "page_size: expected 4096, 2 MiB or 1 GiB"),
    (lambda pt, ept: pt.map(1 << 47, 0), ValueError, "va: 0x800000000000 is not canonical for 4-level paging"),
    (lambda pt, ept: pt.map(-4096, 0), ValueError, "va: expected a 64-bit unsigned value"),
    (lambda pt, ept: pt.map("0", 0), TypeError, "va: expected an integer"),
    (lambda pt, ept: pt.map(0, 1 << 40), ValueError, "pa: 0x10000000000 (+0x1000) is beyond MAXPHYADDR=40"),
    (lambda pt, ept: pt.map(0, 0, 0x1000 | PTE.P), ValueError, "flags: 0x1001 sets address bits"),
    (lambda pt, ept: pt.map(0, 0, table_flags=PTE.P | PTE.PS), ValueError, "table_flags: 0x81 sets address bits"),
    (lambda pt, ept: pt.map_range(0, 0, 4095), ValueError, "length: 0xfff is not a multiple of the 4KiB"),
    (lambda pt, ept: pt.map_range(0x7FFF_FFFF_F000, 0, 0x2000), ValueError, "leaves the canonical address range"),
    (lambda pt, ept: pt.map_range(0xFFFF_FFFF_FFFF_F000, 0, 0x2000), ValueError, "leaves the canonical"),
    (lambda pt, ept: pt.map(0x20_1000, 0), ValueError, "0x201000 is mapped by a 2MiB page (level 2); unmap it first"),
    (lambda pt, ept: pt.map(0, 0, page_size="2M"), ValueError, "a page table is mapped where the 2MiB page goes"),
    (lambda pt, ept: pt.entry_address(0, 6), ValueError, "level: expected 1..4, got 6"),
    (lambda pt, ept: pt.read_entry(0, 0), ValueError, "level: expected 1..4, got 0"),
    (lambda pt, ept: pt.write_entry(0x20_0000, 1, 0), ValueError, "is mapped by a 2MiB page"),
    (lambda pt, ept: pt.write_entry(0, 1, 1 << 64), ValueError, "value: expected a 64-bit unsigned value"),
    (lambda pt, ept: PageTable(pt.mem, ept=ept), ValueError, "alloc_gpa: a guest page table"),
    (lambda pt, ept: PageTable(pt.mem, alloc_gpa=lambda: 0), ValueError, "alloc_gpa: only meaningful"),
    (lambda pt, ept: PageTable(pt.mem, ept=ept.config, alloc_gpa=lambda: 0), TypeError, "ept: expected an EptTable"),
    (lambda pt, ept: ept.map(0x1000, 0x1001), ValueError, "hpa: 0x1001 is not aligned"),
    (lambda pt, ept: ept.map(1 << 48, 0), ValueError, "gpa: 0x1000000000000 is beyond what 4-level EPT maps"),
    (lambda pt, ept: ept.map(0, 0, EPT.RWX | 6 << 3), ValueError, "perms: 0x37 sets address, memory-type or PS"),
    (lambda pt, ept: ept.map(0, 0, memtype=2), ValueError, "memtype: expected a MemType"),
    (lambda pt, ept: ept.map(0, 0, memtype=7), ValueError, "memtype: expected a MemType"),
    (lambda pt, ept: ept.map_range(0, 0, 100), ValueError, "length: 0x64 is not a multiple"),
    (lambda pt, ept: ept.map_range((1 << 48) - 4096, 0, 8192), ValueError, "is beyond what the EPT maps"),
    (lambda pt, ept: ept.translate(1 << 48), ValueError, "gpa: 0x1000000000000 is beyond what 4-level EPT"),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_errors(make_memory, call, error, message):
    mem = make_memory("64MiB", maxphyaddr=40)
    pt = PageTable(mem)
    pt.map(0x20_0000, 0x20_0000, page_size="2M")
    pt.map(0x1000, 0x1000)
    ept = EptTable(mem)
    with pytest.raises(error, match=re.escape(message)):
        call(pt, ept)


def test_errors_change_nothing(make_memory):
    mem = make_memory("64MiB")
    pt = PageTable(mem)
    pt.map(0x20_0000, 0x20_0000, page_size="2M")
    before = snapshot(mem)
    for call in (lambda: pt.map(0x20_1000, 0), lambda: pt.map_range(0x1000, 0, 4095),
                 lambda: pt.map(0x1001, 0)):
        with pytest.raises(ValueError):
            call()
    assert snapshot(mem) == before


def test_builders_only_use_the_public_memory_api():
    """A memory that offers only read/write/write_run/alloc_frame/maxphyaddr is enough."""

    class Minimal:
        def __init__(self):
            self.inner = RefMemory("64MiB")
            self.maxphyaddr = self.inner.maxphyaddr

        def read(self, addr):
            return self.inner.read(addr)

        def write(self, addr, value):
            self.inner.write(addr, value)

        def write_run(self, addr, count, first, step):
            self.inner.write_run(addr, count, first, step)

        def alloc_frame(self, **kwargs):
            return self.inner.alloc_frame(**kwargs)

    mem = Minimal()
    pt = PageTable(mem)
    pt.map_range(0, 0, 8192)
    ept = EptTable(mem)
    ept.map(0, 0x5000)
    assert pt.translate(0x1FFF) == 0x1FFF and ept.translate(5) == 0x5005
    assert np.count_nonzero(mem.inner.read_frame(pt.root >> 12)) == 1
