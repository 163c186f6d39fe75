# Part of paging.pxd, which includes it: the walkers' fast paths, with no paging-structure cache and no nested TLB.
# Inline kernels (the run loop compiles them in place); paging.pxd's index says what each promises.

# -- fast paths: the common case, with no paging-structure cache and no nested TLB ----------
#
# Every entry present with no reserved bit and its A flag already set (EPT A with A/D on), a
# leaf that allows the access and, for a write, whose D flag is set already: then a walk
# writes nothing, fills nothing and cannot fault, and its result depends only on the entries
# read.  These kernels handle exactly that case; anything else returns 0 before any side
# effect (they never write), and the caller runs the full walker, which reads the same
# entries again and decides.  Only for callers whose walk_caches_t has no paging-structure
# cache (and, nested, no nested TLB) and that record no trace.

cdef inline bint _fast_out(const mem_t *m, uint64_t table) noexcept nogil:
    """A table beyond memory: the fast paths leave it to the full walk (a branch, not a clamp, so
    that the frame number is not one more step in the chain of dependent loads)."""
    return (table >> PAGE_SHIFT) >= m.nframes


cdef inline uint64_t _fast_index(const mem_t *m, uint64_t table, uint64_t address, int shift) noexcept nogil:
    """_table_entry_index for a table within memory (``_fast_out`` is false).  Flat memory: the
    row is the frame number, no ``slot_of`` load (a branch that always goes the same way)."""
    if m.flat:
        return ((table >> PAGE_SHIFT) << 9) | ((address >> shift) & 511)
    return ((<uint64_t>m.slot_of[table >> PAGE_SHIFT]) << 9) | ((address >> shift) & 511)


cdef inline bint _fast_bad_x86(const paging_t *p, int level, pte_t e) noexcept nogil:
    return ((e ^ (PTE_P | PTE_A)) & p.check[level]) != 0


cdef inline bint walk_native_fast(const mem_t *m, const paging_t *p, gva_t va, uint32_t access,
                                  uint64_t *hpa, uint32_t *attrs_out, int *shift_out,
                                  uint32_t *refs_out) noexcept nogil:
    """walk_native's common case for a canonical ``va`` (see above): 1 = done, 0 = walk in full."""
    cdef uint64_t table = p.root
    cdef pte_t e
    cdef uint64_t allow = PTE_RW | PTE_US, xd = 0
    cdef int leaf, shift, top = p.levels
    cdef uint32_t attrs
    if top == 5:
        if _fast_out(m, table):
            return 0
        e = m.entries[_fast_index(m, table, va, PAGE_SHIFT + 36)]
        if _fast_bad_x86(p, 5, e):
            return 0
        allow &= e
        xd |= e
        table = e & ADDR_MASK
    if _fast_out(m, table):
        return 0
    e = m.entries[_fast_index(m, table, va, PAGE_SHIFT + 27)]
    if _fast_bad_x86(p, 4, e):
        return 0
    allow &= e
    xd |= e
    if _fast_out(m, e & ADDR_MASK):
        return 0
    e = m.entries[_fast_index(m, e & ADDR_MASK, va, PAGE_SHIFT + 18)]
    if _fast_bad_x86(p, 3, e):
        return 0
    allow &= e
    xd |= e
    if e & PTE_PS:
        leaf = 3
    else:
        if _fast_out(m, e & ADDR_MASK):
            return 0
        e = m.entries[_fast_index(m, e & ADDR_MASK, va, PAGE_SHIFT + 9)]
        if _fast_bad_x86(p, 2, e):
            return 0
        allow &= e
        xd |= e
        if e & PTE_PS:
            leaf = 2
        else:
            if _fast_out(m, e & ADDR_MASK):
                return 0
            e = m.entries[_fast_index(m, e & ADDR_MASK, va, PAGE_SHIFT)]
            if _fast_bad_x86(p, 1, e):
                return 0
            allow &= e
            xd |= e
            leaf = 1
    if e & p.large_rsvd[leaf]:
        return 0
    attrs = _x86_rights(e, allow, xd)
    if check_access(attrs, access, p) or ((access & ACC_WRITE) and not (e & PTE_D)):
        return 0
    shift = PAGE_SHIFT + 9 * (leaf - 1)
    hpa[0] = _page_address(e, va, shift)
    attrs_out[0] = (attrs | _x86_leaf_flags(p, e, access)
                    | ATTR_EPT_R | ATTR_EPT_W | ATTR_EPT_X | ATTR_EPT_D)
    shift_out[0] = shift
    refs_out[0] = <uint32_t>(top - leaf + 1)
    return 1


cdef inline bint _fast_bad_ept(const ept_t *ept, int level, pte_t e) noexcept nogil:
    return (((ept.odd_xwr >> (e & EPT_RWX)) & 1)
            | ((e ^ ept.a_bit) & ept.check[level][(e >> 7) & 1])) != 0


cdef inline bint _ept_fast(const mem_t *m, const ept_t *ept, gpa_t gpa, uint32_t need, ept_xlate_t *x) noexcept nogil:
    """_ept_walk's common case (no fault, no flag to set): 1 = done, 0 = walk in full."""
    cdef int top = ept.levels, shift
    cdef uint64_t table = ept.root, offset_mask
    cdef pte_t e
    cdef uint64_t rights = EPT_RWX
    if gpa >> ept.width:
        return 0
    if top == 5:
        if _fast_out(m, table):
            return 0
        e = m.entries[_fast_index(m, table, gpa, PAGE_SHIFT + 36)]
        if _fast_bad_ept(ept, 5, e):
            return 0
        rights &= e
        table = e & ADDR_MASK
    if _fast_out(m, table):
        return 0
    e = m.entries[_fast_index(m, table, gpa, PAGE_SHIFT + 27)]
    if _fast_bad_ept(ept, 4, e):
        return 0
    rights &= e
    if _fast_out(m, e & ADDR_MASK):
        return 0
    e = m.entries[_fast_index(m, e & ADDR_MASK, gpa, PAGE_SHIFT + 18)]
    if _fast_bad_ept(ept, 3, e):
        return 0
    rights &= e
    if e & EPT_PS:
        shift = PAGE_SHIFT + 18
    else:
        if _fast_out(m, e & ADDR_MASK):
            return 0
        e = m.entries[_fast_index(m, e & ADDR_MASK, gpa, PAGE_SHIFT + 9)]
        if _fast_bad_ept(ept, 2, e):
            return 0
        rights &= e
        if e & EPT_PS:
            shift = PAGE_SHIFT + 9
        else:
            if _fast_out(m, e & ADDR_MASK):
                return 0
            e = m.entries[_fast_index(m, e & ADDR_MASK, gpa, PAGE_SHIFT)]
            if _fast_bad_ept(ept, 1, e):
                return 0
            rights &= e
            shift = PAGE_SHIFT
    if ((EPT_BAD_MEMTYPES >> ((e >> EPT_MEMTYPE_SHIFT) & 7)) & 1) or (rights & need) == 0:
        return 0
    if ept.ad and (need & EPT_W) and not (e & EPT_D):
        return 0
    x.refs = top - (shift - PAGE_SHIFT) // 9
    x.rights = <uint32_t>rights
    x.dirty = 1     # A/D off; with A/D on, D is set or the access is not a write
    if ept.ad and not (e & EPT_D):
        x.dirty = (need & EPT_W) != 0
    offset_mask = (<uint64_t>1 << shift) - 1
    x.hpa = (e & ADDR_MASK & ~offset_mask) | (gpa & offset_mask)
    x.shift = <uint8_t>shift
    x.memtype = <uint8_t>((e >> EPT_MEMTYPE_SHIFT) & 7)
    return 1


cdef inline bint walk_nested_fast(const mem_t *m, const paging_t *p, const ept_t *ept, gva_t va,
                                  uint32_t access, uint64_t *hpa, uint32_t *attrs_out, int *shift_out,
                                  uint32_t *refs_out) noexcept nogil:
    """walk_nested's common case for a canonical ``va`` (see above): 1 = done, 0 = walk in full.

    One call site of the EPT kernel, as in walk_nested: the final GPA is the loop's ``level == 0``.
    """
    cdef ept_xlate_t x
    cdef int level = p.levels, shift = PAGE_SHIFT + 9 * (p.levels - 1), leaf_shift = PAGE_SHIFT
    cdef uint64_t gpa = p.root | (((va >> shift) & 511) << 3)
    cdef pte_t e
    cdef uint64_t allow = PTE_RW | PTE_US, xd = 0
    cdef uint32_t refs = 0, attrs = 0, need = ept.pt_need
    while True:
        if not _ept_fast(m, ept, gpa, need, &x):
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
            leaf_shift = shift
            need = ept_access_need(access)
            level = 0
        else:
            level -= 1
            shift -= 9
            gpa = (e & ADDR_MASK) | (((va >> shift) & 511) << 3)
    hpa[0] = x.hpa
    attrs_out[0] = attrs | ept_attrs(&x) | (ATTR_FRACTURED if x.shift < leaf_shift else 0)
    shift_out[0] = x.shift if x.shift < leaf_shift else leaf_shift
    refs_out[0] = refs
    return 1
