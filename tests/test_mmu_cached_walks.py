"""The run loop's cached fast paths on long batches, against the reference MMU.

With paging-structure caches and a nested TLB the walker's fast paths look the caches up without
side effects and replay the lookups when the walk succeeds; the run loop serves runs of L1 hits
from locals and walks groups ahead when most accesses miss.  A wrong count, stamp or fill in any of
these shows up here: many walks through caches far smaller than the working set, with pages whose
A or D flag is clear (the full walker's cases) among them, and every counter, cached entry and
table byte compared with the pure-Python reference after each batch.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastmmu._core.memory import HostMemory as CompiledMemory
from fastmmu._core.mmu import MMU as CompiledMMU
from fastmmu.arch import EPT, PTE, Access, FrameKind
from fastmmu.cpu import CpuState
from fastmmu.reference.memory import HostMemory as ReferenceMemory
from fastmmu.reference.mmu import MMU as ReferenceMMU
from fastmmu.tables import EptTable, PageTable
from fastmmu.tlbconfig import CacheGeometry, TLBConfig

VA = 0x7F00_0000_0000
PAGES = 1536                      # 6 MiB of 4 KiB pages: three page tables, beyond every cache
SEED = 12


def build(mem, nested: bool, rng: np.random.Generator):
    """Tables over PAGES pages (and one 2 MiB page): some PTEs without A, some without D."""
    ept = None
    alloc_gpa = None
    if nested:
        ept = EptTable(mem, levels=4, ad=True, owner=1)
        mem.alloc_at(np.arange(16 << 8, 48 << 8), owner=1, kind=FrameKind.DATA)
        ept.map_range(0, 32 << 20, 16 << 20, EPT.RWX)
        next_gpa = [1 << 20]

        def alloc_gpa() -> int:
            gpa = next_gpa[0]
            next_gpa[0] += 4096
            return gpa
        pt = PageTable(mem, levels=4, ept=ept, alloc_gpa=alloc_gpa)
    else:
        pt = PageTable(mem, levels=4, kind=FrameKind.GUEST_PT)
    flags = rng.integers(0, 16, PAGES)
    for i in range(PAGES):
        f = PTE.P | PTE.RW | PTE.US | PTE.A | PTE.D
        if flags[i] == 0:
            f &= ~PTE.A
        elif flags[i] == 1:
            f &= ~PTE.D
        pt.map(VA + (i << 12), (0x400 + i) << 12, f)
    pt.map(VA + (8 << 20), 0x1000 << 12, PTE.P | PTE.RW | PTE.US, page_size=2 << 20)
    return pt, ept


def twins(nested: bool, tlb: TLBConfig):
    mmus, mems = [], []
    for cls_mem, cls_mmu in ((CompiledMemory, CompiledMMU), (ReferenceMemory, ReferenceMMU)):
        mem = cls_mem("64MiB")
        pt, ept = build(mem, nested, np.random.default_rng(SEED))
        mmus.append(cls_mmu(mem, tlb=tlb, cpu=CpuState(cr3=pt.root), ept=ept.config if ept else None, vpid=1))
        mems.append(mem)
    return mmus, mems


def trace(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of sequential accesses (hits) and random ones (misses), a few writes, and the large page."""
    parts = []
    while sum(len(p) for p in parts) < n:
        if rng.random() < 0.5:
            start = int(rng.integers(0, PAGES << 12))
            parts.append(VA + (start + 8 * np.arange(int(rng.integers(50, 600)))) % (PAGES << 12))
        else:
            parts.append(VA + rng.integers(0, PAGES << 12, int(rng.integers(20, 400))))
        if rng.random() < 0.1:
            parts.append(VA + (8 << 20) + rng.integers(0, 2 << 20, 30))
    addresses = np.concatenate(parts)[:n].astype(np.uint64)
    kinds = np.where(rng.random(n) < 0.05, Access.WRITE, Access.READ).astype(np.uint8)
    return addresses, kinds


SKYLAKE_SMALL_PSC = TLBConfig(
    l1d=(CacheGeometry(64, 4, ("4K",)), CacheGeometry(32, 4, ("2M",))),
    l2=(CacheGeometry(96, 6, ("4K", "2M")),),
    psc={"pde": CacheGeometry(2, 2), "pdpte": CacheGeometry(2, 1), "pml4e": CacheGeometry(2, 2)},
    nested_tlb=CacheGeometry(8, 2, ("4K", "2M")),
)


@pytest.mark.parametrize("nested", [False, True], ids=["native", "nested"])
@pytest.mark.parametrize("tlb", [TLBConfig.skylake(), SKYLAKE_SMALL_PSC], ids=["skylake", "small-psc"])
def test_cached_walks_match_reference(nested: bool, tlb: TLBConfig) -> None:
    rng = np.random.default_rng(SEED)
    mmus, mems = twins(nested, tlb)
    for batch in range(4):
        addresses, kinds = trace(rng, 3000)
        start = 0
        while start < len(addresses):
            results = []
            for mmu in mmus:
                out = np.zeros(len(addresses), np.uint64)
                result = mmu.translate(addresses, kinds, out=out, start=start)
                results.append((result.stopped, int(result.status), out.tolist()))
            assert results[0] == results[1], f"seed {SEED}, batch {batch}"
            start = results[0][0] + 1
        compiled, reference = mmus
        assert compiled.counters() == reference.counters(), f"seed {SEED}, batch {batch}"
        for name, structure in compiled.structures().items():
            assert structure.contents() == reference.structures()[name].contents(), name
        for pfn in range(mems[0].nframes):
            if mems[0].kind_of(pfn) not in (FrameKind.FREE, FrameKind.DATA):
                assert mems[0].read_frame(pfn).tolist() == list(mems[1].read_frame(pfn)), f"frame {pfn:#x}"
    assert compiled.counters()["walks"] > 1000
