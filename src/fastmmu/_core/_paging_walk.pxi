# Part of paging.pxd, which includes it: the full walkers (x86, EPT, 2D) and the parts they share.
# Inline kernels (the run loop compiles them in place); paging.pxd's index says what each promises.

# -- recording, results, commit (shared by the walkers) ----------------------------------

cdef inline void _trace_add(walk_trace_t *trace, uint8_t dimension, int level, hpa_t address,
                            pte_t value) noexcept nogil:
    cdef walk_ref_t *r
    if dimension == REF_EPT:
        trace.counts.ept_refs[level] += 1
    else:
        trace.counts.guest_refs[level] += 1
    if trace.count < TRACE_CAPACITY:
        r = &trace.refs[trace.count]
        r.address = address
        r.value = value
        r.dimension = dimension
        r.level = <uint8_t>level
        trace.count += 1


cdef inline void walk_trace_clear(walk_trace_t *trace) noexcept nogil:
    cdef int level
    for level in range(6):
        trace.counts.guest_refs[level] = 0
        trace.counts.ept_refs[level] = 0
    trace.count = 0


cdef inline int _finish_fault(walk_t *out, int status, uint64_t fault_address, uint32_t error_code,
                              uint64_t qualification, uint32_t refs) noexcept nogil:
    out.status = <uint8_t>status
    out.page_shift = 0
    out.is_global = 0
    out.pkey = 0
    out.memtype = 0
    out.error_code = error_code
    out.attrs = 0
    out.refs = refs
    out.host_address = 0
    out.guest_physical_address = 0
    out.fault_address = fault_address
    out.exit_qualification = qualification
    return status


cdef inline uint64_t _table_entry_index(const mem_t *m, uint64_t table, uint64_t address, int shift) noexcept nogil:
    """Index in ``m.entries`` of the entry of the 4 KiB-aligned ``table`` that translates ``address``.

    The frame is looked up once (``mem_entry_index`` of the table itself, safe
    for any address); the entry's index within it comes straight from
    ``address``, as ``entries[(slot << 9) | index]`` lays a frame out (memory.pxd).
    """
    return mem_entry_index(m, table) | ((address >> shift) & 511)


cdef inline uint64_t _stamp(walk_caches_t *c, uint64_t *clock) noexcept nogil:
    """Replacement stamp of one lookup or fill: ``now``, or (tick) the structure's clock, advanced."""
    if c.tick:
        clock[0] += 1
        return clock[0] - 1
    return c.now


cdef inline void _record_guest_flags(walk_pending_t *pend, uint64_t pos, uint64_t bits, gpa_t gpa,
                                     uint32_t rights) noexcept nogil:
    if pend.n_guest < MAX_LEVELS:
        pend.guest_pos[pend.n_guest] = pos
        pend.guest_bits[pend.n_guest] = bits
        pend.guest_gpa[pend.n_guest] = gpa
        pend.guest_rights[pend.n_guest] = rights
        pend.n_guest += 1


cdef inline void _record_ept_flags(walk_pending_t *pend, uint64_t pos, uint64_t bits) noexcept nogil:
    if pend.n_ept < MAX_EPT_RECORDS:
        pend.ept_pos[pend.n_ept] = pos
        pend.ept_bits[pend.n_ept] = bits
        pend.n_ept += 1


cdef inline void _commit(mem_t *m, gva_t va, walk_caches_t *caches, walk_pending_t *pend, int start,
                         int leaf_level, uint64_t allow, uint64_t xd) noexcept nogil:
    """The access succeeded: set the recorded flags, then fill the caches (docs: fills).

    ``allow``/``xd`` are the rights the walk started from (a paging-structure
    cache hit's), from which each cached level's rights are rebuilt.
    """
    cdef uint32_t i, j
    cdef int level, held
    cdef bint seen
    cdef tlb_t *ntlb = caches.nested if caches != NULL else NULL
    for i in range(pend.n_guest):
        m.entries[pend.guest_pos[i]] |= pend.guest_bits[i]
    for i in range(pend.n_ept):
        m.entries[pend.ept_pos[i]] |= pend.ept_bits[i]
    if caches == NULL:
        return
    # Paging-structure caches, top level down: the non-leaf entries this walk read.
    for level in range(start, leaf_level, -1):
        allow &= pend.vals[level]
        xd |= pend.vals[level]
        if caches.psc[level] != NULL:
            tlb_fill(caches.psc[level], va, caches.psc[level].codes[0], caches.ctx,
                     (pend.vals[level] & ADDR_MASK) >> PAGE_SHIFT,
                     rights_attrs(allow, xd),
                     _stamp(caches, &caches.psc_clock[level]))
    # Nested TLB: the EPT translations walked, in order, at most once per region it holds (the
    # size it would cache, tlb_code_for, and the address bits above it); none it cannot hold.
    if ntlb != NULL:
        for i in range(pend.n_fills):
            held = tlb_code_for(ntlb, pend.fill_code[i])
            if held < 0:
                continue
            seen = 0
            for j in range(i):
                if (tlb_code_for(ntlb, pend.fill_code[j]) == held
                        and (pend.fill_gpa[j] >> ntlb.shift[held]) == (pend.fill_gpa[i] >> ntlb.shift[held])):
                    seen = 1
            if not seen:
                tlb_fill(ntlb, pend.fill_gpa[i], pend.fill_code[i], caches.nested_ctx, pend.fill_frame[i],
                         pend.fill_attrs[i], _stamp(caches, &caches.nested_clock))


# -- EPT (29.3) -------------------------------------------------------------------------

cdef inline int _ept_entry_attention(const ept_t *ept, pte_t e, int level, uint64_t pos,
                                     walk_pending_t *pend) noexcept nogil:
    """An EPT entry the fast test flagged: its status, or WALK_OK once its A flag is recorded."""
    if (e & EPT_RWX) == 0:
        return WALK_EPT_VIOLATION                              # not present (29.3.2)
    if ((ept.odd_xwr >> (e & EPT_RWX)) & 1) or (e & ept.rsvd[level][(e >> 7) & 1]):
        return WALK_EPT_MISCONFIG                              # 29.3.3.1
    _record_ept_flags(pend, pos, EPT_A)                        # A clear with A/D on (29.3.5)
    return WALK_OK


cdef inline int _ept_level(mem_t *m, const ept_t *ept, int level, uint64_t table, gpa_t gpa,
                           uint64_t *pos, pte_t *entry, walk_pending_t *pend, trace_kind *trace) noexcept nogil:
    """Read and check the level-``level`` EPT entry for ``gpa``: WALK_OK, or the fault it causes.

    Called with a constant ``level``, so each level compiles to straight code.
    """
    cdef int shift = PAGE_SHIFT + 9 * (level - 1)
    cdef pte_t e
    pos[0] = _table_entry_index(m, table, gpa, shift)
    e = m.entries[pos[0]]
    entry[0] = e
    if trace_kind is walk_trace_t:
        _trace_add(trace, REF_EPT, level, table | (((gpa >> shift) & 511) << 3), e)
    if ((ept.odd_xwr >> (e & EPT_RWX)) & 1) or ((e ^ ept.a_bit) & ept.check[level][(e >> 7) & 1]):
        return _ept_entry_attention(ept, e, level, pos[0], pend)
    return WALK_OK


cdef inline int _ept_fail(ept_xlate_t *x, int status, uint32_t refs) noexcept nogil:
    x.refs = refs
    x.rights = 0          # not present: 0; a misconfiguration reports no rights
    return status


cdef inline int _ept_walk(mem_t *m, const ept_t *ept, gpa_t gpa, uint32_t need, ept_xlate_t *x,
                          walk_pending_t *pend, trace_kind *trace) noexcept nogil:
    """Walk the EPT for ``gpa`` (within its width), for an access needing the right ``need``.

    Returns WALK_OK, WALK_EPT_VIOLATION or WALK_EPT_MISCONFIG; ``x.rights``
    is the AND of R/W/X over the entries read (0 after a not-present entry).
    Unrolled: PML5E (5-level EPT only), PML4E, then PDPTE and PDE, which may
    map a page (PS is reserved above, 29.3.3.1).
    """
    cdef int status, top = ept.levels, shift
    cdef uint64_t table = ept.root, pos = 0, offset_mask
    cdef pte_t e = 0
    cdef uint32_t rights = <uint32_t>EPT_RWX
    if top == 5:
        status = _ept_level(m, ept, 5, table, gpa, &pos, &e, pend, trace)
        if status != WALK_OK:
            return _ept_fail(x, status, 1)
        rights &= <uint32_t>(e & EPT_RWX)
        table = e & ADDR_MASK
    status = _ept_level(m, ept, 4, table, gpa, &pos, &e, pend, trace)
    if status != WALK_OK:
        return _ept_fail(x, status, top - 3)
    rights &= <uint32_t>(e & EPT_RWX)
    status = _ept_level(m, ept, 3, e & ADDR_MASK, gpa, &pos, &e, pend, trace)
    if status != WALK_OK:
        return _ept_fail(x, status, top - 2)
    rights &= <uint32_t>(e & EPT_RWX)
    if e & EPT_PS:
        shift = PAGE_SHIFT + 18                                # 1 GiB page
    else:
        status = _ept_level(m, ept, 2, e & ADDR_MASK, gpa, &pos, &e, pend, trace)
        if status != WALK_OK:
            return _ept_fail(x, status, top - 1)
        rights &= <uint32_t>(e & EPT_RWX)
        if e & EPT_PS:
            shift = PAGE_SHIFT + 9                             # 2 MiB page
        else:
            status = _ept_level(m, ept, 1, e & ADDR_MASK, gpa, &pos, &e, pend, trace)
            if status != WALK_OK:
                return _ept_fail(x, status, top)
            rights &= <uint32_t>(e & EPT_RWX)
            shift = PAGE_SHIFT
    x.refs = top - (shift - PAGE_SHIFT) // 9
    x.rights = rights
    if (EPT_BAD_MEMTYPES >> ((e >> EPT_MEMTYPE_SHIFT) & 7)) & 1:
        return WALK_EPT_MISCONFIG                              # reserved memory type in the leaf
    if (rights & need) == 0:
        return WALK_EPT_VIOLATION                              # 29.3.3.2
    x.dirty = 1
    if ept.ad:
        x.dirty = (e & EPT_D) != 0 or (need & EPT_W) != 0
        if (need & EPT_W) and not (e & EPT_D):                 # dirty the leaf on a write (29.3.5)
            _record_ept_flags(pend, pos, EPT_D)
    offset_mask = (<uint64_t>1 << shift) - 1
    x.hpa = (e & ADDR_MASK & ~offset_mask) | (gpa & offset_mask)
    x.shift = <uint8_t>shift
    x.memtype = <uint8_t>((e >> EPT_MEMTYPE_SHIFT) & 7)
    return WALK_OK


cdef inline bint _nested_tlb_hit(walk_caches_t *caches, gpa_t gpa, uint32_t need,
                                 ept_xlate_t *x) noexcept nogil:
    """A nested-TLB entry that allows the access (else none, and one that does not is dropped)."""
    cdef tlb_hit_t hit
    cdef tlb_t *ntlb = caches.nested
    cdef uint32_t rights
    cdef uint64_t piece_mask
    if not tlb_lookup(ntlb, gpa, caches.nested_ctx, _stamp(caches, &caches.nested_clock), &hit):
        return 0
    rights = (hit.attrs >> ATTR_EPT_SHIFT) & <uint32_t>EPT_RWX
    if (rights & need) and ((need & EPT_W) == 0 or (hit.attrs & ATTR_EPT_D)):
        # The EPT page size is the size of the entry that hit (docs: nested TLB entry).
        piece_mask = (<uint64_t>1 << ntlb.shift[hit.code]) - 1
        x.hpa = (hit.frame << PAGE_SHIFT) + (gpa & piece_mask)
        x.rights = rights
        x.refs = 0
        x.shift = ntlb.shift[hit.code]
        x.memtype = <uint8_t>((hit.attrs >> ATTR_MEMTYPE_SHIFT) & 7)
        x.dirty = (hit.attrs & ATTR_EPT_D) != 0
        return 1
    tlb_reject(ntlb, hit.pos)       # the lookup counts as a miss: the EPT is walked
    return 0


cdef inline int ept_translate(mem_t *m, const ept_t *ept, gpa_t gpa, uint32_t need,
                              walk_caches_t *caches, ept_xlate_t *x, walk_pending_t *pend,
                              trace_kind *trace) noexcept nogil:
    """One guest-physical translation: the nested TLB if an entry allows the access, else a walk.

    ``need`` is the EPT right the access needs (EPT_R, EPT_W or EPT_X).  A
    walked translation is recorded in ``pend`` for a nested-TLB fill.
    """
    cdef int status
    cdef bint cached = caches != NULL and caches.nested != NULL
    if gpa >> ept.width:                                       # before any lookup or reference
        x.refs = 0
        x.rights = 0
        return WALK_EPT_VIOLATION
    if cached and _nested_tlb_hit(caches, gpa, need, x):
        return WALK_OK
    status = _ept_walk(m, ept, gpa, need, x, pend, trace)
    if cached and status == WALK_OK and pend.n_fills < MAX_NESTED_FILLS:
        pend.fill_gpa[pend.n_fills] = gpa
        pend.fill_frame[pend.n_fills] = (x.hpa >> x.shift) << (x.shift - PAGE_SHIFT)
        pend.fill_attrs[pend.n_fills] = ept_attrs(x)
        pend.fill_code[pend.n_fills] = <uint8_t>((x.shift - PAGE_SHIFT) // 9)
        pend.n_fills += 1
    return status


# -- x86 paging (4.4 - 4.8) -----------------------------------------------------------

cdef inline int _psc_start(const paging_t *p, gva_t va, walk_caches_t *caches, uint64_t *table,
                           uint64_t *allow, uint64_t *xd) noexcept nogil:
    """Paging-structure caches (4.10.3), lowest level first: the level the walk starts at."""
    cdef tlb_hit_t hit
    cdef int level
    for level in range(2, p.levels + 1):
        if caches.psc[level] != NULL and tlb_lookup(caches.psc[level], va, caches.ctx,
                                                    _stamp(caches, &caches.psc_clock[level]), &hit):
            table[0] = hit.frame << PAGE_SHIFT
            rights_entry_bits(hit.attrs, allow, xd)
            return level - 1
    return p.levels


cdef inline int _x86_entry_attention(const paging_t *p, pte_t e, int level, uint32_t access,
                                     uint64_t pos, gpa_t entry_addr, uint32_t ept_rights,
                                     walk_pending_t *pend) noexcept nogil:
    """An entry the fast test flagged: a page-fault error code, or -1 once its A flag is recorded."""
    if not (e & PTE_P):
        return p.fault_bits[access & ACC_VALID_MASK]
    if e & p.rsvd[level][(e >> 7) & 1]:
        return PFERR_P | PFERR_RSVD | p.fault_bits[access & ACC_VALID_MASK]
    _record_guest_flags(pend, pos, PTE_A, entry_addr, ept_rights)      # 4.8
    return -1


cdef inline uint32_t _x86_rights(pte_t leaf, uint64_t allow, uint64_t xd) noexcept nogil:
    """attrs W/U/XD and the key of a translation (4.6): R/W and U/S ANDed, XD ORed over its entries."""
    return rights_attrs(allow, xd) | (<uint32_t>((leaf >> PTE_PKEY_SHIFT) & 15) << ATTR_PKEY_SHIFT)


cdef inline uint32_t _x86_leaf_flags(const paging_t *p, pte_t leaf, uint32_t access) noexcept nogil:
    """attrs D and G of an allowed access: D once the access commits (4.8), G with CR4.PGE."""
    cdef uint32_t flags = 0
    if (leaf & PTE_D) or (access & ACC_WRITE):
        flags |= ATTR_D
    if p.pge and (leaf & PTE_G):
        flags |= ATTR_G
    return flags


cdef inline uint64_t _page_address(pte_t leaf, uint64_t address, int shift) noexcept nogil:
    """The address a leaf maps ``address`` to: its frame bits above the page offset, plus the offset."""
    cdef uint64_t offset_mask = (<uint64_t>1 << shift) - 1
    return (leaf & ADDR_MASK & ~offset_mask) | (address & offset_mask)


cdef inline void _record_leaf_dirty(uint64_t pos, gpa_t entry_addr, uint32_t ept_rights,
                                    walk_pending_t *pend) noexcept nogil:
    """A write through a leaf (entry ``pos`` of mem.entries) whose D flag is clear: set it on success (4.8)."""
    if pend.n_guest > 0 and pend.guest_pos[pend.n_guest - 1] == pos:
        pend.guest_bits[pend.n_guest - 1] |= PTE_D              # the leaf's A is recorded already
    else:
        _record_guest_flags(pend, pos, PTE_D, entry_addr, ept_rights)


cdef inline int _finish_ok(walk_t *out, const paging_t *p, pte_t leaf, uint32_t attrs, int shift,
                           hpa_t host_address, gpa_t gpa, uint8_t memtype, uint32_t refs) noexcept nogil:
    out.status = WALK_OK
    out.page_shift = <uint8_t>shift
    out.is_global = (attrs & ATTR_G) != 0
    out.pkey = <uint8_t>((leaf >> PTE_PKEY_SHIFT) & 15)
    out.memtype = memtype
    out.error_code = 0
    out.attrs = attrs
    out.refs = refs
    out.host_address = host_address
    out.guest_physical_address = gpa
    out.fault_address = 0
    out.exit_qualification = 0
    return WALK_OK


cdef inline int _native_level(mem_t *m, const paging_t *p, int level, uint64_t table, gva_t va,
                              uint32_t access, uint64_t *pos, pte_t *entry, walk_pending_t *pend,
                              trace_kind *trace) noexcept nogil:
    """Read and check the level-``level`` entry for ``va``: -1, or the page-fault error code.

    Called with a constant ``level``, so each level compiles to straight code.
    """
    cdef int shift = PAGE_SHIFT + 9 * (level - 1)
    cdef pte_t e
    pos[0] = _table_entry_index(m, table, va, shift)
    e = m.entries[pos[0]]
    entry[0] = e
    if trace_kind is walk_trace_t:
        _trace_add(trace, REF_GUEST, level, table | (((va >> shift) & 511) << 3), e)
    # One test for the common case: present, no reserved bit, A already set.
    if (e ^ (PTE_P | PTE_A)) & p.check[level]:
        return _x86_entry_attention(p, e, level, access, pos[0], table | (((va >> shift) & 511) << 3),
                                    <uint32_t>EPT_RWX, pend)
    return -1



cdef inline int walk_native(mem_t *m, const paging_t *p, gva_t va, uint32_t access,
                            walk_caches_t *caches, trace_kind *trace, walk_t *out) noexcept nogil:
    """Native translation of linear address ``va``: tables in host memory from ``p.root`` (4.5).

    ``access`` is an access-kind byte (ACC_*), checked by the caller.  The
    levels are unrolled: a paging-structure-cache hit enters lower down.
    """
    cdef walk_pending_t pend
    cdef int level = p.levels, start, leaf = 0, shift, err
    cdef uint64_t table = p.root, pos = 0
    cdef pte_t e = 0
    cdef uint64_t allow = PTE_RW | PTE_US       # ANDed over the entries: R/W and U/S
    cdef uint64_t xd = 0                        # ORed over the entries: XD
    cdef uint64_t start_allow, start_xd
    cdef uint32_t attrs = 0

    out.guest_linear_address = va
    if <uint64_t>((<int64_t>va >> p.canonical_shift) + 1) > 1:       # canonical (3.3.7.1)
        return _finish_fault(out, WALK_GP, va, 0, 0, 0)
    pend.n_guest = 0
    pend.n_ept = 0
    pend.n_fills = 0
    if caches != NULL:
        level = _psc_start(p, va, caches, &table, &allow, &xd)
    start = level
    start_allow = allow
    start_xd = xd
    # PML5E and PML4E always reference a table (PS is reserved there: the fast test catches it).
    if level == 5:
        err = _native_level(m, p, 5, table, va, access, &pos, &e, &pend, trace)
        if err >= 0:
            return _finish_fault(out, WALK_PAGE_FAULT, va, err, 0, 1)
        allow &= e
        xd |= e
        pend.vals[5] = e
        table = e & ADDR_MASK
        level = 4
    if level == 4:
        err = _native_level(m, p, 4, table, va, access, &pos, &e, &pend, trace)
        if err >= 0:
            return _finish_fault(out, WALK_PAGE_FAULT, va, err, 0, start - 3)
        allow &= e
        xd |= e
        pend.vals[4] = e
        table = e & ADDR_MASK
        level = 3
    if level == 3:
        err = _native_level(m, p, 3, table, va, access, &pos, &e, &pend, trace)
        if err >= 0:
            return _finish_fault(out, WALK_PAGE_FAULT, va, err, 0, start - 2)
        allow &= e
        xd |= e
        if e & PTE_PS:
            leaf = 3                                           # 1 GiB page
        else:
            pend.vals[3] = e
            table = e & ADDR_MASK
            level = 2
    if level == 2:
        err = _native_level(m, p, 2, table, va, access, &pos, &e, &pend, trace)
        if err >= 0:
            return _finish_fault(out, WALK_PAGE_FAULT, va, err, 0, start - 1)
        allow &= e
        xd |= e
        if e & PTE_PS:
            leaf = 2                                           # 2 MiB page
        else:
            pend.vals[2] = e
            table = e & ADDR_MASK
            level = 1
    if level == 1:
        err = _native_level(m, p, 1, table, va, access, &pos, &e, &pend, trace)
        if err >= 0:
            return _finish_fault(out, WALK_PAGE_FAULT, va, err, 0, start)
        allow &= e
        xd |= e
        leaf = 1
    if e & p.large_rsvd[leaf]:                                 # a 2 MiB / 1 GiB page's reserved bits
        return _finish_fault(out, WALK_PAGE_FAULT, va,
                             PFERR_P | PFERR_RSVD | p.fault_bits[access & ACC_VALID_MASK], 0, start - leaf + 1)
    # The leaf: permission check (4.6), then the D flag of a write.
    shift = PAGE_SHIFT + 9 * (leaf - 1)
    attrs = _x86_rights(e, allow, xd)
    err = <int>check_access(attrs, access, p)
    if err:
        return _finish_fault(out, WALK_PAGE_FAULT, va, err, 0, start - leaf + 1)
    if (access & ACC_WRITE) and not (e & PTE_D):
        _record_leaf_dirty(pos, table | (((va >> shift) & 511) << 3), <uint32_t>EPT_RWX, &pend)
    attrs |= _x86_leaf_flags(p, e, access)
    _commit(m, va, caches, &pend, start, leaf, start_allow, start_xd)
    return _finish_ok(out, p, e, attrs | ATTR_EPT_R | ATTR_EPT_W | ATTR_EPT_X | ATTR_EPT_D, shift,
                      _page_address(e, va, shift), 0, 0, start - leaf + 1)


cdef inline int walk_nested(mem_t *m, const paging_t *p, const ept_t *ept, gva_t va, uint32_t access,
                            walk_caches_t *caches, trace_kind *trace, walk_t *out) noexcept nogil:
    """The 2D walk of guest-linear ``va``: guest tables from guest-physical ``p.root``, through ``ept``.

    Each guest entry's guest-physical address is translated through the EPT
    before the entry is read; after the guest's permission check, so is the
    final guest-physical address (the loop's last step, ``level == 0``).
    """
    cdef walk_pending_t pend
    cdef ept_xlate_t x
    cdef int level = p.levels, start, shift, leaf_level = 1, leaf_shift = PAGE_SHIFT, err, status
    cdef uint64_t table = p.root, gpa, e = 0, leaf = 0, pa = 0
    cdef uint64_t allow = PTE_RW | PTE_US, xd = 0, start_allow, start_xd
    cdef uint32_t refs = 0, attrs = 0, need = ept.pt_need, i

    out.guest_linear_address = va
    if <uint64_t>((<int64_t>va >> p.canonical_shift) + 1) > 1:       # canonical (3.3.7.1)
        return _finish_fault(out, WALK_GP, va, 0, 0, 0)
    pend.n_guest = 0
    pend.n_ept = 0
    pend.n_fills = 0
    if caches != NULL:
        level = _psc_start(p, va, caches, &table, &allow, &xd)
    start = level
    start_allow = allow
    start_xd = xd
    shift = PAGE_SHIFT + 9 * (level - 1)
    gpa = table | (((va >> shift) & 511) << 3)
    while True:
        # Translate the guest entry's GPA, or (level 0) the final GPA.
        status = ept_translate(m, ept, gpa, need, caches, &x, &pend, trace)
        refs += x.refs
        if status != WALK_OK:
            if status == WALK_EPT_MISCONFIG:
                return _finish_fault(out, status, gpa, 0, 0, refs)
            if level == 0:
                return _finish_fault(out, status, gpa, 0,
                                     ept_qualification(ept, need, x.rights, 1, 1, attrs), refs)
            return _finish_fault(out, status, gpa, 0,
                                 ept_qualification(ept, ept.pt_qual, x.rights, 1, 0, 0), refs)
        if level == 0:
            break
        e = mem_read(m, x.hpa)
        refs += 1
        if trace_kind is walk_trace_t:
            _trace_add(trace, REF_GUEST, level, x.hpa, e)
        if (e ^ (PTE_P | PTE_A)) & p.check[level]:
            err = _x86_entry_attention(p, e, level, access, mem_entry_index(m, x.hpa), gpa, x.rights,
                                       &pend)
            if err >= 0:
                return _finish_fault(out, WALK_PAGE_FAULT, va, err, 0, refs)
        allow &= e
        xd |= e
        if e & p.leaf_mask[level]:
            if e & p.large_rsvd[level]:                        # a 2 MiB / 1 GiB page's reserved bits
                return _finish_fault(out, WALK_PAGE_FAULT, va,
                                     PFERR_P | PFERR_RSVD | p.fault_bits[access & ACC_VALID_MASK], 0, refs)
            # The guest leaf: permission check (4.6), then the D flag of a write.
            attrs = _x86_rights(e, allow, xd)
            err = <int>check_access(attrs, access, p)
            if err:
                return _finish_fault(out, WALK_PAGE_FAULT, va, err, 0, refs)
            if (access & ACC_WRITE) and not (e & PTE_D):
                _record_leaf_dirty(mem_entry_index(m, x.hpa), gpa, x.rights, &pend)
            attrs |= _x86_leaf_flags(p, e, access)
            pa = _page_address(e, va, shift)
            leaf = e
            leaf_level = level
            leaf_shift = shift
            gpa = pa
            need = ept_access_need(access)
            level = 0
        else:
            pend.vals[level] = e
            level -= 1
            shift -= 9
            gpa = (e & ADDR_MASK) | (((va >> shift) & 511) << 3)
    # Setting a guest A/D flag writes the guest table: it needs EPT W there (docs: 2D walk).
    for i in range(pend.n_guest):
        if not (pend.guest_rights[i] & EPT_W):
            return _finish_fault(out, WALK_EPT_VIOLATION, pend.guest_gpa[i], 0,
                                 ept_qualification(ept, EQ_FLAG_UPDATE, pend.guest_rights[i], 1, 0, 0), refs)
    _commit(m, va, caches, &pend, start, leaf_level, start_allow, start_xd)
    if x.shift < leaf_shift:  # the EPT maps the guest's page in pieces: the TLB caches one
        leaf_shift = x.shift
        attrs |= ATTR_FRACTURED
    return _finish_ok(out, p, leaf, attrs | ept_attrs(&x), leaf_shift, x.hpa, pa, x.memtype, refs)


cdef inline int walk_ept(mem_t *m, const ept_t *ept, gpa_t gpa, uint32_t access,
                         walk_caches_t *caches, trace_kind *trace, walk_t *out) noexcept nogil:
    """Translate a guest-physical access with no linear address (exit qualification bit 7 = 0)."""
    cdef walk_pending_t pend
    cdef ept_xlate_t x
    cdef uint32_t need = ept_access_need(access)
    cdef int status
    pend.n_guest = 0
    pend.n_ept = 0
    pend.n_fills = 0
    out.guest_linear_address = 0
    status = ept_translate(m, ept, gpa, need, caches, &x, &pend, trace)
    if status != WALK_OK:
        return _finish_fault(out, status, gpa, 0,
                             0 if status == WALK_EPT_MISCONFIG else
                             ept_qualification(ept, need, x.rights, 0, 0, 0), x.refs)
    _commit(m, 0, caches, &pend, 0, 0, 0, 0)
    out.status = WALK_OK
    out.page_shift = x.shift
    out.is_global = 0
    out.pkey = 0
    out.memtype = x.memtype
    out.error_code = 0
    out.attrs = ept_attrs(&x)
    out.refs = x.refs
    out.host_address = x.hpa
    out.guest_physical_address = gpa
    out.fault_address = 0
    out.exit_qualification = 0
    return WALK_OK
