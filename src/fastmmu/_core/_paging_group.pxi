# Part of paging.pxd, which includes it: the group kernels and the quick native kernel: several fast walks together.
# Inline kernels (the run loop compiles them in place); paging.pxd's index says what each promises.

# -- group kernels: several fast walks, level by level together ------------------------------
#
# The fast paths' common case for up to GROUP_MAX walks at once, every page 4 KiB in both
# dimensions, in flat memory.  The walks are independent, so walking them level by level
# together issues one independent load per walk and step: memory-level parallelism that the
# out-of-order window does not give one long walk.  Like the fast paths they never write, and
# a lane they do not finish (``ok[k] == 0``: any fault, flag to set, large page, table beyond
# memory, non-canonical address, EPT entry without R) is left to the caller's per-access
# path, which reads the same entries again and decides.
#
# Each lane keeps one accumulator per dimension, the OR over its entries of
# ``(entry ^ flip) & mask``: any set bit sends the lane to the per-access path, except
# (x86) R/W and U/S, set where an entry lacks them (the rights are their AND), and XD, their
# OR; (EPT) W and X, set where an entry lacks them.  An entry without R is the only kind
# that can be not present or misconfigured (R/W/X = 0, 2, 4, 6): requiring R leaves them all
# to the per-access path.  A failing lane keeps walking (beyond memory it reads frame 0
# instead), so the only branch in a step is that one, and the lanes go four at a time.



cdef inline uint64_t _group_x86_mask(const paging_t *p, int level) noexcept nogil:
    """What a level-``level`` entry's bits ``^ GROUP_X86_FLIP`` accumulate: large pages go to the scalar walk."""
    return p.check[level] | PTE_RW | PTE_US | PTE_NX | (PTE_PS if level == 2 or level == 3 else 0)


cdef inline uint64_t _group_x86_failmask(const paging_t *p) noexcept nogil:
    """The bits of an x86 accumulator that leave the lane to the per-access path (XD too without NXE)."""
    return ~(PTE_RW | PTE_US | PTE_NX) | (p.rsvd[1][0] & PTE_NX)


cdef inline uint32_t _group_x86_leaf(const paging_t *p, uint64_t failmask, uint64_t x, pte_t e,
                                     uint32_t access, uint32_t *fail) noexcept nogil:
    """A leaf's attrs from the lane's accumulator ``x``; ``fail`` nonzero unless walk_native_fast would
    allow the access (check_access, and for a write the leaf's D set), with no branch."""
    cdef uint32_t rights = (<uint32_t>(~x >> 1) & (ATTR_W | ATTR_U)) | (<uint32_t>(x >> 61) & ATTR_XD)
    cdef uint32_t pkey = <uint32_t>(e >> PTE_PKEY_SHIFT) & 15
    cdef uint32_t kind = access & ACC_VALID_MASK
    fail[0] = (p.access_error[kind][rights] | ((p.pk_deny[kind] >> pkey) & (rights >> 1) & 1)
               | (access & ~<uint32_t>(e >> 6) & ACC_WRITE) | ((x & failmask) != 0))
    return (rights | (pkey << ATTR_PKEY_SHIFT) | ((((<uint32_t>(e >> 6)) | access) & 1) << 3)
            | ((<uint32_t>(e >> 8) & p.pge & 1) << 4))


# The native kernel.  Per lane and level: the table address (clamped to the zero sentinel frame
# past the end of memory: a lane whose table is beyond memory reads a zero entry, not present),
# one load, and for the levels above the leaf one OR into the lane's accumulator ``bad`` of the
# entry ``^ GROUP_X86_FLIP``, unmasked: the masks are applied once, at the leaf.  There, with
# ``low = leaf ^ GROUP_X86_FLIP ^ PTE_D`` and ``z = bad | low``, the lane is left when ``bad`` has a
# bit of ``upper`` (P or A lacking, a reserved bit, PS: a large page), ``low`` one of ``lower``, when
# ``p.group_deny`` denies the access (the permission check and a write's dirty test in one masked
# test) and, with CR4.PKE, when its protection key does.  An upper entry's bit 6 (ignored) reads
# as "no D": at worst a write goes to the per-access path, which decides.



cdef inline void _gx86_step(const char *ent, uint64_t limit, int shift, uint64_t va, uint64_t *table,
                            uint64_t *bad) noexcept nogil:
    """One level above the leaf of one walk whose state lives in the caller's locals."""
    cdef uint64_t t = table[0] & ADDR_MASK, e
    if t > limit:
        t = limit
    e = (<const pte_t *>(ent + t + ((va >> (shift - 3)) & 0xFF8)))[0]
    bad[0] |= e ^ GROUP_X86_FLIP
    table[0] = e


cdef inline pte_t _gx86_leaf_entry(const char *ent, uint64_t limit, uint64_t va, uint64_t table) noexcept nogil:
    cdef uint64_t t = table & ADDR_MASK
    if t > limit:
        t = limit
    return (<const pte_t *>(ent + t + ((va >> (PAGE_SHIFT - 3)) & 0xFF8)))[0]


cdef inline uint64_t _gx86_finish(const paging_t *p, uint64_t upper, uint64_t lower, bint pke, uint64_t va,
                                  pte_t leaf, uint64_t bad, uint32_t access, uint64_t *hpa,
                                  group_attrs_t *attrs) noexcept nogil:
    """The end of one lane: its address (and attrs); nonzero when walk_native_fast would not do it."""
    cdef uint64_t low = leaf ^ (GROUP_X86_FLIP | PTE_D), z = bad | low
    cdef uint32_t kind = access & ACC_VALID_MASK
    cdef uint64_t fail = (bad & upper) | (low & lower) | ((z ^ p.group_deny[kind][1]) & p.group_deny[kind][0])
    if pke:
        fail |= (p.pk_deny[kind] >> ((leaf >> PTE_PKEY_SHIFT) & 15)) & (~z >> 2) & 1
    hpa[0] = (leaf & ADDR_MASK) | (va & 0xFFF)
    if group_attrs_t is uint32_t:
        attrs[0] = (<uint32_t>((~z >> 1) & (ATTR_W | ATTR_U)) | (<uint32_t>(z >> 61) & ATTR_XD)
                    | (<uint32_t>((leaf >> PTE_PKEY_SHIFT) & 15) << ATTR_PKEY_SHIFT)
                    | ((((<uint32_t>(leaf >> 6)) | access) & 1) << 3)
                    | ((<uint32_t>(leaf >> 8) & p.pge & 1) << 4)
                    | ATTR_EPT_R | ATTR_EPT_W | ATTR_EPT_X | ATTR_EPT_D)
    return fail


cdef inline uint64_t _gx86_quad(const paging_t *p, const char *ent, uint64_t limit, uint64_t upper, uint64_t lower,
                                bint pke, const uint64_t *va, const uint8_t *kind, uint64_t *hpa,
                                group_attrs_t *attrs) noexcept nogil:
    """Four native walks, level by level together, in registers: bit k set = lane k is left."""
    cdef uint64_t va0 = va[0], va1 = va[1], va2 = va[2], va3 = va[3]
    cdef uint64_t root = p.root, entry0, entry1, entry2, entry3, fail0, fail1, fail2, fail3
    cdef int cs = p.canonical_shift
    cdef uint64_t bad0 = PTE_P if <uint64_t>((<int64_t>va0 >> cs) + 1) > 1 else 0
    cdef uint64_t bad1 = PTE_P if <uint64_t>((<int64_t>va1 >> cs) + 1) > 1 else 0
    cdef uint64_t bad2 = PTE_P if <uint64_t>((<int64_t>va2 >> cs) + 1) > 1 else 0
    cdef uint64_t bad3 = PTE_P if <uint64_t>((<int64_t>va3 >> cs) + 1) > 1 else 0
    entry0 = entry1 = entry2 = entry3 = root
    if p.levels == 5:
        _gx86_step(ent, limit, PAGE_SHIFT + 36, va0, &entry0, &bad0)
        _gx86_step(ent, limit, PAGE_SHIFT + 36, va1, &entry1, &bad1)
        _gx86_step(ent, limit, PAGE_SHIFT + 36, va2, &entry2, &bad2)
        _gx86_step(ent, limit, PAGE_SHIFT + 36, va3, &entry3, &bad3)
    _gx86_step(ent, limit, PAGE_SHIFT + 27, va0, &entry0, &bad0)
    _gx86_step(ent, limit, PAGE_SHIFT + 27, va1, &entry1, &bad1)
    _gx86_step(ent, limit, PAGE_SHIFT + 27, va2, &entry2, &bad2)
    _gx86_step(ent, limit, PAGE_SHIFT + 27, va3, &entry3, &bad3)
    _gx86_step(ent, limit, PAGE_SHIFT + 18, va0, &entry0, &bad0)
    _gx86_step(ent, limit, PAGE_SHIFT + 18, va1, &entry1, &bad1)
    _gx86_step(ent, limit, PAGE_SHIFT + 18, va2, &entry2, &bad2)
    _gx86_step(ent, limit, PAGE_SHIFT + 18, va3, &entry3, &bad3)
    _gx86_step(ent, limit, PAGE_SHIFT + 9, va0, &entry0, &bad0)
    _gx86_step(ent, limit, PAGE_SHIFT + 9, va1, &entry1, &bad1)
    _gx86_step(ent, limit, PAGE_SHIFT + 9, va2, &entry2, &bad2)
    _gx86_step(ent, limit, PAGE_SHIFT + 9, va3, &entry3, &bad3)
    entry0 = _gx86_leaf_entry(ent, limit, va0, entry0)
    entry1 = _gx86_leaf_entry(ent, limit, va1, entry1)
    entry2 = _gx86_leaf_entry(ent, limit, va2, entry2)
    entry3 = _gx86_leaf_entry(ent, limit, va3, entry3)
    if group_attrs_t is uint32_t:
        fail0 = _gx86_finish(p, upper, lower, pke, va0, entry0, bad0, kind[0], &hpa[0], &attrs[0])
        fail1 = _gx86_finish(p, upper, lower, pke, va1, entry1, bad1, kind[1], &hpa[1], &attrs[1])
        fail2 = _gx86_finish(p, upper, lower, pke, va2, entry2, bad2, kind[2], &hpa[2], &attrs[2])
        fail3 = _gx86_finish(p, upper, lower, pke, va3, entry3, bad3, kind[3], &hpa[3], &attrs[3])
    else:
        fail0 = _gx86_finish(p, upper, lower, pke, va0, entry0, bad0, kind[0], &hpa[0], attrs)
        fail1 = _gx86_finish(p, upper, lower, pke, va1, entry1, bad1, kind[1], &hpa[1], attrs)
        fail2 = _gx86_finish(p, upper, lower, pke, va2, entry2, bad2, kind[2], &hpa[2], attrs)
        fail3 = _gx86_finish(p, upper, lower, pke, va3, entry3, bad3, kind[3], &hpa[3], attrs)
    return (<uint64_t>(fail0 != 0) | (<uint64_t>(fail1 != 0) << 1) | (<uint64_t>(fail2 != 0) << 2)
            | (<uint64_t>(fail3 != 0) << 3))


cdef inline uint64_t walk_native_group(const mem_t *m, const paging_t *p, const uint64_t *va, const uint8_t *kind,
                                       uint32_t n4, uint64_t *hpa, group_attrs_t *attrs) noexcept nogil:
    """walk_native_fast for ``n4`` accesses (a multiple of 4, at most GROUP_MAX), four at a time together
    (flat memory; 4 KiB pages only).  Returns the lanes done (bit k: lane k; ``hpa`` set, and ``attrs``
    unless it is a <no_trace_t *>NULL)."""
    cdef uint64_t limit = m.nframes << PAGE_SHIFT          # the zero sentinel frame
    cdef uint64_t upper = PTE_PS, left = 0
    cdef const char *ent = <const char *>m.entries
    cdef uint32_t k
    cdef int level
    for level in range(2, p.levels + 1):
        upper |= p.check[level]
    k = 0
    while k < n4:
        if group_attrs_t is uint32_t:
            left |= _gx86_quad(p, ent, limit, upper, p.check[1], p.pke, &va[k], &kind[k], &hpa[k], &attrs[k]) << k
        else:
            left |= _gx86_quad(p, ent, limit, upper, p.check[1], p.pke, &va[k], &kind[k], &hpa[k], attrs) << k
        k += 4
    return ~left & (((<uint64_t>1) << n4) - 1 if n4 < 64 else ~(<uint64_t>0))


# -- the quick native kernel: bench row b's case, a group at a time, all or nothing --------------
#
# The commonest native case (no TLB, no traps, no protection keys, flat memory in a power-of-two
# buffer, one access kind per group) needs no per-lane answer while every lane succeeds: the
# checks are ORed over the whole group, one accumulator for the entries above the leaves and one
# for the leaves, and made once.  A table address is masked (``mem_t.table_mask``), not clamped:
# an entry with an address bit outside the mask fails the group (``upper``), one between the
# sentinel and the end of the buffer reads zeros (not present).  A group that fails is left whole
# to the group kernels above, which answer per lane; it costs one wasted pass.



cdef inline bint quick_x86_init(quick_x86_t *q, const mem_t *m, const paging_t *p) noexcept nogil:
    """Set up the quick kernel for these tables; 0 where it does not apply (slots, a buffer that is not
    a power of two, protection keys, a root beyond the buffer)."""
    cdef int level
    cdef uint32_t access
    if not m.flat or not m.table_mask or p.pke or (p.root & ADDR_MASK & ~m.table_mask):
        return 0
    q.ent = <const char *>m.entries
    q.root = q.ent + (p.root & m.table_mask)
    q.mask = m.table_mask
    q.upper = PTE_PS | (ADDR_MASK & ~m.table_mask)
    for level in range(2, p.levels + 1):
        q.upper |= p.check[level]
    q.lower = p.check[1]
    for access in range(16):
        q.need[access] = p.group_deny[access][0] if p.group_deny[access][1] == 0 else ~(<uint64_t>0)
    q.levels = p.levels
    q.canonical_shift = p.canonical_shift
    return 1


cdef inline uint64_t _quick_pairs(const quick_x86_t *q, const uint64_t *va, uint64_t *out, uint64_t *low,
                                  bint five) noexcept nogil:
    """The walks of walk_native_quick, two at a time level by level (the out-of-order window overlaps the
    pairs): ``out`` gets each lane's address, ``low`` the leaves' bits ^ (GROUP_X86_FLIP | PTE_D) ORed;
    returns the entries' above them ^ GROUP_X86_FLIP ORed.  ``five``: 5-level paging."""
    cdef uint64_t mask = q.mask, bad = 0, leaves = 0, entry0, entry1, va0, va1
    cdef const char *ent = q.ent
    cdef const char *root = q.root
    cdef uint32_t k = 0
    while k < QUICK_LANES:
        va0 = va[k]
        va1 = va[k + 1]
        if five:
            entry0 = (<const pte_t *>(root + ((va0 >> 45) & 0xFF8)))[0]
            entry1 = (<const pte_t *>(root + ((va1 >> 45) & 0xFF8)))[0]
            bad |= (entry0 ^ GROUP_X86_FLIP) | (entry1 ^ GROUP_X86_FLIP)
            entry0 = (<const pte_t *>(ent + (entry0 & mask) + ((va0 >> 36) & 0xFF8)))[0]
            entry1 = (<const pte_t *>(ent + (entry1 & mask) + ((va1 >> 36) & 0xFF8)))[0]
        else:
            entry0 = (<const pte_t *>(root + ((va0 >> 36) & 0xFF8)))[0]
            entry1 = (<const pte_t *>(root + ((va1 >> 36) & 0xFF8)))[0]
        bad |= (entry0 ^ GROUP_X86_FLIP) | (entry1 ^ GROUP_X86_FLIP)
        entry0 = (<const pte_t *>(ent + (entry0 & mask) + ((va0 >> 27) & 0xFF8)))[0]
        entry1 = (<const pte_t *>(ent + (entry1 & mask) + ((va1 >> 27) & 0xFF8)))[0]
        bad |= (entry0 ^ GROUP_X86_FLIP) | (entry1 ^ GROUP_X86_FLIP)
        entry0 = (<const pte_t *>(ent + (entry0 & mask) + ((va0 >> 18) & 0xFF8)))[0]
        entry1 = (<const pte_t *>(ent + (entry1 & mask) + ((va1 >> 18) & 0xFF8)))[0]
        bad |= (entry0 ^ GROUP_X86_FLIP) | (entry1 ^ GROUP_X86_FLIP)
        entry0 = (<const pte_t *>(ent + (entry0 & mask) + ((va0 >> 9) & 0xFF8)))[0]
        entry1 = (<const pte_t *>(ent + (entry1 & mask) + ((va1 >> 9) & 0xFF8)))[0]
        out[k] = (entry0 & ADDR_MASK) | (va0 & 0xFFF)
        out[k + 1] = (entry1 & ADDR_MASK) | (va1 & 0xFFF)
        leaves |= (entry0 ^ (GROUP_X86_FLIP | PTE_D)) | (entry1 ^ (GROUP_X86_FLIP | PTE_D))
        k += 2
    low[0] = leaves
    return bad


cdef inline bint walk_native_quick(const quick_x86_t *q, const uint64_t *va, const uint8_t *kind,
                                   uint64_t *hpa) noexcept nogil:
    """QUICK_LANES native walks of 4 KiB pages: 1 when walk_native_fast would do every one of them exactly
    so (``hpa`` then set); 0 when it might not (``hpa`` untouched)."""
    cdef uint64_t out[QUICK_LANES]
    cdef uint64_t bad, low = 0, any_bits = 0, all_bits = ~(<uint64_t>0)
    cdef uint32_t k, kinds = 0
    cdef uint8_t first_kind = kind[0]
    for k in range(QUICK_LANES):    # one access kind, canonical addresses in one half
        any_bits |= va[k]
        all_bits &= va[k]
        kinds |= kind[k] ^ first_kind
    if kinds or ((any_bits >> q.canonical_shift) != 0
                 and (all_bits >> q.canonical_shift) != (~(<uint64_t>0) >> q.canonical_shift)):
        return 0
    if q.levels == 5:
        bad = _quick_pairs(q, va, out, &low, 1)
    else:
        bad = _quick_pairs(q, va, out, &low, 0)
    if (bad & q.upper) | (low & q.lower) | ((bad | low) & q.need[first_kind & ACC_VALID_MASK]):
        return 0
    for k in range(QUICK_LANES):    # a copy (the mask changes nothing), in a loop the compiler vectorises
        hpa[k] = out[k] & (ADDR_MASK | 0xFFF)
    return 1


cdef inline void _group_ept_step(const pte_t *ent, uint64_t limit, uint64_t mask, uint64_t flip, int shift,
                                 uint32_t n4, const uint64_t *gpa, uint64_t *table, uint64_t *bad) noexcept nogil:
    """One EPT level for every lane: ``table`` holds the entry that points to the table."""
    cdef size_t k
    cdef uint64_t t, e
    for k in range(n4):
        t = table[k] & ADDR_MASK
        if t >= limit:
            t = 0
            bad[k] |= EPT_R
        e = ent[(t >> 3) | ((gpa[k] >> shift) & 511)]
        bad[k] |= (e ^ flip) & mask
        table[k] = e


cdef inline void _group_ept(const pte_t *ent, const ept_t *ept, uint64_t limit, uint32_t n4, const uint64_t *gpa,
                            uint64_t *leaf, uint64_t *bad) noexcept nogil:
    """The EPT walks of ``gpa``: ``leaf`` the leaf entries, ``bad`` the accumulators (R: leave the lane)."""
    cdef uint64_t flip = ept.a_bit | EPT_RWX
    cdef uint32_t k
    cdef int width = ept.width
    for k in range(n4):
        leaf[k] = ept.root
        bad[k] = EPT_R if gpa[k] >> width else 0
    if ept.levels == 5:
        _group_ept_step(ent, limit, ept.check[5][0] | EPT_RWX, flip, PAGE_SHIFT + 36, n4, gpa, leaf, bad)
    _group_ept_step(ent, limit, ept.check[4][0] | EPT_RWX, flip, PAGE_SHIFT + 27, n4, gpa, leaf, bad)
    _group_ept_step(ent, limit, ept.check[3][0] | EPT_PS | EPT_RWX, flip, PAGE_SHIFT + 18, n4, gpa, leaf, bad)
    _group_ept_step(ent, limit, ept.check[2][0] | EPT_PS | EPT_RWX, flip, PAGE_SHIFT + 9, n4, gpa, leaf, bad)
    _group_ept_step(ent, limit, ept.check[1][0] | EPT_RWX, flip, PAGE_SHIFT, n4, gpa, leaf, bad)


cdef inline bint _group_ept_bad(const ept_t *ept, uint64_t x, pte_t e, uint32_t need) noexcept nogil:
    """Whether an EPT walk (accumulator ``x``, leaf ``e``) is not _ept_fast's for an access needing ``need``
    (one right: R, W or X; its bit in ``x`` is set when some entry lacks it)."""
    return ((x & (~(EPT_W | EPT_X) | need)) != 0
            or ((EPT_BAD_MEMTYPES >> ((e >> EPT_MEMTYPE_SHIFT) & 7)) & 1) != 0
            or (ept.ad and (need & EPT_W) and not (e & EPT_D)))


cdef inline uint64_t walk_nested_group(const mem_t *m, const paging_t *p, const ept_t *ept, const uint64_t *va,
                                       const uint8_t *kind, uint32_t n4, uint64_t *hpa, uint32_t *attrs) noexcept nogil:
    """walk_nested_fast for ``n4`` accesses (a multiple of 4, at most GROUP_MAX), level by level together
    (flat memory; 4 KiB pages only).  Returns the lanes done (bit k: lane k; ``hpa``, ``attrs`` set)."""
    cdef uint64_t gpa[GROUP_MAX]
    cdef uint64_t leaf[GROUP_MAX]
    cdef uint64_t ebad[GROUP_MAX]
    cdef uint64_t bad[GROUP_MAX]
    cdef uint64_t limit = m.nframes << PAGE_SHIFT, root = p.root & ADDR_MASK, e, t, mask
    cdef uint64_t failmask = _group_x86_failmask(p)
    cdef const pte_t *ent = m.entries
    cdef uint32_t k, need = ept.pt_need, fail
    cdef uint64_t done = 0
    cdef int top = p.levels, cs = p.canonical_shift, level, shift = PAGE_SHIFT + 9 * (p.levels - 1)
    for k in range(n4):
        bad[k] = PTE_P if <uint64_t>((<int64_t>va[k] >> cs) + 1) > 1 else 0
        gpa[k] = root | (((va[k] >> shift) & 511) << 3)
    for level in range(top, 0, -1):
        _group_ept(ent, ept, limit, n4, gpa, leaf, ebad)
        mask = _group_x86_mask(p, level)
        shift -= 9
        for k in range(n4):
            if _group_ept_bad(ept, ebad[k], leaf[k], need):
                bad[k] |= PTE_P
            t = (leaf[k] & ADDR_MASK) | (gpa[k] & 0xFFF)
            if t >= limit:
                t = 0
                bad[k] |= PTE_P
            e = ent[t >> 3]
            bad[k] |= (e ^ GROUP_X86_FLIP) & mask
            gpa[k] = (e & ADDR_MASK) | (((va[k] >> shift) & 511) << 3) if level > 1 else e
    # The guest leaf (level 1: a 4 KiB page), then the final guest-physical address.
    for k in range(n4):
        e = gpa[k]
        attrs[k] = _group_x86_leaf(p, failmask, bad[k], e, kind[k], &fail)
        bad[k] = fail
        gpa[k] = (e & ADDR_MASK) | (va[k] & 0xFFF)
    _group_ept(ent, ept, limit, n4, gpa, leaf, ebad)
    for k in range(n4):
        e = leaf[k]
        fail = <uint32_t>bad[k] | _group_ept_bad(ept, ebad[k], e, ept_access_need(kind[k]))
        attrs[k] |= ((<uint32_t>(~ebad[k] & EPT_RWX) << ATTR_EPT_SHIFT)
                     | (ATTR_EPT_D if (not ept.ad or (e & EPT_D)) else 0)
                     | (<uint32_t>((e >> EPT_MEMTYPE_SHIFT) & 7) << ATTR_MEMTYPE_SHIFT))
        hpa[k] = (e & ADDR_MASK) | (gpa[k] & 0xFFF)
        done |= <uint64_t>(fail == 0) << k
    return done


cdef inline uint32_t group_refs(const paging_t *p, const ept_t *ept, bint nested) noexcept nogil:
    """References of a group kernel's walk (all 4 KiB pages)."""
    if nested:
        return p.levels * (ept.levels + 1) + ept.levels
    return p.levels
