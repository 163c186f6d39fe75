# cython: language_level=3
"""The batch run loop: the contract of ``fastmmu._core.mmu``.

An MMU is one logical processor's translation hardware: TLB levels (L1
instruction, L1 data, L2), paging-structure caches, a nested TLB, and the
paging state (CR3, control bits, EPT pointer, VPID).  ``MMU.translate``
translates a whole array of accesses without the GIL and stops at the first
one that needs software, as KVM_RUN does.
"""

from fastmmu._core.memory cimport HostMemory
from fastmmu._core.paging cimport ept_t, paging_t, walk_caches_t, walk_t, walk_trace_t
from fastmmu._core.tlb cimport tlb_t
from libc.stdint cimport int8_t, uint8_t, uint32_t, uint64_t

cdef enum:
    LEVEL_L1I = 0
    LEVEL_L1D = 1
    LEVEL_L2 = 2
    N_LEVELS = 3
    MAX_PER_LEVEL = 3            # structures in one TLB level (one per page size at most)
    HISTOGRAM_BUCKETS = 64       # references per walk: 0..62, and 63 for "63 or more"
    N_STATUSES = 6


ctypedef struct level_t:
    tlb_t *t[MAX_PER_LEVEL]      # probed in order; point into TLB objects the MMU keeps alive
    uint64_t *clock[MAX_PER_LEVEL]  # each structure's clock (TLB.clock): its next replacement stamp
    int n                        # how many (0: the level is absent)
    int8_t target[3]             # per size code (4K, 2M, 1G): which structure a fill goes to, -1 none


ctypedef struct mmu_counts_t:
    uint64_t accesses            # accesses attempted (a retried faulting access counts again)
    uint64_t hits[N_LEVELS]      # per level: a cached translation allowed the access
    uint64_t misses[N_LEVELS]
    uint64_t walks
    uint64_t references          # memory references of all walks, both dimensions
    uint64_t histogram[HISTOGRAM_BUCKETS]
    uint64_t faults[N_STATUSES]  # by WALK_* status (index 0 unused)
    uint64_t rights_drops        # cached entries dropped because their rights did not allow an access


ctypedef struct ref_record_t:    # one memory reference of a walk, as the reference log keeps it
    uint64_t address             # host-physical address of the entry read
    uint32_t index               # the access's index in its batch
    uint8_t level                # 1 (PTE) .. 5 (PML5E)
    uint8_t dimension            # 0: x86 paging (native, guest or shadow tables); 1: EPT


cdef class MMU:
    cdef HostMemory mem
    cdef level_t levels[N_LEVELS]
    cdef list _structures        # (name, TLB) pairs: keeps every tlb_t alive
    cdef dict _by_name
    cdef walk_caches_t caches    # paging-structure caches and nested TLB, for the walker
    cdef paging_t paging
    cdef ept_t ept
    cdef bint nested
    cdef uint32_t hit_need[16]   # per access kind: the attrs bits a cached translation needs to serve it
    cdef bint l1_known_miss      # _run_hits found no entry for the access it stopped at in its L1's first structure
    cdef bint walk_cached        # translate(): the walks go through paging-structure caches or a nested TLB
    cdef uint32_t _vpid
    cdef mmu_counts_t counts
    cdef readonly object config  # the TLBConfig
    cdef object _cpu             # the CpuState in force
    cdef object _ept_config      # the EptConfig in force, or None
    cdef list _clocked           # (PSC level or 0 for the nested TLB, TLB): caches whose clocks the walker borrows
    cdef bint _logging           # log_references(True): translate() records every walk reference
    cdef ref_record_t *_log      # the references not yet taken (take_references), malloc'd
    cdef size_t _log_count
    cdef size_t _log_capacity
    cdef void _load_clocks(self)
    cdef void _store_clocks(self)
    cdef object _add(self, str name, object t)
    cdef void _fault_invalidations(self, const walk_t *w, int result, uint64_t va)
    cdef object _fault_record(self, walk_t *w, int result, uint64_t va, walk_trace_t *refs, bint with_trace)
    cdef int _reserve(self, size_t more) except -1
    cdef int _translate_logged(self, const uint64_t[::1] va, const uint8_t[::1] kind, uint64_t[::1] hpa,
                               uint8_t[::1] st, Py_ssize_t *index, walk_t *w) except -1
