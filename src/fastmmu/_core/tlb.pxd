# cython: language_level=3
"""Set-associative translation caches: the TLBs, paging-structure caches and nested TLB.

One structure serves all three.  Each way holds a *tag* (what is cached), a
*ctx* (whose it is: PCID, global, VPID, EPT tag), a *frame* (the payload: a
4 KiB frame number) and *attrs* (32 bits the owner of the cache defines:
permissions for a TLB, accumulated rights for a paging-structure cache).

    tag   = TAG_VALID | size_code << 56 | vpn            (vpn = va >> shift, 48 bits)
    ctx   = pcid (11:0) | CTX_GLOBAL (bit 12) | vpid << 16 (31:16) | eptag << 32 (63:32)

Lookups and fills are ``inline`` so the run loop compiles them in place;
the victim search is branch-free (a branchy one costs 2x on random traces,
see ../shared/limit/README.md).  ``now`` is a caller-supplied clock (the
access number, >= 1): LRU and FIFO stamps are compared, never a global
counter, and invalid ways (stamp 0) are always the first victims.

For a hot loop, ``inline`` is only a hint: at -O2 GCC does not inline
``tlb_fill`` (too big with every policy in it) and then the ``tlb_t`` whose
address it takes can no longer live in registers.  The small pieces are
there for such loops: ``tlb_find`` (search one set), ``tlb_probe`` (find +
touch), ``tlb_oldest_way`` (LRU/FIFO victim) and ``tlb_write`` (overwrite a
way); the rarely used PLRU/random helpers take arrays, never the tlb_t.
pyx/tlb.pyx's simulate loops show the pattern.
"""

from fastmmu._core.types cimport uint8_t, uint32_t, uint64_t

cdef extern from *:
    """
    #define FASTMMU_TAG_VALID (1ULL << 63)
    #define FASTMMU_TAG_SIZE_SHIFT 56
    #define FASTMMU_VPN_MASK ((1ULL << 48) - 1)
    #define FASTMMU_CTX_PCID_MASK 0xFFFULL
    #define FASTMMU_CTX_GLOBAL (1ULL << 12)
    #define FASTMMU_CTX_VPID_SHIFT 16
    #define FASTMMU_CTX_VPID_MASK (0xFFFFULL << 16)
    #define FASTMMU_CTX_EPTAG_SHIFT 32
    #define FASTMMU_CTX_EPTAG_MASK (0xFFFFFFFFULL << 32)
    /* Branch hints: a way scan matches at most once, so a tag match is the
     * unlikely case; laid out of line, the scan costs one taken branch a way. */
    #if defined(__GNUC__) || defined(__clang__)
    #define FASTMMU_UNLIKELY(x) __builtin_expect(!!(x), 0)
    #define FASTMMU_LIKELY(x) __builtin_expect(!!(x), 1)
    #else
    #define FASTMMU_UNLIKELY(x) (x)
    #define FASTMMU_LIKELY(x) (x)
    #endif
    """
    const uint64_t TAG_VALID "FASTMMU_TAG_VALID"
    const int TAG_SIZE_SHIFT "FASTMMU_TAG_SIZE_SHIFT"
    const uint64_t VPN_MASK "FASTMMU_VPN_MASK"
    const uint64_t CTX_PCID_MASK "FASTMMU_CTX_PCID_MASK"
    const uint64_t CTX_GLOBAL "FASTMMU_CTX_GLOBAL"
    const int CTX_VPID_SHIFT "FASTMMU_CTX_VPID_SHIFT"
    const uint64_t CTX_VPID_MASK "FASTMMU_CTX_VPID_MASK"
    const int CTX_EPTAG_SHIFT "FASTMMU_CTX_EPTAG_SHIFT"
    const uint64_t CTX_EPTAG_MASK "FASTMMU_CTX_EPTAG_MASK"
    bint unlikely "FASTMMU_UNLIKELY"(bint condition) noexcept nogil
    bint likely "FASTMMU_LIKELY"(bint condition) noexcept nogil

# Replacement policies.
cdef enum:
    POLICY_LRU = 0      # true LRU: stamp = last use, victim = smallest stamp
    POLICY_PLRU = 1     # bit-PLRU (MRU bits): stamp = 1 when used; all set -> clear the others
    POLICY_FIFO = 2     # stamp = fill time, hits do not refresh it
    POLICY_RANDOM = 3   # xorshift64 over the ways (invalid ways first)

# Size codes: which granularity an entry covers.  A TLB probes the codes it
# holds; a paging-structure cache holds one code whose shift is 39 (PML4E),
# 30 (PDPTE), 21 (PDE) or 48 (PML5E): the shift per code is per structure.
cdef enum:
    SIZE_4K = 0
    SIZE_2M = 1
    SIZE_1G = 2
    SIZE_REGION = 3
    MAX_SIZES = 4

# Invalidation selectors, combined with |.  An entry is invalidated when it
# passes every selector given.  See tlb_invalidate.
cdef enum:
    INV_MATCH_VPID = 1        # entry's VPID == ctx's VPID
    INV_MATCH_PCID = 2        # entry's PCID == ctx's PCID (global entries: see INV_GLOBAL_ANY_PCID)
    INV_MATCH_EPTAG = 4       # entry's EPT tag == ctx's EPT tag
    INV_EPTAG_NONZERO = 8     # entry's EPT tag != 0 (derived from some EPT)
    INV_MATCH_ADDR = 16       # entry covers the given address
    INV_KEEP_GLOBAL = 32      # global entries survive
    INV_GLOBAL_ANY_PCID = 64  # with INV_MATCH_PCID: global entries match whatever their PCID
    INV_SKIP_VPID0 = 128      # entries of VPID 0 (the host) survive
    INV_FRACTURED = 256       # with INV_MATCH_ADDR: entries holding a piece of a larger page go whatever
                              # their address (the SDM's INVLPG: "all TLB entries for that page")

cdef enum:
    # The one bit of an entry's owner-defined ``attrs`` the TLB itself reads: the entry caches a piece
    # of a larger page (a guest 2 MiB page under 4 KiB EPT pages, or a page size the structure holds
    # only in smaller pieces), so INVLPG of any address of that
    # page must remove it (INV_FRACTURED).  paging.pxd sets it as ATTR_FRACTURED.
    TLB_ATTR_FRACTURED = 1 << 23


ctypedef struct tlb_counts_t:   # what a structure counts; copied as one (simulate keeps tlb_t copies)
    uint64_t hits          # lookups whose entry served (one the caller rejects is a miss: tlb_reject)
    uint64_t misses        # lookups that missed, rejected entries included
    uint64_t rights_drops  # of those misses: an entry was found, but its rights did not allow the access
    uint64_t fills         # entries written
    uint64_t evictions     # fills that displaced a valid entry
    uint64_t invalidated   # entries removed by invalidations, drops and flushes
    uint64_t fractured     # fills of pieces of larger pages (attrs & TLB_ATTR_FRACTURED), ever: never reset,
                           # an address-specific invalidation scans every set once there was one


ctypedef struct tlb_t:
    uint64_t *tag          # per way, index set * ways + way; 0 = invalid
    uint64_t *ctx          # per way: PCID | global | VPID | EPT tag
    uint64_t *frame        # per way: 4 KiB frame number of the start of what is cached
    uint32_t *attrs        # per way: owner-defined attribute bits
    uint64_t *stamp        # per way: replacement state (see the policies)
    uint64_t sets          # any positive number (a 1536-entry 12-way STLB has 128 sets)
    uint64_t set_mask      # sets - 1 when sets is a power of two
    uint32_t ways
    uint8_t pow2           # 1: index = vpn & set_mask; 0: index = vpn % sets
    uint8_t policy         # POLICY_*
    uint8_t nsizes         # size codes held, probed in this order (smallest page first)
    uint8_t codes[4]       # the codes held
    uint8_t shift[4]       # per size code: address shift (12, 21, 30, or the region's)
    uint64_t rng           # xorshift64 state, POLICY_RANDOM
    tlb_counts_t counts
    uint8_t live           # bit c set: may hold entries of size code c (a superset: every write of an
                           # entry sets its bit, only a flush of everything clears them)


ctypedef struct tlb_hit_t:
    uint64_t frame         # frame number of the start of the cached region
    uint32_t attrs
    uint8_t code           # size code of the entry that hit
    uint64_t pos           # way index (set * ways + way), for tlb_drop


# -- the kernels -------------------------------------------------------------------------------
#
# Inline, so that the run loop compiles them in place: their bodies are part of this file, one
# include file per concept.  What other modules may cimport, and what each promises:
#
# _tlb_lookup.pxi      tlb_ctx: the ctx word of an entry or a lookup; tlb_set_base: the first way
#                      of a page number's set; tlb_find / tlb_find_in: search one set, change
#                      nothing; tlb_probe: find and touch; tlb_lookup: every size code, counted
#                      (one hit or miss per lookup); tlb_touch: a hit's replacement bookkeeping.
# _tlb_fill.pxi        tlb_fill: cache a translation (a smaller piece when the structure does not
#                      hold its size), over the policy's victim; tlb_oldest_way: the branch-free
#                      LRU/FIFO victim; tlb_write / tlb_store: overwrite a way; tlb_code_for: the
#                      size a structure caches a page as; tlb_drop, tlb_reject: remove an entry
#                      (reject: one whose rights did not allow the access, counted as a miss).
# _tlb_invalidate.pxi  tlb_invalidate(t, how, ctx, va): remove every entry the INV_* selectors
#                      pick; the count removed.

include "_tlb_lookup.pxi"
include "_tlb_fill.pxi"
include "_tlb_invalidate.pxi"


cdef class TLB:
    """A Python-owned translation cache; ``c`` points into its numpy arrays."""
    cdef tlb_t c
    cdef object _tag, _ctx, _frame, _attrs, _stamp   # the numpy arrays behind c
    cdef readonly str name
    cdef readonly uint64_t clock                      # next ``now`` of the per-access API (starts at 1)
    cdef readonly str kind                            # "tlb", "psc" (paging-structure cache) or "ntlb" (nested)
    cdef readonly uint64_t seed                       # initial xorshift64 state (POLICY_RANDOM)

    cdef uint64_t _tick(self) noexcept
    cdef uint64_t _by_kind(self, int tlb_how, int psc_how, int ntlb_how, uint32_t pcid, uint32_t vpid,
                           uint32_t eptag, uint64_t va) noexcept
    # The invalidation scopes on operands already checked (the def methods check, then call these).
    cdef uint64_t _mov_cr3(self, uint32_t pcid, uint32_t vpid) noexcept
    cdef uint64_t _invlpg(self, uint64_t va, uint32_t pcid, uint32_t vpid) noexcept
    cdef uint64_t _invpcid(self, int type, uint32_t pcid, uint64_t va, uint32_t vpid) noexcept
    cdef uint64_t _invvpid(self, int type, uint32_t vpid, uint64_t va) noexcept
    cdef uint64_t _invept(self, int type, uint32_t eptag) noexcept
    # What a fault invalidates (SDM Vol. 3A 4.10.4.1, Vol. 3C 29.4.3.1; the run loop applies them).
    cdef uint64_t _page_fault(self, uint64_t va, uint32_t pcid, uint32_t vpid, uint32_t eptag) noexcept
    cdef uint64_t _ept_violation(self, uint64_t gpa, uint32_t eptag, bint has_va, uint64_t va, uint32_t pcid,
                                 uint32_t vpid) noexcept
