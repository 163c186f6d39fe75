# Part of tlb.pxd, which includes it: context words, set index, the lookup and the touch of a hit.
# Inline kernels (the run loop compiles them in place); tlb.pxd's index says what each promises.


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
