# cython: language_level=3
"""Address types and architectural constants shared by every core module.

Addresses get their own names so that a signature says which space a value
lives in: guest-virtual (linear), guest-physical or host-physical.  The bit
masks are named after the Intel SDM (Vol. 3A ch. 4 for paging entries,
Vol. 3C ch. 29 for EPT entries and exit qualifications).  They are C macros
so that 64-bit constants (bit 63: NX) keep their unsigned type.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

ctypedef uint64_t gva_t    # guest-virtual (linear) address
ctypedef uint64_t gpa_t    # guest-physical address
ctypedef uint64_t hpa_t    # host-physical address
ctypedef uint64_t pte_t    # one 64-bit paging-structure entry (x86 or EPT)
ctypedef uint64_t pfn_t    # frame number: a physical address >> 12
ctypedef uint32_t slot_t   # index of a frame's content in HostMemory.entries

cdef extern from *:
    """
    #define FASTMMU_U64(x) ((unsigned long long)(x))
    /* Frames */
    #define FASTMMU_PAGE_SHIFT 12
    #define FASTMMU_PAGE_SIZE FASTMMU_U64(4096)
    #define FASTMMU_ENTRIES_PER_TABLE 512
    #define FASTMMU_ADDR_MASK FASTMMU_U64(0x000FFFFFFFFFF000)
    /* x86 paging-structure entry bits (SDM Vol. 3A, 4.5) */
    #define FASTMMU_PTE_P    FASTMMU_U64(1)
    #define FASTMMU_PTE_RW   (FASTMMU_U64(1) << 1)
    #define FASTMMU_PTE_US   (FASTMMU_U64(1) << 2)
    #define FASTMMU_PTE_PWT  (FASTMMU_U64(1) << 3)
    #define FASTMMU_PTE_PCD  (FASTMMU_U64(1) << 4)
    #define FASTMMU_PTE_A    (FASTMMU_U64(1) << 5)
    #define FASTMMU_PTE_D    (FASTMMU_U64(1) << 6)
    #define FASTMMU_PTE_PS   (FASTMMU_U64(1) << 7)
    #define FASTMMU_PTE_PAT  (FASTMMU_U64(1) << 7)   /* in a 4 KiB PTE */
    #define FASTMMU_PTE_G    (FASTMMU_U64(1) << 8)
    #define FASTMMU_PTE_PAT_LARGE (FASTMMU_U64(1) << 12) /* in a 2 MiB/1 GiB leaf */
    #define FASTMMU_PTE_PKEY_SHIFT 59
    #define FASTMMU_PTE_PKEY_MASK (FASTMMU_U64(0xF) << 59)
    #define FASTMMU_PTE_NX   (FASTMMU_U64(1) << 63)
    /* EPT entry bits (SDM Vol. 3C, 29.3.2) */
    #define FASTMMU_EPT_R    FASTMMU_U64(1)
    #define FASTMMU_EPT_W    (FASTMMU_U64(1) << 1)
    #define FASTMMU_EPT_X    (FASTMMU_U64(1) << 2)
    #define FASTMMU_EPT_RWX  FASTMMU_U64(7)
    #define FASTMMU_EPT_MEMTYPE_SHIFT 3
    #define FASTMMU_EPT_MEMTYPE_MASK (FASTMMU_U64(7) << 3)
    #define FASTMMU_EPT_IGNORE_PAT (FASTMMU_U64(1) << 6)
    #define FASTMMU_EPT_PS   (FASTMMU_U64(1) << 7)
    #define FASTMMU_EPT_A    (FASTMMU_U64(1) << 8)
    #define FASTMMU_EPT_D    (FASTMMU_U64(1) << 9)
    #define FASTMMU_EPT_XU   (FASTMMU_U64(1) << 10)  /* user execute (MBEC) */
    #define FASTMMU_EPT_SVE  (FASTMMU_U64(1) << 63)  /* suppress #VE */
    /* EPTP fields (SDM Vol. 3C, 25.6.11) */
    #define FASTMMU_EPTP_MEMTYPE_MASK FASTMMU_U64(7)
    #define FASTMMU_EPTP_WALK_SHIFT 3                 /* bits 5:3 = levels - 1 */
    #define FASTMMU_EPTP_AD  (FASTMMU_U64(1) << 6)
    /* CR3 (SDM Vol. 3A, 4.5) */
    #define FASTMMU_CR3_PCID_MASK FASTMMU_U64(0xFFF)
    #define FASTMMU_CR3_NOFLUSH (FASTMMU_U64(1) << 63)
    """
    const int PAGE_SHIFT "FASTMMU_PAGE_SHIFT"
    const uint64_t PAGE_SIZE "FASTMMU_PAGE_SIZE"
    const int ENTRIES_PER_TABLE "FASTMMU_ENTRIES_PER_TABLE"
    const uint64_t ADDR_MASK "FASTMMU_ADDR_MASK"

    const uint64_t PTE_P "FASTMMU_PTE_P"
    const uint64_t PTE_RW "FASTMMU_PTE_RW"
    const uint64_t PTE_US "FASTMMU_PTE_US"
    const uint64_t PTE_PWT "FASTMMU_PTE_PWT"
    const uint64_t PTE_PCD "FASTMMU_PTE_PCD"
    const uint64_t PTE_A "FASTMMU_PTE_A"
    const uint64_t PTE_D "FASTMMU_PTE_D"
    const uint64_t PTE_PS "FASTMMU_PTE_PS"
    const uint64_t PTE_PAT "FASTMMU_PTE_PAT"
    const uint64_t PTE_G "FASTMMU_PTE_G"
    const uint64_t PTE_PAT_LARGE "FASTMMU_PTE_PAT_LARGE"
    const int PTE_PKEY_SHIFT "FASTMMU_PTE_PKEY_SHIFT"
    const uint64_t PTE_PKEY_MASK "FASTMMU_PTE_PKEY_MASK"
    const uint64_t PTE_NX "FASTMMU_PTE_NX"

    const uint64_t EPT_R "FASTMMU_EPT_R"
    const uint64_t EPT_W "FASTMMU_EPT_W"
    const uint64_t EPT_X "FASTMMU_EPT_X"
    const uint64_t EPT_RWX "FASTMMU_EPT_RWX"
    const int EPT_MEMTYPE_SHIFT "FASTMMU_EPT_MEMTYPE_SHIFT"
    const uint64_t EPT_MEMTYPE_MASK "FASTMMU_EPT_MEMTYPE_MASK"
    const uint64_t EPT_IGNORE_PAT "FASTMMU_EPT_IGNORE_PAT"
    const uint64_t EPT_PS "FASTMMU_EPT_PS"
    const uint64_t EPT_A "FASTMMU_EPT_A"
    const uint64_t EPT_D "FASTMMU_EPT_D"
    const uint64_t EPT_XU "FASTMMU_EPT_XU"
    const uint64_t EPT_SVE "FASTMMU_EPT_SVE"

    const uint64_t EPTP_MEMTYPE_MASK "FASTMMU_EPTP_MEMTYPE_MASK"
    const int EPTP_WALK_SHIFT "FASTMMU_EPTP_WALK_SHIFT"
    const uint64_t EPTP_AD "FASTMMU_EPTP_AD"

    const uint64_t CR3_PCID_MASK "FASTMMU_CR3_PCID_MASK"
    const uint64_t CR3_NOFLUSH "FASTMMU_CR3_NOFLUSH"


# Kinds of frame, recorded per frame by the allocator.  FRAME_FREE must be 0:
# the per-frame record array starts zeroed (lazily, by calloc).
cdef enum FrameKind:
    FRAME_FREE = 0
    FRAME_DATA = 1
    FRAME_GUEST_PT = 2
    FRAME_SHADOW = 3
    FRAME_EPT = 4
    FRAME_HYPERVISOR = 5

# Access kinds: one byte per access in a batch.  Bit 0: write; bit 1:
# instruction fetch; bit 2: user mode (CPL 3); bit 3: implicit supervisor
# access (e.g. a descriptor-table read made while at CPL 3, SDM 4.6).
cdef enum AccessBits:
    ACC_READ = 0
    ACC_WRITE = 1
    ACC_FETCH = 2
    ACC_USER = 4
    ACC_IMPLICIT = 8
    ACC_VALID_MASK = 15
