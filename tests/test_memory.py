"""fastmmu._core.memory.HostMemory: sparse content, the frame allocator, ownership, traps."""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

from fastmmu._core.memory import BUILD_DEBUG, HostMemory, MemoryExhausted, kind_name
from fastmmu.arch import PAGE_SHIFT, PTE, FrameKind

GiB = 1 << 30
TiB = 1 << 40
PAGE = 1 << PAGE_SHIFT
INITIAL_SLOTS = 16  # the entries buffer starts with room for 16 frames, the zero frame included


def _flat_available() -> bool:
    try:
        return HostMemory(PAGE, layout="flat").layout == "flat"
    except MemoryError:
        return False


# Every layout this platform offers: "flat" (rows are frame numbers) where address space can be
# reserved lazily, and "slots" (rows handed out on first write) everywhere.
LAYOUTS = ["flat", "slots"] if _flat_available() else ["slots"]


def addr(pfn: int, index: int = 0) -> int:
    """Host-physical address of entry ``index`` of frame ``pfn``."""
    return (pfn << PAGE_SHIFT) + 8 * index


@pytest.fixture(params=LAYOUTS)
def mem(request) -> HostMemory:
    m = HostMemory("1GiB", layout=request.param)
    assert m.layout == request.param
    return m


def zero_row(m: HostMemory) -> int:
    """Row of ``entries`` that is always zero: slot 0, or (flat) the sentinel frame past the end."""
    return m.nframes if m.layout == "flat" else 0


# -- construction --------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sizes_of_a_one_tib_memory(layout):
    m = HostMemory("1TiB", layout=layout)
    assert m.layout == layout
    assert m.size == TiB
    assert m.nframes == TiB // PAGE == 1 << 28
    assert m.free_frames == m.nframes
    assert m.maxphyaddr == 46
    assert m.table_frames == 0
    assert m.table_bytes == (0 if layout == "flat" else INITIAL_SLOTS * PAGE)
    assert repr(m) == "HostMemory('1TiB', maxphyaddr=46: 0 frames allocated, 0 with content)"


def test_size_accepts_ints_and_units():
    assert HostMemory(64 * PAGE).nframes == 64
    assert HostMemory("512 MiB").size == 512 << 20
    assert HostMemory("64GiB", maxphyaddr=36).size == 64 * GiB


@pytest.mark.parametrize(
    ("size", "kwargs", "message"),
    [
        (0, {}, "host memory size: expected a positive multiple of 4 KiB, got 0 bytes"),
        (5000, {}, "host memory size: expected a positive multiple of 4 KiB, got 5000 bytes"),
        ("128TiB", {}, "host memory size: 128TiB exceeds what MAXPHYADDR=46 can address (64TiB)"),
        ("1TiB", {"maxphyaddr": 39}, "host memory size: 1TiB exceeds what MAXPHYADDR=39 can address (512GiB)"),
        ("1GiB", {"maxphyaddr": 35}, "maxphyaddr: expected 36..52 bits, got 35"),
        ("1GiB", {"maxphyaddr": 53}, "maxphyaddr: expected 36..52 bits, got 53"),
        ("lots", {}, "host memory size: cannot read 'lots' as a size; write e.g. 4096, '512MiB' or '1TiB'"),
    ],
)
def test_bad_configuration_is_rejected_with_a_clear_message(size, kwargs, message):
    with pytest.raises(ValueError) as info:
        HostMemory(size, **kwargs)
    assert str(info.value) == message


def test_build_debug_is_a_bool():
    assert BUILD_DEBUG in (True, False)


# -- resident memory follows the tables, not the configured size -------------------


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


N_TABLES = 1000


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_tib_costs_only_the_tables_written(layout):
    """1 TiB configured (the machine has 24 GiB); N table frames spread over all of it."""
    gc.collect()
    before = _resident_bytes() if sys.platform.startswith("linux") else None
    m = HostMemory("1TiB", layout=layout)
    stride = m.nframes // N_TABLES
    frames = m.alloc_at(np.arange(N_TABLES, dtype=np.uint64) * stride + 7, owner=3, kind=FrameKind.GUEST_PT)
    for pfn in frames.tolist():
        m.write_run(addr(pfn), 512, (pfn << PAGE_SHIFT) | PTE.P, PAGE)
    assert m.table_frames == N_TABLES
    if layout == "flat":
        assert m.table_bytes == N_TABLES * PAGE  # 4 KiB committed per frame with content
    else:
        # The buffer doubles as it grows: at least N+1 slots (slot 0 is the zero frame), under 2(N+1).
        assert (N_TABLES + 1) * PAGE <= m.table_bytes < 2 * (N_TABLES + 1) * PAGE
        assert m.table_bytes == 1024 * PAGE  # 16 doubled to the first power of two >= 1001
    last = int(frames[-1])
    assert m.read(addr(last, 511)) == ((last << PAGE_SHIFT) | PTE.P) + 511 * PAGE
    if before is None:
        pytest.skip("resident-memory bound is checked on Linux only (/proc/self/statm)")
    grown = _resident_bytes() - before
    # Tables: 4 MiB.  Per-frame records (slot_of 4 B, frame_info 4 B per frame) become
    # resident one 4 KiB page per frame touched: 8 MiB here.  Touching every record of 1 TiB
    # would cost 2.25 GiB; the bound leaves room for allocator noise.
    assert grown < 48 << 20, f"resident memory grew by {grown >> 20} MiB"


# -- reading and writing -----------------------------------------------------------


def test_unwritten_and_unallocated_frames_read_as_zero(mem):
    pfn = mem.alloc_frame(kind=FrameKind.GUEST_PT)
    assert mem.read(addr(pfn, 5)) == 0
    assert mem.read(addr(pfn + 1, 0)) == 0  # never allocated
    assert mem.read(mem.size - 8) == 0  # the last word of memory
    assert mem.slot_of(pfn) == 0
    assert mem.table_frames == 0


def test_write_then_read_back_every_bit(mem):
    pfn = mem.alloc_frame(kind=FrameKind.EPT)
    mem.write(addr(pfn, 0), 0xFFFF_FFFF_FFFF_FFFF)
    mem.write(addr(pfn, 511), 1 << 63)
    assert mem.read(addr(pfn, 0)) == 0xFFFF_FFFF_FFFF_FFFF
    assert mem.read(addr(pfn, 511)) == 1 << 63
    assert mem.read(addr(pfn, 1)) == 0
    assert mem.table_frames == 1
    slot = mem.slot_of(pfn)
    assert slot == (pfn if mem.layout == "flat" else 1)
    frame = mem.read_frame(pfn)
    assert frame.dtype == np.uint64 and frame.shape == (512,)
    assert frame[0] == 0xFFFF_FFFF_FFFF_FFFF and frame[511] == 1 << 63 and not frame[1:511].any()
    frame[2] = 9  # a copy: memory is untouched
    assert mem.read(addr(pfn, 2)) == 0
    assert mem.entries[slot, 511] == 1 << 63


def test_writing_zero_to_a_frame_without_content_costs_nothing(mem):
    pfn = mem.alloc_frame()
    mem.write(addr(pfn, 3), 0)
    assert mem.slot_of(pfn) == 0
    assert mem.table_frames == 0


def test_content_grows_past_the_initial_capacity(mem):
    frames = mem.alloc(INITIAL_SLOTS + 5, kind=FrameKind.SHADOW)
    for pfn in frames.tolist():
        mem.write(addr(pfn, pfn % 512), pfn + 1)
    assert mem.table_frames == INITIAL_SLOTS + 5
    if mem.layout == "flat":
        assert mem.table_bytes == (INITIAL_SLOTS + 5) * PAGE
    else:
        assert mem.table_bytes == 2 * INITIAL_SLOTS * PAGE
    assert [mem.read(addr(p, p % 512)) for p in frames.tolist()] == [p + 1 for p in frames.tolist()]
    assert mem.entries.shape == ((mem.nframes + 1) if mem.layout == "flat" else INITIAL_SLOTS + 6, 512)
    assert not mem.entries[zero_row(mem)].any()  # the zero frame stays zero


@pytest.mark.parametrize("op", ["read", "write"])
def test_address_errors(mem, op):
    call = mem.read if op == "read" else (lambda a: mem.write(a, 1))
    with pytest.raises(ValueError) as info:
        call(0x1003)
    assert str(info.value) == f"{op}: address 0x1003 is not 8-byte aligned"
    with pytest.raises(ValueError) as info:
        call(GiB)
    assert str(info.value) == f"{op}: address 0x40000000 is beyond host memory (1GiB)"
    with pytest.raises(ValueError) as info:
        call(1 << 63)
    assert str(info.value) == f"{op}: address 0x8000000000000000 is beyond host memory (1GiB)"


def test_writing_to_a_free_frame_is_refused(mem):
    with pytest.raises(ValueError) as info:
        mem.write(0x5008, 1)
    assert str(info.value) == "write: frame 0x5 (address 0x5008) is not allocated"
    assert mem.table_frames == 0


def test_write_run(mem):
    pfn = mem.alloc_frame(kind=FrameKind.GUEST_PT)
    mem.write_run(addr(pfn, 10), 3, 0x1000 | PTE.P, 0x1000)
    assert [mem.read(addr(pfn, i)) for i in range(9, 14)] == [0, 0x1001, 0x2001, 0x3001, 0]
    mem.write_run(addr(pfn, 510), 2, 7, 0)
    assert mem.read(addr(pfn, 511)) == 7
    with pytest.raises(ValueError) as info:
        mem.write_run(addr(pfn, 510), 3, 1, 0)
    assert str(info.value) == f"write_run: 3 entries from {addr(pfn, 510):#x} cross the end of the frame"
    with pytest.raises(ValueError):  # a count that would wrap the bound check around 2**64
        mem.write_run(addr(pfn, 1), 2**64 - 1, 1, 0)


def test_entries_is_read_only(mem):
    pfn = mem.alloc_frame(kind=FrameKind.GUEST_PT)
    mem.write(addr(pfn), 5)
    view = mem.entries
    assert view.shape == ((mem.nframes + 1) if mem.layout == "flat" else 2, 512) and view.dtype == np.uint64
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 1
    with pytest.raises(ValueError):
        view.flags.writeable = True
    assert not mem.entries[zero_row(mem)].any() and mem.read(addr(pfn)) == 5
    assert mem.entries[mem.slot_of(pfn), 0] == 5


# -- allocation ----------------------------------------------------------------------


def test_alloc_takes_the_lowest_free_frames_and_records_owner_and_kind(mem):
    frames = mem.alloc(4, owner=7, kind=FrameKind.GUEST_PT)
    assert frames.dtype == np.uint64
    assert frames.tolist() == [0, 1, 2, 3]
    assert [mem.owner_of(p) for p in range(5)] == [7, 7, 7, 7, 0]
    assert [mem.kind_of(p) for p in range(5)] == [FrameKind.GUEST_PT] * 4 + [FrameKind.FREE]
    assert mem.frames_owned(7) == 4
    assert mem.frames_owned(8) == 0
    assert mem.free_frames == mem.nframes - 4
    assert mem.alloc_frame() == 4
    assert mem.kind_of(4) == FrameKind.DATA and mem.owner_of(4) == 0
    assert mem.alloc(0).tolist() == []


def test_scattered_alloc_fills_holes_and_contiguous_alloc_skips_them(mem):
    mem.alloc(10, owner=1)
    mem.free([2, 5, 7])
    assert mem.alloc(2, contiguous=True, owner=2).tolist() == [10, 11]
    assert mem.alloc(3, owner=2).tolist() == [2, 5, 7]
    assert mem.frames_owned(1) == 7 and mem.frames_owned(2) == 5
    mem.free([3, 4])
    assert mem.alloc(2, contiguous=True).tolist() == [3, 4]


def test_alloc_within_a_range(mem):
    assert mem.alloc(4, lo=100, hi=104).tolist() == [100, 101, 102, 103]
    assert mem.alloc(2, lo=0, hi=2, contiguous=True).tolist() == [0, 1]
    assert mem.alloc(1, lo=50).tolist() == [50]
    assert mem.alloc(1).tolist() == [2]  # the lowest free frame overall
    mem.free(101)
    assert mem.alloc(1, lo=101, hi=104).tolist() == [101]
    assert mem.alloc(1, hi=mem.nframes, lo=mem.nframes - 1).tolist() == [mem.nframes - 1]


def test_exhaustion_raises_and_allocates_nothing(mem):
    mem.alloc(3, lo=100, hi=104, owner=5)  # 103 stays free
    mem.free(101)  # 101 and 103 free, not adjacent
    free_before = mem.free_frames
    with pytest.raises(MemoryExhausted) as info:
        mem.alloc(3, lo=100, hi=104, owner=6)
    assert str(info.value) == (f"host memory exhausted: 3 frame(s) requested in frames [0x64, 0x68), "
                               f"{free_before} free in all")
    with pytest.raises(MemoryExhausted) as info:
        mem.alloc(2, lo=100, hi=104, owner=6, contiguous=True)
    assert str(info.value) == (f"host memory exhausted: 2 contiguous frame(s) requested in frames "
                               f"[0x64, 0x68), {free_before} free in all")
    assert isinstance(info.value, MemoryError)
    assert mem.free_frames == free_before
    assert mem.frames_owned(6) == 0
    assert mem.kind_of(101) == FrameKind.FREE and mem.kind_of(103) == FrameKind.FREE
    assert mem.alloc(2, lo=100, hi=104, owner=6).tolist() == [101, 103]


def test_a_full_memory_is_exhausted():
    m = HostMemory(8 * PAGE)
    m.alloc(8)
    with pytest.raises(MemoryExhausted) as info:
        m.alloc(1)
    assert str(info.value) == "host memory exhausted: 1 frame(s) requested in frames [0x0, 0x8), 0 free in all"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": -1}, "count: expected a non-negative integer, got -1"),
        ({"count": True}, "count: expected a non-negative integer, got True"),
        ({"count": 1.0}, "count: expected a non-negative integer, got 1.0"),
        ({"owner": -1}, "owner: expected an id in 0..16777215 (0 = hypervisor), got -1"),
        ({"owner": 1 << 24}, "owner: expected an id in 0..16777215 (0 = hypervisor), got 16777216"),
        ({"kind": 6}, "kind: expected a FrameKind (0..5), got 6"),
        ({"kind": FrameKind.FREE}, "kind: cannot allocate frames as FRAME_FREE"),
        ({"lo": 10, "hi": 8}, "lo/hi: range [0xa, 0x8) is not within frames [0, 0x40000)"),
        ({"hi": 0x40001}, "lo/hi: range [0x0, 0x40001) is not within frames [0, 0x40000)"),
    ],
)
def test_alloc_argument_errors(mem, kwargs, message):
    with pytest.raises(ValueError) as info:
        mem.alloc(**kwargs)
    assert str(info.value) == message
    assert mem.free_frames == mem.nframes


def test_alloc_at_takes_exactly_the_frames_named(mem):
    frames = mem.alloc_at([900, 3, 0x3FFFF], owner=4, kind=FrameKind.EPT)
    assert frames.dtype == np.uint64 and frames.tolist() == [900, 3, 0x3FFFF]
    assert [mem.kind_of(p) for p in (3, 900, 0x3FFFF)] == [FrameKind.EPT] * 3
    assert mem.frames_owned(4) == 3
    assert mem.alloc(1).tolist() == [0]


@pytest.mark.parametrize(
    ("pfns", "message"),
    [
        ([7, 9, 7], "alloc_at: the same frame is listed twice"),
        ([8, 5], "alloc_at: frame 0x5 is already allocated"),
        ([8, 0x40000], "alloc_at: frame 0x40000 is beyond host memory"),
    ],
)
def test_alloc_at_errors_allocate_nothing(mem, pfns, message):
    mem.alloc_at([5])
    with pytest.raises(ValueError) as info:
        mem.alloc_at(pfns, owner=2)
    assert str(info.value) == message
    assert mem.free_frames == mem.nframes - 1
    assert mem.frames_owned(2) == 0
    assert mem.kind_of(8) == FrameKind.FREE


# -- freeing ----------------------------------------------------------------------------


def test_free_erases_content_and_reuses_the_slot(mem):
    a, b = mem.alloc(2, owner=3, kind=FrameKind.GUEST_PT).tolist()
    mem.write(addr(a, 1), 0xAAAA)
    mem.write(addr(b, 2), 0xBBBB)
    slot_a = mem.slot_of(a)
    bytes_before = mem.table_bytes
    mem.free([a])
    assert mem.read(addr(a, 1)) == 0
    assert mem.slot_of(a) == 0
    assert mem.kind_of(a) == FrameKind.FREE
    assert mem.table_frames == 1
    assert mem.frames_owned(3) == 1
    assert not mem.entries[slot_a].any()
    c = mem.alloc_frame(kind=FrameKind.SHADOW)
    assert c == a  # the lowest free frame again
    assert mem.read(addr(c, 1)) == 0  # no content leaks to the next owner
    mem.write(addr(c, 9), 0xCCCC)
    assert mem.slot_of(c) == slot_a  # the freed slot is reused, the buffer does not grow
    assert mem.table_bytes == bytes_before
    assert mem.read(addr(b, 2)) == 0xBBBB


def test_free_errors_free_nothing(mem):
    mem.alloc(3)
    with pytest.raises(ValueError) as info:
        mem.free([1, 9])
    assert str(info.value) == "free: frame 0x9 is not allocated"
    with pytest.raises(ValueError) as info:
        mem.free([0, 0])
    assert str(info.value) == "free: the same frame is listed twice"
    with pytest.raises(ValueError) as info:
        mem.free([0x40000])
    assert str(info.value) == "free: frame 0x40000 is not allocated"
    assert mem.free_frames == mem.nframes - 3
    assert mem.frames_owned(0) == 3
    assert [mem.kind_of(p) for p in range(3)] == [FrameKind.DATA] * 3


# -- kinds, traps, frame-number checks -----------------------------------------------------


def test_set_kind(mem):
    pfn = mem.alloc_frame(owner=9)
    mem.set_kind(pfn, FrameKind.GUEST_PT)
    assert mem.kind_of(pfn) == FrameKind.GUEST_PT and mem.owner_of(pfn) == 9
    with pytest.raises(ValueError) as info:
        mem.set_kind(pfn + 1, FrameKind.DATA)
    assert str(info.value) == "set_kind: frame 0x1 is not allocated"
    with pytest.raises(ValueError) as info:
        mem.set_kind(pfn, 6)
    assert str(info.value) == "kind: expected a FrameKind (0..5), got 6"
    assert mem.kind_of(pfn) == FrameKind.GUEST_PT


def test_set_trap(mem):
    pfn = mem.alloc_frame(kind=FrameKind.GUEST_PT)
    assert not mem.is_trapped(pfn)
    mem.set_trap(pfn)
    mem.set_trap(pfn)  # idempotent
    assert mem.is_trapped(pfn)
    mem.set_trap(pfn, False)
    assert not mem.is_trapped(pfn)
    mem.set_trap(pfn, True)
    mem.free(pfn)
    assert not mem.is_trapped(pfn)  # freeing a frame clears its trap


@pytest.mark.parametrize("method", ["read_frame", "slot_of", "owner_of", "kind_of", "set_trap", "is_trapped"])
@pytest.mark.parametrize("pfn", [0x40000, (1 << 52) | 1, 2**64 - 1])
def test_frame_numbers_beyond_memory_are_rejected(mem, method, pfn):
    # (1 << 52) | 1 once wrapped to a valid address when shifted left by 12 and crashed.
    with pytest.raises(ValueError) as info:
        getattr(mem, method)(pfn)
    assert str(info.value) == f"{method}: frame {pfn:#x} is beyond host memory (1GiB, 0x40000 frames)"


def test_set_kind_beyond_memory(mem):
    with pytest.raises(ValueError) as info:
        mem.set_kind((1 << 52) | 1, FrameKind.DATA)
    assert str(info.value) == "set_kind: frame 0x10000000000001 is beyond host memory (1GiB, 0x40000 frames)"


def test_kind_names():
    assert [kind_name(k) for k in FrameKind] == [
        "free", "data", "guest page table", "shadow table", "EPT", "hypervisor"]
    assert kind_name(42) == "kind 42"


def test_random_alloc_free_keeps_the_books(rng):
    """Random allocations and frees: free_frames, frames_owned and kinds always agree."""
    m = HostMemory(4096 * PAGE)
    held: dict[int, int] = {}  # frame -> owner
    for _ in range(300):
        if held and rng.random() < 0.4:
            victims = rng.choice(sorted(held), size=int(rng.integers(1, min(8, len(held)) + 1)), replace=False)
            m.free(victims)
            for pfn in victims.tolist():
                del held[pfn]
        else:
            owner = int(rng.integers(0, 4))
            got = m.alloc(int(rng.integers(1, 20)), owner=owner, contiguous=bool(rng.random() < 0.3))
            assert not set(got.tolist()) & set(held)
            held.update(dict.fromkeys(got.tolist(), owner))
        assert m.free_frames == m.nframes - len(held)
        for owner in range(4):
            assert m.frames_owned(owner) == sum(1 for o in held.values() if o == owner)
    for pfn, owner in held.items():
        assert m.owner_of(pfn) == owner and m.kind_of(pfn) == FrameKind.DATA


# -- layouts ------------------------------------------------------------------------------


def test_layout_choice(monkeypatch):
    assert HostMemory(PAGE, layout="slots").layout == "slots"
    monkeypatch.setenv("FASTMMU_MEMORY_LAYOUT", "slots")
    assert HostMemory(PAGE).layout == "slots"  # the variable forces slots over "auto"
    monkeypatch.setenv("FASTMMU_MEMORY_LAYOUT", "auto")
    assert HostMemory(PAGE).layout == LAYOUTS[0]
    monkeypatch.delenv("FASTMMU_MEMORY_LAYOUT")
    assert HostMemory(PAGE).layout == LAYOUTS[0]
    with pytest.raises(ValueError, match="layout: expected 'auto', 'flat' or 'slots', got 'dense'"):
        HostMemory(PAGE, layout="dense")
    monkeypatch.setenv("FASTMMU_MEMORY_LAYOUT", "dense")
    with pytest.raises(ValueError, match="FASTMMU_MEMORY_LAYOUT"):
        HostMemory(PAGE)


@pytest.mark.skipif("flat" not in LAYOUTS, reason="no flat layout on this platform")
def test_flat_rows_are_frame_numbers_and_the_sentinel_stays_zero():
    m = HostMemory(8 * PAGE, layout="flat")
    frames = m.alloc(8, kind=FrameKind.GUEST_PT).tolist()
    for pfn in frames:
        m.write_run(addr(pfn), 512, 0xFFFF_FFFF_FFFF_FFFF, 0)
    view = m.entries
    assert view.shape == (9, 512)
    assert [m.slot_of(p) for p in frames] == frames and m.table_bytes == 8 * PAGE
    assert (view[:8] == 0xFFFF_FFFF_FFFF_FFFF).all() and not view[8].any()
    assert list(m.content_frames()) == frames
    m.free(frames[2:4])
    assert not view[2:4].any() and (view[4] == 0xFFFF_FFFF_FFFF_FFFF).all()  # a live view sees the erase
    assert m.table_frames == 6 and m.table_bytes == 6 * PAGE and m.slot_of(2) == 0
    del m  # the view keeps the buffer alive
    assert not view[8].any() and (view[7] == 0xFFFF_FFFF_FFFF_FFFF).all()
