# The walker's fast paths with the paging-structure caches and the nested TLB (included by mmu.pyx).
#
# walk_native / walk_nested with caches, for their common case: the same conditions as the fast
# paths of paging.pxd (every entry present, no reserved bit, A flags set, a leaf that allows the
# access, D set for a write), plus every nested-TLB entry that hits allows its access.  Until they
# succeed they change nothing: the caches are looked up with tlb_find, which only reads, and each
# lookup is recorded.  On success the lookups are replayed in order (the stamps from each
# structure's clock, the hit and miss counts, the LRU/PLRU touch) and the fills committed by
# paging.pxd's own _commit, so caches, clocks and counters end exactly as after the full walker.
# The replay is exact because nothing changes a cache during a walk: the full walker fills only
# when it commits, and the one change it makes while walking (dropping a nested-TLB entry whose
# rights do not allow the access) sends these kernels to the full walker before any side effect.
# On failure (0) the caller runs the full walker, which looks everything up again and decides.

cdef enum:
    CACHED_LOOKUPS = 6           # lookups of one cache kind in a walk: 4 PSC levels; 6 EPT translations


ctypedef struct cache_lookups_t:    # the lookups a cached fast walk made, for their replay
    uint32_t n_psc
    uint8_t psc_level[CACHED_LOOKUPS]
    uint8_t psc_hit[CACHED_LOOKUPS]
    uint64_t psc_base[CACHED_LOOKUPS]
    uint64_t psc_pos[CACHED_LOOKUPS]
    uint32_t n_nested
    uint8_t nested_hit[CACHED_LOOKUPS]
    uint64_t nested_base[CACHED_LOOKUPS]
    uint64_t nested_pos[CACHED_LOOKUPS]


cdef inline bint _cache_peek(const tlb_t *t, uint64_t address, uint64_t ctx, uint64_t *base,
                             uint64_t *pos) noexcept nogil:
    """tlb_lookup without its side effects: 1 and the way (``pos``) of the entry found; ``base``: the
    set of the hit, or of the last size probed."""
    cdef uint32_t i
    cdef uint8_t code
    cdef uint64_t vpn
    for i in range(t.nsizes):
        code = t.codes[i]
        vpn = (address >> t.shift[code]) & VPN_MASK
        base[0] = tlb_set_base(t, vpn)
        if tlb_find(t, base[0], tlb_want_tag(code, vpn), ctx, pos):
            return 1
    return 0


cdef inline void _cache_replay(tlb_t *t, uint64_t *clock, bint hit, uint64_t base, uint64_t pos) noexcept nogil:
    """What tlb_lookup does besides finding: take a stamp from the clock, touch the hit, count."""
    cdef uint64_t now = clock[0]
    clock[0] += 1
    if hit:
        tlb_touch(t, base, pos, now)
        t.counts.hits += 1
    else:
        t.counts.misses += 1


cdef inline void _replay_lookups(walk_caches_t *caches, const cache_lookups_t *looked) noexcept nogil:
    cdef uint32_t i
    cdef int level
    for i in range(looked.n_psc):
        level = looked.psc_level[i]
        _cache_replay(caches.psc[level], &caches.psc_clock[level], looked.psc_hit[i], looked.psc_base[i],
                      looked.psc_pos[i])
    for i in range(looked.n_nested):
        _cache_replay(caches.nested, &caches.nested_clock, looked.nested_hit[i], looked.nested_base[i],
                      looked.nested_pos[i])


cdef inline int _psc_peek(const paging_t *p, gva_t va, const walk_caches_t *caches, cache_lookups_t *looked,
                          uint64_t *table, uint64_t *allow, uint64_t *xd) noexcept nogil:
    """_psc_start without side effects (recorded in ``looked``): the level the walk starts at."""
    cdef int level
    cdef uint64_t base, pos
    cdef const tlb_t *t
    cdef bint hit
    looked.n_psc = 0
    for level in range(2, p.levels + 1):
        t = caches.psc[level]
        if t == NULL:
            continue
        hit = _cache_peek(t, va, caches.ctx, &base, &pos)
        looked.psc_level[looked.n_psc] = <uint8_t>level
        looked.psc_hit[looked.n_psc] = hit
        looked.psc_base[looked.n_psc] = base
        looked.psc_pos[looked.n_psc] = pos
        looked.n_psc += 1
        if hit:
            table[0] = t.frame[pos] << PAGE_SHIFT
            rights_entry_bits(t.attrs[pos], allow, xd)
            return level - 1
    return p.levels


cdef inline bint walk_native_cached(mem_t *m, const paging_t *p, gva_t va, uint32_t access,
                                    walk_caches_t *caches, uint64_t *hpa, uint32_t *attrs_out,
                                    int *shift_out, uint32_t *refs_out) noexcept nogil:
    """walk_native with ``caches`` for a canonical ``va``, its common case: 1 = done, 0 = walk in full."""
    cdef cache_lookups_t looked
    cdef walk_pending_t pend
    cdef uint64_t table = p.root, allow = PTE_RW | PTE_US, xd = 0, start_allow, start_xd
    cdef int level, start, shift
    cdef pte_t e
    cdef uint32_t attrs
    level = _psc_peek(p, va, caches, &looked, &table, &allow, &xd)
    start = level
    start_allow = allow
    start_xd = xd
    shift = PAGE_SHIFT + 9 * (level - 1)
    while True:
        if _fast_out(m, table):
            return 0
        e = m.entries[_fast_index(m, table, va, shift)]
        if _fast_bad_x86(p, level, e):
            return 0
        allow &= e
        xd |= e
        if e & p.leaf_mask[level]:
            break
        pend.vals[level] = e
        table = e & ADDR_MASK
        level -= 1
        shift -= 9
    if e & p.large_rsvd[level]:
        return 0
    attrs = _x86_rights(e, allow, xd)
    if check_access(attrs, access, p) or ((access & ACC_WRITE) and not (e & PTE_D)):
        return 0
    looked.n_nested = 0
    _replay_lookups(caches, &looked)
    pend.n_guest = 0
    pend.n_ept = 0
    pend.n_fills = 0
    _commit(m, va, caches, &pend, start, level, start_allow, start_xd)
    hpa[0] = _page_address(e, va, shift)
    attrs_out[0] = (attrs | _x86_leaf_flags(p, e, access)
                    | ATTR_EPT_R | ATTR_EPT_W | ATTR_EPT_X | ATTR_EPT_D)
    shift_out[0] = shift
    refs_out[0] = <uint32_t>(start - level + 1)
    return 1


cdef inline bint _ept_cached(const mem_t *m, const ept_t *ept, gpa_t gpa, uint32_t need,
                             const walk_caches_t *caches, ept_xlate_t *x, cache_lookups_t *looked,
                             walk_pending_t *pend) noexcept nogil:
    """ept_translate's common case, without side effects (the lookup in ``looked``, a fill in ``pend``)."""
    cdef const tlb_t *ntlb = caches.nested
    cdef uint64_t base = 0, pos = 0, piece_mask
    cdef uint32_t rights, attrs
    cdef bint hit = 0
    cdef uint32_t k
    if gpa >> ept.width:
        return 0
    if ntlb != NULL:
        if looked.n_nested >= CACHED_LOOKUPS:
            return 0
        hit = _cache_peek(ntlb, gpa, caches.nested_ctx, &base, &pos)
        k = looked.n_nested
        looked.nested_hit[k] = hit
        looked.nested_base[k] = base
        looked.nested_pos[k] = pos
        looked.n_nested += 1
        if hit:
            attrs = ntlb.attrs[pos]
            rights = (attrs >> ATTR_EPT_SHIFT) & <uint32_t>EPT_RWX
            if not ((rights & need) and ((need & EPT_W) == 0 or (attrs & ATTR_EPT_D))):
                return 0         # the full walker drops the entry
            x.shift = ntlb.shift[(ntlb.tag[pos] >> TAG_SIZE_SHIFT) & 7]
            piece_mask = (<uint64_t>1 << x.shift) - 1
            x.hpa = (ntlb.frame[pos] << PAGE_SHIFT) + (gpa & piece_mask)
            x.rights = rights
            x.refs = 0
            x.memtype = <uint8_t>((attrs >> ATTR_MEMTYPE_SHIFT) & 7)
            x.dirty = (attrs & ATTR_EPT_D) != 0
            return 1
    if not _ept_fast(m, ept, gpa, need, x):
        return 0
    if ntlb != NULL and pend.n_fills < MAX_NESTED_FILLS:
        k = pend.n_fills
        pend.fill_gpa[k] = gpa
        pend.fill_frame[k] = (x.hpa >> x.shift) << (x.shift - PAGE_SHIFT)
        pend.fill_attrs[k] = ept_attrs(x)
        pend.fill_code[k] = <uint8_t>((x.shift - PAGE_SHIFT) // 9)
        pend.n_fills += 1
    return 1


cdef inline bint walk_nested_cached(mem_t *m, const paging_t *p, const ept_t *ept, gva_t va,
                                    uint32_t access, walk_caches_t *caches, uint64_t *hpa,
                                    uint32_t *attrs_out, int *shift_out, uint32_t *refs_out) noexcept nogil:
    """walk_nested with ``caches`` for a canonical ``va``, its common case: 1 = done, 0 = walk in full.

    One call site of the EPT kernel, as in walk_nested: the final GPA is the loop's ``level == 0``.
    """
    cdef cache_lookups_t looked
    cdef walk_pending_t pend
    cdef ept_xlate_t x
    cdef uint64_t table = p.root, allow = PTE_RW | PTE_US, xd = 0, start_allow, start_xd, gpa
    cdef int level, start, shift, leaf_level = 1, leaf_shift = PAGE_SHIFT
    cdef pte_t e
    cdef uint32_t refs = 0, attrs = 0, need = ept.pt_need
    level = _psc_peek(p, va, caches, &looked, &table, &allow, &xd)
    start = level
    start_allow = allow
    start_xd = xd
    shift = PAGE_SHIFT + 9 * (level - 1)
    gpa = table | (((va >> shift) & 511) << 3)
    looked.n_nested = 0
    pend.n_fills = 0
    while True:
        if not _ept_cached(m, ept, gpa, need, caches, &x, &looked, &pend):
            return 0
        refs += x.refs
        if level == 0:
            break
        if _fast_out(m, x.hpa):
            return 0
        e = m.entries[_fast_index(m, x.hpa, x.hpa, 3)]
        refs += 1
        if _fast_bad_x86(p, level, e):
            return 0
        allow &= e
        xd |= e
        if e & p.leaf_mask[level]:
            if e & p.large_rsvd[level]:
                return 0
            attrs = _x86_rights(e, allow, xd)
            if check_access(attrs, access, p) or ((access & ACC_WRITE) and not (e & PTE_D)):
                return 0
            attrs |= _x86_leaf_flags(p, e, access)
            gpa = _page_address(e, va, shift)
            leaf_level = level
            leaf_shift = shift
            need = ept_access_need(access)
            level = 0
        else:
            pend.vals[level] = e
            level -= 1
            shift -= 9
            gpa = (e & ADDR_MASK) | (((va >> shift) & 511) << 3)
    _replay_lookups(caches, &looked)
    pend.n_guest = 0
    pend.n_ept = 0
    _commit(m, va, caches, &pend, start, leaf_level, start_allow, start_xd)
    hpa[0] = x.hpa
    attrs_out[0] = attrs | ept_attrs(&x) | (ATTR_FRACTURED if x.shift < leaf_shift else 0)
    shift_out[0] = x.shift if x.shift < leaf_shift else leaf_shift
    refs_out[0] = refs
    return 1
