# cython: language_level=3
"""Set-associative translation caches: the TLBs, paging-structure caches and nested TLB.

One structure serves all three.  Each way holds a *tag* (what is cached), a
*ctx* (whose it is: PCID, global, VPID, EPT tag), a *frame* (the payload: a
4 KiB frame number) and *attrs* (32 bits the owner of the cache defines:
permissions for a TLB, accumulated rights for a paging-structure cache).

    tag   = TAG_VALID | size_code << 56 | vpn            (vpn = va >> shift, 48 bits)
    ctx   = pcid (11:0) | CTX_GLOBAL (bit 12) | vpid << 16 (31:16) | eptag << 32 (63:32)

Lookups and fills are ``inline`` so the run loop compiles them in place;
the victim search is branch-free (a branchy one costs 2x on random traces,
see ../shared/limit/README.md).  ``now`` is a caller-supplied clock (the
access number, >= 1): LRU and FIFO stamps are compared, never a global
counter, and invalid ways (stamp 0) are always the first victims.

For a hot loop, ``inline`` is only a hint: at -O2 GCC does not inline
``tlb_fill`` (too big with every policy in it) and then the ``tlb_t`` whose
address it takes can no longer live in registers.  The small pieces are
there for such loops: ``tlb_find`` (search one set), ``tlb_probe`` (find +
touch), ``tlb_oldest_way`` (LRU/FIFO victim) and ``tlb_write`` (overwrite a
way); the rarely used PLRU/random helpers take arrays, never the tlb_t.
pyx/tlb.pyx's simulate loops show the pattern.
"""

from fastmmu._core.types cimport uint8_t, uint32_t, uint64_t

cdef extern from *:
    """
    #define FASTMMU_TAG_VALID (1ULL << 63)
    #define FASTMMU_TAG_SIZE_SHIFT 56
    #define FASTMMU_VPN_MASK ((1ULL << 48) - 1)
    #define FASTMMU_CTX_PCID_MASK 0xFFFULL
    #define FASTMMU_CTX_GLOBAL (1ULL << 12)
    #define FASTMMU_CTX_VPID_SHIFT 16
    #define FASTMMU_CTX_VPID_MASK (0xFFFFULL << 16)
    #define FASTMMU_CTX_EPTAG_SHIFT 32
    #define FASTMMU_CTX_EPTAG_MASK (0xFFFFFFFFULL << 32)
    /* Branch hints: a way scan matches at most once, so a tag match is the
     * unlikely case; laid out of line, the scan costs one taken branch a way. */
    #if defined(__GNUC__) || defined(__clang__)
    #define FASTMMU_UNLIKELY(x) __builtin_expect(!!(x), 0)
    #define FASTMMU_LIKELY(x) __builtin_expect(!!(x), 1)
    #else
    #define FASTMMU_UNLIKELY(x) (x)
    #define FASTMMU_LIKELY(x) (x)
    #endif
    """
    const uint64_t TAG_VALID "FASTMMU_TAG_VALID"
    const int TAG_SIZE_SHIFT "FASTMMU_TAG_SIZE_SHIFT"
    const uint64_t VPN_MASK "FASTMMU_VPN_MASK"
    const uint64_t CTX_PCID_MASK "FASTMMU_CTX_PCID_MASK"
    const uint64_t CTX_GLOBAL "FASTMMU_CTX_GLOBAL"
    const int CTX_VPID_SHIFT "FASTMMU_CTX_VPID_SHIFT"
    const uint64_t CTX_VPID_MASK "FASTMMU_CTX_VPID_MASK"
    const int CTX_EPTAG_SHIFT "FASTMMU_CTX_EPTAG_SHIFT"
    const uint64_t CTX_EPTAG_MASK "FASTMMU_CTX_EPTAG_MASK"
    bint unlikely "FASTMMU_UNLIKELY"(bint condition) noexcept nogil
    bint likely "FASTMMU_LIKELY"(bint condition) noexcept nogil

# Replacement policies.
cdef enum:
    POLICY_LRU = 0      # true LRU: stamp = last use, victim = smallest stamp
    POLICY_PLRU = 1     # bit-PLRU (MRU bits): stamp = 1 when used; all set -> clear the others
    POLICY_FIFO = 2     # stamp = fill time, hits do not refresh it
    POLICY_RANDOM = 3   # xorshift64 over the ways (invalid ways first)

# Size codes: which granularity an entry covers.  A TLB probes the codes it
# holds; a paging-structure cache holds one code whose shift is 39 (PML4E),
# 30 (PDPTE), 21 (PDE) or 48 (PML5E): the shift per code is per structure.
cdef enum:
    SIZE_4K = 0
    SIZE_2M = 1
    SIZE_1G = 2
    SIZE_REGION = 3
    MAX_SIZES = 4

# Invalidation selectors, combined with |.  An entry is invalidated when it
# passes every selector given.  See tlb_invalidate.
cdef enum:
    INV_MATCH_VPID = 1        # entry's VPID == ctx's VPID
    INV_MATCH_PCID = 2        # entry's PCID == ctx's PCID (global entries: see INV_GLOBAL_ANY_PCID)
    INV_MATCH_EPTAG = 4       # entry's EPT tag == ctx's EPT tag
    INV_EPTAG_NONZERO = 8     # entry's EPT tag != 0 (derived from some EPT)
    INV_MATCH_ADDR = 16       # entry covers the given address
    INV_KEEP_GLOBAL = 32      # global entries survive
    INV_GLOBAL_ANY_PCID = 64  # with INV_MATCH_PCID: global entries match whatever their PCID
    INV_SKIP_VPID0 = 128      # entries of VPID 0 (the host) survive
    INV_FRACTURED = 256       # with INV_MATCH_ADDR: entries holding a piece of a larger page go whatever
                              # their address (the SDM's INVLPG: "all TLB entries for that page")

cdef enum:
    # The one bit of an entry's owner-defined ``attrs`` the TLB itself reads: the entry caches a piece
    # of a larger page (a guest 2 MiB page under 4 KiB EPT pages, or a page size the structure holds
    # only in smaller pieces), so INVLPG of any address of that
    # page must remove it (INV_FRACTURED).  paging.pxd sets it as ATTR_FRACTURED.
    TLB_ATTR_FRACTURED = 1 << 23


ctypedef struct tlb_counts_t:   # what a structure counts; copied as one (simulate keeps tlb_t copies)
    uint64_t hits          # lookups whose entry served (one the caller rejects is a miss: tlb_reject)
    uint64_t misses        # lookups that missed, rejected entries included
    uint64_t rights_drops  # of those misses: an entry was found, but its rights did not allow the access
    uint64_t fills         # entries written
    uint64_t evictions     # fills that displaced a valid entry
    uint64_t invalidated   # entries removed by invalidations, drops and flushes
    uint64_t fractured     # fills of pieces of larger pages (attrs & TLB_ATTR_FRACTURED), ever: never reset,
                           # an address-specific invalidation scans every set once there was one


ctypedef struct tlb_t:
    uint64_t *tag          # per way, index set * ways + way; 0 = invalid
    uint64_t *ctx          # per way: PCID | global | VPID | EPT tag
    uint64_t *frame        # per way: 4 KiB frame number of the start of what is cached
    uint32_t *attrs        # per way: owner-defined attribute bits
    uint64_t *stamp        # per way: replacement state (see the policies)
    uint64_t sets          # any positive number (a 1536-entry 12-way STLB has 128 sets)
    uint64_t set_mask      # sets - 1 when sets is a power of two
    uint32_t ways
    uint8_t pow2           # 1: index = vpn & set_mask; 0: index = vpn % sets
    uint8_t policy         # POLICY_*
    uint8_t nsizes         # size codes held, probed in this order (smallest page first)
    uint8_t codes[4]       # the codes held
    uint8_t shift[4]       # per size code: address shift (12, 21, 30, or the region's)
    uint64_t rng           # xorshift64 state, POLICY_RANDOM
    tlb_counts_t counts


ctypedef struct tlb_hit_t:
    uint64_t frame         # frame number of the start of the cached region
    uint32_t attrs
    uint8_t code           # size code of the entry that hit
    uint64_t pos           # way index (set * ways + way), for tlb_drop


cdef inline uint64_t tlb_ctx(uint32_t pcid, uint32_t vpid, uint32_t eptag, bint is_global) noexcept nogil:
    """The ctx word for an entry or a lookup (``is_global`` only matters for a fill)."""
    return ((<uint64_t>pcid & CTX_PCID_MASK) | ((<uint64_t>vpid & 0xFFFF) << CTX_VPID_SHIFT)
            | (<uint64_t>eptag << CTX_EPTAG_SHIFT) | (CTX_GLOBAL if is_global else 0))


cdef inline uint64_t tlb_set_base(const tlb_t *t, uint64_t vpn) noexcept nogil:
    if t.pow2:
        return (vpn & t.set_mask) * t.ways
    return (vpn % t.sets) * t.ways


cdef inline bint tlb_ctx_matches(uint64_t entry_ctx, uint64_t want) noexcept nogil:
    """VPID and EPT tag must be equal; the PCID too, unless the entry is global."""
    cdef uint64_t mask = ~CTX_GLOBAL
    if likely(entry_ctx == want):    # the common case, one compare (falls through to the hit)
        return 1
    if entry_ctx & CTX_GLOBAL:
        mask = ~(CTX_GLOBAL | CTX_PCID_MASK)
    return ((entry_ctx ^ want) & mask) == 0


# The PLRU and random helpers take array pointers and scalars, never the
# tlb_t: a run loop that copies a tlb_t into a local (so that its fields live
# in registers) must not let the local's address escape into a call the
# compiler may decide not to inline.

cdef inline void tlb_plru_touch(uint64_t *stamp, uint64_t base, uint64_t pos, uint32_t ways) noexcept nogil:
    """Set the MRU bit of ``pos``; when that sets them all, clear the others."""
    cdef uint64_t i, all_used = 1
    stamp[pos] = 1
    for i in range(base, base + ways):
        all_used &= (stamp[i] != 0)
    if all_used:
        for i in range(base, base + ways):
            stamp[i] = 0
        stamp[pos] = 1


cdef inline uint64_t tlb_free_way(const uint64_t *tag, uint64_t base, uint32_t ways) noexcept nogil:
    """The first invalid way of the set starting at ``base``; ``base + ways`` when it is full."""
    cdef uint64_t i
    for i in range(base, base + ways):
        if tag[i] == 0:
            return i
    return base + ways


cdef inline uint64_t tlb_plru_victim(const uint64_t *stamp, uint64_t base, uint32_t ways) noexcept nogil:
    """In a full set: the first way whose MRU bit is clear (the first way if none is)."""
    cdef uint64_t i
    for i in range(base, base + ways):
        if stamp[i] == 0:
            return i
    return base


cdef inline uint64_t xorshift64(uint64_t x) noexcept nogil:
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    return x


cdef inline void tlb_touch(tlb_t *t, uint64_t base, uint64_t pos, uint64_t now) noexcept nogil:
    """Replacement bookkeeping for a hit at ``pos`` in the set starting at ``base``."""
    if t.policy == POLICY_LRU:
        t.stamp[pos] = now
    elif t.policy == POLICY_PLRU:
        tlb_plru_touch(t.stamp, base, pos, t.ways)


cdef inline uint64_t tlb_want_tag(uint8_t code, uint64_t vpn) noexcept nogil:
    """The tag an entry of size ``code`` for page number ``vpn`` carries."""
    return TAG_VALID | (<uint64_t>code << TAG_SIZE_SHIFT) | vpn


cdef inline bint tlb_find_in(const uint64_t *tag, const uint64_t *ctx, uint64_t pos, uint64_t end,
                             uint64_t want_tag, uint64_t want_ctx, uint64_t *found) noexcept nogil:
    """``tlb_find`` on the bare arrays: ways ``pos`` .. ``end - 1`` (at least one).  A run loop that
    keeps the arrays and the geometry in locals calls this, so that nothing of the tlb_t is read in
    the loop (nor spilled: a copied tlb_t's fields crowd the registers)."""
    while True:
        # The scan proper is a tight loop that leaves to one place either way: small enough
        # (15 bytes) not to straddle two lines of the processor's op cache when it is aligned.
        while tag[pos] != want_tag:
            pos += 1
            if pos == end:
                return 0
        if likely(tlb_ctx_matches(ctx[pos], want_ctx)):
            found[0] = pos
            return 1
        pos += 1
        if pos == end:
            return 0


cdef inline bint tlb_find(const tlb_t *t, uint64_t base, uint64_t want_tag, uint64_t want_ctx,
                          uint64_t *found) noexcept nogil:
    """Look in the set starting at ``base`` for the entry tagged ``want_tag`` that ``want_ctx`` may
    use; 1 and its way index in ``found`` if there is one.  Changes nothing."""
    return tlb_find_in(t.tag, t.ctx, base, base + t.ways, want_tag, want_ctx, found)


cdef inline bint tlb_probe(tlb_t *t, uint64_t base, uint64_t want_tag, uint64_t want_ctx, uint64_t now,
                           tlb_hit_t *hit) noexcept nogil:
    """Search the set starting at ``base`` for ``want_tag`` in context ``want_ctx``; 1 on a hit.

    ``tlb_lookup`` for one size code: on a hit it fills ``hit`` and records
    the use for the policy.  It counts nothing (the caller counts one hit or
    miss per lookup), so a run loop over single-size structures can call it
    with the shift and tag bits hoisted out of the loop.
    """
    cdef uint64_t pos
    if not tlb_find(t, base, want_tag, want_ctx, &pos):
        return 0
    tlb_touch(t, base, pos, now)
    hit.frame = t.frame[pos]
    hit.attrs = t.attrs[pos]
    hit.code = <uint8_t>((want_tag >> TAG_SIZE_SHIFT) & 7)
    hit.pos = pos
    return 1


cdef inline bint tlb_lookup(tlb_t *t, uint64_t va, uint64_t want_ctx, uint64_t now,
                            tlb_hit_t *hit) noexcept nogil:
    """Find the entry that translates ``va`` for ``want_ctx``; 1 on a hit (``hit`` filled)."""
    cdef uint32_t i
    cdef uint8_t code
    cdef uint64_t vpn
    for i in range(t.nsizes):
        code = t.codes[i]
        vpn = (va >> t.shift[code]) & VPN_MASK
        if tlb_probe(t, tlb_set_base(t, vpn), tlb_want_tag(code, vpn), want_ctx, now, hit):
            t.counts.hits += 1
            return 1
    t.counts.misses += 1
    return 0


cdef inline uint64_t tlb_oldest_way(const uint64_t *stamp, uint64_t base, uint32_t ways) noexcept nogil:
    """LRU and FIFO victim: the way with the smallest stamp, the first among equals.

    Invalid ways have stamp 0 (valid ones ``now >= 1``), so they go first.
    Branch-free: on random traces the comparison is unpredictable.  Two separate conditional
    expressions on one flag become two conditional moves (GCC, Clang): a chain of two operations a
    way, where the earlier masked-XOR form had four (bench row a, 1536e/12w uniform: 17 -> 13 ns).
    """
    cdef uint64_t victim = base, oldest = stamp[base], s, i
    cdef bint take
    for i in range(base + 1, base + ways):
        s = stamp[i]
        take = s < oldest
        victim = i if take else victim
        oldest = s if take else oldest
    return victim


cdef inline uint64_t tlb_victim(tlb_t *t, uint64_t base) noexcept nogil:
    """Way index to overwrite in the set starting at ``base`` (an invalid way first)."""
    cdef uint64_t victim
    if t.policy == POLICY_LRU or t.policy == POLICY_FIFO:
        return tlb_oldest_way(t.stamp, base, t.ways)
    victim = tlb_free_way(t.tag, base, t.ways)
    if victim != base + t.ways:
        return victim
    if t.policy == POLICY_PLRU:
        return tlb_plru_victim(t.stamp, base, t.ways)
    t.rng = xorshift64(t.rng)          # POLICY_RANDOM
    return base + t.rng % t.ways


cdef inline int tlb_code_for(const tlb_t *t, uint8_t code) noexcept nogil:
    """The largest size code this structure holds that is not larger than ``code`` (-1: none).

    A translation of a page size the structure does not hold is cached as a
    smaller piece of it (splintering), as hardware does for a 4 KiB-only L1.
    """
    cdef int best = -1
    cdef uint32_t i
    for i in range(t.nsizes):
        if t.shift[t.codes[i]] <= t.shift[code] and (best < 0 or t.shift[t.codes[i]] > t.shift[best]):
            best = t.codes[i]
    return best


cdef inline void tlb_write(tlb_t *t, uint64_t base, uint64_t pos, uint64_t tag, uint64_t ctx,
                           uint64_t frame, uint32_t attrs, uint64_t now) noexcept nogil:
    """Overwrite way ``pos`` (of the set starting at ``base``) with a new entry, as a fill."""
    t.counts.evictions += t.tag[pos] != 0
    t.tag[pos] = tag
    t.ctx[pos] = ctx
    t.frame[pos] = frame
    t.attrs[pos] = attrs
    t.counts.fills += 1
    if t.policy == POLICY_LRU or t.policy == POLICY_FIFO:
        t.stamp[pos] = now
    elif t.policy == POLICY_PLRU:
        t.stamp[pos] = 0   # the touch sets it and clears the others when the set is full
        tlb_plru_touch(t.stamp, base, pos, t.ways)


cdef inline void tlb_store(tlb_t *t, uint64_t base, uint64_t tag, uint64_t ctx, uint64_t frame,
                           uint32_t attrs, uint64_t now) noexcept nogil:
    """Write an entry with ``tag`` into the set starting at ``base``, over the policy's victim.

    ``tlb_fill`` once the size and the set are known.  A run loop over LRU or
    FIFO structures can call ``tlb_write(t, base, tlb_oldest_way(...), ...)``
    directly: the compiler inlines that where it would not inline this.
    """
    tlb_write(t, base, tlb_victim(t, base), tag, ctx, frame, attrs, now)


cdef inline void tlb_fill(tlb_t *t, uint64_t va, uint8_t code, uint64_t ctx, uint64_t frame,
                          uint32_t attrs, uint64_t now) noexcept nogil:
    """Cache a translation of ``va`` covering a region of size ``code`` starting at ``frame``.

    The caller has just missed on ``va`` (or dropped the entry), so no
    duplicate is looked for.  When the structure does not hold ``code``, a
    smaller piece is cached; when it holds nothing small enough, nothing is.
    """
    cdef int use = tlb_code_for(t, code)
    cdef uint64_t vpn
    if use < 0:
        return
    if use != code:
        # frame of the start of the smaller piece that contains va
        frame += ((va & ((<uint64_t>1 << t.shift[code]) - 1)) >> t.shift[use]) << (t.shift[use] - 12)
        attrs |= TLB_ATTR_FRACTURED  # a piece of a larger page: INVLPG of any of its addresses removes it
    vpn = (va >> t.shift[use]) & VPN_MASK
    if attrs & TLB_ATTR_FRACTURED:
        t.counts.fractured += 1
    tlb_store(t, tlb_set_base(t, vpn), tlb_want_tag(<uint8_t>use, vpn), ctx, frame, attrs, now)


cdef inline void tlb_drop(tlb_t *t, uint64_t pos) noexcept nogil:
    """Remove the entry at ``pos`` (e.g. one whose cached rights did not allow an access)."""
    if t.tag[pos] != 0:
        t.tag[pos] = 0
        t.stamp[pos] = 0
        t.counts.invalidated += 1


cdef inline void tlb_reject(tlb_t *t, uint64_t pos) noexcept nogil:
    """A lookup just hit the entry at ``pos``, but its cached rights do not allow the access: remove it,
    and count that lookup as a miss.  One definition for every counter (docs/core-semantics.md): a hit
    is a lookup whose entry served the access, so a structure's stats and the MMU's levels agree."""
    tlb_drop(t, pos)
    t.counts.hits -= 1
    t.counts.misses += 1
    t.counts.rights_drops += 1


cdef inline bint tlb_entry_selected(const tlb_t *t, uint64_t pos, uint32_t how, uint64_t ctx,
                                    uint64_t va) noexcept nogil:
    cdef uint64_t tag = t.tag[pos], c = t.ctx[pos]
    cdef uint8_t code
    cdef bint is_global = (c & CTX_GLOBAL) != 0
    if tag == 0:
        return 0
    if (how & INV_MATCH_VPID) and ((c ^ ctx) & CTX_VPID_MASK):
        return 0
    if (how & INV_SKIP_VPID0) and (c & CTX_VPID_MASK) == 0:
        return 0
    if (how & INV_MATCH_EPTAG) and ((c ^ ctx) & CTX_EPTAG_MASK):
        return 0
    if (how & INV_EPTAG_NONZERO) and (c & CTX_EPTAG_MASK) == 0:
        return 0
    if (how & INV_KEEP_GLOBAL) and is_global:
        return 0
    if (how & INV_MATCH_PCID) and ((c ^ ctx) & CTX_PCID_MASK):
        if not (is_global and (how & INV_GLOBAL_ANY_PCID)):
            return 0
    if how & INV_MATCH_ADDR:
        code = <uint8_t>((tag >> TAG_SIZE_SHIFT) & 7)
        if ((va >> t.shift[code]) & VPN_MASK) != (tag & VPN_MASK):
            if not ((how & INV_FRACTURED) and (t.attrs[pos] & TLB_ATTR_FRACTURED)):
                return 0
    return 1


cdef inline uint64_t tlb_invalidate(tlb_t *t, uint32_t how, uint64_t ctx, uint64_t va) noexcept nogil:
    """Remove every entry selected by ``how`` (INV_* flags); returns how many went.

    With INV_MATCH_ADDR only the sets that can hold ``va`` are scanned (all of them when pieces of
    larger pages may be anywhere: INV_FRACTURED and some were ever filled).
    """
    cdef uint64_t removed = 0, pos, base, vpn
    cdef uint32_t i, w
    if (how & INV_MATCH_ADDR) and not ((how & INV_FRACTURED) and t.counts.fractured):
        for i in range(t.nsizes):
            vpn = (va >> t.shift[t.codes[i]]) & VPN_MASK
            base = tlb_set_base(t, vpn)
            for w in range(t.ways):
                if tlb_entry_selected(t, base + w, how, ctx, va):
                    t.tag[base + w] = 0
                    t.stamp[base + w] = 0
                    removed += 1
    else:
        for pos in range(t.sets * t.ways):
            if tlb_entry_selected(t, pos, how, ctx, va):
                t.tag[pos] = 0
                t.stamp[pos] = 0
                removed += 1
    t.counts.invalidated += removed
    return removed


cdef class TLB:
    """A Python-owned translation cache; ``c`` points into its numpy arrays."""
    cdef tlb_t c
    cdef object _tag, _ctx, _frame, _attrs, _stamp   # the numpy arrays behind c
    cdef readonly str name
    cdef readonly uint64_t clock                      # next ``now`` of the per-access API (starts at 1)
    cdef readonly str kind                            # "tlb", "psc" (paging-structure cache) or "ntlb" (nested)
    cdef readonly uint64_t seed                       # initial xorshift64 state (POLICY_RANDOM)

    cdef uint64_t _tick(self) noexcept
    cdef uint64_t _by_kind(self, int tlb_how, int psc_how, int ntlb_how, uint32_t pcid, uint32_t vpid,
                           uint32_t eptag, uint64_t va) noexcept
    # The invalidation scopes on operands already checked (the def methods check, then call these).
    cdef uint64_t _mov_cr3(self, uint32_t pcid, uint32_t vpid) noexcept
    cdef uint64_t _invlpg(self, uint64_t va, uint32_t pcid, uint32_t vpid) noexcept
    cdef uint64_t _invpcid(self, int type, uint32_t pcid, uint64_t va, uint32_t vpid) noexcept
    cdef uint64_t _invvpid(self, int type, uint32_t vpid, uint64_t va) noexcept
    cdef uint64_t _invept(self, int type, uint32_t eptag) noexcept
    # What a fault invalidates (SDM Vol. 3A 4.10.4.1, Vol. 3C 29.4.3.1; the run loop applies them).
    cdef uint64_t _page_fault(self, uint64_t va, uint32_t pcid, uint32_t vpid, uint32_t eptag) noexcept
    cdef uint64_t _ept_violation(self, uint64_t gpa, uint32_t eptag, bint has_va, uint64_t va, uint32_t pcid,
                                 uint32_t vpid) noexcept
