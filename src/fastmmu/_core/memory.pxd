# cython: language_level=3
"""Host physical memory: the contract other core modules and downstream code use.

Memory is a set of 4 KiB frames.  Only frames that hold 64-bit entries (page
tables, shadow tables, EPT) have content: each such frame owns a *slot* of
512 entries in one growable ``uint64`` buffer, found through ``slot_of``.  A
frame without a slot reads as zeros, so a data frame costs nothing and a
configured size of 1 TiB only costs what its page tables use.  Slot 0 is a
permanent zero frame: reading through a frame with no content, or past the
end of memory, needs no branch and never leaves the buffer.

Flat layout (the default where the OS can reserve address space lazily,
``HostMemory.layout == "flat"``): ``entries`` is one reserved, lazily committed
buffer of ``nframes + 1`` frames (rounded up to a power of two where the
OS lets it, for ``table_mask``) and the row of frame ``pfn`` is ``pfn`` itself,
so a reference costs one load instead of two (no ``slot_of`` lookup).  The last
frame (``nframes``) is all zeros: the sentinel for addresses beyond memory.
``slot_of`` then only records which frames have content (1).
"""

from libc.stdint cimport int64_t

from fastmmu._core.types cimport hpa_t, pfn_t, pte_t, slot_t, uint32_t, uint64_t, uint8_t

ctypedef struct mem_t:
    pte_t *entries        # slot-major: entries[(slot << 9) | index]; slot 0 is all zeros
    slot_t *slot_of       # per frame, nframes + 1 of them; 0 = no content (reads as zeros)
    uint32_t *frame_info  # per frame: kind (bits 7:0) | owner << 8; 0 = free
    uint8_t *trap         # per frame: nonzero = an access to it traps (see MMU); may be NULL
    pfn_t nframes         # configured size in frames
    uint64_t ntraps       # how many frames have trap set (0: the run loop skips the check)
    uint8_t maxphyaddr    # physical-address width, 36..52 (SDM: MAXPHYADDR)
    uint8_t flat          # 1: entries is flat, the row of frame pfn is pfn (slot_of: 1 = content)
    uint64_t table_mask   # flat, when the buffer is a power of two frames: (address & table_mask)
                          # is inside it (frames past nframes read zeros); else 0


cdef inline uint64_t mem_entry_index(const mem_t *m, hpa_t addr) noexcept nogil:
    """Index in ``entries`` of the 8-byte word at ``addr``.

    Any address is safe: frames beyond memory use the sentinel frame ``nframes``
    (slots: ``slot_of[nframes]``, always 0, the zero frame; flat: row ``nframes``, all zeros).
    """
    cdef pfn_t pfn = addr >> 12
    if pfn > m.nframes:
        pfn = m.nframes
    if m.flat:
        return (pfn << 9) | ((addr >> 3) & 511)
    return ((<uint64_t>m.slot_of[pfn]) << 9) | ((addr >> 3) & 511)


cdef inline pte_t mem_read(const mem_t *m, hpa_t addr) noexcept nogil:
    """The 64-bit word at host-physical ``addr`` (zero where the frame has no content)."""
    return m.entries[mem_entry_index(m, addr)]


cdef class HostMemory:
    cdef mem_t c                    # what nogil code reads; pointers track the arrays below
    cdef object _entries            # numpy uint64 array backing c.entries (capacity slots * 512;
                                    # flat: (nframes + 1) * 512 over the reserved mapping)
    cdef object _mapping            # flat: the reserved mapping (owns it); None for slots
    cdef uint64_t _content_frames   # flat: frames with content
    cdef slot_t _slots_used         # slots handed out so far, including the zero slot 0
    cdef list _free_slots           # slots released by freed frames, reused first
    cdef pfn_t _search_hint         # lowest frame that may be free
    cdef dict _owner_frames         # owner id -> frames it holds
    cdef readonly uint64_t free_frames

    cdef void _set_capacity(self, uint64_t slots) except *
    cdef void _set_pointer(self) except *
    cdef uint64_t _row(self, pfn_t pfn) noexcept
    cdef int64_t _ensure_row(self, pfn_t pfn) except -1
    cdef pfn_t _checked_frame(self, hpa_t addr, str what) except? 0
    cdef void _claim(self, uint64_t[::1] frames, uint64_t owner, int kind) except *
    cdef void _release_slot(self, pfn_t pfn) noexcept
    cpdef void write(self, hpa_t addr, pte_t value) except *
    cpdef pte_t read(self, hpa_t addr) except? 0xFFFFFFFFFFFFFFFF
