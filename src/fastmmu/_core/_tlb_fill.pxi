# Part of tlb.pxd, which includes it: victim search, fill, drop and reject.
# Inline kernels (the run loop compiles them in place); tlb.pxd's index says what each promises.


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
    t.live |= <uint8_t>(1 << ((tag >> TAG_SIZE_SHIFT) & 7))
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
