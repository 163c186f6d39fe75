# cython: language_level=3
"""Page walkers: x86-64 paging, EPT and the two-dimensional (nested) walk.

This file is the C-level contract of ``fastmmu._core.paging``: its constants,
its structs and, at the end, an index of the kernels other modules may
cimport.  The kernels themselves are ``cdef inline ... noexcept nogil``, so
that the batch run loop (``pyx/mmu.pyx``) compiles them in place: their
bodies are in the private include files ``_paging_*.pxi``, one per concept.  The rules are those of
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


# -- the group kernels' types (the kernels: _paging_group.pxi) ---------------------------------


cdef enum:
    GROUP_MAX = 32                # a multiple of 4, at most 64
    GROUP_X86_FLIP = PTE_P | PTE_A | PTE_RW | PTE_US


ctypedef fused group_attrs_t:     # selects, at compile time, a kernel that reports the lanes' attrs
    uint32_t                      # it does: run loops that fill TLBs or may report a trap
    no_trace_t                    # it does not: pass <no_trace_t *>NULL


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


# -- the kernels ------------------------------------------------------------------------------
#
# Every kernel is ``cdef inline ... noexcept nogil`` (the run loop compiles them in place), so
# their bodies are part of this file: one include file per concept.  What other modules may
# cimport, and what each promises:
#
# _paging_rights.pxi   paging_prepare(p), ept_prepare(e): derive the masks and tables of a paging_t /
#                      ept_t from its control bits (call again after changing one);
#                      walk_caches_init(c): no caches;
#                      check_access(attrs, access, p): the page-fault error code with which a
#                      translation denies an access, 0 = allowed (TLB hits and walks alike);
#                      ept_access_need(access), ept_qualification(...), ept_attrs(x): EPT rights,
#                      an EPT violation's exit qualification, the EPT bits of attrs;
#                      rights_attrs(allow, xd), rights_entry_bits(attrs, &allow, &xd): the one
#                      encoding of W, U and XD in attrs.
# _paging_walk.pxi     walk_native, walk_nested, walk_ept(m, ..., caches, trace, out): one walk with
#                      every rule of docs/core-semantics.md (faults, A/D flags set on success, cache
#                      lookups and fills); a WALK_* status and the walk_t; never raise.
#                      ept_translate, walk_trace_clear and the parts (_commit, ...) they share.
# _paging_fast.pxi     walk_native_fast, walk_nested_fast: the common case with no walk cache and no
#                      trace, 1 = done, 0 = run the full walker (they never write).
# _paging_group.pxi    walk_native_group, walk_nested_group: the fast paths for up to GROUP_MAX walks
#                      together (flat memory, 4 KiB pages), the mask of the lanes done;
#                      quick_x86_init, walk_native_quick: QUICK_LANES native walks, all or nothing;
#                      group_refs: the references of one group walk.

include "_paging_rights.pxi"
include "_paging_walk.pxi"
include "_paging_fast.pxi"
include "_paging_group.pxi"
