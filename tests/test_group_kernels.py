"""The run loop's group kernels against the reference model, on batches long enough for them.

With no TLB the compiled run loop walks 64 native accesses at a time with
the quick kernel (all or nothing), and otherwise 16 or 32 at a time with the
group kernels (per lane); the reference model walks one access after the
other.  Each case below plants one way out of the fast paths (a flag to set,
a fault, a large page, a table beyond memory, a non-canonical address, a
second access kind...) in the middle of a long batch, and both backends must
agree on every output, status, fault, counter and page-table byte.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fastmmu._core.memory import HostMemory as CompiledMemory
from fastmmu._core.mmu import MMU as CompiledMMU
from fastmmu.arch import PTE, Access, FrameKind
from fastmmu.cpu import CpuState
from fastmmu.reference.memory import HostMemory as ReferenceMemory
from fastmmu.reference.mmu import MMU as ReferenceMMU
from fastmmu.tables import PageTable
from fastmmu.tlbconfig import TLBConfig

MEMORY = "64MiB"          # flat: a 128 MiB buffer (the next power of two above 64 MiB + the sentinel)
VA = 0x0000_7F00_0000_0000
KERNEL_VA = 0xFFFF_8000_0000_0000
PAGES = 96                # 4 KiB pages from VA (two page tables) and as many from KERNEL_VA
SPECIAL = 37              # the page the cases change
LENGTH = 3 * 64 + 45      # accesses per batch: quick groups, then a tail for the per-lane kernels
DATA = 0x2000             # first data frame


class Twin:
    """The same tables in both backends, every page touched once (A set, D set on even pages)."""

    def __init__(self, levels: int, **cpu: object) -> None:
        self.mems = [CompiledMemory(MEMORY), ReferenceMemory(MEMORY)]
        self.tables = [PageTable(mem, levels=levels, kind=FrameKind.GUEST_PT) for mem in self.mems]
        for pt in self.tables:
            for i in range(PAGES):
                for base, flags in ((VA, PTE.P | PTE.RW | PTE.US), (KERNEL_VA, PTE.P | PTE.RW)):
                    pt.map(base + i * 4096, (DATA + i) << 12, flags | (PTE.A | (PTE.D if i % 2 == 0 else 0)))
            pt.map(VA + (64 << 21), (DATA + 512) << 12, PTE.P | PTE.RW | PTE.US | PTE.A, page_size=2 << 20)
        self.mmus = [mmu_class(mem, tlb=TLBConfig.none(), cpu=CpuState(cr3=pt.root, levels=levels, **cpu))
                     for mmu_class, mem, pt in zip((CompiledMMU, ReferenceMMU), self.mems, self.tables, strict=True)]
        for mmu in self.mmus:   # A on every table entry above the leaves
            mmu.translate(np.array(pages(VA) + pages(KERNEL_VA), np.uint64), np.full(2 * PAGES, Access.READ, np.uint8))

    def edit(self, va: int, level: int, change: Callable[[int], int]) -> None:
        for pt in self.tables:
            pt.write_entry(va, level, change(pt.read_entry(va, level)))

    def table_frames(self) -> list[int]:
        mem = self.mems[0]
        return [pfn for pfn in range(mem.nframes) if mem.kind_of(pfn) == FrameKind.GUEST_PT]


def pages(base: int) -> list[int]:
    return [base + i * 4096 for i in range(PAGES)]


def long_batch(base: int = VA, special: int | None = None, kind: int = Access.READ) -> tuple[np.ndarray, np.ndarray]:
    """LENGTH accesses over the pages in turn, with offsets; ``special`` replaces the 100th."""
    addresses = np.array([base + (i * 7 % PAGES) * 4096 + (i * 40 % 4096) for i in range(LENGTH)], np.uint64)
    if special is not None:
        addresses[100] = special
    return addresses, np.full(LENGTH, kind, np.uint8)


def compare(twin: Twin, addresses: np.ndarray, kinds: np.ndarray) -> int:
    """Run the batch on both backends (resuming past each stop) and compare everything; the stops."""
    start, stops = 0, 0
    while start < len(addresses):
        results = []
        for mmu in twin.mmus:
            out = np.full(len(addresses), 0xDEAD, np.uint64)
            status = np.full(len(addresses), 0xEE, np.uint8)
            result = mmu.translate(addresses, kinds, out=out, status=status, start=start)
            end = min(result.stopped + 1, len(addresses))
            results.append((result.stopped, int(result.status), result.fault, out[start:end].tolist(),
                            status[start:end].tolist()))
        assert results[0] == results[1]
        start = results[0][0] + 1
        stops += results[0][0] < len(addresses)
    assert twin.mmus[0].counters() == twin.mmus[1].counters()
    for frame in twin.table_frames():
        assert twin.mems[0].read_frame(frame).tolist() == list(twin.mems[1].read_frame(frame)), f"frame {frame:#x}"
    return stops


CASES: dict[str, tuple[dict, Callable[[Twin], None], Callable[[], tuple[np.ndarray, np.ndarray]], int]] = {
    # name: (CPU state, the change, the batch, whether it faults: 1, or not: 0)
    "every lane walks": ({}, lambda t: None, lambda: long_batch(), 0),
    "kernel half": ({}, lambda t: None, lambda: long_batch(KERNEL_VA), 0),
    "a leaf without A": ({}, lambda t: t.edit(VA + SPECIAL * 4096, 1, lambda e: e & ~PTE.A), lambda: long_batch(), 0),
    "a table without A": ({}, lambda t: t.edit(VA + 80 * 4096, 2, lambda e: e & ~PTE.A), lambda: long_batch(), 0),
    "a write to a clean page": ({}, lambda t: None, lambda: long_batch(kind=Access.WRITE), 0),
    "a page not present": ({}, lambda t: t.edit(VA + SPECIAL * 4096, 1, lambda e: e & ~PTE.P),
                           lambda: long_batch(), 1),
    "a read-only page written": ({}, lambda t: t.edit(VA + 2 * 4096, 1, lambda e: e & ~PTE.RW),
                                 lambda: long_batch(kind=Access.WRITE), 1),
    "a supervisor page from user mode": ({}, lambda t: t.edit(VA + 4 * 4096, 1, lambda e: e & ~PTE.US),
                                         lambda: long_batch(kind=Access.USER), 1),
    "a fetch from a no-execute table": ({}, lambda t: t.edit(VA + 80 * 4096, 2, lambda e: e | PTE.NX),
                                        lambda: long_batch(kind=Access.FETCH), 1),
    "a reserved bit": ({}, lambda t: t.edit(VA + SPECIAL * 4096, 1, lambda e: e | 1 << 51), lambda: long_batch(), 1),
    "a table past the end of memory": ({}, lambda t: t.edit(VA + 80 * 4096, 2, lambda e: e + (64 << 20)),
                                       lambda: long_batch(), 1),
    "a table past the flat buffer": ({}, lambda t: t.edit(VA + 80 * 4096, 2, lambda e: e | 1 << 40),
                                     lambda: long_batch(), 1),
    "a large page": ({}, lambda t: None, lambda: long_batch(special=VA + (64 << 21) + 0x12345), 0),
    "a non-canonical address": ({}, lambda t: None, lambda: long_batch(special=0x0000_8000_0000_0000), 1),
    "both halves": ({}, lambda t: None, lambda: long_batch(special=KERNEL_VA + 0x3008), 0),
    "two access kinds": ({}, lambda t: None,
                         lambda: (long_batch()[0], np.where(np.arange(LENGTH) == 100, Access.WRITE,
                                                            Access.READ).astype(np.uint8)), 0),
    "SMAP, a supervisor read of user pages": ({"cr4_smap": True}, lambda t: None, lambda: long_batch(), 1),
    "SMAP with EFLAGS.AC": ({"cr4_smap": True, "eflags_ac": True}, lambda t: None, lambda: long_batch(), 0),
    "protection keys": ({"cr4_pke": True, "pkru": 0b1100},
                        lambda t: t.edit(VA + SPECIAL * 4096, 1, lambda e: e | 1 << 59),
                        lambda: long_batch(kind=Access.USER | Access.WRITE), 1),
    "write protection off": ({"cr0_wp": False}, lambda t: t.edit(KERNEL_VA + 2 * 4096, 1, lambda e: e & ~PTE.RW),
                             lambda: long_batch(KERNEL_VA, kind=Access.WRITE), 0),
}


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_long_batches_match_the_reference(case: str, levels: int) -> None:
    cpu, change, make_batch, faults = CASES[case]
    twin = Twin(levels, **cpu)
    change(twin)
    addresses, kinds = make_batch()
    assert bool(compare(twin, addresses, kinds)) == faults
    assert bool(compare(twin, addresses, kinds)) == faults     # again: the flags the first run set are set


def test_the_flat_buffer_past_memory_reads_as_zeros() -> None:
    """Memory's last frame and what follows it in the buffer: nothing to walk through."""
    mem = CompiledMemory(MEMORY)
    if mem.layout != "flat":
        pytest.skip("no flat layout on this platform")
    assert mem.entries.shape == (mem.nframes + 1, 512)
    assert not mem.entries[-1].any()
