"""The compiled MMU and the reference MMU, driven side by side.

A Hypothesis state machine maps, unmaps and rewrites entries (without the
invalidation a careful OS would do, so stale TLB entries are exercised),
repoints upper-level entries at other tables (so stale paging-structure-cache
entries are), switches CR3, PCID and VPID, invalidates with every x86
operation, and translates batches.  After every step the two must agree on
the batch result, every output, every counter, every cached entry and every
byte of the page tables (A/D bits included).

The two could share a gap (they are written from the same document), so one
rule is checked against the tables themselves: when a batch stops at a page
fault (or an EPT violation on the final guest-physical address), retrying the
access must give what a walk of the tables in memory gives.  The fault
invalidated every cached entry for its address (SDM 4.10.4.1), so the fault
cannot recur from a stale one.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fastmmu._core.memory import HostMemory as CompiledMemory
from fastmmu._core.mmu import MMU as CompiledMMU
from fastmmu._core.paging import walk as compiled_walk
from fastmmu._core.paging import walk_nested as compiled_walk_nested
from fastmmu.arch import EPT, PTE, Access, ExitQual, FrameKind, Status
from fastmmu.cpu import CpuState
from fastmmu.reference.memory import HostMemory as ReferenceMemory
from fastmmu.reference.mmu import MMU as ReferenceMMU
from fastmmu.tables import EptTable, PageTable
from fastmmu.tlbconfig import CacheGeometry, TLBConfig

MEMORY = "48MiB"
# Small caches with odd geometries, so that evictions and conflicts happen often.
SMALL = TLBConfig(
    l1i=CacheGeometry(8, 2),
    l1d=(CacheGeometry(8, 4, ("4K",)), CacheGeometry(4, 2, ("2M",))),
    l2=CacheGeometry(24, 4, ("4K", "2M"), policy="plru"),
    psc={"pde": CacheGeometry(4, 2), "pdpte": CacheGeometry(2, 2, policy="fifo"), "pml4e": CacheGeometry(2, 1)},
    nested_tlb=CacheGeometry(6, 3, ("4K", "2M")),
)
# The same TLBs without paging-structure caches or nested TLB (the walkers' fast paths apply),
# and no cache at all (the run loop's plain loop).
TLB_ONLY = TLBConfig(l1i=SMALL.l1i, l1d=SMALL.l1d, l2=SMALL.l2)
# Every structure LRU, as TLBConfig.skylake(): the run loop's L1 hit loop and the walkers' cached fast
# paths (paging-structure caches, nested TLB) both apply; and a FIFO L1 D-TLB (a hit stamps nothing).
LRU = TLBConfig(
    l1i=SMALL.l1i,
    l1d=(CacheGeometry(8, 4, ("4K",)), CacheGeometry(4, 2, ("2M",))),
    l2=CacheGeometry(24, 4, ("4K", "2M")),
    psc={"pde": CacheGeometry(4, 2), "pdpte": CacheGeometry(2, 2), "pml4e": CacheGeometry(2, 1)},
    nested_tlb=CacheGeometry(6, 3, ("4K", "2M")),
)
FIFO_L1 = TLBConfig(l1i=LRU.l1i, l1d=(CacheGeometry(8, 4, ("4K",), policy="fifo"),), l2=LRU.l2, psc=LRU.psc,
                    nested_tlb=LRU.nested_tlb)
NO_CACHE = TLBConfig.none()
# Linear pages the tests play with: a few 4 KiB pages spread over two PDs and
# two PML4 entries, one 2 MiB page, and a kernel-half page.
PAGES_4K = [0x0000_1000_0000 + i * 0x1000 for i in range(6)] + [0x0000_1000_0000 + (1 << 21) * 3 + 0x5000,
                                                                  0x0080_0000_0000, 0xFFFF_8000_0010_0000]
PAGE_2M = 0x0000_2000_0000
# A hole: the table of PAGES_4K[6]'s 2 MiB region does not map it, the first table (PAGES_4K[0]'s)
# maps the same index.  Repointing that region's PDE at the first table without INVLPG leaves the
# paging-structure cache's PDE entry stale: the next access faults through it, the retry must not.
HOLE = 0x0000_1000_0000 + (1 << 21) * 3 + 0x1000
# What the repoint rule moves: entries of these pages' paths, copied from one to another.
REPOINTED = [PAGES_4K[0], PAGES_4K[6], PAGES_4K[7], PAGE_2M]
# Bit 25 moves a table 32 MiB up: inside memory, or past its end (48 MiB) but inside the flat
# buffer's power of two (64 MiB); bit 45 takes it far beyond both.
FLAG_BITS = [PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.G, PTE.NX, 1 << 59, 1 << 60, 1 << 45, 1 << 25]


class Twin:
    """The same machine state in both backends."""

    def __init__(self, nested: bool, levels: int) -> None:
        self.mems = [CompiledMemory(MEMORY), ReferenceMemory(MEMORY)]
        self.nested = nested
        self.tables: list[list[PageTable]] = [[], []]
        self.epts: list[EptTable | None] = [None, None]
        self.levels = levels

    def build(self, n_tables: int) -> None:
        for side, mem in enumerate(self.mems):
            ept = None
            if self.nested:
                ept = EptTable(mem, levels=4, ad=True, owner=1)
                # Guest-physical 0..16 MiB backed by host frames from 16 MiB up, given to VM 1.
                mem.alloc_at(np.arange(16 << 8, 32 << 8), owner=1, kind=FrameKind.DATA)
                ept.map_range(0, 16 << 20, 16 << 20, EPT.RWX)
                self.epts[side] = ept
                next_gpa = [1 << 20]

                def alloc_gpa(next_gpa: list[int] = next_gpa) -> int:
                    gpa = next_gpa[0]
                    next_gpa[0] += 4096
                    return gpa
            for t in range(n_tables):
                if self.nested:
                    pt = PageTable(mem, levels=self.levels, ept=ept, alloc_gpa=alloc_gpa)
                else:
                    pt = PageTable(mem, levels=self.levels, kind=FrameKind.GUEST_PT)
                for i, va in enumerate(PAGES_4K):
                    flags = PTE.P | PTE.RW | PTE.US | (PTE.G if i == 0 else 0)
                    pt.map(va, (0x200 + 16 * t + i) << 12, flags)
                pt.map(PAGE_2M, (0x400 + 512 * t) << 12, PTE.P | PTE.RW | PTE.US, page_size=2 << 20)
                self.tables[side].append(pt)

    def table_frames(self) -> list[int]:
        mem = self.mems[0]
        return [pfn for pfn in range(mem.nframes) if mem.kind_of(pfn) not in (FrameKind.FREE, FrameKind.DATA)]


class MMUMachine(RuleBasedStateMachine):
    nested = False
    levels = 4
    tlb = SMALL

    @initialize(n_tables=st.integers(1, 3), pcide=st.booleans(), pke=st.booleans(), smap=st.booleans())
    def setup(self, n_tables: int, pcide: bool, pke: bool, smap: bool) -> None:
        self.twin = Twin(self.nested, self.levels)
        self.twin.build(n_tables)
        self.pcide = pcide
        self.vpid = 1
        self.mmus = []
        for side, mem in enumerate(self.twin.mems):
            cpu = CpuState(cr3=self.twin.tables[side][0].root, levels=self.levels, cr4_pcide=pcide,
                           cr4_smap=smap, cr4_smep=smap, cr4_pke=pke, pkru=0b0100)
            ept = self.twin.epts[side].config if self.nested else None
            mmu_class = CompiledMMU if side == 0 else ReferenceMMU
            self.mmus.append(mmu_class(mem, tlb=self.tlb, cpu=cpu, ept=ept, vpid=self.vpid))
        self.frames = self.twin.table_frames()
        self.current = 0   # the table CR3 holds

    addresses = st.lists(
        st.tuples(
            st.sampled_from(PAGES_4K + [PAGE_2M, PAGE_2M + 0x1F_F000, 0x0000_3000_0000, 1 << 47, HOLE, HOLE]),
            st.integers(0, 4095),
            st.sampled_from([Access.READ, Access.WRITE, Access.FETCH, Access.USER, Access.USER | Access.WRITE,
                             Access.USER | Access.FETCH, Access.IMPLICIT]),
        ),
        min_size=1, max_size=12,
    )

    @rule(batch=addresses)
    def translate(self, batch: list[tuple[int, int, int]]) -> None:
        addresses = np.array([(va + offset) & ((1 << 64) - 1) for va, offset, _ in batch], dtype=np.uint64)
        kinds = np.array([kind for _, _, kind in batch], dtype=np.uint8)
        self.compare_batch(addresses, kinds)

    @rule(pages=st.lists(st.sampled_from(PAGES_4K), min_size=1, max_size=8), length=st.integers(64, 300),
          kind=st.sampled_from([Access.READ, Access.WRITE, Access.FETCH, Access.USER, Access.USER | Access.WRITE,
                                Access.IMPLICIT]))
    def translate_long(self, pages: list[int], length: int, kind: int) -> None:
        """A batch long enough for the run loop's widest groups (the quick native kernel takes 64 at a
        time, all of one kind): the drawn 4 KiB pages over and over."""
        addresses = np.array([pages[i % len(pages)] + (i * 24) % 4096 for i in range(length)], dtype=np.uint64)
        self.compare_batch(addresses, np.full(length, kind, dtype=np.uint8))

    def compare_batch(self, addresses: np.ndarray, kinds: np.ndarray) -> None:
        start = 0
        while start < len(addresses):
            outs = []
            for mmu in self.mmus:
                out = np.full(len(addresses), 0xDEAD, dtype=np.uint64)   # a fault leaves its slot alone
                status = np.zeros(len(addresses), dtype=np.uint8)
                result = mmu.translate(addresses, kinds, out=out, status=status, start=start)
                outs.append((result.stopped, int(result.status), result.fault, out[start:result.stopped + 1].tolist()
                             if result.stopped < len(addresses) else out[start:].tolist()))
            assert outs[0] == outs[1]
            logs = [mmu.take_references() for mmu in self.mmus]   # the PTE-access trace (empty unless logging)
            assert logs[0].tolist() == logs[1].tolist()
            stopped, status, fault = outs[0][0], outs[0][1], outs[0][2]
            if status == Status.PAGE_FAULT or (
                    status == Status.EPT_VIOLATION and fault.exit_qualification & ExitQual.FINAL_TRANSLATION):
                self.retry_walks_the_tables(int(addresses[stopped]), int(kinds[stopped]))
            start = stopped + 1   # skip past the faulting access, as a handler that gives up would

    def retry_walks_the_tables(self, va: int, kind: int) -> None:
        """After a page fault (or a final-GPA EPT violation) on ``va``, nothing cached for ``va`` is
        left: the retry gives what a walk of the tables in memory gives (that walk first: it sets the
        same A/D flags the retry would, if it succeeds)."""
        compiled = self.mmus[0]
        if self.nested:
            fresh = compiled_walk_nested(self.twin.mems[0], compiled.cpu, compiled.ept_config, va, kind)
        else:
            fresh = compiled_walk(self.twin.mems[0], compiled.cpu, va, kind)
        retries = [mmu.translate_one(va, kind) for mmu in self.mmus]
        assert retries[0] == retries[1]
        retry = retries[0]
        status = Status.OK if retry.status == Status.TRAP else retry.status   # (the trapped frame is data)
        assert (status, retry.host_address, retry.error_code, retry.fault_address, retry.exit_qualification) == (
            fresh.status, fresh.host_address, fresh.error_code, fresh.fault_address, fresh.exit_qualification)

    @rule(on=st.booleans())
    def log_references(self, on: bool) -> None:
        for mmu in self.mmus:
            mmu.log_references(on)

    @rule(page=st.sampled_from(PAGES_4K + [PAGE_2M]), level=st.integers(1, 4), bits=st.sets(st.sampled_from(FLAG_BITS)),
          table=st.integers(0, 2))
    def flip_bits(self, page: int, level: int, bits: set[int], table: int) -> None:
        """Rewrite an entry behind the TLB's back (no invalidation)."""
        for side in (0, 1):
            tables = self.twin.tables[side]
            pt = tables[table % len(tables)]
            try:
                slot = pt.entry_address(page, level)
                if slot is None:
                    return
                value = pt.read_entry(page, level)
            except ValueError:      # an upper entry now points outside what the builder can follow
                return
            if not self.nested and self.twin.mems[side].kind_of(slot >> 12) == FrameKind.FREE:
                return              # ... or to a frame that is not a table (bit 25 moved it)
            for bit in bits:
                value ^= int(bit)
            pt.write_entry(page, level, value)

    @rule(page=st.sampled_from(REPOINTED), source=st.sampled_from(REPOINTED), level=st.integers(2, 3))
    def repoint(self, page: int, source: int, level: int) -> None:
        """Point an upper-level entry of the current tables where ``source``'s entry points (another
        table), without INVLPG: what the paging-structure caches hold for ``page`` goes stale."""
        for side in (0, 1):
            pt = self.twin.tables[side][self.current]
            try:
                value = pt.read_entry(source, level)
                slot = pt.entry_address(page, level)
                if value is None or slot is None:
                    return
                if not self.nested and self.twin.mems[side].kind_of(slot >> 12) == FrameKind.FREE:
                    return          # a flipped bit moved the table to a frame that is not one
                pt.write_entry(page, level, value)
            except ValueError:      # an upper entry now points outside what the builder can follow
                return

    @rule()
    def repoint_over_the_hole(self) -> None:
        """The repoint that makes HOLE mapped: its region's PDE -> the first region's table."""
        self.repoint(PAGES_4K[6], PAGES_4K[0], 2)

    @rule(table=st.integers(0, 2), noflush=st.booleans(), pcid=st.integers(0, 3))
    def mov_cr3(self, table: int, noflush: bool, pcid: int) -> None:
        self.current = table % len(self.twin.tables[0])
        for side, mmu in enumerate(self.mmus):
            tables = self.twin.tables[side]
            value = tables[table % len(tables)].root
            if self.pcide:
                value |= pcid | (1 << 63 if noflush else 0)
            mmu.mov_cr3(value)

    @rule(i=st.integers(0, 7), on=st.booleans())
    def trap(self, i: int, on: bool) -> None:
        """Trap (or not) the host frame behind the first table's i-th 4 KiB page."""
        pfn = 0x200 + i + ((16 << 8) if self.nested else 0)
        for mem in self.twin.mems:
            mem.set_trap(pfn, on)

    @rule(page=st.sampled_from([PAGES_4K[0], PAGES_4K[1], PAGE_2M]))   # page 0 is global
    def invlpg(self, page: int) -> None:
        for mmu in self.mmus:
            mmu.invlpg(page)

    @rule(kind=st.integers(0, 3), pcid=st.integers(0, 3), page=st.sampled_from(PAGES_4K))
    def invpcid(self, kind: int, pcid: int, page: int) -> None:
        for mmu in self.mmus:
            mmu.invpcid(kind, pcid=pcid, va=page)

    @rule(kind=st.integers(0, 3), vpid=st.integers(1, 3), page=st.sampled_from(PAGES_4K))
    def invvpid(self, kind: int, vpid: int, page: int) -> None:
        for mmu in self.mmus:
            mmu.invvpid(kind, vpid=vpid, va=page)

    @precondition(lambda self: self.nested)
    @rule(single=st.booleans())
    def invept(self, single: bool) -> None:
        for side, mmu in enumerate(self.mmus):
            eptag = self.twin.epts[side].config.eptag
            if single:
                mmu.invept(1, eptag=eptag)
            else:
                mmu.invept(2)

    @rule(vpid=st.integers(1, 3), ac=st.booleans(), wp=st.booleans(), pkru=st.integers(0, 15))
    def switch_context(self, vpid: int, ac: bool, wp: bool, pkru: int) -> None:
        """A VM switch or register change: no invalidation; VPID tags keep entries apart."""
        for side, mmu in enumerate(self.mmus):
            cpu = CpuState(**{**mmu.cpu.__dict__, "eflags_ac": ac, "cr0_wp": wp, "pkru": pkru})
            ept = self.twin.epts[side].config if self.nested else None
            mmu.set_context(cpu, ept=ept, vpid=vpid)

    @invariant()
    def agree(self) -> None:
        if not hasattr(self, "mmus"):
            return
        compiled, reference = self.mmus
        assert compiled.counters() == reference.counters()
        for frame in self.frames:
            assert self.twin.mems[0].read_frame(frame).tolist() == list(self.twin.mems[1].read_frame(frame)), \
                f"frame {frame:#x} differs"
        for name, structure in compiled.structures().items():
            assert structure.contents() == reference.structures()[name].contents(), name


class NestedMMUMachine(MMUMachine):
    nested = True


class FiveLevelMMUMachine(MMUMachine):
    levels = 5


class TLBOnlyMMUMachine(MMUMachine):
    tlb = TLB_ONLY


class NestedTLBOnlyMMUMachine(MMUMachine):
    nested = True
    tlb = TLB_ONLY


class NoCacheMMUMachine(MMUMachine):
    tlb = NO_CACHE


class NestedNoCacheMMUMachine(MMUMachine):
    nested = True
    tlb = NO_CACHE


class FiveLevelNoCacheMMUMachine(MMUMachine):
    levels = 5
    tlb = NO_CACHE


class LRUMMUMachine(MMUMachine):
    tlb = LRU


class NestedLRUMMUMachine(MMUMachine):
    nested = True
    tlb = LRU


class NestedFifoL1MMUMachine(MMUMachine):
    nested = True
    tlb = FIFO_L1


SETTINGS = settings(max_examples=150, stateful_step_count=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("machine", [MMUMachine, NestedMMUMachine, FiveLevelMMUMachine, TLBOnlyMMUMachine,
                                     NestedTLBOnlyMMUMachine, NoCacheMMUMachine, NestedNoCacheMMUMachine,
                                     FiveLevelNoCacheMMUMachine, LRUMMUMachine, NestedLRUMMUMachine,
                                     NestedFifoL1MMUMachine],
                         ids=["native", "nested", "la57", "native-tlb-only", "nested-tlb-only", "native-no-cache",
                              "nested-no-cache", "la57-no-cache", "native-lru", "nested-lru", "nested-fifo-l1"])
def test_compiled_mmu_matches_reference(machine: type[RuleBasedStateMachine]) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(machine, settings=SETTINGS)


@pytest.mark.parametrize("tlb", [LRU, TLBConfig.skylake()], ids=["lru", "skylake"])
@pytest.mark.parametrize("smap", [False, True], ids=["no-smap", "smap"])
def test_hit_loop_checks_every_access_kind(tlb: TLBConfig, smap: bool) -> None:
    """The L1 hit loop checks an entry's rights once per (attrs, access kind) pair and reuses the answer
    while both repeat (bench row e sequential): runs of hits on one entry broken by a write to a page not
    yet dirty (it must walk, to set D), by user and supervisor accesses (SMAP), and by a second entry
    with other rights (read-only).  Counters, outputs and table contents as the reference model's."""
    twin = Twin(False, 4)
    twin.build(1)
    read_only = PAGES_4K[2]
    for pt in twin.tables[0] + twin.tables[1]:
        pt.map(read_only, 0x3F0 << 12, PTE.P | PTE.US)        # remapped: user, not writable
    mmus = []
    for side, mem in enumerate(twin.mems):
        cpu = CpuState(cr3=twin.tables[side][0].root, cr4_smap=smap, cr4_smep=smap)
        mmus.append((CompiledMMU if side == 0 else ReferenceMMU)(mem, tlb=tlb, cpu=cpu, vpid=1))
    pages = [PAGES_4K[1], PAGES_4K[1], read_only, PAGES_4K[1], read_only]
    kinds = [Access.READ, Access.USER, Access.WRITE, Access.USER | Access.WRITE, Access.READ]
    rows = [(pages[(i // 7) % len(pages)] + (i * 40) % 4096, kinds[(i // 5) % len(kinds)]) for i in range(400)]
    addresses = np.array([va for va, _ in rows], dtype=np.uint64)
    access = np.array([kind for _, kind in rows], dtype=np.uint8)
    start = 0
    while start < len(addresses):
        results = []
        for mmu in mmus:
            out = np.zeros(len(addresses), dtype=np.uint64)
            result = mmu.translate(addresses, access, out=out, start=start)
            results.append((result.stopped, int(result.status), result.fault, out[start:result.stopped].tolist()))
        assert results[0] == results[1]
        assert mmus[0].counters() == mmus[1].counters()
        start = results[0][0] + 1
    for frame in twin.table_frames():
        assert twin.mems[0].read_frame(frame).tolist() == list(twin.mems[1].read_frame(frame))
