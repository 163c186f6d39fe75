# Part of tlb.pxd, which includes it: the invalidations, by selector.
# Inline kernels (the run loop compiles them in place); tlb.pxd's index says what each promises.


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
    if how == 0:             # everything went
        t.live = 0
    return removed
