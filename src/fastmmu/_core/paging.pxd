# cython: language_level=3
"""Page walkers: x86-64 paging, EPT and the two-dimensional (nested) walk.

This file is the C-level contract of ``fastmmu._core.paging`` and holds the
hot kernels themselves, ``cdef inline ... noexcept nogil``, so that the batch
run loop (``pyx/mmu.pyx``) compiles them in place.  The rules are those of
``docs/core-semantics.md``, to the letter: the pure-Python reference model
implements the same document and the two are compared step by step.

How a walk is organised:

* Every entry is read with ``mem_read`` (safe for any address: frames beyond
  memory or without content read as zeros) and checked for presence and
  reserved bits before anything derived from it is used.
* Nothing is written while walking.  A/D updates, paging-structure-cache
  fills and nested-TLB fills are collected in a ``walk_pending_t`` and
  committed only when the whole translation succeeds.  Entries whose flags
  are already set are not recorded: one combined test per entry sends the
  rare cases (not present, reserved bit, A clear) to a cold helper, so the
  steady state costs nothing.
* The walks are independent of each other, so their speed is set by how
  many fit in the processor's out-of-order window: instructions per walk
  count.  The hot path passes ``<no_trace_t *>NULL`` as ``trace``: the
  fused type makes Cython compile a variant without any recording.  Each
  walker calls the EPT translation from one place, so a caller with one call
  site gets one flat function (GCC inlines a function called once whatever
  its size; ../shared/limit/README.md measured 2-4x for a walker that was
  not inlined).
* Architectural events are data: the kernels return a status (WALK_*) and
  fill a ``walk_t``; they never raise.
* The group kernels (end of this file) make the fast paths' common case for
  up to GROUP_MAX walks at once, level by level together, for the batch run
  loop: one long walk leaves the memory system idle, many interleaved ones
  keep it busy.  They never write either.

Derived fields of ``paging_t`` and ``ept_t`` (reserved-bit masks, permission
tables) are computed by ``paging_prepare`` / ``ept_prepare``: call them again
after changing any control bit.
"""

from fastmmu._core.memory cimport mem_entry_index, mem_read, mem_t
from fastmmu._core.tlb cimport tlb_code_for, tlb_fill, tlb_hit_t, tlb_lookup, tlb_reject, tlb_t
from fastmmu._core.types cimport (
    ACC_FETCH,
    ACC_IMPLICIT,
    ACC_USER,
    ACC_VALID_MASK,
    ACC_WRITE,
    ADDR_MASK,
    EPT_A,
    EPT_D,
    EPT_MEMTYPE_SHIFT,
    EPT_PS,
    EPT_R,
    EPT_RWX,
    EPT_W,
    EPT_X,
    PAGE_SHIFT,
    PTE_A,
    PTE_D,
    PTE_G,
    PTE_NX,
    PTE_P,
    PTE_PKEY_SHIFT,
    PTE_PS,
    PTE_RW,
    PTE_US,
    gpa_t,
    gva_t,
    hpa_t,
    int64_t,
    pte_t,
    uint8_t,
    uint16_t,
    uint32_t,
    uint64_t,
)

# -- constants (the same values as fastmmu.arch; a test checks that they agree) --------

cdef enum WalkStatus:
    WALK_OK = 0
    WALK_PAGE_FAULT = 1
    WALK_GP = 2                  # non-canonical linear address: #GP, no reference made
    WALK_EPT_VIOLATION = 3
    WALK_EPT_MISCONFIG = 4
    WALK_TRAP = 5                # set by the run loop only (trapped host frame)

# Rights cached with a translation: the TLB's attrs (docs/core-semantics.md).
cdef enum:
    ATTR_W = 1 << 0              # writable: R/W=1 at every level
    ATTR_U = 1 << 1              # user-mode address: U/S=1 at every level
    ATTR_XD = 1 << 2             # execute-disable (EFER.NXE and XD=1 at some level)
    ATTR_D = 1 << 3              # the leaf's dirty flag is set
    ATTR_G = 1 << 4              # global: G=1 in the leaf and CR4.PGE
    ATTR_RIGHTS = 7              # W | U | XD: what check_access looks at, besides the key
    ATTR_PKEY_SHIFT = 8          # bits 11:8: protection key of the leaf
    ATTR_PKEY_MASK = 0xF00
    ATTR_EPT_SHIFT = 16          # bits 18:16: EPT R, W, X of the final guest-physical address
    ATTR_EPT_R = 1 << 16
    ATTR_EPT_W = 1 << 17
    ATTR_EPT_X = 1 << 18
    ATTR_EPT_D = 1 << 19         # the EPT leaf's dirty flag is set (or EPT A/D is off)
    ATTR_MEMTYPE_SHIFT = 20      # bits 22:20: EPT memory type of the final GPA's leaf (0 natively)
    ATTR_FRACTURED = 1 << 23     # a piece of a larger guest page (smaller EPT page): TLB_ATTR_FRACTURED

# Page-fault error code (SDM Vol. 3A, 4.7).
cdef enum:
    PFERR_P = 1 << 0
    PFERR_W = 1 << 1
    PFERR_U = 1 << 2
    PFERR_RSVD = 1 << 3
    PFERR_ID = 1 << 4
    PFERR_PK = 1 << 5

# EPT-violation exit qualification (SDM Vol. 3C, Table 28-7).
cdef enum:
    EQ_READ = 1 << 0
    EQ_WRITE = 1 << 1
    EQ_FETCH = 1 << 2
    EQ_RIGHTS_SHIFT = 3          # bits 5:3: R, W, X of the translation so far
    EQ_GLA_VALID = 1 << 7
    EQ_FINAL = 1 << 8            # the final guest-physical address (0: a guest paging-structure entry)
    EQ_GLA_USER = 1 << 9         # advanced information, with EQ_FINAL: the guest rights
    EQ_GLA_WRITABLE = 1 << 10
    EQ_GLA_XD = 1 << 11
    # Setting an accessed or dirty flag in a guest paging-structure entry is a read and a write of it
    # (SDM Table 28-7: bits 0 and 1 both set; as hardware and KVM report it, kvm-unit-tests vmx_tests.c).
    EQ_FLAG_UPDATE = EQ_READ | EQ_WRITE

# Which dimension a traced reference belongs to.
cdef enum:
    REF_GUEST = 0                # x86 paging (native tables or the guest's)
    REF_EPT = 1

cdef enum:
    MAX_LEVELS = 5
    TRACE_CAPACITY = 40          # a 5/5 walk makes at most 35 references
    MAX_EPT_RECORDS = 40         # EPT flag records: 6 translations x (5 A + 1 D) at most
    MAX_NESTED_FILLS = 6         # EPT translations in one 2D walk: 5 guest entries + the final GPA

# Memory types 2, 3 and 7 are reserved in an EPT leaf (SDM 29.3.3.1).
cdef enum:
    EPT_BAD_MEMTYPES = (1 << 2) | (1 << 3) | (1 << 7)


# -- state -----------------------------------------------------------------------------

ctypedef struct paging_t:
    hpa_t root                   # top-level table: host-physical natively, guest-physical nested
    uint32_t pcid                # CR3[11:0] when CR4.PCIDE, else 0
    uint32_t pkru
    uint8_t levels               # 4, or 5 with LA57
    uint8_t wp                   # CR0.WP
    uint8_t nxe                  # EFER.NXE
    uint8_t pge                  # CR4.PGE
    uint8_t smep                 # CR4.SMEP
    uint8_t smap                 # CR4.SMAP
    uint8_t pke                  # CR4.PKE
    uint8_t ac                   # EFLAGS.AC
    uint8_t maxphyaddr
    # Derived by paging_prepare:
    uint8_t canonical_shift      # 47 (4 levels) or 56 (5 levels): bits above must copy this one
    uint64_t rsvd[6][2]          # [level][PS bit]: reserved bits of a present entry (4.5)
    uint64_t check[6]            # [level]: P | A | the reserved bits of any entry at that level
    uint64_t large_rsvd[6]       # [level]: reserved bits only a large-page leaf has (2 MiB, 1 GiB)
    uint64_t leaf_mask[6]        # [level]: an entry ends the walk iff entry & leaf_mask != 0
    uint8_t access_error[16][8]  # [access][W|U|XD]: error code of a denial, 0 = allowed (no PK)
    uint16_t pk_deny[16]         # [access]: bit k set = protection key k denies it (0: PKE off, fetch)
    uint8_t fault_bits[16]       # [access]: the W, U and I/D bits of its page-fault error codes
    uint64_t group_deny[16][2]   # [access]: (need, flip): the group kernels deny it, keys aside, when
                                 # (z ^ flip) & need != 0 (z: see _gx86_finish; all-ones: always)


ctypedef struct ept_t:
    hpa_t root                   # host-physical address of the top EPT table
    uint32_t eptag               # names this EPT in translation caches (EP4TA)
    uint8_t levels               # 4 or 5
    uint8_t ad                   # EPTP bit 6: accessed and dirty flags
    uint8_t execute_only         # execute-only translations allowed
    uint8_t advanced_exit_info   # exit-qualification bits 11:9 reported
    uint8_t maxphyaddr
    # Derived by ept_prepare:
    uint8_t width                # 12 + 9 * levels: guest-physical bits the EPT translates
    uint8_t odd_xwr              # bit (entry & 7) set: not present (0) or a misconfigured R/W/X
    uint64_t a_bit               # EPT_A with A/D on, else 0
    uint32_t pt_need             # EPT right a guest paging-structure access needs: R, or W with ad
    uint32_t pt_qual             # its exit-qualification access bits: read, or read|write with ad
    uint64_t rsvd[6][2]          # [level][bit 7]: reserved bits of a present entry (29.3.3.1)
    uint64_t check[6][2]         # [level][bit 7]: rsvd | a_bit: the fast test's mask


ctypedef struct walk_t:
    uint8_t status               # WALK_*
    uint8_t page_shift           # 12, 21 or 30 (OK only)
    uint8_t is_global            # CR4.PGE and G in the leaf (OK only)
    uint8_t pkey                 # protection key of the leaf (OK only)
    uint8_t memtype              # EPT memory type of the final translation (OK only; 0 natively)
    uint32_t error_code          # page fault: the error code
    uint32_t attrs               # OK: ATTR_* as the TLB caches them
    uint32_t refs                # memory references made, both dimensions
    hpa_t host_address           # OK: the translation
    gpa_t guest_physical_address # OK: the final GPA (nested), the input GPA (EPT alone), 0 natively
    uint64_t fault_address       # page fault and #GP: the linear address; EPT faults: the exact GPA
    uint64_t exit_qualification  # EPT violation only
    gva_t guest_linear_address   # the linear address translated (0 for a guest-physical access)


ctypedef struct walk_counts_t:
    uint32_t guest_refs[6]       # x86-dimension references by level 1..5 (index 0 unused)
    uint32_t ept_refs[6]         # EPT-dimension references by level 1..5


ctypedef struct walk_ref_t:      # one reference, for the teaching view
    hpa_t address                # host-physical address read
    pte_t value                  # the entry as read (before any A/D update)
    uint8_t dimension            # REF_GUEST or REF_EPT
    uint8_t level                # 1 (PT) .. 5 (PML5)


ctypedef struct walk_trace_t:    # what a walk records for tests and ``fastmmu explain``
    walk_counts_t counts         # references per dimension and level
    uint32_t count               # references listed in ``refs``
    walk_ref_t refs[TRACE_CAPACITY]


ctypedef struct no_trace_t:      # the hot path records nothing: pass <no_trace_t *>NULL
    uint8_t unused

ctypedef fused trace_kind:       # selects, at compile time, a kernel that records or not
    walk_trace_t
    no_trace_t


ctypedef struct walk_caches_t:
    tlb_t *psc[6]                # paging-structure caches by level: [2] PDE, [3] PDPTE, [4] PML4E,
                                 # [5] PML5E; NULL = none ([0], [1] unused)
    tlb_t *nested                # nested TLB, guest-physical -> host-physical; NULL = none
    uint64_t ctx                 # ctx of paging-structure-cache lookups and fills: PCID, VPID, EPT tag
    uint64_t nested_ctx          # ctx of nested-TLB lookups and fills: EPT tag only
    uint64_t now                 # run loop: the stamp of every lookup and fill (the access number)
    uint8_t tick                 # 1: per-access API semantics (TLB.lookup/fill): each lookup and
                                 # fill takes its structure's clock below and advances it
    uint64_t psc_clock[6]        # with tick: each paging-structure cache's next stamp
    uint64_t nested_clock        # with tick: the nested TLB's next stamp


ctypedef struct ept_xlate_t:     # one guest-physical -> host-physical translation
    hpa_t hpa
    uint32_t rights              # R/W/X ANDed over the entries used (exit qualification 5:3)
    uint32_t refs                # references it made
    uint8_t shift                # page shift of the EPT page (of the nested-TLB entry on a hit)
    uint8_t memtype
    uint8_t dirty                # the leaf's D is set once the walk commits (or A/D is off)


ctypedef struct walk_pending_t:  # what a walk will write and fill if it succeeds
    uint32_t n_guest             # x86 entry flag updates
    uint64_t guest_pos[MAX_LEVELS]     # index in mem.entries
    uint64_t guest_bits[MAX_LEVELS]    # PTE_A / PTE_D to set
    gpa_t guest_gpa[MAX_LEVELS]        # the entry's address in its table's space
    uint32_t guest_rights[MAX_LEVELS]  # EPT rights of that address (EPT_RWX natively)
    uint32_t n_ept               # EPT entry flag updates
    uint64_t ept_pos[MAX_EPT_RECORDS]
    uint64_t ept_bits[MAX_EPT_RECORDS]
    uint32_t n_fills             # nested-TLB fills (EPT translations that were walked)
    gpa_t fill_gpa[MAX_NESTED_FILLS]
    uint64_t fill_frame[MAX_NESTED_FILLS]   # host frame where the EPT page starts
    uint32_t fill_attrs[MAX_NESTED_FILLS]
    uint8_t fill_code[MAX_NESTED_FILLS]     # SIZE_4K / SIZE_2M / SIZE_1G of the EPT page
    pte_t vals[6]                # [level]: the non-leaf entries read (paging-structure-cache fills)


# -- Python-facing conversion (pyx/paging.pyx; checks with the GIL) -------------------

cdef int paging_from_cpu(paging_t *p, object cpu, uint8_t maxphyaddr) except -1
cdef int ept_from_config(ept_t *e, object ept, uint8_t maxphyaddr) except -1
cdef object walk_result(walk_t *out, walk_trace_t *trace, bint with_trace)   # the Python Walk


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

cdef enum:
    GROUP_MAX = 32                # a multiple of 4, at most 64
    GROUP_X86_FLIP = PTE_P | PTE_A | PTE_RW | PTE_US


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

ctypedef fused group_attrs_t:     # selects, at compile time, a kernel that reports the lanes' attrs
    uint32_t                      # it does: run loops that fill TLBs or may report a trap
    no_trace_t                    # it does not: pass <no_trace_t *>NULL


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
    cdef uint64_t v0 = va[0], v1 = va[1], v2 = va[2], v3 = va[3]
    cdef uint64_t root = p.root, t0, t1, t2, t3, f0, f1, f2, f3
    cdef int cs = p.canonical_shift
    cdef uint64_t b0 = PTE_P if <uint64_t>((<int64_t>v0 >> cs) + 1) > 1 else 0
    cdef uint64_t b1 = PTE_P if <uint64_t>((<int64_t>v1 >> cs) + 1) > 1 else 0
    cdef uint64_t b2 = PTE_P if <uint64_t>((<int64_t>v2 >> cs) + 1) > 1 else 0
    cdef uint64_t b3 = PTE_P if <uint64_t>((<int64_t>v3 >> cs) + 1) > 1 else 0
    t0 = t1 = t2 = t3 = root
    if p.levels == 5:
        _gx86_step(ent, limit, PAGE_SHIFT + 36, v0, &t0, &b0)
        _gx86_step(ent, limit, PAGE_SHIFT + 36, v1, &t1, &b1)
        _gx86_step(ent, limit, PAGE_SHIFT + 36, v2, &t2, &b2)
        _gx86_step(ent, limit, PAGE_SHIFT + 36, v3, &t3, &b3)
    _gx86_step(ent, limit, PAGE_SHIFT + 27, v0, &t0, &b0)
    _gx86_step(ent, limit, PAGE_SHIFT + 27, v1, &t1, &b1)
    _gx86_step(ent, limit, PAGE_SHIFT + 27, v2, &t2, &b2)
    _gx86_step(ent, limit, PAGE_SHIFT + 27, v3, &t3, &b3)
    _gx86_step(ent, limit, PAGE_SHIFT + 18, v0, &t0, &b0)
    _gx86_step(ent, limit, PAGE_SHIFT + 18, v1, &t1, &b1)
    _gx86_step(ent, limit, PAGE_SHIFT + 18, v2, &t2, &b2)
    _gx86_step(ent, limit, PAGE_SHIFT + 18, v3, &t3, &b3)
    _gx86_step(ent, limit, PAGE_SHIFT + 9, v0, &t0, &b0)
    _gx86_step(ent, limit, PAGE_SHIFT + 9, v1, &t1, &b1)
    _gx86_step(ent, limit, PAGE_SHIFT + 9, v2, &t2, &b2)
    _gx86_step(ent, limit, PAGE_SHIFT + 9, v3, &t3, &b3)
    t0 = _gx86_leaf_entry(ent, limit, v0, t0)
    t1 = _gx86_leaf_entry(ent, limit, v1, t1)
    t2 = _gx86_leaf_entry(ent, limit, v2, t2)
    t3 = _gx86_leaf_entry(ent, limit, v3, t3)
    if group_attrs_t is uint32_t:
        f0 = _gx86_finish(p, upper, lower, pke, v0, t0, b0, kind[0], &hpa[0], &attrs[0])
        f1 = _gx86_finish(p, upper, lower, pke, v1, t1, b1, kind[1], &hpa[1], &attrs[1])
        f2 = _gx86_finish(p, upper, lower, pke, v2, t2, b2, kind[2], &hpa[2], &attrs[2])
        f3 = _gx86_finish(p, upper, lower, pke, v3, t3, b3, kind[3], &hpa[3], &attrs[3])
    else:
        f0 = _gx86_finish(p, upper, lower, pke, v0, t0, b0, kind[0], &hpa[0], attrs)
        f1 = _gx86_finish(p, upper, lower, pke, v1, t1, b1, kind[1], &hpa[1], attrs)
        f2 = _gx86_finish(p, upper, lower, pke, v2, t2, b2, kind[2], &hpa[2], attrs)
        f3 = _gx86_finish(p, upper, lower, pke, v3, t3, b3, kind[3], &hpa[3], attrs)
    return (<uint64_t>(f0 != 0) | (<uint64_t>(f1 != 0) << 1) | (<uint64_t>(f2 != 0) << 2)
            | (<uint64_t>(f3 != 0) << 3))


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

cdef enum:
    QUICK_LANES = 64              # accesses per quick group (even)


cdef struct quick_x86_t:
    const char *ent               # m.entries
    const char *root              # the root table (ent + its offset)
    uint64_t mask                 # m.table_mask
    uint64_t upper                # bits of (entry ^ GROUP_X86_FLIP) above a leaf that fail the group
    uint64_t lower                # bits of (leaf ^ GROUP_X86_FLIP ^ PTE_D) that fail it
    uint64_t need[16]             # [access]: group_deny's need, ~0 where its flip is not 0
    int levels
    int canonical_shift


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
    cdef uint64_t mask = q.mask, bad = 0, leaves = 0, e0, e1, v0, v1
    cdef const char *ent = q.ent
    cdef const char *root = q.root
    cdef uint32_t k = 0
    while k < QUICK_LANES:
        v0 = va[k]
        v1 = va[k + 1]
        if five:
            e0 = (<const pte_t *>(root + ((v0 >> 45) & 0xFF8)))[0]
            e1 = (<const pte_t *>(root + ((v1 >> 45) & 0xFF8)))[0]
            bad |= (e0 ^ GROUP_X86_FLIP) | (e1 ^ GROUP_X86_FLIP)
            e0 = (<const pte_t *>(ent + (e0 & mask) + ((v0 >> 36) & 0xFF8)))[0]
            e1 = (<const pte_t *>(ent + (e1 & mask) + ((v1 >> 36) & 0xFF8)))[0]
        else:
            e0 = (<const pte_t *>(root + ((v0 >> 36) & 0xFF8)))[0]
            e1 = (<const pte_t *>(root + ((v1 >> 36) & 0xFF8)))[0]
        bad |= (e0 ^ GROUP_X86_FLIP) | (e1 ^ GROUP_X86_FLIP)
        e0 = (<const pte_t *>(ent + (e0 & mask) + ((v0 >> 27) & 0xFF8)))[0]
        e1 = (<const pte_t *>(ent + (e1 & mask) + ((v1 >> 27) & 0xFF8)))[0]
        bad |= (e0 ^ GROUP_X86_FLIP) | (e1 ^ GROUP_X86_FLIP)
        e0 = (<const pte_t *>(ent + (e0 & mask) + ((v0 >> 18) & 0xFF8)))[0]
        e1 = (<const pte_t *>(ent + (e1 & mask) + ((v1 >> 18) & 0xFF8)))[0]
        bad |= (e0 ^ GROUP_X86_FLIP) | (e1 ^ GROUP_X86_FLIP)
        e0 = (<const pte_t *>(ent + (e0 & mask) + ((v0 >> 9) & 0xFF8)))[0]
        e1 = (<const pte_t *>(ent + (e1 & mask) + ((v1 >> 9) & 0xFF8)))[0]
        out[k] = (e0 & ADDR_MASK) | (v0 & 0xFFF)
        out[k + 1] = (e1 & ADDR_MASK) | (v1 & 0xFFF)
        leaves |= (e0 ^ (GROUP_X86_FLIP | PTE_D)) | (e1 ^ (GROUP_X86_FLIP | PTE_D))
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
    cdef uint8_t k0 = kind[0]
    for k in range(QUICK_LANES):    # one access kind, canonical addresses in one half
        any_bits |= va[k]
        all_bits &= va[k]
        kinds |= kind[k] ^ k0
    if kinds or ((any_bits >> q.canonical_shift) != 0
                 and (all_bits >> q.canonical_shift) != (~(<uint64_t>0) >> q.canonical_shift)):
        return 0
    if q.levels == 5:
        bad = _quick_pairs(q, va, out, &low, 1)
    else:
        bad = _quick_pairs(q, va, out, &low, 0)
    if (bad & q.upper) | (low & q.lower) | ((bad | low) & q.need[k0 & ACC_VALID_MASK]):
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
