"""The batch run loop: accesses in as numpy arrays, host-physical addresses and statuses out.

``MMU.translate`` checks its arguments with the GIL held, then runs the whole
batch in ``_run`` without it.  Per access: canonical check, the L1 TLB of the
access's kind, the L2 TLB, then a walk (native or 2D) through the
paging-structure caches and nested TLB.  A cached translation serves an
access only if its cached rights allow it (and, for a write, its dirty flags
are set); otherwise it is dropped and the next level is tried.  The loop
stops at the first access that is not translated, records why, and returns
its index: the caller (the guest OS or the hypervisor, in Python) handles it
and resumes from there.  ``fastmmu.reference.mmu`` is the same, readable.

Runs of L1 hits are served by ``_run_hits`` with the L1 structure in
locals; an access it cannot serve goes through ``_translate``.  A miss tries
the walker's fast paths first: paging.pxd's, or with paging-structure caches
or a nested TLB walk_cached.pxi's, which look the caches up without side
effects and replay the lookups once the walk succeeds; anything else (A/D
flags to set, a fault, a trace) takes the full walker.  With no TLB and no
walk cache every access walks, a group at a time, by the group kernels of
paging.pxd (``_run_quick``, ``_run_grouped``).  With TLBs and flat memory,
``_run_ahead`` walks a group ahead by a group kernel while most accesses
miss: without walk caches a miss takes its walk from there, with them the
group's walks only bring the entries into the processor's caches.  The group
kernels never write, so what they computed is exact until a full walk
commits A/D flags; after one, the rest of the group is walked again.
Counters, LRU stamps and fills are those of the one-by-one loop.
"""

from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

import dataclasses

import numpy as np

from fastmmu._core.memory cimport HostMemory, mem_t
from fastmmu._core.paging cimport (
    ATTR_D,
    ATTR_EPT_R,
    ATTR_EPT_W,
    ATTR_EPT_X,
    ATTR_FRACTURED,
    ATTR_MEMTYPE_SHIFT,
    MAX_NESTED_FILLS,
    _commit,
    _ept_fast,
    _fast_bad_x86,
    _fast_index,
    _fast_out,
    _page_address,
    _x86_leaf_flags,
    _x86_rights,
    rights_entry_bits,
    ept_attrs,
    ept_xlate_t,
    walk_pending_t,
    ATTR_G,
    ATTR_EPT_D,
    ATTR_EPT_SHIFT,
    EQ_FINAL,
    TRACE_CAPACITY,
    WALK_EPT_VIOLATION,
    WALK_GP,
    WALK_OK,
    WALK_PAGE_FAULT,
    WALK_TRAP,
    check_access,
    ept_access_need,
    ept_from_config,
    ept_t,
    paging_from_cpu,
    paging_t,
    no_trace_t,
    trace_kind,
    walk_caches_init,
    walk_caches_t,
    walk_native,
    walk_native_fast,
    walk_nested,
    walk_nested_fast,
    walk_native_group,
    walk_native_quick,
    walk_nested_group,
    quick_x86_init,
    quick_x86_t,
    QUICK_LANES,
    group_attrs_t,
    group_refs,
    GROUP_MAX,
    walk_result,
    walk_t,
    walk_trace_clear,
    walk_trace_t,
)
from fastmmu._core.tlb cimport (
    CTX_GLOBAL,
    TLB,
    TAG_SIZE_SHIFT,
    VPN_MASK,
    tlb_code_for,
    tlb_ctx,
    POLICY_LRU,
    POLICY_PLRU,
    TAG_VALID,
    tlb_find,
    tlb_find_in,
    tlb_probe,
    tlb_set_base,
    tlb_touch,
    tlb_want_tag,
    tlb_fill,
    tlb_hit_t,
    tlb_lookup,
    tlb_reject,
    tlb_t,
)
from fastmmu._core.types cimport (
    ACC_FETCH,
    ACC_VALID_MASK,
    ADDR_MASK,
    EPT_RWX,
    EPT_W,
    PTE_D,
    PTE_RW,
    PTE_US,
    gpa_t,
    gva_t,
    pte_t,
    ACC_WRITE,
    CR3_NOFLUSH,
    CR3_PCID_MASK,
    PAGE_SHIFT,
    int64_t,
    uint8_t,
    uint32_t,
    uint64_t,
)

from fastmmu._core.tlb import TLB as _TLB
from fastmmu.arch import Status
from fastmmu.batch import REFERENCE_DTYPE as _REFERENCE_DTYPE, BatchResult, check_batch
from fastmmu.reference.tlb import check_invept, check_invlpg, check_invpcid, check_invvpid, is_canonical
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.tlbconfig import PSC_SHIFTS as _PSC_SHIFTS, TLBConfig, fill_target
from fastmmu.translation import Walk

__all__ = ["BUILD_DEBUG", "MMU"]

_LEVEL_NAMES = ("l1i", "l1d", "l2")
if _REFERENCE_DTYPE.itemsize != sizeof(ref_record_t):
    raise ImportError(f"fastmmu._core.mmu: REFERENCE_DTYPE is {_REFERENCE_DTYPE.itemsize} bytes, "
                      f"ref_record_t {sizeof(ref_record_t)}")
_LOG_STEP = 4096   # accesses translated between two checks of the log's room (TRACE_CAPACITY each)
_PSC_LEVEL = {"pde": 2, "pdpte": 3, "pml4e": 4, "pml5e": 5}
_STATUSES = tuple(Status)  # by value: Status(n) is slow on the path of every fault
_FAULT_NAMES = {1: "page_fault", 2: "gp", 3: "ept_violation", 4: "ept_misconfig", 5: "trap"}


cdef inline bint _allowed(MMU self, uint32_t attrs, uint32_t access) noexcept nogil:
    """Whether a cached translation may serve ``access`` without a walk: its rights (check_access),
    and the attrs bits the access needs (``hit_need``: the EPT right; for a write, D and EPT D)."""
    cdef uint32_t need = self.hit_need[access & ACC_VALID_MASK]
    return check_access(attrs, access, &self.paging) == 0 and (attrs & need) == need


cdef inline void _prepare_hits(MMU self) noexcept nogil:
    """``hit_need`` for the paging state in force."""
    cdef uint32_t access, need
    self.l1_known_miss = 0
    for access in range(16):
        need = ept_access_need(access) << ATTR_EPT_SHIFT
        if access & ACC_WRITE:
            need |= ATTR_D
            if self.nested and self.ept.ad:
                need |= ATTR_EPT_D
        self.hit_need[access] = need


cdef inline bint _lookup(tlb_t *t, uint64_t va, uint64_t ctx, uint64_t now, tlb_hit_t *hit) noexcept nogil:
    """tlb_lookup, searching only the size codes the structure may hold (``t.live``, which every write
    of an entry keeps): the same result."""
    cdef uint32_t i
    cdef uint8_t code
    cdef uint64_t vpn
    for i in range(t.nsizes):
        code = t.codes[i]
        if (t.live >> code) & 1:
            vpn = (va >> t.shift[code]) & VPN_MASK
            if tlb_probe(t, tlb_set_base(t, vpn), tlb_want_tag(code, vpn), ctx, now, hit):
                t.counts.hits += 1
                return 1
    t.counts.misses += 1
    return 0


cdef inline bint _probe(MMU self, level_t *level, uint64_t va, uint32_t access, uint64_t ctx,
                        tlb_hit_t *hit, bint known_miss) noexcept nogil:
    """Look ``va`` up in every structure of a level; drop hits whose rights do not allow ``access``.
    Only the size codes a structure may hold (``tlb_t.live``) are searched; ``known_miss``: the first
    structure holds no entry for ``va`` (_run_hits searched it), it counts its miss unsearched."""
    cdef int i
    for i in range(level.n):
        level.clock[i][0] += 1
        if i == 0 and known_miss:
            level.t[0].counts.misses += 1
        elif _lookup(level.t[i], va, ctx, level.clock[i][0] - 1, hit):
            if _allowed(self, hit.attrs, access):
                return 1
            tlb_reject(level.t[i], hit.pos)      # a miss, for the level and for the structure
            self.counts.rights_drops += 1
    return 0


cdef Py_ssize_t _run_hits(MMU self, const uint64_t *va, const uint8_t *kind, uint64_t *hpa, uint8_t *st,
                          Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Accesses i, i+1, ... while each is _translate's commonest case, a hit in the first structure
    of its L1 level that allows it (canonical address, no trapped frame), all of the L1 level of
    access i: the index of the first that is not (n: all were).

    The same side effects as _translate, with the structure's arrays, geometry, clock and the
    counters in locals (the counters written back once): the loop of the hit rate that counts most.
    """
    cdef uint32_t access = kind[i] if i < n else 0
    cdef int index = LEVEL_L1I if access & ACC_FETCH else LEVEL_L1D
    cdef level_t *l1 = &self.levels[index]
    cdef tlb_t *t
    if i >= n or not l1.n or not (l1.t[0].live >> l1.t[0].codes[0]) & 1 or l1.t[0].policy == POLICY_PLRU:
        return i                        # (a PLRU touch writes the whole set: _translate does it)
    t = l1.t[0]
    cdef const uint64_t *tags = t.tag
    cdef const uint64_t *ctxs = t.ctx
    cdef const uint64_t *frames = t.frame
    cdef const uint32_t *attrs = t.attrs
    cdef uint64_t *stamps = t.stamp
    cdef bint lru = t.policy == POLICY_LRU
    cdef uint64_t ways = t.ways, set_mask = t.set_mask, sets = t.sets
    cdef bint pow2 = t.pow2
    cdef uint8_t code = t.codes[0]
    cdef int shift = t.shift[code]
    cdef uint64_t offset_mask = (<uint64_t>1 << shift) - 1
    cdef uint64_t tag_bits = TAG_VALID | (<uint64_t>code << TAG_SIZE_SHIFT)
    cdef uint64_t want_ctx = self.caches.ctx
    cdef uint64_t now = l1.clock[0][0]
    cdef int cshift = 63 - self.paging.canonical_shift
    cdef const mem_t *m = &self.mem.c
    cdef bint traps = m.ntraps != 0
    cdef const paging_t *p = &self.paging
    cdef const uint32_t *need = self.hit_need
    cdef uint32_t fetch = access & ACC_FETCH, a
    cdef uint32_t allowed_attrs = 0xFFFFFFFF, allowed_access = 0xFFFFFFFF   # the last pair checked and allowed
    cdef Py_ssize_t start = i
    cdef uint64_t v, vpn, base, pos, address
    cdef bint single = t.nsizes == 1
    if lru and pow2 and not traps:
        # The same loop for the commonest structure (LRU, a power-of-two set count) and memory without
        # traps: no test of those in the loop, fewer values live in it (issue 12 row e sequential,
        # TLBConfig.skylake(): 3.2 -> 2.85 ns, 3 runs each, back to back).
        while i < n:
            v = va[i]
            access = kind[i]
            if (access & ACC_FETCH) != fetch or <uint64_t>((<int64_t>(v << cshift)) >> cshift) != v:
                break
            vpn = (v >> shift) & VPN_MASK
            base = (vpn & set_mask) * ways
            if not tlb_find_in(tags, ctxs, base, base + ways, tag_bits | vpn, want_ctx, &pos):
                self.l1_known_miss = single
                break
            a = attrs[pos]
            if a != allowed_attrs or access != allowed_access:     # as below
                if check_access(a, access, p) != 0 or (a & need[access & ACC_VALID_MASK]) != need[access & ACC_VALID_MASK]:
                    break
                allowed_attrs = a
                allowed_access = access
            stamps[pos] = now
            now += 1
            hpa[i] = (frames[pos] << PAGE_SHIFT) + (v & offset_mask)
            st[i] = WALK_OK
            i += 1
        n = i           # (the loop below does not run)
    while i < n:
        v = va[i]
        access = kind[i]
        if (access & ACC_FETCH) != fetch or <uint64_t>((<int64_t>(v << cshift)) >> cshift) != v:
            break
        vpn = (v >> shift) & VPN_MASK
        base = ((vpn & set_mask) if pow2 else (vpn % sets)) * ways
        if not tlb_find_in(tags, ctxs, base, base + ways, tag_bits | vpn, want_ctx, &pos):
            self.l1_known_miss = single     # the next _translate, on this access, need not search again
            break
        a = attrs[pos]
        if a != allowed_attrs or access != allowed_access:
            # The check is a function of (attrs, access) alone while the loop runs (nothing changes the
            # paging state here): made once per pair (issue 12 row e sequential, skylake: 3.7 -> 3.2 ns).
            if check_access(a, access, p) != 0 or (a & need[access & ACC_VALID_MASK]) != need[access & ACC_VALID_MASK]:
                break
            allowed_attrs = a
            allowed_access = access
        address = (frames[pos] << PAGE_SHIFT) + (v & offset_mask)
        if traps and m.trap[_clamp_frame(m, address >> PAGE_SHIFT)]:
            break
        if lru:
            stamps[pos] = now
        now += 1
        hpa[i] = address
        st[i] = WALK_OK
        i += 1
    l1.clock[0][0] = now
    t.counts.hits += <uint64_t>(i - start)
    self.counts.hits[index] += <uint64_t>(i - start)
    self.counts.accesses += <uint64_t>(i - start)
    return i


cdef inline void _fill(MMU self, level_t *level, uint64_t va, uint8_t code, uint64_t ctx, uint64_t frame,
                       uint32_t attrs) noexcept nogil:
    cdef int target = level.target[code]
    if target >= 0:
        level.clock[target][0] += 1
        tlb_fill(level.t[target], va, code, ctx, frame, attrs, level.clock[target][0] - 1)


cdef inline bint _fast_walks(MMU self) noexcept nogil:
    """Whether the walks use no walk cache: no paging-structure cache (nor, nested, nested TLB), so
    that a group kernel's walk (from the root) is the walk itself."""
    cdef int level
    for level in range(2, 6):
        if self.caches.psc[level] != NULL:
            return 0
    return not (self.nested and self.caches.nested != NULL)


cdef inline void _count_walks(MMU self, uint32_t refs, uint64_t count) noexcept nogil:
    """``count`` walks of ``refs`` references each."""
    self.counts.walks += count
    self.counts.references += count * refs
    self.counts.histogram[refs if refs < HISTOGRAM_BUCKETS else HISTOGRAM_BUCKETS - 1] += count


ctypedef struct ahead_walk_t:    # an access's walk made ahead by a group kernel (a 4 KiB page)
    uint64_t hpa
    uint32_t attrs
    uint32_t refs


cdef inline int _translate(MMU self, uint64_t va, uint32_t access, uint64_t *hpa, walk_t *w,
                           trace_kind *trace, const ahead_walk_t *ahead, bint *walked,
                           bint *slow) noexcept nogil:
    """One access: the TLB levels, then a walk.  Returns a WALK_* status.

    ``w`` holds the walk's result when ``walked`` is set, else the page size
    and rights of the cached translation; ``hpa`` the address when not faulting.
    Without a trace the walker's fast paths are tried first (those of paging.pxd, or with walk
    caches walk_cached.pxi's).  ``slow`` is set when the full walker ran (it may have written
    memory).  ``ahead``: this access's walk, made by a group kernel since memory last changed
    (NULL: none).
    """
    cdef uint64_t fast_hpa = 0
    cdef uint32_t fast_attrs = 0, fast_refs = 0
    cdef int fast_shift = 0
    cdef bint done
    cdef tlb_hit_t hit
    cdef int l1_index = LEVEL_L1I if access & ACC_FETCH else LEVEL_L1D
    cdef level_t *l1 = &self.levels[l1_index]
    cdef uint64_t ctx = self.caches.ctx      # (PCID, VPID, EPT tag): the same for TLBs and PSCs
    cdef uint64_t frame
    cdef uint8_t code
    cdef int status, cshift = self.paging.canonical_shift
    cdef bint found = 0
    self.counts.accesses += 1
    if <uint64_t>((<int64_t>(va << (63 - cshift))) >> (63 - cshift)) != va:
        w.status = WALK_GP
        return WALK_GP
    if l1.n:
        found = _probe(self, l1, va, access, ctx, &hit, self.l1_known_miss)
        self.l1_known_miss = 0
        if found:
            self.counts.hits[l1_index] += 1
        else:
            self.counts.misses[l1_index] += 1
    if not found and self.levels[LEVEL_L2].n:
        found = _probe(self, &self.levels[LEVEL_L2], va, access, ctx, &hit, 0)
        if found:
            self.counts.hits[LEVEL_L2] += 1
            _fill(self, l1, va, hit.code, ctx | (CTX_GLOBAL if hit.attrs & ATTR_G else 0), hit.frame,
                  hit.attrs)
        else:
            self.counts.misses[LEVEL_L2] += 1
    if found:
        hpa[0] = (hit.frame << PAGE_SHIFT) + (va & ((<uint64_t>1 << _hit_shift(&hit)) - 1))
        w.page_shift = _hit_shift(&hit)
        w.attrs = hit.attrs
        w.status = WALK_OK
        w.refs = 0
    else:
        walked[0] = 1
        if trace_kind is no_trace_t:
            if ahead != NULL:
                fast_hpa = ahead.hpa
                fast_attrs = ahead.attrs
                fast_shift = PAGE_SHIFT
                fast_refs = ahead.refs
                done = 1
            elif self.walk_cached:
                if self.nested:
                    done = walk_nested_cached(&self.mem.c, &self.paging, &self.ept, va, access, &self.caches,
                                              &fast_hpa, &fast_attrs, &fast_shift, &fast_refs)
                else:
                    done = walk_native_cached(&self.mem.c, &self.paging, va, access, &self.caches,
                                              &fast_hpa, &fast_attrs, &fast_shift, &fast_refs)
            elif self.nested:
                done = walk_nested_fast(&self.mem.c, &self.paging, &self.ept, va, access,
                                        &fast_hpa, &fast_attrs, &fast_shift, &fast_refs)
            else:
                done = walk_native_fast(&self.mem.c, &self.paging, va, access,
                                        &fast_hpa, &fast_attrs, &fast_shift, &fast_refs)
            if done:
                _count_walks(self, fast_refs, 1)
                code = <uint8_t>((fast_shift - PAGE_SHIFT) // 9)
                frame = (fast_hpa >> fast_shift) << (fast_shift - PAGE_SHIFT)
                ctx |= CTX_GLOBAL if fast_attrs & ATTR_G else 0
                _fill(self, &self.levels[LEVEL_L2], va, code, ctx, frame, fast_attrs)
                _fill(self, l1, va, code, ctx, frame, fast_attrs)
                hpa[0] = fast_hpa
                if self.mem.c.ntraps and self.mem.c.trap[_clamp_frame(&self.mem.c, fast_hpa >> PAGE_SHIFT)]:
                    w.status = WALK_TRAP
                    w.page_shift = <uint8_t>fast_shift
                    w.attrs = fast_attrs
                    w.host_address = fast_hpa
                    return WALK_TRAP
                return WALK_OK
        slow[0] = 1
        if self.nested:
            status = walk_nested(&self.mem.c, &self.paging, &self.ept, va, access, &self.caches, trace, w)
        else:
            status = walk_native(&self.mem.c, &self.paging, va, access, &self.caches, trace, w)
        _count_walks(self, w.refs, 1)
        if status != WALK_OK:
            return status
        code = <uint8_t>((w.page_shift - PAGE_SHIFT) // 9)
        frame = (w.host_address >> w.page_shift) << (w.page_shift - PAGE_SHIFT)
        ctx |= CTX_GLOBAL if w.is_global else 0
        _fill(self, &self.levels[LEVEL_L2], va, code, ctx, frame, w.attrs)
        _fill(self, l1, va, code, ctx, frame, w.attrs)
        hpa[0] = w.host_address
    if self.mem.c.ntraps and self.mem.c.trap[_clamp_frame(&self.mem.c, hpa[0] >> PAGE_SHIFT)]:
        w.host_address = hpa[0]
        return WALK_TRAP
    return WALK_OK


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define fastmmu_ctz64(x) ((unsigned)__builtin_ctzll(x))
    #define fastmmu_popcount64(x) ((unsigned)__builtin_popcountll(x))
    #else
    static unsigned fastmmu_ctz64(unsigned long long x) { unsigned n = 0; while (!(x & 1)) { x >>= 1; n++; } return n; }
    static unsigned fastmmu_popcount64(unsigned long long x) { unsigned n = 0; while (x) { x &= x - 1; n++; } return n; }
    #endif
    """
    uint32_t ctz64 "fastmmu_ctz64"(uint64_t x) noexcept nogil   # x != 0
    uint32_t popcount64 "fastmmu_popcount64"(uint64_t x) noexcept nogil


cdef enum:
    # After a group in which the kernel did fewer than half the lanes (large pages, execute-only
    # EPT pages, flags to set...), this many accesses go one by one before the next group.
    GROUP_BACKOFF = 1024
    # After a quick group that failed, this many groups go to _run_grouped before the next try.
    QUICK_BACKOFF = 4
    # _run_ahead walks a group ahead when at least 1 in AHEAD_MISSES accesses of the last one walked
    # (AHEAD_MISSES_CACHED with walk caches), else it runs AHEAD_WINDOW accesses before it looks again.
    # 1 in 2 for both cost row d Zipf 2.00 -> 1.26 of C; issue 12 row f Zipf measured 0.86 with 1 in 2.
    AHEAD_MISSES = 8
    AHEAD_MISSES_CACHED = 2
    AHEAD_WINDOW = 256


cdef inline Py_ssize_t _backoff(uint64_t done, uint32_t cnt) noexcept nogil:
    """Accesses to run one by one after a group of ``cnt`` of which the kernel did the lanes ``done``:
    GROUP_BACKOFF when it did fewer than half (large pages, execute-only EPT pages, flags to set...)."""
    return GROUP_BACKOFF if popcount64(done) * 2 < cnt else 0


cdef inline uint32_t _next_size(uint32_t size, uint32_t full, bint cut_short) noexcept nogil:
    """The next group's size: after a group cut short by a full walk (which may have written memory),
    smaller groups until they run through again, then back up to ``full``."""
    if cut_short:
        return size // 2 if size > 4 else 4
    return size * 2 if size < full else size


cdef int _run_plain(MMU self, const uint64_t *va, const uint8_t *kind, uint64_t *hpa, uint8_t *st,
                    Py_ssize_t *pi, Py_ssize_t n, walk_t *w) noexcept nogil:
    """Accesses pi[0] .. n-1 one by one (the fast paths on); the status of the one it stopped at."""
    cdef Py_ssize_t i = pi[0]
    cdef int result = WALK_OK
    cdef bint walked = 0, slow = 0
    while i < n:
        i = _run_hits(self, va, kind, hpa, st, i, n)
        if i == n:
            break
        result = _translate(self, va[i], kind[i], &hpa[i], w, <no_trace_t *>NULL, NULL, &walked, &slow)
        st[i] = <uint8_t>result
        if result != WALK_OK:
            self.counts.faults[result] += 1
            break
        i += 1
    pi[0] = i
    return result


cdef inline uint32_t _group_size(MMU self) noexcept nogil:
    """Accesses walked together: native walks are short and cheap, 16 keep the loads flowing; a 2D
    walk's dependent loads are further apart with 32 (measured on the bench rows b and c)."""
    return GROUP_MAX if self.nested else GROUP_MAX // 2


cdef inline uint64_t _group_walk(MMU self, const uint64_t *va, const uint8_t *kind, Py_ssize_t i, Py_ssize_t n,
                                 uint32_t cnt, uint64_t *ghpa, group_attrs_t *gattrs) noexcept nogil:
    """The group kernel on accesses i .. i+cnt-1 (cnt <= GROUP_MAX): the mask of the lanes it did.
    ``gattrs``: their attrs, or <no_trace_t *>NULL when they are not wanted."""
    cdef uint64_t pad_va[GROUP_MAX]
    cdef uint8_t pad_kind[GROUP_MAX]
    cdef uint32_t scratch[GROUP_MAX]
    cdef uint32_t k, n4 = (cnt + 3) & ~(<uint32_t>3)
    cdef uint64_t done
    cdef const uint64_t *gva = &va[i]
    cdef const uint8_t *gkind = &kind[i]
    if i + n4 > n:                  # the end of the batch: lanes beyond it copy the first
        for k in range(n4):
            pad_va[k] = va[i + k] if k < cnt else va[i]
            pad_kind[k] = kind[i + k] if k < cnt else kind[i]
        gva = pad_va
        gkind = pad_kind
    if self.nested:
        if group_attrs_t is uint32_t:
            done = walk_nested_group(&self.mem.c, &self.paging, &self.ept, gva, gkind, n4, ghpa, gattrs)
        else:
            done = walk_nested_group(&self.mem.c, &self.paging, &self.ept, gva, gkind, n4, ghpa, scratch)
    else:
        done = walk_native_group(&self.mem.c, &self.paging, gva, gkind, n4, ghpa, gattrs)
    return done & ((<uint64_t>1 << cnt) - 1) if cnt < 64 else done


cdef int _run_grouped(MMU self, const uint64_t *va, const uint8_t *kind, uint64_t *hpa, uint8_t *st,
                      Py_ssize_t *pi, Py_ssize_t n, walk_t *w) noexcept nogil:
    """The batch loop with no TLB and the fast paths on: every access walks, GROUP_MAX at a time.

    The group kernels never write, so their results stand until a walk writes memory: a
    lane they leave takes the per-access path (``_translate``), and when that ran the full
    walker, which may have set A/D flags, the rest of the group is walked again.
    Returns the status of the access at ``pi[0]`` (WALK_OK: the batch is done).
    """
    cdef uint64_t ghpa[GROUP_MAX]
    cdef uint32_t gattrs[GROUP_MAX]
    cdef Py_ssize_t i = pi[0]
    cdef uint32_t k, j, run, cnt, full = _group_size(self), size = full
    cdef uint64_t ok
    cdef uint64_t done = 0, refs = group_refs(&self.paging, &self.ept, self.nested)
    cdef int result = WALK_OK
    cdef bint walked = 0, slow = 0
    cdef const mem_t *m = &self.mem.c
    cdef Py_ssize_t plain = 0
    while i < n:
        if plain:
            result = _run_plain(self, va, kind, hpa, st, &i, i + plain if n - i > plain else n, w)
            plain = 0
            if result != WALK_OK:
                break
            continue
        cnt = <uint32_t>(n - i) if n - i < size else size
        if m.ntraps:        # a trap reports the lane's attrs
            ok = _group_walk(self, va, kind, i, n, cnt, ghpa, gattrs)
        else:
            ok = _group_walk(self, va, kind, i, n, cnt, ghpa, <no_trace_t *>NULL)
        plain = _backoff(ok, cnt)
        slow = 0
        k = 0
        while k < cnt:
            run = ctz64(~(ok >> k))      # k < cnt <= GROUP_MAX < 64: a zero bit above the lanes
            if run > cnt - k:
                run = cnt - k
            if m.ntraps:
                for j in range(run):
                    if m.trap[_clamp_frame(m, ghpa[k + j] >> PAGE_SHIFT)]:
                        memcpy(&hpa[i], &ghpa[k], (j + 1) * sizeof(uint64_t))
                        memset(&st[i], WALK_OK, j)
                        done += j + 1
                        i += j
                        w.status = WALK_TRAP
                        w.page_shift = PAGE_SHIFT
                        w.attrs = gattrs[k + j]
                        w.host_address = ghpa[k + j]
                        result = WALK_TRAP
                        break
                if result != WALK_OK:
                    break
            memcpy(&hpa[i], &ghpa[k], run * sizeof(uint64_t))
            memset(&st[i], WALK_OK, run)
            done += run
            i += run
            k += run
            if k == cnt:
                break
            # Lane k: the per-access path.
            result = _translate(self, va[i], kind[i], &hpa[i], w, <no_trace_t *>NULL, NULL, &walked, &slow)
            if result != WALK_OK:
                break
            st[i] = WALK_OK
            i += 1
            k += 1
            if slow:
                break
        if result != WALK_OK:
            st[i] = <uint8_t>result
            self.counts.faults[result] += 1
            break
        size = _next_size(size, full, slow)
    self.counts.accesses += done
    _count_walks(self, refs, done)
    pi[0] = i
    return result


cdef int _run_quick(MMU self, const uint64_t *va, const uint8_t *kind, uint64_t *hpa, uint8_t *st,
                    Py_ssize_t *pi, Py_ssize_t n, walk_t *w) noexcept nogil:
    """_run_grouped's commonest case first (native walks, no trap, quick_x86_init applies): QUICK_LANES
    accesses at a time by walk_native_quick, all or nothing.  A group it does not do, the next
    QUICK_BACKOFF groups after it and the tail of the batch go to _run_grouped, which answers per
    access.  Returns the status of the access at ``pi[0]`` (WALK_OK: the batch is done)."""
    cdef quick_x86_t q
    cdef Py_ssize_t i = pi[0], stop
    cdef uint64_t done = 0
    cdef uint32_t refs = <uint32_t>self.paging.levels
    cdef int result = WALK_OK
    if self.nested or self.mem.c.ntraps or not quick_x86_init(&q, &self.mem.c, &self.paging):
        return _run_grouped(self, va, kind, hpa, st, pi, n, w)
    while n - i >= QUICK_LANES:
        if walk_native_quick(&q, &va[i], &kind[i], &hpa[i]):
            memset(&st[i], WALK_OK, QUICK_LANES)
            i += QUICK_LANES
            done += QUICK_LANES
            continue
        stop = i + QUICK_LANES * QUICK_BACKOFF
        result = _run_grouped(self, va, kind, hpa, st, &i, stop if stop < n else n, w)
        if result != WALK_OK:
            break
    if result == WALK_OK and i < n:
        result = _run_grouped(self, va, kind, hpa, st, &i, n, w)
    self.counts.accesses += done
    _count_walks(self, refs, done)
    pi[0] = i
    return result


cdef int _run_ahead(MMU self, const uint64_t *va, const uint8_t *kind, uint64_t *hpa, uint8_t *st,
                    Py_ssize_t *pi, Py_ssize_t n, walk_t *w) noexcept nogil:
    """The batch loop with TLBs and flat memory.  While most accesses miss, the walks of the next
    group of accesses are made ahead, together, by a group kernel, before the accesses run one by
    one through the TLBs: without walk caches a miss takes its walk from there (only the fast paths'
    results are used, which depend on memory alone: after a full walk, which may write memory, the
    rest of the group is walked again); with them (``walk_cached``) the group's walks only bring
    the entries into the processor's caches, and every miss walks through the walk caches.  While
    most accesses hit, no walk is made ahead: AHEAD_WINDOW accesses at a time, each miss walks alone.
    """
    cdef uint64_t ghpa[GROUP_MAX]
    cdef uint32_t gattrs[GROUP_MAX]
    cdef Py_ssize_t i = pi[0], group, end
    cdef uint64_t ok = 0
    cdef uint32_t k, cnt, full = _group_size(self), size = full, refs = group_refs(&self.paging, &self.ept, self.nested)
    cdef int result = WALK_OK
    # No walk ahead until a window shows that most accesses miss: a batch resumed after a fault (one
    # per page when a program touches new memory) would walk a whole group ahead for each access it
    # gets to (issue 12 row g, nested: 65 k -> 76 k faults/s).
    cdef bint walked = 0, slow = 0, ahead = 0
    cdef ahead_walk_t lane
    cdef uint64_t walks
    cdef Py_ssize_t plain = 0
    lane.refs = refs
    while i < n:
        if plain:
            result = _run_plain(self, va, kind, hpa, st, &i, i + plain if n - i > plain else n, w)
            plain = 0
            if result != WALK_OK:
                break
            continue
        if ahead:
            cnt = <uint32_t>(n - i) if n - i < size else size
            ok = _group_walk(self, va, kind, i, n, cnt, ghpa, gattrs)
            plain = _backoff(ok, cnt)
            if self.walk_cached:
                # With paging-structure caches or a nested TLB the walks must go through them (a stale
                # cached entry decides): the group's walks only brought their entries into the cache.
                ok = 0
        else:
            cnt = <uint32_t>(n - i) if n - i < AHEAD_WINDOW else AHEAD_WINDOW
            ok = 0
        walks = self.counts.walks
        slow = 0
        group = i
        end = i + cnt
        while i < end:
            if not ahead:       # mostly hits: runs of them from locals (while most miss, the setup costs more)
                i = _run_hits(self, va, kind, hpa, st, i, end)
                if i == end:
                    break
            k = <uint32_t>(i - group)
            if ok != 0 and (ok >> k) & 1:
                lane.hpa = ghpa[k]
                lane.attrs = gattrs[k]
                result = _translate(self, va[i], kind[i], &hpa[i], w, <no_trace_t *>NULL, &lane, &walked, &slow)
            else:
                result = _translate(self, va[i], kind[i], &hpa[i], w, <no_trace_t *>NULL, NULL, &walked, &slow)
            st[i] = <uint8_t>result
            if result != WALK_OK:
                break
            i += 1
            if slow:
                break
        if result != WALK_OK:
            self.counts.faults[result] += 1
            break
        # Walk the next group ahead only if enough of this one missed: a hit needs no walk.  Without walk
        # caches the group's walks replace the misses' own, with them they only prefetch: more must miss.
        ahead = ((self.counts.walks - walks) * (AHEAD_MISSES_CACHED if self.walk_cached else AHEAD_MISSES)
                 >= <uint64_t>(i - group))
        size = _next_size(size, full, slow)
    pi[0] = i
    return result


include "walk_cached.pxi"


cdef inline uint8_t _hit_shift(const tlb_hit_t *hit) noexcept nogil:
    return <uint8_t>(PAGE_SHIFT + 9 * hit.code)


cdef inline uint64_t _clamp_frame(const mem_t *m, uint64_t pfn) noexcept nogil:
    return pfn if pfn < m.nframes else m.nframes


cdef class MMU:
    """One logical processor's translation hardware over a HostMemory.

    >>> import numpy as np, fastmmu
    >>> from fastmmu.tables import PageTable
    >>> mem = fastmmu.HostMemory("1GiB")
    >>> pt = PageTable(mem)
    >>> pt.map(0x7000_0000_0000, 0x1234_5000, fastmmu.PTE.P | fastmmu.PTE.RW)
    >>> mmu = MMU(mem, cpu=fastmmu.CpuState(cr3=pt.root))
    >>> out = np.zeros(1, np.uint64)
    >>> mmu.translate(np.array([0x7000_0000_0123], np.uint64), out=out).complete, hex(out[0])
    (True, '0x12345123')
    """

    def __cinit__(self):
        self._structures = []
        self._by_name = {}
        self._log = NULL
        self._log_count = self._log_capacity = 0
        self._logging = 0

    def __dealloc__(self):
        free(self._log)

    def __init__(self, HostMemory mem not None, *, tlb=None, cpu=None, ept=None, vpid=0):
        if tlb is None:
            tlb = TLBConfig.skylake()
        if not isinstance(tlb, TLBConfig):
            raise TypeError(f"tlb: expected a TLBConfig or None, got {type(tlb).__name__}")
        self.mem = mem
        self.config = tlb
        walk_caches_init(&self.caches)
        cdef int index, i, code
        for index, name in enumerate(_LEVEL_NAMES):
            geometries = getattr(tlb, name)
            self.levels[index].n = len(geometries)
            for i, g in enumerate(geometries):
                t = self._add(f"{name}[{i}]", _TLB(g.entries, g.ways, sizes=g.sizes, policy=g.policy,
                                                   name=f"{name}[{i}]"))
                self.levels[index].t[i] = &(<TLB>t).c
                self.levels[index].clock[i] = &(<TLB>t).clock
            for code in range(3):
                self.levels[index].target[code] = fill_target(geometries, code)
        for name, g in tlb.psc.items():
            t = self._add(f"psc.{name}", _TLB(g.entries, g.ways, sizes=("region",),
                                              region_shift=_PSC_SHIFTS[name],
                                              policy=g.policy, name=f"psc.{name}"))
        if tlb.nested_tlb is not None:
            g = tlb.nested_tlb
            t = self._add("nested", _TLB(g.entries, g.ways, sizes=g.sizes, policy=g.policy, name="nested",
                                         kind="ntlb"))
            self.caches.nested = &(<TLB>t).c
        self.caches.tick = 1     # every lookup and fill takes its structure's own clock
        # (PSC level or 0 for the nested TLB, structure): the walker's caches, whose clocks it borrows
        self._clocked = [(level, self._by_name[f"psc.{name}"]) for name, level in _PSC_LEVEL.items()
                         if f"psc.{name}" in self._by_name]
        if "nested" in self._by_name:
            self._clocked.append((0, self._by_name["nested"]))
        self.set_context(cpu if cpu is not None else CpuState(), ept=ept, vpid=vpid)
        self.reset_counters()

    cdef object _add(self, str name, object t):
        self._structures.append((name, t))
        self._by_name[name] = t
        return t

    # -- state -------------------------------------------------------------------

    def set_context(self, cpu, *, ept=None, vpid=0):
        """Load processor state without invalidating anything (a VM entry or world switch)."""
        cdef paging_t paging
        cdef ept_t ept_state
        if not isinstance(cpu, CpuState):
            raise TypeError(f"cpu: expected a CpuState, got {type(cpu).__name__}")
        if ept is not None and not isinstance(ept, EptConfig):
            raise TypeError(f"ept: expected an EptConfig or None, got {type(ept).__name__}")
        if isinstance(vpid, bool) or not isinstance(vpid, (int, np.integer)) or not 0 <= vpid < 1 << 16:
            raise ValueError(f"vpid: expected 0..65535, got {vpid!r}")
        paging_from_cpu(&paging, cpu, self.mem.c.maxphyaddr)
        if ept is not None:
            ept_from_config(&ept_state, ept, self.mem.c.maxphyaddr)
            self.ept = ept_state
        self.paging = paging
        self.nested = ept is not None
        self._vpid = vpid
        self._cpu, self._ept_config = cpu, ept
        for name, level in _PSC_LEVEL.items():
            t = self._by_name.get(f"psc.{name}")
            self.caches.psc[level] = &(<TLB>t).c if t is not None and level <= cpu.levels else NULL
        eptag = self.ept.eptag if self.nested else 0
        self.caches.ctx = tlb_ctx(self.paging.pcid, self._vpid, eptag, 0)
        self.caches.nested_ctx = tlb_ctx(0, 0, eptag, 0)

    @property
    def cpu(self):
        """The CpuState in force (a copy: change state with set_context or mov_cr3)."""
        return CpuState(**self._cpu.__dict__)

    @property
    def ept_config(self):
        return self._ept_config

    @property
    def vpid(self):
        return self._vpid

    # -- invalidation: each structure applies the scope of its kind (docs/core-semantics.md) ----

    def mov_cr3(self, value):
        """MOV to CR3 (4.10.4.1): load a new root; flush the new PCID's non-global
        translations unless CR4.PCIDE=1 and bit 63 (no-flush) is set."""
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 1 << 64:
            raise ValueError(f"mov_cr3: expected a 64-bit value, got {value!r}")
        value = int(value)
        noflush = bool(value & CR3_NOFLUSH)
        if noflush and not self._cpu.cr4_pcide:
            raise ValueError("mov_cr3: bit 63 (no-flush) is reserved while CR4.PCIDE=0")
        cpu = CpuState(**{**self._cpu.__dict__, "cr3": value & ~CR3_NOFLUSH})
        self.set_context(cpu, ept=self._ept_config, vpid=self._vpid)
        if not noflush:
            pcid, vpid = self.paging.pcid, self._vpid
            for _, t in self._structures:
                (<TLB>t)._mov_cr3(pcid, vpid)

    # Each operation checks its operands once, then every structure applies its own scope.

    def invlpg(self, va):
        """INVLPG: the page's translations for the current PCID, and global ones of any PCID.
        A non-canonical address makes it a no-op, as on hardware."""
        va, pcid, vpid = check_invlpg(va, self.paging.pcid, self._vpid)
        if not is_canonical(va, self.paging.levels == 5):
            return
        for _, t in self._structures:
            (<TLB>t)._invlpg(va, pcid, vpid)

    def invpcid(self, kind, *, pcid=0, va=0):
        """INVPCID types 0 (address), 1 (single context), 2 (all, globals too), 3 (all but globals)."""
        kind, pcid, va, vpid = check_invpcid(kind, pcid, va, self._vpid, self.paging.levels == 5)
        for _, t in self._structures:
            (<TLB>t)._invpcid(kind, pcid, va, vpid)

    def invvpid(self, kind, *, vpid=0, va=0):
        """INVVPID types 0 (address), 1 (single context), 2 (all contexts), 3 (single, keep globals)."""
        kind, vpid, va = check_invvpid(kind, vpid, va, self.paging.levels == 5)
        for _, t in self._structures:
            (<TLB>t)._invvpid(kind, vpid, va)

    def invept(self, kind, *, eptag=0):
        """INVEPT types 1 (single context: one EPT tag) and 2 (all contexts)."""
        kind, eptag = check_invept(kind, eptag)
        for _, t in self._structures:
            (<TLB>t)._invept(kind, eptag)

    def flush(self):
        """Empty every translation cache."""
        for _, t in self._structures:
            t.flush()

    # -- translation ---------------------------------------------------------------

    cdef void _load_clocks(self):
        """Copy the paging-structure caches' and nested TLB's clocks into the walker's state."""
        cdef int level
        for level, t in self._clocked:
            if level:
                self.caches.psc_clock[level] = (<TLB>t).clock
            else:
                self.caches.nested_clock = (<TLB>t).clock

    cdef void _store_clocks(self):
        cdef int level
        for level, t in self._clocked:
            if level:
                (<TLB>t).clock = self.caches.psc_clock[level]
            else:
                (<TLB>t).clock = self.caches.nested_clock

    def translate(self, addresses, kinds=None, *, out=None, status=None, start=0):
        """Translate ``addresses[start:]`` into ``out``; stop at the first access not translated.

        ``kinds`` is a uint8 array of access kinds (``fastmmu.arch.Access``),
        one int for all, or None (reads).  Returns a ``BatchResult``; resume
        after handling its fault with ``start=result.stopped``.
        """
        addresses, kinds, out, status = check_batch(addresses, kinds, out, status, start)
        cdef const uint64_t[::1] va = addresses
        cdef const uint8_t[::1] kind = kinds
        cdef uint64_t[::1] hpa = out
        cdef uint8_t[::1] st = status
        cdef Py_ssize_t i = start, n = va.shape[0]
        cdef walk_t w
        cdef int result = WALK_OK
        if n == 0 or start == n:
            return BatchResult(int(start), Status.OK, None)
        if self._logging:
            result = self._translate_logged(va, kind, hpa, st, &i, &w)
            if result == WALK_OK:
                return BatchResult(int(n), Status.OK, None)
            self._fault_invalidations(&w, result, va[i])
            return BatchResult(int(i), _STATUSES[result], self._fault_record(&w, result, va[i], NULL, False))
        cdef bint uncached = _fast_walks(self)
        self.walk_cached = not uncached
        _prepare_hits(self)
        self._load_clocks()
        with nogil:
            if uncached and self.mem.c.flat and not self.levels[LEVEL_L1I].n and not self.levels[LEVEL_L1D].n \
                    and not self.levels[LEVEL_L2].n:
                result = _run_quick(self, &va[0], &kind[0], &hpa[0], &st[0], &i, n, &w)
            elif self.mem.c.flat:
                result = _run_ahead(self, &va[0], &kind[0], &hpa[0], &st[0], &i, n, &w)
            else:
                result = _run_plain(self, &va[0], &kind[0], &hpa[0], &st[0], &i, n, &w)
        self._store_clocks()
        if result == WALK_OK:
            return BatchResult(int(n), Status.OK, None)
        self._fault_invalidations(&w, result, va[i])
        return BatchResult(int(i), _STATUSES[result], self._fault_record(&w, result, va[i], NULL, False))

    def translate_one(self, va, access=0, *, trace=False):
        """Translate one access exactly as ``translate`` would, and return its Walk (teaching, tests).

        A walk's result carries its references per level (and, with
        ``trace=True``, each reference); a TLB hit's carries none.
        """
        cdef walk_trace_t refs
        cdef walk_t w
        cdef uint64_t hpa = 0
        cdef bint walked = 0, slow = 0
        cdef int result
        if isinstance(va, bool) or not isinstance(va, (int, np.integer)) or not 0 <= va < 1 << 64:
            raise ValueError(f"va: expected a 64-bit unsigned address, got {va!r}")
        if isinstance(access, bool) or not isinstance(access, (int, np.integer)) or access & ~15 \
                or (access & ACC_WRITE and access & ACC_FETCH):
            raise ValueError(f"access: {access!r} is not a valid access kind (bits 0..3, never WRITE|FETCH)")
        cdef uint64_t address = va
        cdef uint32_t kind = access
        walk_trace_clear(&refs)
        _prepare_hits(self)
        self._load_clocks()
        result = _translate(self, address, kind, &hpa, &w, &refs, NULL, &walked, &slow)
        self._store_clocks()
        if result == WALK_TRAP and walked:   # the walk completed: its record, the trap's status
            self.counts.faults[result] += 1
            return dataclasses.replace(walk_result(&w, &refs, trace), status=Status.TRAP, fault_address=va,
                                       guest_linear_address=va)
        if result != WALK_OK:
            self.counts.faults[result] += 1
            self._fault_invalidations(&w, result, address)
            return self._fault_record(&w, result, va, &refs, trace)
        if walked:
            return walk_result(&w, &refs, trace)
        return Walk(status=Status.OK, host_address=hpa, page_size=1 << w.page_shift, attrs=w.attrs)

    cdef void _fault_invalidations(self, const walk_t *w, int result, uint64_t va):
        """What delivering the fault of an access to ``va`` invalidates (docs/core-semantics.md,
        "Invalidations"): a page fault, the entries for ``va`` in this context (SDM 4.10.4.1), so that
        it does not recur from cached entries once the tables in memory allow the access; an EPT
        violation, the nested-TLB entries for its guest-physical address and, when that was the
        translation of ``va``, the entries for ``va`` (Vol. 3C 29.4.3.1).  Runs once per batch, with
        the GIL, after the loop stopped: the accesses that do not fault pay nothing."""
        cdef uint32_t pcid = self.paging.pcid, eptag = self.ept.eptag if self.nested else 0
        cdef bint final
        if result == WALK_PAGE_FAULT:
            for _, t in self._structures:
                (<TLB>t)._page_fault(va, pcid, self._vpid, eptag)
        elif result == WALK_EPT_VIOLATION:
            final = (w.exit_qualification & EQ_FINAL) != 0
            for _, t in self._structures:
                (<TLB>t)._ept_violation(w.fault_address, eptag, final, va, pcid, self._vpid)

    cdef object _fault_record(self, walk_t *w, int result, uint64_t va, walk_trace_t *refs, bint with_trace):
        """The Walk describing an access that stopped the loop.

        ``refs`` is NULL for a batch: its fault record carries no per-walk
        reference counts (those cost the hot loop; ``translate_one`` has them).
        """
        cdef walk_trace_t none
        if result == WALK_GP:
            return Walk(status=Status.GP, fault_address=va, guest_linear_address=va)
        if result == WALK_TRAP:
            return Walk(status=Status.TRAP, host_address=w.host_address,
                        page_size=1 << w.page_shift, attrs=w.attrs, fault_address=va, guest_linear_address=va)
        if refs == NULL:
            walk_trace_clear(&none)
            refs = &none
        return walk_result(w, refs, with_trace)

    # -- the reference log (PTE-access traces) -----------------------------------

    def log_references(self, bint on=True):
        """Record every memory reference of every walk ``translate`` makes (or stop: False).

        The log is what a PTE-access trace is made of: per reference the host-physical
        address of the entry read, the index of its access in the batch, its level and
        its dimension (0 x86 paging, 1 EPT); faulting walks included, TLB hits make none.
        ``take_references`` empties it.  Logging walks without the fast paths (the same
        results, more slowly); ``translate_one`` never logs.
        """
        self._logging = on

    def take_references(self):
        """The references logged since the last call, in order, as a ``fastmmu.batch.REFERENCE_DTYPE`` array."""
        out = np.empty(self._log_count, dtype=_REFERENCE_DTYPE)
        cdef uint8_t[::1] raw = out.view(np.uint8)
        if self._log_count:
            memcpy(&raw[0], self._log, self._log_count * sizeof(ref_record_t))
        self._log_count = 0
        return out

    cdef int _reserve(self, size_t more) except -1:
        """Room for ``more`` references in the log (grown with the GIL held, never inside nogil)."""
        cdef size_t need = self._log_count + more, capacity = self._log_capacity or 65536
        cdef ref_record_t *grown
        if need <= self._log_capacity:
            return 0
        while capacity < need:
            capacity *= 2
        grown = <ref_record_t *>realloc(self._log, capacity * sizeof(ref_record_t))
        if grown == NULL:
            raise MemoryError(f"reference log: cannot hold {need} references; take_references() more often")
        self._log, self._log_capacity = grown, capacity
        return 0

    cdef int _translate_logged(self, const uint64_t[::1] va, const uint8_t[::1] kind, uint64_t[::1] hpa,
                               uint8_t[::1] st, Py_ssize_t *index, walk_t *w) except -1:
        """``translate``'s loop with every walk traced into the log; the WALK_* status it stopped at,
        ``index`` left at that access (or at the end) and ``w`` holding its fault."""
        cdef walk_trace_t refs
        cdef bint walked = 0, slow = 0
        cdef int result = WALK_OK
        cdef Py_ssize_t i = index[0], n = va.shape[0], stop
        cdef uint32_t k
        cdef ref_record_t *record
        if n > 0xFFFFFFFF:
            raise ValueError("addresses: a logged batch holds at most 2**32 - 1 accesses")
        _prepare_hits(self)
        self._load_clocks()
        while i < n and result == WALK_OK:
            stop = min(n, i + _LOG_STEP)
            self._reserve(<size_t>(stop - i) * TRACE_CAPACITY)
            with nogil:
                while i < stop:
                    walk_trace_clear(&refs)
                    result = _translate(self, va[i], kind[i], &hpa[i], w, &refs, NULL, &walked, &slow)
                    for k in range(refs.count):
                        record = &self._log[self._log_count]
                        record.address = refs.refs[k].address
                        record.index = <uint32_t>i
                        record.level = refs.refs[k].level
                        record.dimension = refs.refs[k].dimension
                        self._log_count += 1
                    st[i] = <uint8_t>result
                    if result != WALK_OK:
                        self.counts.faults[result] += 1
                        break
                    i += 1
        self._store_clocks()
        index[0] = i
        return result

    # -- counters ----------------------------------------------------------------

    def reset_counters(self):
        """Zero every counter, the caches' statistics included (their contents stay)."""
        cdef int i
        memset(&self.counts, 0, sizeof(self.counts))
        for _, t in self._structures:
            t.reset_stats()

    def structures(self):
        """Every translation cache by name ("l1d[0]", "l2[0]", "psc.pde", "nested", ...)."""
        return dict(self._by_name)

    def counters(self):
        """Every counter as plain Python data, in one call (the reference MMU's layout).

        A hit is a lookup whose entry served the access: a cached entry dropped because its
        rights did not allow the access is a miss (and a ``tlb_rights_drops``), here and in
        ``structures()[name].stats()``; a level's hits are the sum of its structures' hits.
        """
        c = self.counts
        return {
            "accesses": c.accesses,
            "l1i": {"hits": c.hits[LEVEL_L1I], "misses": c.misses[LEVEL_L1I]},
            "l1d": {"hits": c.hits[LEVEL_L1D], "misses": c.misses[LEVEL_L1D]},
            "l2": {"hits": c.hits[LEVEL_L2], "misses": c.misses[LEVEL_L2]},
            "walks": c.walks,
            "walk_refs_histogram": [c.histogram[i] for i in range(HISTOGRAM_BUCKETS)],
            "walk_references": c.references,
            "faults": {name: c.faults[code] for code, name in _FAULT_NAMES.items()},
            "tlb_rights_drops": c.rights_drops,
            "structures": {name: t.stats() for name, t in self._structures},
        }


# Whether this module was built with FASTMMU_CYTHON_DEBUG=1 (checks on): `fastmmu info` says so.
BUILD_DEBUG = FASTMMU_DEBUG
