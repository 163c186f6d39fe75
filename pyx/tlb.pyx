"""Set-associative translation caches over numpy arrays, and a GIL-free TLB-only trace simulator.

The kernels (lookup, fill, victim search, invalidation) are the inline
functions of ``fastmmu/_core/tlb.pxd``; this module owns the arrays behind a
``tlb_t``, checks arguments (with the same checks and messages as the
pure-Python twin in ``fastmmu.reference.tlb``), maps the x86 invalidation
instructions to ``INV_*`` selectors (docs/core-semantics.md, "Invalidations"),
and runs ``simulate`` with the GIL released.
"""

from libc.string cimport memset

import numpy as np

from fastmmu._core.types cimport PAGE_SHIFT, uint8_t, uint32_t, uint64_t

from fastmmu.reference.tlb import (
    MAX_LEVELS as _REFERENCE_MAX_LEVELS,
    POLICY_NAMES,
    SIZE_NAMES,
    check_addresses,
    check_ctx,
    check_fill,
    check_invalidate,
    check_invept,
    check_invlpg,
    check_invpcid,
    check_invvpid,
    check_kind_ctx,
    check_levels,
    check_lookup,
    check_mov_cr3,
    check_fault,
    check_start_clock,
    is_canonical,
    parse_geometry,
)

# Python-visible copies of the C constants (the .pxd enums are C names only).
globals().update({
    "INV_MATCH_VPID": INV_MATCH_VPID,
    "INV_MATCH_PCID": INV_MATCH_PCID,
    "INV_MATCH_EPTAG": INV_MATCH_EPTAG,
    "INV_EPTAG_NONZERO": INV_EPTAG_NONZERO,
    "INV_MATCH_ADDR": INV_MATCH_ADDR,
    "INV_KEEP_GLOBAL": INV_KEEP_GLOBAL,
    "INV_GLOBAL_ANY_PCID": INV_GLOBAL_ANY_PCID,
    "INV_SKIP_VPID0": INV_SKIP_VPID0,
    "INV_FRACTURED": INV_FRACTURED,
    "TLB_ATTR_FRACTURED": TLB_ATTR_FRACTURED,
    "POLICY_LRU": POLICY_LRU,
    "POLICY_PLRU": POLICY_PLRU,
    "POLICY_FIFO": POLICY_FIFO,
    "POLICY_RANDOM": POLICY_RANDOM,
    "SIZE_4K": SIZE_4K,
    "SIZE_2M": SIZE_2M,
    "SIZE_1G": SIZE_1G,
    "SIZE_REGION": SIZE_REGION,
    "MAX_SIZES": MAX_SIZES,
})

__all__ = [
    "BUILD_DEBUG", "TLB", "simulate", "POLICY_NAMES", "SIZE_NAMES",
    "INV_MATCH_VPID", "INV_MATCH_PCID", "INV_MATCH_EPTAG", "INV_EPTAG_NONZERO", "INV_MATCH_ADDR",
    "INV_KEEP_GLOBAL", "INV_GLOBAL_ANY_PCID", "INV_SKIP_VPID0", "INV_FRACTURED", "TLB_ATTR_FRACTURED",
    "POLICY_LRU", "POLICY_PLRU", "POLICY_FIFO", "POLICY_RANDOM",
    "SIZE_4K", "SIZE_2M", "SIZE_1G", "SIZE_REGION", "MAX_SIZES",
]

cdef enum:
    SIM_MAX_LEVELS = 8          # simulate keeps this many tlb_t copies on the stack
    NOTHING = -1                # an x86 operation that does not touch this kind of cache

if _REFERENCE_MAX_LEVELS != SIM_MAX_LEVELS:   # the shared checks must allow what the loops hold
    raise ImportError(f"fastmmu._core.tlb: the reference model allows {_REFERENCE_MAX_LEVELS} levels, "
                      f"simulate holds {SIM_MAX_LEVELS}")


cdef class TLB:
    """A set-associative TLB, paging-structure cache (``kind="psc"``) or nested TLB (``kind="ntlb"``).

    ``entries`` ways in ``entries // ways`` sets (any positive count: a
    1536-entry 12-way STLB has 128 sets).  ``sizes`` are probed smallest
    first; a fill of a size not held is cached as the largest held piece that
    contains the address.  A paging-structure cache holds ``sizes=("region",)``
    with ``region_shift`` 21 (PDE), 30 (PDPTE), 39 (PML4E) or 48 (PML5E).

    >>> tlb = TLB(64, 4, name="l1d")
    >>> tlb.fill(0x7F00_0000_1234, 0x42)
    >>> tlb.lookup(0x7F00_0000_1FFF)
    (66, 0, '4K')
    """

    def __init__(self, entries, ways, *, sizes=("4K",), policy="lru", name="tlb", region_shift=0, seed=1,
                 kind=None):
        """(``__cinit__`` does the work with the same arguments: this gives the constructor its
        signature for ``help()`` and type checkers.)"""

    def __cinit__(self, entries, ways, *, sizes=("4K",), policy="lru", name="tlb", region_shift=0,
                  seed=1, kind=None):
        geometry = parse_geometry(entries, ways, sizes=sizes, policy=policy, region_shift=region_shift,
                                  seed=seed, kind=kind)
        if not isinstance(name, str):
            raise TypeError(f"name: expected a string, got {name!r}")
        cdef uint64_t n = geometry.entries
        self._tag = np.zeros(n, dtype=np.uint64)
        self._ctx = np.zeros(n, dtype=np.uint64)
        self._frame = np.zeros(n, dtype=np.uint64)
        self._attrs = np.zeros(n, dtype=np.uint32)
        self._stamp = np.zeros(n, dtype=np.uint64)
        cdef uint64_t[::1] tag = self._tag, ctx = self._ctx, frame = self._frame, stamp = self._stamp
        cdef uint32_t[::1] attrs = self._attrs
        self.c.tag = &tag[0]
        self.c.ctx = &ctx[0]
        self.c.frame = &frame[0]
        self.c.attrs = &attrs[0]
        self.c.stamp = &stamp[0]
        self.c.sets = geometry.sets
        self.c.pow2 = (self.c.sets & (self.c.sets - 1)) == 0
        self.c.set_mask = self.c.sets - 1
        self.c.ways = geometry.ways
        self.c.policy = geometry.policy
        self.c.nsizes = len(geometry.codes)
        cdef int i
        for i in range(MAX_SIZES):
            self.c.codes[i] = geometry.codes[i] if i < self.c.nsizes else 0
            self.c.shift[i] = geometry.shifts[i]
        self.c.rng = geometry.seed
        self.c.live = 0
        memset(&self.c.counts, 0, sizeof(self.c.counts))
        self.name = name
        self.kind = geometry.kind
        self.seed = geometry.seed
        self.clock = 1

    # -- configuration -------------------------------------------------------------

    @property
    def sets(self) -> int:
        return self.c.sets

    @property
    def ways(self) -> int:
        return self.c.ways

    @property
    def entries(self) -> int:
        """Capacity in entries (sets * ways); ``contents()`` lists the valid ones."""
        return self.c.sets * self.c.ways

    @property
    def policy(self) -> str:
        return POLICY_NAMES[self.c.policy]

    @property
    def sizes(self) -> tuple:
        """Size names held, in probe order (smallest page first)."""
        return tuple(SIZE_NAMES[self.c.codes[i]] for i in range(self.c.nsizes))

    @property
    def region_shift(self) -> int:
        return self.c.shift[SIZE_REGION]

    def __repr__(self):
        extra = f", region_shift={self.region_shift}" if self.kind == "psc" else ""
        return (f"TLB({self.entries}, {self.ways}, sizes={self.sizes!r}, policy={self.policy!r}, "
                f"name={self.name!r}, kind={self.kind!r}{extra})")

    # -- per access (tests, teaching) --------------------------------------------

    cdef uint64_t _tick(self) noexcept:
        self.clock += 1
        return self.clock - 1

    def lookup(self, va, *, pcid=0, vpid=0, eptag=0):
        """``(frame, attrs, size)`` of the entry translating ``va`` for this context, or None.

        A hit counts as a use for the replacement policy; each call advances ``clock``.
        """
        va, pcid, vpid, eptag = check_lookup(self.kind, va, pcid, vpid, eptag)
        cdef tlb_hit_t hit
        if tlb_lookup(&self.c, va, tlb_ctx(pcid, vpid, eptag, 0), self._tick(), &hit):
            return (hit.frame, hit.attrs, SIZE_NAMES[hit.code])
        return None

    def drop(self, va, *, pcid=0, vpid=0, eptag=0):
        """Remove the entry a lookup of ``va`` in this context would hit; True if there was one.

        No replacement update, no hit or miss counted, no clock tick (it counts
        as invalidated).  The MMU, when a cached translation's rights do not
        allow an access, also turns the lookup that found it into a miss.
        """
        va, pcid, vpid, eptag = check_lookup(self.kind, va, pcid, vpid, eptag)
        cdef uint64_t want_ctx = tlb_ctx(pcid, vpid, eptag, 0), vpn, pos
        cdef uint32_t i
        cdef uint8_t code
        for i in range(self.c.nsizes):
            code = self.c.codes[i]
            vpn = (<uint64_t>va >> self.c.shift[code]) & VPN_MASK
            if tlb_find(&self.c, tlb_set_base(&self.c, vpn), tlb_want_tag(code, vpn), want_ctx, &pos):
                tlb_drop(&self.c, pos)
                return True
        return False

    def fill(self, va, frame, *, size="4K", attrs=0, pcid=0, vpid=0, eptag=0, global_=False):
        """Cache a translation of ``va``: ``frame`` is the 4 KiB frame where the ``size`` page starts.

        As after a miss, no duplicate is looked for.  A page larger than the
        sizes held is cached as the piece containing ``va``; a page smaller than
        all of them is not cached.
        """
        va, frame, code, attrs, pcid, vpid, eptag, global_ = check_fill(
            self.kind, va, frame, size, attrs, pcid, vpid, eptag, global_)
        tlb_fill(&self.c, va, code, tlb_ctx(pcid, vpid, eptag, global_), frame, attrs, self._tick())

    # -- invalidation --------------------------------------------------------------

    def invalidate(self, how, *, va=0, pcid=0, vpid=0, eptag=0):
        """Remove the entries that pass every INV_* selector in ``how``; returns how many."""
        how, va, pcid, vpid, eptag = check_invalidate(how, va, pcid, vpid, eptag)
        return tlb_invalidate(&self.c, how, tlb_ctx(pcid, vpid, eptag, 0), va)

    cdef uint64_t _by_kind(self, int tlb_how, int psc_how, int ntlb_how, uint32_t pcid, uint32_t vpid,
                           uint32_t eptag, uint64_t va) noexcept:
        """Apply the selectors that one x86 operation means for this kind of cache (the table in
        docs/core-semantics.md, "Invalidations")."""
        cdef int how = tlb_how if self.kind == "tlb" else psc_how if self.kind == "psc" else ntlb_how
        if how == NOTHING:
            return 0
        return tlb_invalidate(&self.c, <uint32_t>how, tlb_ctx(pcid, vpid, eptag, 0), va)

    def flush(self):
        """Remove everything; returns how many entries went."""
        return tlb_invalidate(&self.c, 0, 0, 0)

    def mov_cr3(self, pcid=0, vpid=0, *, pcide, noflush=False):
        """MOV to CR3 (SDM 4.10.4.1): the new PCID's non-global translations go, unless ``noflush``
        (CR3 bit 63 with CR4.PCIDE=1).  With ``pcide`` False the PCID is 0."""
        pcid, vpid, pcide, noflush = check_mov_cr3(pcid, vpid, pcide, noflush)
        if noflush:
            return 0
        return self._mov_cr3(pcid, vpid)

    def invlpg(self, va, pcid=0, vpid=0, *, la57=False):
        """INVLPG (SDM 4.10.4.1): the page of ``va`` for the current PCID, global entries of any
        PCID too, and every paging-structure-cache entry of the PCID.  A non-canonical ``va``
        makes it a no-op, as on hardware."""
        va, pcid, vpid = check_invlpg(va, pcid, vpid)
        if not is_canonical(va, bool(la57)):
            return 0
        return self._invlpg(va, pcid, vpid)

    def invpcid(self, type, *, pcid=0, va=0, vpid=0, la57=False):
        """INVPCID type 0 (address and PCID), 1 (PCID), 2 (all, globals too), 3 (all but globals)."""
        type, pcid, va, vpid = check_invpcid(type, pcid, va, vpid, la57)
        return self._invpcid(type, pcid, va, vpid)

    def invvpid(self, type, *, vpid=0, va=0, la57=False):
        """INVVPID type 0 (VPID and address), 1 (VPID), 2 (every VPID but 0), 3 (VPID, globals kept).

        VPID 0 in types 0, 1, 3 and a non-canonical address in type 0 are
        ValueErrors: the instruction fails (VMfail)."""
        type, vpid, va = check_invvpid(type, vpid, va, la57)
        return self._invvpid(type, vpid, va)

    def invept(self, type, *, eptag=0):
        """INVEPT type 1 (translations derived from the EPT tagged ``eptag``) or 2 (from any EPT)."""
        type, eptag = check_invept(type, eptag)
        return self._invept(type, eptag)

    def page_fault(self, va, pcid=0, vpid=0, *, eptag=0):
        """What a page fault on linear address ``va`` invalidates (SDM 4.10.4.1): the entries that
        would translate it in this context (PCID, or global; VPID; EPT tag), every piece of a larger
        page of that context, and the paging-structure-cache entries that would be used for it."""
        va, pcid, vpid, eptag = check_fault(va, pcid, vpid, eptag)
        return self._page_fault(va, pcid, vpid, eptag)

    def ept_violation(self, gpa, *, eptag, va=None, pcid=0, vpid=0):
        """What an EPT violation on guest-physical ``gpa`` invalidates (SDM Vol. 3C 29.4.3.1): the
        nested-TLB entries that would translate it for ``eptag``; and when ``gpa`` was the translation
        of linear address ``va``, what a page fault on ``va`` does in that context."""
        gpa, _, _, eptag = check_fault(gpa, 0, 0, eptag, what="gpa")
        if va is not None:
            va, pcid, vpid, eptag = check_fault(va, pcid, vpid, eptag)
        return self._ept_violation(gpa, eptag, va is not None, va or 0, pcid, vpid)

    # The scopes themselves (docs/core-semantics.md, "Invalidations"), on checked operands: the
    # methods above check them, and an MMU checks once for all its structures.

    cdef uint64_t _mov_cr3(self, uint32_t pcid, uint32_t vpid) noexcept:
        return self._by_kind(INV_MATCH_VPID | INV_MATCH_PCID | INV_KEEP_GLOBAL,
                             INV_MATCH_VPID | INV_MATCH_PCID, NOTHING, pcid, vpid, 0, 0)

    cdef uint64_t _invlpg(self, uint64_t va, uint32_t pcid, uint32_t vpid) noexcept:
        return self._by_kind(INV_MATCH_VPID | INV_MATCH_ADDR | INV_MATCH_PCID | INV_GLOBAL_ANY_PCID | INV_FRACTURED,
                             INV_MATCH_VPID | INV_MATCH_PCID, NOTHING, pcid, vpid, 0, va)

    cdef uint64_t _invpcid(self, int type, uint32_t pcid, uint64_t va, uint32_t vpid) noexcept:
        if type == 0:
            return self._by_kind(INV_MATCH_VPID | INV_MATCH_ADDR | INV_MATCH_PCID | INV_KEEP_GLOBAL | INV_FRACTURED,
                                 INV_MATCH_VPID | INV_MATCH_PCID, NOTHING, pcid, vpid, 0, va)
        if type == 1:
            return self._by_kind(INV_MATCH_VPID | INV_MATCH_PCID | INV_KEEP_GLOBAL,
                                 INV_MATCH_VPID | INV_MATCH_PCID, NOTHING, pcid, vpid, 0, 0)
        if type == 2:
            return self._by_kind(INV_MATCH_VPID, INV_MATCH_VPID, NOTHING, 0, vpid, 0, 0)
        return self._by_kind(INV_MATCH_VPID | INV_KEEP_GLOBAL, INV_MATCH_VPID, NOTHING, 0, vpid, 0, 0)

    cdef uint64_t _invvpid(self, int type, uint32_t vpid, uint64_t va) noexcept:
        if type == 0:
            return self._by_kind(INV_MATCH_VPID | INV_MATCH_ADDR | INV_FRACTURED, INV_MATCH_VPID, NOTHING, 0, vpid,
                                 0, va)
        if type == 1:
            return self._by_kind(INV_MATCH_VPID, INV_MATCH_VPID, NOTHING, 0, vpid, 0, 0)
        if type == 2:
            return self._by_kind(INV_SKIP_VPID0, INV_SKIP_VPID0, NOTHING, 0, 0, 0, 0)
        return self._by_kind(INV_MATCH_VPID | INV_KEEP_GLOBAL, INV_MATCH_VPID, NOTHING, 0, vpid, 0, 0)

    cdef uint64_t _invept(self, int type, uint32_t eptag) noexcept:
        if type == 1:
            return self._by_kind(INV_MATCH_EPTAG, INV_MATCH_EPTAG, INV_MATCH_EPTAG, 0, 0, eptag, 0)
        return self._by_kind(INV_EPTAG_NONZERO, INV_EPTAG_NONZERO, 0, 0, 0, 0, 0)

    cdef uint64_t _page_fault(self, uint64_t va, uint32_t pcid, uint32_t vpid, uint32_t eptag) noexcept:
        return self._by_kind(INV_MATCH_VPID | INV_MATCH_EPTAG | INV_MATCH_PCID | INV_GLOBAL_ANY_PCID
                             | INV_MATCH_ADDR | INV_FRACTURED,
                             INV_MATCH_VPID | INV_MATCH_EPTAG | INV_MATCH_PCID | INV_MATCH_ADDR,
                             NOTHING, pcid, vpid, eptag, va)

    cdef uint64_t _ept_violation(self, uint64_t gpa, uint32_t eptag, bint has_va, uint64_t va, uint32_t pcid,
                                 uint32_t vpid) noexcept:
        cdef uint64_t removed = self._by_kind(NOTHING, NOTHING, INV_MATCH_EPTAG | INV_MATCH_ADDR, 0, 0, eptag, gpa)
        if has_va:
            removed += self._page_fault(va, pcid, vpid, eptag)
        return removed

    # -- inspection ----------------------------------------------------------------

    def contents(self):
        """Every valid way, in (set, way) order, as dicts (what the differential tests compare).

        ``stamp`` is the replacement state: last use (LRU), fill time (FIFO),
        the MRU bit (PLRU), 0 (random).
        """
        rows = []
        cdef uint64_t pos, tag, ctx
        for pos in range(self.c.sets * self.c.ways):
            tag = self.c.tag[pos]
            if tag == 0:
                continue
            ctx = self.c.ctx[pos]
            rows.append({
                "set": pos // self.c.ways,
                "way": pos % self.c.ways,
                "vpn": tag & VPN_MASK,
                "size": SIZE_NAMES[(tag >> TAG_SIZE_SHIFT) & 7],
                "pcid": ctx & CTX_PCID_MASK,
                "global": (ctx & CTX_GLOBAL) != 0,
                "vpid": (ctx & CTX_VPID_MASK) >> CTX_VPID_SHIFT,
                "eptag": (ctx & CTX_EPTAG_MASK) >> CTX_EPTAG_SHIFT,
                "frame": self.c.frame[pos],
                "attrs": self.c.attrs[pos],
                "stamp": self.c.stamp[pos],
            })
        return rows

    def stats(self):
        """Counters since construction or ``reset_stats()``.

        ``hits`` are lookups whose entry served: one the MMU dropped because its cached
        rights did not allow the access counts as a miss, as in ``MMU.counters()``, and
        as a ``rights_drops`` (and the entry as ``invalidated``).
        """
        cdef tlb_counts_t *n = &self.c.counts
        return {"hits": n.hits, "misses": n.misses, "rights_drops": n.rights_drops, "fills": n.fills,
                "evictions": n.evictions, "invalidated": n.invalidated}

    def reset_stats(self):
        """Zero the stats (``fractured`` is not a stat: it says where pieces may be, and stays)."""
        cdef uint64_t fractured = self.c.counts.fractured
        memset(&self.c.counts, 0, sizeof(self.c.counts))
        self.c.counts.fractured = fractured


# -- the batch simulator ---------------------------------------------------------------
#
# ``now`` is the access number.  The general loop copies the tlb_t structs
# into locals, as limit.c passes them by value, so that no store into a TLB
# array can alias them; the counters go back into the objects afterwards (the
# arrays are shared).

ctypedef void (*run_loop_t)(tlb_t **levels, int nlevels, const uint64_t *addr, uint64_t n, uint64_t ctx,
                            uint64_t start, uint64_t *hits) noexcept nogil


cdef inline void _keep_counters(tlb_t *dst, const tlb_t *src) noexcept nogil:
    """What a run on a copy of ``dst`` changed besides the shared arrays: the counters (one struct, so
    that none is forgotten: ``fractured`` once was), the random policy's state and the sizes held."""
    dst.counts = src.counts
    dst.rng = src.rng
    dst.live = src.live


cdef inline void _refill(tlb_t *upper, const tlb_t *lower, const tlb_hit_t *hit, uint64_t va,
                         uint64_t now) noexcept nogil:
    """An upper level takes the entry a lower level hit on (its own ctx: global, PCID...)."""
    tlb_fill(upper, va, hit.code, lower.ctx[hit.pos], hit.frame, hit.attrs, now)


# The fast loops serve hierarchies of LRU levels that hold only 4 KiB pages
# (the usual TLB-geometry study, and what the benchmark measures): the page
# number, tag and set are computed once per access, a hit is an LRU touch
# (stamp = now), and a miss fills the oldest way (tlb_oldest_way).  They keep
# each level's arrays and geometry in plain locals (not a tlb_t copy: its
# fields crowd the registers and the hit path then reloads them from the
# stack), and count only on the miss path: hits = accesses - misses.


ctypedef struct pow2_sets_t:      # the set index is vpn & set_mask (sets a power of two)
    uint8_t unused

ctypedef struct any_sets_t:       # the set index is vpn % sets
    uint8_t unused

ctypedef fused set_kind:          # selects, at compile time, how a fast loop finds the set
    pow2_sets_t
    any_sets_t


cdef inline uint64_t _set_base(set_kind *how, uint64_t vpn, uint64_t set_mask, uint64_t sets,
                               uint64_t ways) noexcept nogil:
    """tlb_set_base on locals, with the power-of-two test made at compile time."""
    if set_kind is pow2_sets_t:
        return (vpn & set_mask) * ways
    else:
        return (vpn % sets) * ways


cdef inline bint _lru_fill(tlb_t *t, uint64_t base, uint64_t want, uint64_t ctx, uint64_t frame,
                           uint32_t attrs, uint64_t now) noexcept nogil:
    """tlb_write over the LRU victim, but only the arrays are touched (the counters stay with the
    caller); 1 if a valid entry was displaced."""
    cdef uint64_t pos = tlb_oldest_way(t.stamp, base, t.ways)
    cdef bint evicted = t.tag[pos] != 0
    t.tag[pos] = want
    t.live |= <uint8_t>(1 << ((want >> TAG_SIZE_SHIFT) & 7))
    t.ctx[pos] = ctx
    t.frame[pos] = frame
    t.attrs[pos] = attrs
    t.stamp[pos] = now
    return evicted


cdef inline void _one_4k(set_kind *how, tlb_t **levels, const uint64_t *addr, uint64_t n, uint64_t ctx,
                         uint64_t start, uint64_t *hits) noexcept nogil:
    cdef tlb_t *t0 = levels[0]
    cdef const uint64_t *tag = t0.tag
    cdef const uint64_t *ctxs = t0.ctx
    cdef uint64_t *stamp = t0.stamp
    cdef uint64_t set_mask = t0.set_mask, sets = t0.sets, ways = t0.ways
    cdef uint64_t i, va, vpn, want, base, pos, misses = 0, evictions = 0
    for i in range(n):
        va = addr[i]
        vpn = (va >> PAGE_SHIFT) & VPN_MASK
        want = tlb_want_tag(SIZE_4K, vpn)
        base = _set_base(how, vpn, set_mask, sets, ways)
        if tlb_find_in(tag, ctxs, base, base + ways, want, ctx, &pos):
            stamp[pos] = start + i
        else:
            misses += 1
            evictions += _lru_fill(t0, base, want, ctx, va >> PAGE_SHIFT, 0, start + i)
    t0.counts.hits += n - misses
    t0.counts.misses += misses
    t0.counts.fills += misses
    t0.counts.evictions += evictions
    hits[0] = n - misses


cdef inline void _two_4k(set_kind *how, tlb_t **levels, const uint64_t *addr, uint64_t n, uint64_t ctx,
                         uint64_t start, uint64_t *hits) noexcept nogil:
    cdef tlb_t *t0 = levels[0]
    cdef tlb_t *t1 = levels[1]
    cdef const uint64_t *tag = t0.tag
    cdef const uint64_t *ctxs = t0.ctx
    cdef uint64_t *stamp = t0.stamp
    cdef uint64_t set_mask = t0.set_mask, sets = t0.sets, ways = t0.ways
    cdef uint64_t i, va, vpn, want, base0, base1, pos, now, entry_ctx, frame
    cdef uint64_t misses0 = 0, h1 = 0, evictions0 = 0, evictions1 = 0, pieces0 = 0
    cdef uint32_t attrs
    for i in range(n):
        va = addr[i]
        vpn = (va >> PAGE_SHIFT) & VPN_MASK
        want = tlb_want_tag(SIZE_4K, vpn)
        base0 = _set_base(how, vpn, set_mask, sets, ways)
        if tlb_find_in(tag, ctxs, base0, base0 + ways, want, ctx, &pos):
            stamp[pos] = start + i
            continue
        now = start + i
        misses0 += 1
        base1 = tlb_set_base(t1, vpn)
        if tlb_find(t1, base1, want, ctx, &pos):
            t1.stamp[pos] = now
            h1 += 1
            entry_ctx = t1.ctx[pos]
            frame = t1.frame[pos]
            attrs = t1.attrs[pos]
            pieces0 += (attrs & TLB_ATTR_FRACTURED) != 0   # a piece the L2 holds is one in the L1 too
        else:
            entry_ctx = ctx
            frame = va >> PAGE_SHIFT
            attrs = 0
            evictions1 += _lru_fill(t1, base1, want, ctx, frame, attrs, now)
        evictions0 += _lru_fill(t0, base0, want, entry_ctx, frame, attrs, now)
    t0.counts.hits += n - misses0
    t0.counts.misses += misses0
    t0.counts.fills += misses0
    t0.counts.evictions += evictions0
    t0.counts.fractured += pieces0
    t1.counts.hits += h1
    t1.counts.misses += misses0 - h1
    t1.counts.fills += misses0 - h1
    t1.counts.evictions += evictions1
    hits[0] = n - misses0
    hits[1] = h1


# One function per loop and set indexing, each calling its variant once (so it is inlined).

cdef void _run_one_4k_pow2(tlb_t **levels, int nlevels, const uint64_t *addr, uint64_t n, uint64_t ctx,
                           uint64_t start, uint64_t *hits) noexcept nogil:
    _one_4k(<pow2_sets_t *>NULL, levels, addr, n, ctx, start, hits)


cdef void _run_one_4k_any(tlb_t **levels, int nlevels, const uint64_t *addr, uint64_t n, uint64_t ctx,
                          uint64_t start, uint64_t *hits) noexcept nogil:
    _one_4k(<any_sets_t *>NULL, levels, addr, n, ctx, start, hits)


cdef void _run_two_4k_pow2(tlb_t **levels, int nlevels, const uint64_t *addr, uint64_t n, uint64_t ctx,
                           uint64_t start, uint64_t *hits) noexcept nogil:
    _two_4k(<pow2_sets_t *>NULL, levels, addr, n, ctx, start, hits)


cdef void _run_two_4k_any(tlb_t **levels, int nlevels, const uint64_t *addr, uint64_t n, uint64_t ctx,
                          uint64_t start, uint64_t *hits) noexcept nogil:
    _two_4k(<any_sets_t *>NULL, levels, addr, n, ctx, start, hits)


cdef void _run_many(tlb_t **levels, int nlevels, const uint64_t *addr, uint64_t n, uint64_t ctx,
                    uint64_t start, uint64_t *hits) noexcept nogil:
    cdef tlb_t t[SIM_MAX_LEVELS]
    cdef tlb_hit_t hit
    cdef uint64_t i, va, now
    cdef int k, j
    for k in range(nlevels):
        t[k] = levels[k][0]
        hits[k] = 0
    for i in range(n):
        va = addr[i]
        now = start + i
        k = 0
        while k < nlevels and not tlb_lookup(&t[k], va, ctx, now, &hit):
            k += 1
        if k < nlevels:
            hits[k] += 1
            for j in range(k):
                _refill(&t[j], &t[k], &hit, va, now)
        else:
            for j in range(nlevels):
                tlb_fill(&t[j], va, SIZE_4K, ctx, va >> PAGE_SHIFT, 0, now)
    for k in range(nlevels):
        _keep_counters(levels[k], &t[k])


def simulate(addresses, levels, *, pcid=0, vpid=0, eptag=0, start_clock=None):
    """Run a trace of addresses through a TLB hierarchy alone (no page tables), without the GIL.

    Level 0 is looked up first; a hit at level k refills levels 0..k-1 with
    that entry; a miss everywhere fills every level with the identity
    translation ``frame = va >> 12`` (4 KiB, attrs 0).  Access i uses clock
    ``start_clock + i`` (default: the largest ``clock`` of the levels), and
    every level's ``clock`` ends at ``start_clock + len(addresses)``.  The
    levels' stats() count these lookups and fills too.

    Returns ``{"accesses": n, "hits": [per level], "misses": n - sum(hits)}``.
    Do not use the levels from another thread while this runs.
    """
    addresses = check_addresses(addresses)
    levels = check_levels(levels, TLB)
    pcid, vpid, eptag = check_ctx(pcid, vpid, eptag)
    for each in levels:
        check_kind_ctx(each.kind, pcid, vpid, False)
    cdef uint64_t n = addresses.shape[0]
    cdef uint64_t start = check_start_clock(start_clock, levels, n)
    cdef uint64_t ctx = tlb_ctx(pcid, vpid, eptag, 0)
    cdef int nlevels = len(levels), k
    cdef tlb_t *structs[SIM_MAX_LEVELS]
    cdef uint64_t hits[SIM_MAX_LEVELS]
    cdef TLB level
    cdef bint only_4k = True   # the fast loops: 4 KiB-only LRU levels
    for k in range(nlevels):
        level = levels[k]
        structs[k] = &level.c
        hits[k] = 0
        only_4k = (only_4k and level.c.nsizes == 1 and level.c.codes[0] == SIZE_4K
                   and level.c.policy == POLICY_LRU)
    cdef const uint64_t[::1] view = addresses
    cdef const uint64_t *addr = &view[0] if n else NULL
    # Called through a pointer so that the compiler keeps each loop a function
    # of its own (inlined into this big wrapper, its values spill to the stack).
    cdef run_loop_t run = _run_many
    if only_4k and nlevels == 1:
        run = _run_one_4k_pow2 if structs[0].pow2 else _run_one_4k_any
    elif only_4k and nlevels == 2:
        run = _run_two_4k_pow2 if structs[0].pow2 else _run_two_4k_any
    if n:
        with nogil:
            run(structs, nlevels, addr, n, ctx, start, hits)
    for k in range(nlevels):
        level = levels[k]
        level.clock = start + n
    hit_list = [hits[k] for k in range(nlevels)]
    return {"accesses": n, "hits": hit_list, "misses": n - sum(hit_list)}


# Whether this module was built with FASTMMU_CYTHON_DEBUG=1 (checks on): `fastmmu info` says so.
BUILD_DEBUG = FASTMMU_DEBUG
