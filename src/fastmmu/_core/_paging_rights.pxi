# Part of paging.pxd, which includes it: preparation of the derived masks, the permission check and the rights encoding.
# Inline kernels (the run loop compiles them in place); paging.pxd's index says what each promises.

# -- preparation ------------------------------------------------------------------------

cdef inline uint64_t _bits(int hi, int lo) noexcept nogil:
    """Mask of bits hi..lo inclusive."""
    return ((<uint64_t>1 << (hi + 1)) - 1) & ~((<uint64_t>1 << lo) - 1)


cdef inline uint32_t _access_fault_bits(const paging_t *p, uint32_t access) noexcept nogil:
    """The W, U and I/D bits of a page fault caused by ``access`` (4.7)."""
    cdef uint32_t err = 0
    if access & ACC_WRITE:
        err |= PFERR_W
    if (access & ACC_USER) and not (access & ACC_IMPLICIT):
        err |= PFERR_U
    if (access & ACC_FETCH) and (p.smep or p.nxe):
        err |= PFERR_ID
    return err


cdef inline bint _denied_by_rights(const paging_t *p, uint32_t access, uint32_t attrs) noexcept nogil:
    """Whether the rights W/U/XD of a translation deny ``access`` (4.6), keys aside."""
    cdef bint user = (access & ACC_USER) and not (access & ACC_IMPLICIT)
    cdef bint write = (access & ACC_WRITE) != 0
    cdef bint fetch = (access & ACC_FETCH) != 0
    cdef bint writable = (attrs & ATTR_W) != 0
    cdef bint user_page = (attrs & ATTR_U) != 0
    cdef bint xd = (attrs & ATTR_XD) != 0
    if user:
        return (not user_page) or (write and not writable) or (fetch and xd)
    if fetch:
        # SMEP: no supervisor fetch from a user-mode address (4.6.1).
        return (user_page and p.smep != 0) or xd
    # Supervisor data access.  SMAP: a user-mode address only with EFLAGS.AC, never implicitly.
    if user_page and p.smap != 0 and not (p.ac != 0 and not (access & ACC_IMPLICIT)):
        return 1
    return write and p.wp != 0 and not writable


cdef inline uint16_t _keys_denying(const paging_t *p, uint32_t access) noexcept nogil:
    """Protection keys whose PKRU bits deny ``access`` to a user-mode address (4.6.2)."""
    cdef uint16_t keys = 0
    cdef int key
    cdef bint user = (access & ACC_USER) and not (access & ACC_IMPLICIT)
    cdef bint write = (access & ACC_WRITE) != 0
    if not p.pke or (access & ACC_FETCH):
        return 0
    for key in range(16):
        if (p.pkru >> (2 * key)) & 1:                         # AD: no data access
            keys |= <uint16_t>(1 << key)
        elif write and ((p.pkru >> (2 * key + 1)) & 1) and (user or p.wp != 0):   # WD
            keys |= <uint16_t>(1 << key)
    return keys


cdef inline void _group_deny(paging_t *p, uint32_t access) noexcept nogil:
    """group_deny[access]: the permission check of a 4 KiB translation (keys aside) as one masked test.

    Every denial of 4.6 is an OR of single conditions on the rights (not W, not U, U, XD; and for a
    write, not D), so it is ``(z ^ flip) & need != 0`` over a word ``z`` whose bit 1 is set when no W,
    bit 2 when no U, bit 63 with XD and bit 6 when no D: ``need`` selects the conditions, ``flip``
    those on U rather than no U.  The pair is found by trying them all against ``access_error``;
    if none matched, need = all ones would send every such access to the per-access path.
    """
    cdef uint64_t need, flip, z, bits[4]
    cdef uint32_t rights, d, sel, pol, i
    cdef bint ok
    bits[0] = PTE_RW                              # not W
    bits[1] = PTE_US                              # not U
    bits[2] = PTE_NX                              # XD
    bits[3] = PTE_D                               # not D
    for sel in range(16):
        for pol in range(2):                      # flip: on U (bit 1 of the selection) or not
            need = 0
            for i in range(4):
                if (sel >> i) & 1:
                    need |= bits[i]
            flip = PTE_US if pol else 0
            ok = 1
            for rights in range(8):
                for d in range(2):
                    z = ((0 if rights & ATTR_W else PTE_RW) | (0 if rights & ATTR_U else PTE_US)
                         | (PTE_NX if rights & ATTR_XD else 0) | (0 if d else PTE_D))
                    if (((z ^ flip) & need) != 0) != (p.access_error[access][rights] != 0
                                                     or ((access & ACC_WRITE) != 0 and not d)):
                        ok = 0
            if ok:
                p.group_deny[access][0] = need
                p.group_deny[access][1] = flip
                return
    p.group_deny[access][0] = ~(<uint64_t>0)
    p.group_deny[access][1] = 0


cdef inline void paging_prepare(paging_t *p) noexcept nogil:
    """Derive the masks and permission tables from the control bits of ``p``."""
    cdef uint64_t base = _bits(51, p.maxphyaddr) if p.maxphyaddr < 52 else 0
    cdef uint32_t access, rights
    cdef int level
    if not p.nxe:
        base |= PTE_NX                                        # XD is reserved without NXE
    p.canonical_shift = 56 if p.levels == 5 else 47
    for level in range(6):
        p.rsvd[level][0] = base
        p.rsvd[level][1] = base
        p.leaf_mask[level] = 0
    p.rsvd[2][1] = base | _bits(20, 13)                       # 2 MiB page
    p.rsvd[3][1] = base | _bits(29, 13)                       # 1 GiB page
    p.rsvd[4][1] = base | PTE_PS                              # PS is reserved in a PML4E ...
    p.rsvd[5][1] = base | PTE_PS                              # ... and in a PML5E
    for level in range(6):
        # PS is reserved at levels 4 and 5: rsvd[level][1] is then the whole story.
        p.check[level] = (p.rsvd[level][1] if level >= 4 else p.rsvd[level][0]) | PTE_P | PTE_A
        p.large_rsvd[level] = p.rsvd[level][1] & ~p.rsvd[level][0] if level in (2, 3) else 0
    p.leaf_mask[1] = ~(<uint64_t>0)                           # a PTE always maps a page
    p.leaf_mask[2] = PTE_PS
    p.leaf_mask[3] = PTE_PS
    for access in range(16):
        p.fault_bits[access] = <uint8_t>_access_fault_bits(p, access)
        p.pk_deny[access] = _keys_denying(p, access)
        for rights in range(8):
            if _denied_by_rights(p, access, rights):
                p.access_error[access][rights] = <uint8_t>(PFERR_P | p.fault_bits[access])
            else:
                p.access_error[access][rights] = 0
    for access in range(16):
        _group_deny(p, access)


cdef inline void ept_prepare(ept_t *e) noexcept nogil:
    """Derive the masks of ``e`` from its configuration."""
    cdef uint64_t base = _bits(51, e.maxphyaddr) if e.maxphyaddr < 52 else 0
    cdef int level, ps
    e.width = <uint8_t>(PAGE_SHIFT + 9 * e.levels)
    # Not present (0); W without R (2, 6); X without R (4) unless execute-only is supported.
    e.odd_xwr = <uint8_t>((1 << 0) | (1 << 2) | (1 << 6) | (0 if e.execute_only else (1 << 4)))
    e.a_bit = EPT_A if e.ad else 0
    e.pt_need = EPT_W if e.ad else 1
    e.pt_qual = (EQ_READ | EQ_WRITE) if e.ad else EQ_READ
    for level in range(6):
        e.rsvd[level][0] = base
        e.rsvd[level][1] = base
    e.rsvd[4][0] = base | _bits(7, 3)                         # bits 7:3 of a PML4E ...
    e.rsvd[4][1] = base | _bits(7, 3)
    e.rsvd[5][0] = base | _bits(7, 3)                         # ... and of a PML5E
    e.rsvd[5][1] = base | _bits(7, 3)
    e.rsvd[2][0] = base | _bits(6, 3)                         # non-leaf PDE / PDPTE
    e.rsvd[3][0] = base | _bits(6, 3)
    e.rsvd[2][1] = base | _bits(20, 12)                       # 2 MiB page
    e.rsvd[3][1] = base | _bits(29, 12)                       # 1 GiB page
    for level in range(6):
        for ps in range(2):
            e.check[level][ps] = e.rsvd[level][ps] | e.a_bit


cdef inline void walk_caches_init(walk_caches_t *c) noexcept nogil:
    """No caches at all (then fill in the ones in use and the ctx words)."""
    cdef int level
    for level in range(6):
        c.psc[level] = NULL
        c.psc_clock[level] = 0
    c.nested = NULL
    c.ctx = 0
    c.nested_ctx = 0
    c.now = 0
    c.tick = 0
    c.nested_clock = 0


# -- the permission check (TLB hits and the end of every walk) ------------------------

cdef inline uint32_t check_access(uint32_t attrs, uint32_t access, const paging_t *p) noexcept nogil:
    """Page-fault error code with which the translation ``attrs`` denies ``access``; 0 = allowed.

    One function for TLB hits and walks, so the two can never disagree (4.6).
    """
    cdef uint32_t kind = access & ACC_VALID_MASK
    cdef uint32_t err = p.access_error[kind][attrs & ATTR_RIGHTS]
    if (attrs & ATTR_U) and ((p.pk_deny[kind] >> ((attrs >> ATTR_PKEY_SHIFT) & 15)) & 1):
        err |= PFERR_P | PFERR_PK | p.fault_bits[kind]
    return err


cdef inline uint32_t ept_access_need(uint32_t access) noexcept nogil:
    """EPT right an access needs, which is also its exit-qualification bit: R, W or X."""
    return <uint32_t>1 << (access & (ACC_WRITE | ACC_FETCH))


cdef inline uint64_t ept_qualification(const ept_t *ept, uint32_t access_bits, uint32_t rights,
                                       bint has_linear, bint final, uint32_t guest_attrs) noexcept nogil:
    """Exit qualification of an EPT violation (Table 28-7)."""
    cdef uint64_t q = access_bits | (rights << EQ_RIGHTS_SHIFT)
    if has_linear:
        q |= EQ_GLA_VALID
        if final:
            q |= EQ_FINAL
            if ept.advanced_exit_info:
                q |= ((EQ_GLA_USER if guest_attrs & ATTR_U else 0)
                      | (EQ_GLA_WRITABLE if guest_attrs & ATTR_W else 0)
                      | (EQ_GLA_XD if guest_attrs & ATTR_XD else 0))
    return q


cdef inline uint32_t ept_attrs(const ept_xlate_t *x) noexcept nogil:
    """The EPT part of attrs (bits 22:16) of translation ``x``: also a nested-TLB entry's attrs."""
    return ((x.rights << ATTR_EPT_SHIFT) | (ATTR_EPT_D if x.dirty else 0)
            | (<uint32_t>x.memtype << ATTR_MEMTYPE_SHIFT))


# -- rights: the one encoding of a translation's W, U and XD in attrs ------------------------

cdef inline uint32_t rights_attrs(uint64_t allow, uint64_t xd) noexcept nogil:
    """attrs W, U and XD from entry bits accumulated over a walk: R/W and U/S ANDed (``allow``), XD
    ORed (``xd``) (4.6).  A TLB entry's and a paging-structure-cache entry's rights alike."""
    return (<uint32_t>(allow >> 1) & (ATTR_W | ATTR_U)) | (ATTR_XD if xd & PTE_NX else 0)


cdef inline void rights_entry_bits(uint32_t attrs, uint64_t *allow, uint64_t *xd) noexcept nogil:
    """rights_attrs inverted: the accumulated entry bits a walk resumes from at a paging-structure-
    cache hit."""
    allow[0] = (<uint64_t>(attrs & (ATTR_W | ATTR_U))) << 1
    xd[0] = PTE_NX if attrs & ATTR_XD else 0
