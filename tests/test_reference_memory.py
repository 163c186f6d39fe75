"""The reference HostMemory mirrors the compiled one: same results, same layouts, same errors.

A scripted sequence and Hypothesis-generated sequences of operations run on
both memories; every result (or exception type and message) must match, and
so must the full state afterwards.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmmu.arch import FrameKind
from fastmmu.reference.memory import HostMemory as RefMemory
from fastmmu.reference.memory import MemoryExhausted as RefExhausted

compiled = importlib.import_module("fastmmu._core.memory")
CMemory = compiled.HostMemory


def outcome(call, *args, **kwargs):
    """What ``call(*args, **kwargs)`` did: ("ok", value) or ("error", exception type name, message)."""
    try:
        value = call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every error is part of the contract
        return ("error", type(exc).__name__, str(exc))
    if isinstance(value, np.ndarray):
        return ("ok", value.dtype.str, value.tolist())
    return ("ok", value)


def state(mem) -> dict:
    """Everything observable about a memory."""
    frames = range(mem.nframes)
    return {
        "size": mem.size,
        "nframes": mem.nframes,
        "maxphyaddr": mem.maxphyaddr,
        "free_frames": mem.free_frames,
        "table_frames": mem.table_frames,
        "repr": repr(mem),
        "kinds": [mem.kind_of(pfn) for pfn in frames],
        "owners": [mem.owner_of(pfn) for pfn in frames],
        "trapped": [mem.is_trapped(pfn) for pfn in frames],
        "owned": {owner: mem.frames_owned(owner) for owner in range(4)},
        "content": {pfn: mem.read_frame(pfn).tolist() for pfn in frames if mem.read_frame(pfn).any()},
    }


def run_both(size, operations, **kwargs):
    """Apply ``operations`` (name, args, kwargs) to both memories; compare each outcome and the end state."""
    ref, comp = RefMemory(size, **kwargs), CMemory(size, **kwargs)
    for step, (name, args, kw) in enumerate(operations):
        got_ref = outcome(getattr(ref, name), *args, **kw)
        got_comp = outcome(getattr(comp, name), *args, **kw)
        assert got_ref == got_comp, f"step {step}: {name}{args}{kw}"
    assert state(ref) == state(comp)
    return ref, comp


SCRIPT = [
    ("alloc", (3,), {"owner": 1, "kind": FrameKind.GUEST_PT}),
    ("alloc_frame", (), {"owner": 2}),
    ("alloc", (4,), {"contiguous": True, "lo": 2}),
    ("alloc", (2,), {"lo": 10, "hi": 12, "kind": FrameKind.EPT}),
    ("alloc", (1,), {"lo": 10, "hi": 12}),  # exhausted in that range
    ("alloc", (1,), {"lo": 12, "hi": 10}),  # bad range
    ("alloc", (1,), {"hi": 10**6}),
    ("alloc", (-1,), {}),
    ("alloc", (True,), {}),
    ("alloc", (1,), {"owner": 1 << 24}),
    ("alloc", (1,), {"kind": 0}),
    ("alloc", (1,), {"kind": 6}),
    ("alloc", (0,), {}),
    ("alloc", (np.int64(2),), {"owner": np.int64(3)}),
    ("alloc_at", ([20, 22, 21],), {"owner": 3, "kind": FrameKind.SHADOW}),
    ("alloc_at", ([20],), {}),
    ("alloc_at", ([23, 23],), {}),
    ("alloc_at", ([10**6],), {}),
    ("alloc_at", ([-1],), {}),
    ("write", (0, 0x1234_5007), {}),
    ("write", (8 * 511, 0xFFFF_FFFF_FFFF_FFFF), {}),
    ("write", (3, 1), {}),  # not aligned
    ("write", (200 << 12, 1), {}),  # not allocated
    ("write", (10**9, 1), {}),  # beyond memory
    ("write", (4096, -1), {}),
    ("write", (4096, 1 << 64), {}),
    ("write", (30 << 12, 0), {}),  # zero into a frame without content: no content
    ("write", (1 << 12, 0), {}),  # allocated, zero: still no content
    ("read", (0,), {}),
    ("read", (8 * 511,), {}),
    ("read", (5 << 12,), {}),
    ("read", (10**9,), {}),
    ("read", (-8,), {}),
    ("read", (4,), {}),
    ("write_run", (2 << 12, 512, 0x1000_0003, 0x1000), {}),
    ("write_run", ((3 << 12) + 8 * 500, 12, 0xFFFF_FFFF_FFFF_F000, 0x1000), {}),  # wraps mod 2**64
    ("write_run", ((3 << 12) + 8 * 500, 13, 0, 1), {}),  # crosses the frame
    ("write_run", (4 << 12, 0, 0, 0), {}),  # zero entries: no content
    ("write_run", (5 << 12, 3, 0, 0), {}),  # zeros, but a run: content
    ("write_run", (300 << 12, 1, 1, 1), {}),  # not allocated
    ("read_frame", (2,), {}),
    ("read_frame", (4,), {}),
    ("read_frame", (10**6,), {}),
    ("owner_of", (20,), {}),
    ("kind_of", (21,), {}),
    ("kind_of", (999,), {}),
    ("kind_of", (10**7,), {}),
    ("set_kind", (2, FrameKind.SHADOW), {}),
    ("set_kind", (999, FrameKind.DATA), {}),
    ("set_kind", (2, 9), {}),
    ("frames_owned", (1,), {}),
    ("frames_owned", (7,), {}),
    ("set_trap", (3,), {}),
    ("set_trap", (3,), {}),
    ("set_trap", (4, False), {}),
    ("is_trapped", (3,), {}),
    ("set_trap", (10**7,), {}),
    ("free", ([2, 2],), {}),
    ("free", ([999],), {}),
    ("free", (-1,), {}),
    ("free", ([2, 3],), {}),  # content erased, trap cleared
    ("alloc", (3,), {}),  # reuses 2 and 3 first
    ("free", ([],), {}),
    ("alloc", (5,), {"contiguous": True}),
    ("alloc", (10**6,), {}),
]


def test_scripted_sequence():
    ref, comp = run_both("4MiB", SCRIPT, maxphyaddr=40)
    assert ref.read(0) == 0x1234_5007
    assert ref.table_frames == comp.table_frames


@pytest.mark.parametrize(
    ("size", "kwargs"),
    [
        (0, {}),
        ("1KiB", {}),
        (4097, {}),
        ("128TiB", {}),
        ("1TiB", {"maxphyaddr": 39}),
        ("1MiB", {"maxphyaddr": 35}),
        ("1MiB", {"maxphyaddr": 53}),
        ("1MiB", {"maxphyaddr": "46"}),
        (True, {}),
        ("lots", {}),
        (-4096, {}),
        (4.0, {}),
    ],
)
def test_constructor_errors_match(size, kwargs):
    assert outcome(RefMemory, size, **kwargs) == outcome(CMemory, size, **kwargs)


def test_huge_memory_costs_nothing_until_used():
    ref = RefMemory("1TiB", maxphyaddr=46)
    root = ref.alloc_frame(kind=FrameKind.HYPERVISOR)
    ref.write(root << 12, 0x5001)
    assert (ref.nframes, ref.table_frames, ref.read(root << 12)) == (1 << 28, 1, 0x5001)
    assert ref.read((1 << 40) - 8) == 0
    assert ref.alloc(2, lo=(1 << 28) - 2).tolist() == [(1 << 28) - 2, (1 << 28) - 1]


def test_exhaustion_is_memory_exhausted():
    ref = RefMemory("64KiB")
    ref.alloc(16)
    with pytest.raises(RefExhausted, match="host memory exhausted: 1 frame"):
        ref.alloc(1)
    assert issubclass(RefExhausted, MemoryError)


def test_lowest_free_frames_and_lowest_run():
    ref = RefMemory("64KiB")
    ref.alloc_at([1, 3, 4, 8])
    assert ref.alloc(3).tolist() == [0, 2, 5]
    assert ref.alloc(2, contiguous=True).tolist() == [6, 7]
    ref.free([2, 5])
    assert ref.alloc(2, contiguous=True).tolist() == [9, 10]
    assert ref.alloc(2).tolist() == [2, 5]


@pytest.mark.parametrize("make", [RefMemory, CMemory], ids=["reference", "compiled"])
def test_set_kind_cannot_make_a_frame_free(make):
    """set_kind(pfn, FREE) would leave an allocated frame that reads as free: it must be refused."""
    mem = make("1MiB")
    pfn = mem.alloc_frame(owner=1)
    with pytest.raises(ValueError, match="FRAME_FREE"):
        mem.set_kind(pfn, FrameKind.FREE)
    assert (mem.kind_of(pfn), mem.frames_owned(1)) == (FrameKind.DATA, 1)


# -- random sequences ------------------------------------------------------------------------

NFRAMES = 48  # a 192 KiB memory: small enough to exhaust, so every error path is reached
frames = st.integers(0, NFRAMES + 2)
addresses = st.one_of(
    st.builds(lambda pfn, index: (pfn << 12) + 8 * index, frames, st.integers(0, 511)),
    st.integers(0, (NFRAMES + 2) << 12),
)
values = st.one_of(st.just(0), st.integers(0, (1 << 64) - 1), st.integers(1, 0xFFFF))
kinds = st.sampled_from([1, 2, 3, 4, 5, 0, 6])
owners = st.integers(0, 3)

operation = st.one_of(
    st.tuples(st.just("alloc"), st.tuples(st.integers(0, 12)),
              st.fixed_dictionaries({}, optional={"owner": owners, "kind": kinds, "lo": frames,
                                                  "hi": frames, "contiguous": st.booleans()})),
    st.tuples(st.just("alloc_frame"), st.just(()),
              st.fixed_dictionaries({}, optional={"owner": owners, "lo": frames, "hi": frames})),
    st.tuples(st.just("alloc_at"), st.tuples(st.lists(frames, max_size=4)),
              st.fixed_dictionaries({}, optional={"owner": owners, "kind": kinds})),
    st.tuples(st.just("free"), st.tuples(st.one_of(frames, st.lists(frames, max_size=4))), st.just({})),
    st.tuples(st.just("write"), st.tuples(addresses, values), st.just({})),
    st.tuples(st.just("write_run"), st.tuples(addresses, st.integers(0, 520), values, values), st.just({})),
    st.tuples(st.just("read"), st.tuples(addresses), st.just({})),
    st.tuples(st.just("read_frame"), st.tuples(frames), st.just({})),
    st.tuples(st.just("owner_of"), st.tuples(frames), st.just({})),
    st.tuples(st.just("kind_of"), st.tuples(frames), st.just({})),
    st.tuples(st.just("set_kind"), st.tuples(frames, st.sampled_from([1, 2, 3, 4, 5, 7])), st.just({})),
    st.tuples(st.just("frames_owned"), st.tuples(owners), st.just({})),
    st.tuples(st.just("set_trap"), st.tuples(frames, st.booleans()), st.just({})),
    st.tuples(st.just("is_trapped"), st.tuples(frames), st.just({})),
)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(st.lists(operation, max_size=40))
def test_random_sequences_match(operations):
    run_both(NFRAMES << 12, operations, maxphyaddr=36)
