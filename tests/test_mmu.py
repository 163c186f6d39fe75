"""The MMU's batch behaviour, exactly, on both backends (compiled and reference)."""

from __future__ import annotations

import numpy as np
import pytest

from fastmmu._core.memory import HostMemory as CompiledMemory
from fastmmu._core.mmu import MMU as CompiledMMU
from fastmmu.arch import EPT, PTE, Access, ExitQual, FrameKind, PFErr, Status
from fastmmu.cpu import CpuState
from fastmmu.reference.memory import HostMemory as ReferenceMemory
from fastmmu.reference.mmu import MMU as ReferenceMMU
from fastmmu.tables import EptTable, PageTable
from fastmmu.tlbconfig import CacheGeometry, TLBConfig

VA = 0x0000_7F00_0000_0000
RW_USER = PTE.P | PTE.RW | PTE.US
BACKENDS = {"compiled": (CompiledMemory, CompiledMMU), "reference": (ReferenceMemory, ReferenceMMU)}
SMALL = TLBConfig(l1d=CacheGeometry(16, 4), l1i=CacheGeometry(8, 2), l2=CacheGeometry(64, 8, ("4K", "2M")),
                  psc={"pde": CacheGeometry(4, 4)}, nested_tlb=CacheGeometry(8, 4))


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    return BACKENDS[request.param]


def native(backend, tlb=SMALL, **cpu):
    memory_class, mmu_class = backend
    mem = memory_class("64MiB")
    pt = PageTable(mem, kind=FrameKind.GUEST_PT)
    for i in range(4):
        pt.map(VA + i * 4096, (0x1000 + i) << 12, RW_USER | (PTE.G if i == 0 else 0))
    return mem, pt, mmu_class(mem, tlb=tlb, cpu=CpuState(cr3=pt.root, **cpu))


def batch(addresses, kinds=0):
    addresses = np.array(addresses, dtype=np.uint64)
    kinds = np.full(len(addresses), kinds, dtype=np.uint8) if isinstance(kinds, int) else np.array(kinds, np.uint8)
    return addresses, kinds, np.zeros(len(addresses), np.uint64), np.zeros(len(addresses), np.uint8)


def test_a_batch_stops_at_a_page_fault_and_resumes_after_the_handler(backend):
    mem, pt, mmu = native(backend)
    addresses, kinds, out, status = batch([VA, VA + 0x1008, VA + 0x5010, VA + 0x2000])
    result = mmu.translate(addresses, kinds, out=out, status=status)
    assert (result.stopped, result.status) == (2, Status.PAGE_FAULT)
    assert (result.fault.fault_address, result.fault.error_code) == (VA + 0x5010, 0)   # not present, read
    assert out[:2].tolist() == [0x1000 << 12, (0x1001 << 12) | 8]
    pt.map(VA + 0x5000, 0x2000 << 12, RW_USER)        # the guest's page-fault handler
    result = mmu.translate(addresses, kinds, out=out, status=status, start=2)
    assert result.complete and result.stopped == 4
    assert out.tolist() == [0x1000 << 12, (0x1001 << 12) | 8, (0x2000 << 12) | 0x10, 0x1002 << 12]
    assert status.tolist() == [0, 0, 0, 0]
    counters = mmu.counters()
    assert counters["accesses"] == 5 and counters["faults"]["page_fault"] == 1 and counters["walks"] == 5


def test_a_write_to_a_clean_cached_page_walks_again_to_set_dirty(backend):
    mem, pt, mmu = native(backend)
    addresses, kinds, out, status = batch([VA, VA, VA, VA], [Access.READ, Access.READ, Access.WRITE, Access.WRITE])
    assert mmu.translate(addresses, kinds, out=out, status=status).complete
    counters = mmu.counters()
    # read: walk; read: L1 hit; write: the L1 and L2 entries have D clear -> both dropped, a walk
    # sets D; write: L1 hit
    assert counters["walks"] == 2 and counters["l1d"] == {"hits": 2, "misses": 2}
    assert counters["l2"] == {"hits": 0, "misses": 2} and counters["tlb_rights_drops"] == 2
    assert pt.read_entry(VA, 1) & (PTE.A | PTE.D) == PTE.A | PTE.D


def test_a_denied_access_never_uses_the_cached_translation(backend):
    mem, pt, mmu = native(backend)
    pt.write_entry(VA + 0x1000, 1, pt.read_entry(VA + 0x1000, 1) & ~PTE.RW)
    addresses, kinds, out, status = batch([VA + 0x1000, VA + 0x1000], [Access.USER, Access.USER | Access.WRITE])
    result = mmu.translate(addresses, kinds, out=out, status=status)
    assert (result.stopped, result.status) == (1, Status.PAGE_FAULT)
    assert result.fault.error_code == PFErr.P | PFErr.W | PFErr.U
    assert pt.read_entry(VA + 0x1000, 1) & PTE.D == 0      # a faulting access changes nothing


def test_a_stale_translation_is_used_until_invlpg(backend):
    mem, pt, mmu = native(backend)
    addresses, kinds, out, status = batch([VA + 0x3000])
    mmu.translate(addresses, kinds, out=out, status=status)
    pt.map(VA + 0x3000, 0x3000 << 12, RW_USER)          # remapped without telling the TLB
    mmu.translate(addresses, kinds, out=out, status=status)
    assert out[0] == 0x1003 << 12                       # the TLB still has the old translation
    mmu.invlpg(VA + 0x3000)
    mmu.translate(addresses, kinds, out=out, status=status)
    assert out[0] == 0x3000 << 12


def test_invlpg_removes_a_global_page_cached_under_another_pcid(backend):
    mem, pt, mmu = native(backend, cr4_pcide=True)
    mmu.mov_cr3(pt.root | 5)
    mmu.translate(*batch([VA, VA + 0x1000])[:1])          # page 0 is global, page 1 is not
    mmu.mov_cr3(pt.root | 6)                             # flushes PCID 6 only
    l1 = mmu.structures()["l1d[0]"]
    assert sorted((e["pcid"], e["global"]) for e in l1.contents()) == [(5, False), (5, True)]
    mmu.invlpg(VA)                                       # current PCID 6: the global entry goes too
    mmu.invlpg(VA + 0x1000)                              # the PCID-5 entry of page 1 stays
    assert [(e["pcid"], e["global"]) for e in l1.contents()] == [(5, False)]
    mmu.mov_cr3(pt.root | 5 | 1 << 63)                   # no-flush: PCID 5's entry survives
    assert len(l1.contents()) == 1
    mmu.mov_cr3(pt.root | 5)
    assert l1.contents() == []


def test_vpids_keep_two_vms_apart_and_invvpid_clears_one(backend):
    memory_class, mmu_class = backend
    mem, pt, mmu = native(backend)
    other = PageTable(mem, kind=FrameKind.GUEST_PT)
    other.map(VA, 0x3000 << 12, RW_USER)
    addresses, kinds, out, status = batch([VA])
    mmu.set_context(CpuState(cr3=pt.root), vpid=1)
    mmu.translate(addresses, kinds, out=out, status=status)
    mmu.set_context(CpuState(cr3=other.root), vpid=2)     # a VM switch: nothing is flushed
    mmu.translate(addresses, kinds, out=out, status=status)
    assert out[0] == 0x3000 << 12
    mmu.set_context(CpuState(cr3=pt.root), vpid=1)
    mmu.translate(addresses, kinds, out=out, status=status)
    assert out[0] == 0x1000 << 12 and mmu.counters()["walks"] == 2
    mmu.invvpid(1, vpid=2)
    assert {e["vpid"] for e in mmu.structures()["l1d[0]"].contents()} == {1}
    with pytest.raises(ValueError, match="VPID 0"):
        mmu.invvpid(1, vpid=0)


def nested(backend, tlb):
    memory_class, mmu_class = backend
    mem = memory_class("64MiB")
    mem.alloc_at(np.arange(4096, 8192), owner=1, kind=FrameKind.DATA)   # the VM's 16 MiB from 16 MiB up
    ept = EptTable(mem, owner=1)
    ept.map_range(0, 16 << 20, 16 << 20, EPT.RWX)
    next_gpa = iter(range(1 << 20, 2 << 20, 4096))
    guest = PageTable(mem, ept=ept, alloc_gpa=lambda: next(next_gpa))
    guest.map(VA, 0x400000, RW_USER)
    return mem, ept, mmu_class(mem, tlb=tlb, cpu=CpuState(cr3=guest.root), ept=ept.config, vpid=1)


def test_a_nested_walk_without_caches_makes_24_references_every_time(backend):
    mem, ept, mmu = nested(backend, TLBConfig.none())
    addresses, kinds, out, status = batch([VA + 8 * i for i in range(10)])
    assert mmu.translate(addresses, kinds, out=out, status=status).complete
    assert out.tolist() == [(16 << 20) + 0x400000 + 8 * i for i in range(10)]
    counters = mmu.counters()
    assert counters["walks"] == 10 and counters["walk_references"] == 240
    assert counters["walk_refs_histogram"][24] == 10


def test_invept_empties_the_nested_tlb_and_the_combined_translations(backend):
    mem, ept, mmu = nested(backend, SMALL)
    addresses, kinds, out, status = batch([VA])
    mmu.translate(addresses, kinds, out=out, status=status)
    assert mmu.structures()["nested"].contents() and mmu.structures()["l1d[0]"].contents()
    mmu.invept(1, eptag=ept.config.eptag + 1)            # another EPT: nothing happens
    assert mmu.structures()["nested"].contents()
    mmu.invept(1, eptag=ept.config.eptag)
    assert all(not t.contents() for t in mmu.structures().values())


def test_an_access_to_a_trapped_frame_stops_the_batch(backend):
    mem, pt, mmu = native(backend)
    mem.set_trap(0x1002)
    addresses, kinds, out, status = batch([VA, VA + 0x2010, VA])
    result = mmu.translate(addresses, kinds, out=out, status=status)
    assert (result.stopped, result.status) == (1, Status.TRAP)
    assert result.fault.host_address == (0x1002 << 12) | 0x10 and status[1] == Status.TRAP
    mem.set_trap(0x1002, False)
    assert mmu.translate(addresses, kinds, out=out, status=status, start=1).complete


def test_a_non_canonical_address_is_a_general_protection_fault(backend):
    mem, pt, mmu = native(backend)
    result = mmu.translate(*batch([VA, 1 << 47])[:1])
    assert (result.stopped, result.status, result.fault.fault_address) == (1, Status.GP, 1 << 47)
    assert mmu.counters()["faults"]["gp"] == 1


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m.translate([1, 2]), TypeError, "addresses: expected a 1-D numpy array of uint64"),
    (lambda m: m.translate(np.zeros(3, np.int64)), TypeError, "addresses: expected a 1-D numpy array of uint64"),
    (lambda m: m.translate(np.zeros(3, np.uint64), np.zeros(2, np.uint8)), TypeError, "kinds: expected a uint8"),
    (lambda m: m.translate(np.zeros(3, np.uint64), np.array([0, 0, 3], np.uint8)), ValueError,
     r"kinds\[2\]: 3 is not a valid access kind"),
    (lambda m: m.translate(np.zeros(3, np.uint64), np.array([0, 16, 0], np.uint8)), ValueError,
     r"kinds\[1\]: 16 is not a valid access kind"),
    (lambda m: m.translate(np.zeros(3, np.uint64), start=4), ValueError, r"start: expected 0..3"),
    (lambda m: m.translate(np.zeros(6, np.uint64)[::2]), ValueError, "addresses: expected a contiguous array"),
    (lambda m: m.translate(np.zeros(3, np.uint64), out=np.zeros(3, np.uint32)), TypeError, "out: expected a uint64"),
    (lambda m: m.translate_one(VA, 3), ValueError, "access: 3 is not a valid access kind"),
    (lambda m: m.invpcid(4), ValueError, "INVPCID type"),
    (lambda m: m.invpcid(0, va=1 << 47), ValueError, "INVPCID type 0 needs a canonical 48-bit address"),
    (lambda m: m.invept(1, eptag=0), ValueError, "EPT tag"),
    (lambda m: m.mov_cr3(1 << 63), ValueError, r"mov_cr3: bit 63 \(no-flush\) is reserved while CR4.PCIDE=0"),
    (lambda m: m.set_context(CpuState(cr3=1 << 50)), ValueError, "cr3"),
    (lambda m: m.set_context("cpu"), TypeError, "cpu: expected a CpuState"),
])
def test_bad_arguments_are_rejected_with_a_clear_message(backend, call, error, message):
    mem, pt, mmu = native(backend)
    with pytest.raises(error, match=message):
        call(mmu)


def test_translate_one_reports_the_walk_in_detail(backend):
    mem, pt, mmu = native(backend, tlb=TLBConfig.none())
    walk = mmu.translate_one(VA + 0x1234, Access.WRITE, trace=True)
    assert walk.ok and walk.host_address == (0x1001 << 12) | 0x234 and walk.guest_refs == (1, 1, 1, 1, 0)
    assert [(r.dimension, r.level) for r in walk.trace] == [("guest", 4), ("guest", 3), ("guest", 2), ("guest", 1)]


def test_one_tebibyte_of_host_memory_runs_a_batch():
    mem = CompiledMemory("1TiB")
    pt = PageTable(mem, kind=FrameKind.GUEST_PT)
    pt.map_range(VA, (1 << 40) - (64 << 20), 64 << 20, RW_USER)      # the last 64 MiB of the 1 TiB
    mmu = CompiledMMU(mem, cpu=CpuState(cr3=pt.root))
    addresses = VA + np.arange(0, 64 << 20, 4096, dtype=np.uint64)
    out = np.zeros(len(addresses), np.uint64)
    assert mmu.translate(addresses, out=out).complete
    assert out[-1] == (1 << 40) - 4096 and mem.table_bytes <= 64 * 4096


def test_translate_releases_the_gil():
    """Another Python thread keeps running while a long batch is translated: no long pause."""
    import threading
    import time

    mem = CompiledMemory("64MiB")
    pt = PageTable(mem, kind=FrameKind.GUEST_PT)
    pt.map_range(VA, 0, 32 << 20, RW_USER)
    mmu = CompiledMMU(mem, tlb=TLBConfig.none(), cpu=CpuState(cr3=pt.root))
    addresses = VA + (np.arange(10_000_000, dtype=np.uint64) * np.uint64(4096 + 8)) % np.uint64(32 << 20)
    kinds, out, status = np.zeros(len(addresses), np.uint8), np.zeros(len(addresses), np.uint64), \
        np.zeros(len(addresses), np.uint8)
    def work() -> None:   # several batches: each long enough to show a pause, together long enough to tell
        for _ in range(5):
            mmu.translate(addresses, kinds, out=out, status=status)

    worker = threading.Thread(target=work)
    ticks = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    longest_pause = max(b - a for a, b in zip(ticks, ticks[1:], strict=False))
    duration = ticks[-1] - ticks[0]
    assert duration > 0.3, "the batch was too short to tell"
    # Holding the GIL would freeze this thread for the whole nogil loop; the argument checks
    # before it (numpy over 20 M elements, with the GIL) are a small part of the batch.
    assert longest_pause < duration / 3, \
        f"the main thread stood still for {longest_pause:.3f} s of the batch's {duration:.3f} s"


def test_invlpg_of_a_non_canonical_address_does_nothing(backend):
    """INVLPG executes as a no-op for a non-canonical address (SDM, INVLPG)."""
    mem, pt, mmu = native(backend)
    mmu.translate(*batch([VA])[:1])
    mmu.invlpg(1 << 47)
    assert len(mmu.structures()["l1d[0]"].contents()) == 1


def test_two_batches_with_default_kinds_and_outputs_one_after_the_other(backend):
    # The resume shortcut remembers the last batch's arrays weakly; arrays the call made
    # itself (kinds, out, status = None) are gone afterwards and must not match None.
    mem, pt, mmu = native(backend)
    addresses = np.array([VA, VA + 0x1008], dtype=np.uint64)
    first = mmu.translate(addresses)
    second = mmu.translate(addresses)
    assert first.complete and second.complete and second.stopped == 2


def test_a_trapped_access_after_a_walk_reports_the_walk(backend):
    """translate_one of an access to a trapped frame: the TRAP status, and the walk that found it
    (its references, for fastmmu explain); a TLB hit to it made none."""
    mem, pt, mmu = native(backend)
    mem.set_trap(0x1001)
    walked = mmu.translate_one(VA + 0x1008, trace=True)
    assert walked.status == Status.TRAP and walked.fault_address == VA + 0x1008
    assert walked.host_address == (0x1001 << 12) | 8 and walked.references == 4 and len(walked.trace) == 4
    assert [ref.level for ref in walked.trace] == [4, 3, 2, 1]
    hit = mmu.translate_one(VA + 0x1010, trace=True)
    assert hit.status == Status.TRAP and hit.references == 0 and hit.host_address == (0x1001 << 12) | 0x10
    assert mmu.counters()["faults"]["trap"] == 2


def test_a_hit_dropped_for_its_rights_is_a_miss_for_the_level_and_for_the_structure(backend):
    """One definition of a hit (a lookup whose entry served the access), in counters() and in every
    structure's stats(), on a trace where cached entries are dropped: reads cache clean entries and
    the writes that follow find them without D (guest or EPT), so they are dropped and walked again."""
    memory_class, mmu_class = backend
    mem = memory_class("64MiB")
    ept = EptTable(mem, ad=True)
    ram = mem.alloc(4096, contiguous=True)
    ept.map_range(0, int(ram[0]) << 12, 16 << 20)
    pages = iter(range(8 << 20, 16 << 20, 4096))
    pt = PageTable(mem, ept=ept, alloc_gpa=lambda: next(pages))
    for i in range(300):
        pt.map(VA + i * 4096, i << 12, RW_USER)
    mmu = mmu_class(mem, tlb=SMALL, cpu=CpuState(cr3=pt.root), ept=ept.config)
    rng = np.random.default_rng(11)
    addresses = (VA + rng.integers(0, 300, 3000) * 4096 + rng.integers(0, 4096, 3000)).astype(np.uint64)
    kinds = rng.choice(np.array([Access.USER, Access.USER, Access.USER | Access.WRITE], np.uint8), 3000)
    assert mmu.translate(addresses, kinds).complete
    counters = mmu.counters()
    stats = {name: t.stats() for name, t in mmu.structures().items()}
    assert counters["structures"] == stats
    assert counters["tlb_rights_drops"] > 0
    for level in ("l1i", "l1d", "l2"):  # one structure a level: every access of the level looks it up once
        assert (counters[level]["hits"], counters[level]["misses"]) == (
            stats[f"{level}[0]"]["hits"], stats[f"{level}[0]"]["misses"]), level
    # Nothing but those drops removed a TLB entry: each one is counted once, as invalidated too.
    for key in ("rights_drops", "invalidated"):
        assert sum(stats[f"{level}[0]"][key] for level in ("l1i", "l1d", "l2")) == counters["tlb_rights_drops"]


# -- what a fault invalidates (SDM Vol. 3A 4.10.4.1, Vol. 3C 29.4.3.1) --------------------------------

PSC_ONLY = TLBConfig(l1d=CacheGeometry(16, 4), l1i=CacheGeometry(8, 2), l2=CacheGeometry(64, 8, ("4K", "2M")),
                     psc={"pde": CacheGeometry(4, 4), "pdpte": CacheGeometry(4, 4), "pml4e": CacheGeometry(2, 2),
                          "pml5e": CacheGeometry(2, 2)}, nested_tlb=CacheGeometry(8, 4))


@pytest.mark.parametrize("levels", [4, 5])
def test_a_page_fault_clears_the_stale_paging_structure_cache_entries_of_its_address(backend, levels):
    """The guest repoints a PDE at a new page table without INVLPG: the access faults once through
    the stale PDE-cache entry, which the fault removes; the retry walks the tables in memory."""
    memory_class, mmu_class = backend
    mem = memory_class("64MiB")
    pt = PageTable(mem, levels, kind=FrameKind.GUEST_PT)
    pt.map(VA, 0x1000 << 12, RW_USER)                       # table A maps VA only
    other = PageTable(mem, levels, kind=FrameKind.GUEST_PT)
    other.map(VA + 0x1000, 0x2000 << 12, RW_USER)           # table B maps VA + 4 KiB
    mmu = mmu_class(mem, tlb=PSC_ONLY, cpu=CpuState(cr3=pt.root, levels=levels))
    assert mmu.translate_one(VA, Access.USER).ok             # every level's cache learns the path to A
    psc = {name: mmu.structures()[f"psc.{name}"] for name in ("pde", "pdpte", "pml4e", "pml5e")}
    assert [len(psc[name].contents()) for name in ("pde", "pdpte", "pml4e", "pml5e")] == [1, 1, 1, levels - 4]
    pt.write_entry(VA, 2, other.read_entry(VA + 0x1000, 2))   # PDE -> table B, no INVLPG
    first = mmu.translate_one(VA + 0x1000, Access.USER)
    assert (first.status, first.error_code, first.fault_address) == (Status.PAGE_FAULT, PFErr.U, VA + 0x1000)
    assert all(not t.contents() for t in psc.values())       # every entry that would translate VA + 4 KiB
    assert mmu.counters()["structures"]["psc.pde"]["invalidated"] == 1
    retry = mmu.translate_one(VA + 0x1000, Access.USER)
    assert retry.ok and retry.host_address == 0x2000 << 12
    assert [row["frame"] for row in psc["pde"].contents()] == [pt.read_entry(VA, 2) >> 12]   # table B


def test_a_page_fault_keeps_the_cache_entries_of_other_addresses_and_contexts(backend):
    memory_class, mmu_class = backend
    mem = memory_class("64MiB")
    pt = PageTable(mem, kind=FrameKind.GUEST_PT)
    far = VA + (1 << 30)                                    # another PDPTE: its own PDE-cache entry
    pt.map(VA, 0x1000 << 12, RW_USER)
    pt.map(far, 0x1001 << 12, RW_USER)
    mmu = mmu_class(mem, tlb=PSC_ONLY, cpu=CpuState(cr3=pt.root | 1, cr4_pcide=True), vpid=3)
    assert mmu.translate_one(VA, Access.USER).ok and mmu.translate_one(far, Access.USER).ok
    mmu.set_context(CpuState(cr3=pt.root | 2, cr4_pcide=True), vpid=3)   # PCID 2: its own entries
    assert mmu.translate_one(VA, Access.USER).ok
    mmu.mov_cr3(pt.root | 1 | 1 << 63)                      # back to PCID 1, no flush
    fault = mmu.translate_one(VA + 0x5000, Access.USER)     # not mapped: a page fault
    assert fault.status == Status.PAGE_FAULT
    pde = mmu.structures()["psc.pde"].contents()      # PCID 1's entry for VA's region went
    assert sorted((row["pcid"], row["vpn"]) for row in pde) == [(1, far >> 21), (2, VA >> 21)]
    tlb = mmu.structures()["l1d[0]"].contents()           # the TLB entries are of other pages or PCIDs
    assert sorted((row["pcid"], row["vpn"]) for row in tlb) == [(1, VA >> 12), (1, far >> 12), (2, VA >> 12)]


def test_a_page_fault_removes_every_tlb_entry_that_would_translate_its_address(backend):
    """The instruction TLB's entry for the page, and a global one, go with a data page fault."""
    mem, pt, mmu = native(backend, tlb=PSC_ONLY)
    for kind in (Access.USER | Access.FETCH, Access.USER):
        assert mmu.translate_one(VA, kind).ok                # VA's page is global (G, CR4.PGE)
    pt.write_entry(VA, 1, pt.read_entry(VA, 1) & ~PTE.RW)    # read-only, no INVLPG
    fault = mmu.translate_one(VA, Access.USER | Access.WRITE)   # the cached rights allow it: a walk, #PF
    assert (fault.status, fault.error_code) == (Status.PAGE_FAULT, PFErr.P | PFErr.W | PFErr.U)
    for name in ("l1i[0]", "l1d[0]", "l2[0]"):
        assert mmu.structures()[name].contents() == [], name


def test_a_final_ept_violation_clears_the_combined_entries_of_its_linear_address(backend):
    """Nested: the guest repoints a PDE without INVLPG; through the stale PDE-cache entry the final
    guest-physical address is one the EPT no longer maps (an EPT violation, exit qualification bit 8):
    the violation removes the entries for the linear address, and the retry walks the guest's tables."""
    memory_class, mmu_class = backend
    mem = memory_class("64MiB")
    mem.alloc_at(np.arange(4096, 8192), owner=1, kind=FrameKind.DATA)   # the VM's 16 MiB from 16 MiB up
    ept = EptTable(mem, owner=1)
    ept.map_range(0, 16 << 20, 16 << 20, EPT.RWX)
    next_gpa = iter(range(1 << 20, 2 << 20, 4096))
    guest = PageTable(mem, ept=ept, alloc_gpa=lambda: next(next_gpa))
    guest.map(VA, 0x400000, RW_USER)                         # table A: VA -> guest page 4 MiB, and
    guest.map(VA + 0x1000, 0x401000, RW_USER)                # the next page, in the EPT throughout
    other = PageTable(mem, ept=ept, alloc_gpa=lambda: next(next_gpa))
    other.map(VA, 0x500000, RW_USER)                         # table B: VA -> guest page 5 MiB
    mmu = mmu_class(mem, tlb=PSC_ONLY, cpu=CpuState(cr3=guest.root), ept=ept.config, vpid=1)
    assert mmu.translate_one(VA + 0x1000, Access.USER).ok    # the PDE cache learns: VA's region -> A
    ept.write_entry(0x400000, 1, 0)                          # guest page 4 MiB leaves the EPT
    guest.write_entry(VA, 2, other.read_entry(VA, 2))        # PDE -> table B, no INVLPG
    violation = mmu.translate_one(VA, Access.USER)
    assert (violation.status, violation.fault_address) == (Status.EPT_VIOLATION, 0x400000 + (VA & 0xFFF))
    assert violation.exit_qualification & ExitQual.FINAL_TRANSLATION
    assert all(not mmu.structures()[f"psc.{name}"].contents() for name in ("pde", "pdpte", "pml4e"))
    retry = mmu.translate_one(VA, Access.USER)
    assert retry.ok and retry.host_address == (16 << 20) + 0x500000


def test_an_ept_violation_on_a_guest_table_keeps_the_combined_entries(backend):
    """An EPT violation on a guest paging-structure entry's address (bit 8 clear) invalidates the
    nested-TLB entries for that address only: the PDE-cache entry that led to it stays."""
    memory_class, mmu_class = backend
    mem = memory_class("64MiB")
    mem.alloc_at(np.arange(4096, 8192), owner=1, kind=FrameKind.DATA)
    ept = EptTable(mem, owner=1)
    ept.map_range(0, 16 << 20, 16 << 20, EPT.RWX)
    next_gpa = iter(range(1 << 20, 2 << 20, 4096))
    guest = PageTable(mem, ept=ept, alloc_gpa=lambda: next(next_gpa))
    guest.map(VA, 0x400000, RW_USER)
    mmu = mmu_class(mem, tlb=PSC_ONLY, cpu=CpuState(cr3=guest.root), ept=ept.config, vpid=1)
    assert mmu.translate_one(VA, Access.USER).ok
    pte_gpa = guest.entry_address(VA + 0x1000, 1)
    ept.write_entry(pte_gpa, 1, 0)                           # the page table's page leaves the EPT
    mmu.invept(1, eptag=ept.config.eptag)
    assert mmu.translate_one(VA, Access.USER).status == Status.EPT_VIOLATION
    pde_cache = mmu.structures()["psc.pde"].contents()
    violation = mmu.translate_one(VA + 0x1000, Access.USER)   # the PDE cache hits; the PTE's GPA faults
    assert (violation.status, violation.fault_address) == (Status.EPT_VIOLATION, pte_gpa)
    assert not violation.exit_qualification & ExitQual.FINAL_TRANSLATION
    assert mmu.structures()["psc.pde"].contents() == pde_cache


def test_a_structure_emptied_and_refilled_between_batches_is_searched_again(backend):
    # Each structure records which page sizes it may hold, so that a batch skips the searches that
    # cannot hit: a flush of everything clears that record and a fill must set it again.
    tlb = TLBConfig(l1d=(CacheGeometry(16, 4, ("4K",)), CacheGeometry(8, 4, ("2M",))),
                    l2=CacheGeometry(64, 8, ("4K", "2M")))
    memory_class, mmu_class = backend
    mem = memory_class("64MiB")
    pt = PageTable(mem, kind=FrameKind.GUEST_PT)
    pt.map(VA, 0x200000, RW_USER | PTE.A | PTE.D, page_size="2M")
    mmu = mmu_class(mem, tlb=tlb, cpu=CpuState(cr3=pt.root))
    big = mmu.structures()["l1d[1]"]

    def l1_hits_after_one_access() -> int:
        addresses, kinds, out, status = batch([VA + 0x1234])
        assert mmu.translate(addresses, kinds, out=out, status=status).complete
        return mmu.counters()["l1d"]["hits"]

    assert [l1_hits_after_one_access() for _ in range(2)] == [0, 1]     # a walk, then an L1 hit
    big.flush()                                  # the L1's 2 MiB structure is empty again...
    assert not big.contents()
    assert [l1_hits_after_one_access() for _ in range(2)] == [1, 2]     # ...refilled from the L2, and hit
    assert mmu.counters()["l2"]["hits"] == 1
