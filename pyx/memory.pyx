"""Host physical memory: sparse frame contents, frame ownership, a frame allocator.

See ``fastmmu/_core/memory.pxd`` for the layout.  Everything here runs with
the GIL held and checks its arguments; the walkers read ``HostMemory.c``
without the GIL.
"""

from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

import os

import numpy as np

from fastmmu._core.types cimport (
    FRAME_DATA,
    FRAME_EPT,
    FRAME_FREE,
    FRAME_GUEST_PT,
    FRAME_HYPERVISOR,
    FRAME_SHADOW,
    PAGE_SHIFT,
    hpa_t,
    pfn_t,
    pte_t,
    slot_t,
    uint8_t,
    uint32_t,
    uint64_t,
)

from fastmmu.units import format_size, parse_size

__all__ = ["BUILD_DEBUG", "HostMemory", "MemoryExhausted", "kind_name"]

cdef extern from *:
    """
    /* The flat layout's buffer: reserved address space, committed 4 KiB at a time on first
       write.  NULL where that is not available (Windows, no MAP_NORESERVE) or refused. */
    #if !defined(_WIN32) && defined(__has_include)
    #  if __has_include(<sys/mman.h>)
    #    include <sys/mman.h>
    #    include <unistd.h>
    #  endif
    #endif
    #if defined(MAP_NORESERVE) && defined(MAP_ANONYMOUS)
    #  define FASTMMU_FLAT_AVAILABLE 1
    static void *fastmmu_flat_reserve(unsigned long long size) {
        void *p;
        if (size == 0 || size > (unsigned long long)PTRDIFF_MAX) return NULL;
        p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return NULL;
    #  ifdef MADV_NOHUGEPAGE
        madvise(p, (size_t)size, MADV_NOHUGEPAGE);  /* one written entry commits 4 KiB, not 2 MiB */
    #  endif
        return p;
    }
    static void fastmmu_flat_release(void *p, unsigned long long size) {
        if (p) munmap(p, (size_t)size);
    }
    /* Give a zeroed 4 KiB frame's memory back (only where a page is 4 KiB: a larger page
       would take its neighbours' content with it). */
    static void fastmmu_flat_discard(void *frame) {
    #  ifdef MADV_DONTNEED
        if (sysconf(_SC_PAGESIZE) == 4096) madvise(frame, 4096, MADV_DONTNEED);
    #  endif
    }
    #else
    #  define FASTMMU_FLAT_AVAILABLE 0
    static void *fastmmu_flat_reserve(unsigned long long size) { (void)size; return NULL; }
    static void fastmmu_flat_release(void *p, unsigned long long size) { (void)p; (void)size; }
    static void fastmmu_flat_discard(void *frame) { (void)frame; }
    #endif
    """
    bint FASTMMU_FLAT_AVAILABLE
    void *fastmmu_flat_reserve(unsigned long long size) nogil
    void fastmmu_flat_release(void *p, unsigned long long size) nogil
    void fastmmu_flat_discard(void *frame) nogil


cdef class _FlatMapping:
    """Owns the flat layout's reserved buffer; numpy arrays over it keep it alive."""
    cdef void *ptr
    cdef unsigned long long size

    def __getbuffer__(self, Py_buffer *buf, int flags):
        PyBuffer_FillInfo(buf, self, self.ptr, <Py_ssize_t>self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __dealloc__(self):
        fastmmu_flat_release(self.ptr, self.size)


cdef _FlatMapping _reserve_flat(uint64_t nframes):
    """The flat buffer for ``nframes`` frames plus the zero sentinel, or None.

    It reserves the next power of two frames when it can (address space, never committed:
    the frames past the sentinel are never written and read as zeros), so that a mask keeps
    any table address inside it (``mem_t.table_mask``); else exactly what is needed."""
    if nframes >= (<uint64_t>1) << 51:
        return None
    cdef uint64_t frames = 1
    while frames < nframes + 1:
        frames <<= 1
    cdef unsigned long long size = frames * 4096
    cdef void *p = fastmmu_flat_reserve(size)
    if p == NULL:
        size = (nframes + 1) * 4096
        p = fastmmu_flat_reserve(size)
    if p == NULL:
        return None
    cdef _FlatMapping mapping = _FlatMapping.__new__(_FlatMapping)
    mapping.ptr = p
    mapping.size = size
    return mapping


cdef slot_t _SLOT_LIMIT = 0xFFFFFFFF
cdef uint64_t _OWNER_LIMIT = 1 << 24
cdef int _KIND_LAST = FRAME_HYPERVISOR

_KIND_NAMES = {
    FRAME_FREE: "free",
    FRAME_DATA: "data",
    FRAME_GUEST_PT: "guest page table",
    FRAME_SHADOW: "shadow table",
    FRAME_EPT: "EPT",
    FRAME_HYPERVISOR: "hypervisor",
}


class MemoryExhausted(MemoryError):
    """No free host frames satisfy an allocation request."""


cdef inline uint32_t _info(int kind, uint64_t owner) noexcept nogil:
    return <uint32_t>(kind | (owner << 8))


cdef class HostMemory:
    """Host physical memory of any configured size, resident only where used.

    >>> mem = HostMemory("1TiB")
    >>> root = mem.alloc_frame(kind=FRAME_HYPERVISOR)
    >>> mem.write(root << 12, 0x5000 | 1)
    >>> hex(mem.read(root << 12))
    '0x5001'
    """

    def __init__(self, size, *, maxphyaddr=46, layout="auto"):
        """``size`` in bytes or as "64GiB"; ``maxphyaddr`` 36..52; ``layout`` "auto", "flat" or "slots".

        (The work is done by ``__cinit__``, which takes the same arguments: this gives the
        constructor its signature for ``help()`` and type checkers.)
        """

    def __cinit__(self, size, *, int maxphyaddr=46, str layout="auto"):
        cdef uint64_t nbytes = parse_size(size, "host memory size"), reserved
        if maxphyaddr < 36 or maxphyaddr > 52:
            raise ValueError(f"maxphyaddr: expected 36..52 bits, got {maxphyaddr}")
        if nbytes == 0 or nbytes % 4096:
            raise ValueError(
                f"host memory size: expected a positive multiple of 4 KiB, got {nbytes} bytes")
        if nbytes > (<uint64_t>1 << maxphyaddr):
            raise ValueError(
                f"host memory size: {format_size(nbytes)} exceeds what MAXPHYADDR={maxphyaddr} "
                f"can address ({format_size((<uint64_t>1) << maxphyaddr)})")
        if layout not in ("auto", "flat", "slots"):
            raise ValueError(f"layout: expected 'auto', 'flat' or 'slots', got {layout!r}")
        if layout == "auto":
            forced = os.environ.get("FASTMMU_MEMORY_LAYOUT", "")
            if forced not in ("", "auto", "flat", "slots"):
                raise ValueError(f"FASTMMU_MEMORY_LAYOUT: expected 'auto', 'flat' or 'slots', "
                                 f"got {forced!r}")
            if forced == "slots":
                layout = "slots"
        self.c.nframes = nbytes >> PAGE_SHIFT
        self.c.maxphyaddr = <uint8_t>maxphyaddr
        # calloc: untouched pages of these per-frame arrays never become resident.
        self.c.slot_of = <slot_t *>calloc(self.c.nframes + 1, sizeof(slot_t))
        self.c.frame_info = <uint32_t *>calloc(self.c.nframes + 1, sizeof(uint32_t))
        self.c.trap = <uint8_t *>calloc(self.c.nframes + 1, sizeof(uint8_t))
        if self.c.slot_of == NULL or self.c.frame_info == NULL or self.c.trap == NULL:
            raise MemoryError(f"cannot reserve per-frame records for {format_size(nbytes)}")
        self.c.ntraps = 0
        self._slots_used = 1                      # slot 0: the zero frame
        self._free_slots = []
        self._search_hint = 0
        self._owner_frames = {}
        self.free_frames = self.c.nframes
        self._content_frames = 0
        self.c.flat = 0
        self.c.table_mask = 0
        if layout != "slots":
            self._mapping = _reserve_flat(self.c.nframes)
            if self._mapping is None and layout == "flat":
                raise MemoryError(f"layout 'flat': cannot reserve {format_size(nbytes)} of "
                                  f"address space for the flat layout")
        if self._mapping is not None:
            self._entries = np.frombuffer(self._mapping, dtype=np.uint64, count=(self.c.nframes + 1) * 512)
            self._set_pointer()
            self.c.flat = 1
            reserved = (<_FlatMapping>self._mapping).size
            if reserved & (reserved - 1) == 0:
                self.c.table_mask = (reserved - 1) & ~(<uint64_t>0xFFF)
        else:
            self._set_capacity(16)

    def __dealloc__(self):
        free(self.c.slot_of)
        free(self.c.frame_info)
        free(self.c.trap)

    # -- sizes ---------------------------------------------------------------

    @property
    def size(self) -> int:
        """Configured size in bytes."""
        return self.c.nframes << PAGE_SHIFT

    @property
    def nframes(self) -> int:
        return self.c.nframes

    @property
    def maxphyaddr(self) -> int:
        return self.c.maxphyaddr

    @property
    def layout(self) -> str:
        """"flat" (the row of frame pfn in ``entries`` is pfn) or "slots" (see ``slot_of``)."""
        return "flat" if self.c.flat else "slots"

    @property
    def table_frames(self) -> int:
        """Frames that currently hold content (page tables of any kind)."""
        if self.c.flat:
            return self._content_frames
        return self._slots_used - 1 - len(self._free_slots)

    @property
    def table_bytes(self) -> int:
        """What content costs: bytes of the entries buffer, allocated capacity included
        (flat: 4 KiB per frame with content, what is committed of the reserved buffer)."""
        if self.c.flat:
            return self._content_frames * 4096
        return self._entries.nbytes

    @property
    def entries(self):
        """A read-only view of every content slot, shape (slots, 512); row 0 is the zero frame.

        Use ``slot_of(pfn)`` to find a frame's row.  Writes go through ``write``.  Flat
        layout: the whole buffer, shape (nframes + 1, 512), row ``pfn`` is frame ``pfn``
        (row 0 is frame 0 then; ``slot_of`` of a frame without content is still 0).
        """
        # Through a read-only buffer: a plain view could be made writable again
        # (flags.writeable = True) and a write to row 0 would corrupt the zero frame.
        cdef uint64_t rows = self.c.nframes + 1 if self.c.flat else self._slots_used
        used = memoryview(self._entries[: rows * 512]).toreadonly()
        return np.asarray(used).reshape(rows, 512)

    def content_frames(self):
        """The frames that hold content, ascending, as a ``uint64`` array."""
        out = np.empty(self.table_frames, dtype=np.uint64)
        cdef uint64_t[::1] frames = out
        cdef uint64_t pfn, n = 0
        for pfn in range(self.c.nframes):
            if self.c.slot_of[pfn]:
                frames[n] = pfn
                n += 1
        return out

    def __repr__(self):
        return (f"HostMemory({format_size(self.size)!r}, maxphyaddr={self.c.maxphyaddr}: "
                f"{self.c.nframes - self.free_frames} frames allocated, "
                f"{self.table_frames} with content)")

    # -- content -------------------------------------------------------------

    cdef void _set_capacity(self, uint64_t slots) except *:
        new = np.zeros(slots * 512, dtype=np.uint64)
        if self._entries is not None:
            new[: len(self._entries)] = self._entries
        self._entries = new
        self._set_pointer()

    cdef void _set_pointer(self) except *:
        cdef uint64_t[::1] view = self._entries
        self.c.entries = &view[0]

    cdef uint64_t _row(self, pfn_t pfn) noexcept:
        """Row of frame ``pfn`` (< nframes) in ``entries``: the zero row if it has no content."""
        if self.c.flat:
            return pfn if self.c.slot_of[pfn] else self.c.nframes
        return self.c.slot_of[pfn]

    cdef int64_t _ensure_row(self, pfn_t pfn) except -1:
        """Row of frame ``pfn`` in ``entries``, giving the frame content (zeros) if it had none."""
        cdef slot_t slot = self.c.slot_of[pfn]
        if self.c.flat:
            if not slot:
                self.c.slot_of[pfn] = 1
                self._content_frames += 1
            return pfn
        if slot:
            return slot
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            if self._slots_used == _SLOT_LIMIT:
                raise MemoryExhausted("no more frames can hold page-table content (2^32 slots)")
            slot = self._slots_used
            self._slots_used += 1
            if <uint64_t>self._slots_used * 512 > <uint64_t>len(self._entries):
                self._set_capacity(<uint64_t>len(self._entries) // 512 * 2)
        self.c.slot_of[pfn] = slot
        return slot

    cdef void _release_slot(self, pfn_t pfn) noexcept:
        cdef slot_t slot = self.c.slot_of[pfn]
        if slot and self.c.flat:
            memset(&self.c.entries[pfn << 9], 0, 512 * sizeof(pte_t))
            fastmmu_flat_discard(&self.c.entries[pfn << 9])
            self.c.slot_of[pfn] = 0
            self._content_frames -= 1
        elif slot:
            memset(&self.c.entries[(<uint64_t>slot) << 9], 0, 512 * sizeof(pte_t))
            self.c.slot_of[pfn] = 0
            self._free_slots.append(slot)

    cdef pfn_t _checked_frame(self, hpa_t addr, str what) except? 0:
        if addr & 7:
            raise ValueError(f"{what}: address {addr:#x} is not 8-byte aligned")
        if (addr >> PAGE_SHIFT) >= self.c.nframes:
            raise ValueError(f"{what}: address {addr:#x} is beyond host memory "
                             f"({format_size(self.size)})")
        return addr >> PAGE_SHIFT

    cpdef pte_t read(self, hpa_t addr) except? 0xFFFFFFFFFFFFFFFF:
        """The 64-bit entry at host-physical ``addr`` (0 where the frame has no content)."""
        cdef pfn_t pfn = self._checked_frame(addr, "read")
        return self.c.entries[(self._row(pfn) << 9) | ((addr >> 3) & 511)]

    cpdef void write(self, hpa_t addr, pte_t value) except *:
        """Store a 64-bit entry at host-physical ``addr``; the frame must be allocated."""
        cdef pfn_t pfn = self._checked_frame(addr, "write")
        if (self.c.frame_info[pfn] & 0xFF) == FRAME_FREE:
            raise ValueError(f"write: frame {pfn:#x} (address {addr:#x}) is not allocated")
        if value == 0 and self.c.slot_of[pfn] == 0:
            return
        cdef uint64_t row = self._ensure_row(pfn)
        self.c.entries[(row << 9) | ((addr >> 3) & 511)] = value

    def write_run(self, hpa_t addr, uint64_t count, pte_t first, uint64_t step):
        """Write ``count`` consecutive entries from ``addr``: ``first``, ``first + step``, ...

        The bulk path of the table builders (mapping 16 GiB is 4 Mi entries).
        The run must stay inside one allocated frame.
        """
        cdef pfn_t pfn = self._checked_frame(addr, "write_run")
        if count > 512 - ((addr >> 3) & 511):
            raise ValueError(f"write_run: {count} entries from {addr:#x} cross the end of the frame")
        if (self.c.frame_info[pfn] & 0xFF) == FRAME_FREE:
            raise ValueError(f"write_run: frame {pfn:#x} (address {addr:#x}) is not allocated")
        if count == 0:
            return
        cdef uint64_t base = ((<uint64_t>self._ensure_row(pfn)) << 9) | ((addr >> 3) & 511)
        cdef uint64_t i
        cdef pte_t value = first
        for i in range(count):
            self.c.entries[base + i] = value
            value += step

    def read_entries(self, addresses):
        """The 64-bit entries at host-physical ``addresses`` (a uint64 array), as ``read`` of each.

        The bulk path of the hypervisor's bookkeeping (a process's leaf entries at its exit)."""
        arr = _address_array(addresses)
        cdef const uint64_t[::1] addr = arr
        cdef Py_ssize_t i, n = addr.shape[0]
        for i in range(n):
            self._checked_frame(addr[i], "read_entries")
        out = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] values = out
        for i in range(n):
            values[i] = self.c.entries[(self._row(addr[i] >> PAGE_SHIFT) << 9) | ((addr[i] >> 3) & 511)]
        return out

    def write_entries(self, addresses, values):
        """Store ``values[i]`` at host-physical ``addresses[i]``, in order, as ``write`` of each; every
        address is checked before anything is written.  ``values``: a uint64 array, or one int for all.

        The bulk path of the guest kernel's teardown (every leaf entry of an exiting process)."""
        arr = _address_array(addresses)
        cdef const uint64_t[::1] addr = arr
        cdef Py_ssize_t i, n = addr.shape[0]
        cdef bint one = isinstance(values, (int, np.integer)) and not isinstance(values, bool)
        cdef pte_t same = 0
        if one:  # one value for all: no array of it
            if not 0 <= values < (1 << 64):
                raise ValueError(f"write_entries: value {values:#x} is not a 64-bit value")
            same = values
            vals = np.zeros(1, dtype=np.uint64)
        else:
            vals = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
            if vals.shape[0] != n:
                raise ValueError(f"write_entries: {vals.shape[0]} values for {n} addresses")
        cdef const uint64_t[::1] value = vals
        cdef pfn_t pfn
        for i in range(n):
            pfn = self._checked_frame(addr[i], "write_entries")
            if (self.c.frame_info[pfn] & 0xFF) == FRAME_FREE:
                raise ValueError(f"write_entries: frame {pfn:#x} (address {addr[i]:#x}) is not allocated")
        cdef uint64_t row
        cdef pte_t v
        for i in range(n):
            pfn = addr[i] >> PAGE_SHIFT
            v = same if one else value[i]
            if v == 0 and self.c.slot_of[pfn] == 0:
                continue
            row = self._ensure_row(pfn)
            self.c.entries[(row << 9) | ((addr[i] >> 3) & 511)] = v

    def read_frame(self, pfn_t pfn):
        """A copy of the 512 entries of frame ``pfn``."""
        _check_pfn(self, pfn, "read_frame")
        cdef uint64_t row = self._row(pfn)
        return self._entries[row * 512 : row * 512 + 512].copy()

    def slot_of(self, pfn_t pfn) -> int:
        """Row of frame ``pfn`` in ``entries`` (0: the frame has no content; flat: ``pfn``)."""
        _check_pfn(self, pfn, "slot_of")
        if self.c.flat:
            return pfn if self.c.slot_of[pfn] else 0
        return self.c.slot_of[pfn]

    # -- ownership -----------------------------------------------------------

    def owner_of(self, pfn_t pfn) -> int:
        """Owner id of frame ``pfn`` (0: the hypervisor).  Meaningless for a free frame."""
        _check_pfn(self, pfn, "owner_of")
        return self.c.frame_info[pfn] >> 8

    def kind_of(self, pfn_t pfn) -> int:
        """Kind of frame ``pfn`` (a FrameKind value; 0 = free)."""
        _check_pfn(self, pfn, "kind_of")
        return self.c.frame_info[pfn] & 0xFF

    def set_kind(self, pfn_t pfn, int kind):
        """Change the kind of an allocated frame (a guest data page becoming a table)."""
        _check_pfn(self, pfn, "set_kind")
        _check_kind(kind)
        cdef uint32_t info = self.c.frame_info[pfn]
        if (info & 0xFF) == FRAME_FREE:
            raise ValueError(f"set_kind: frame {pfn:#x} is not allocated")
        if kind == FRAME_FREE:
            raise ValueError("kind: cannot set a frame's kind to FRAME_FREE; free the frame instead")
        self.c.frame_info[pfn] = (info & ~<uint32_t>0xFF) | <uint32_t>kind

    def frames_owned(self, owner: int) -> int:
        """How many frames ``owner`` holds."""
        return self._owner_frames.get(owner, 0)

    def set_trap(self, pfn_t pfn, bint on=True):
        """Make every translated access to frame ``pfn`` stop the batch run loop (status TRAP)."""
        _check_pfn(self, pfn, "set_trap")
        if on and not self.c.trap[pfn]:
            self.c.ntraps += 1
        elif not on and self.c.trap[pfn]:
            self.c.ntraps -= 1
        self.c.trap[pfn] = 1 if on else 0

    def is_trapped(self, pfn_t pfn) -> bool:
        _check_pfn(self, pfn, "is_trapped")
        return bool(self.c.trap[pfn])

    # -- allocation ----------------------------------------------------------

    def alloc(self, count=1, *, owner=0, kind=FRAME_DATA, lo=0, hi=None, contiguous=False):
        """Allocate ``count`` free frames in ``[lo, hi)`` (frame numbers) for ``owner``.

        Returns their frame numbers, ascending, as a ``uint64`` array.
        ``contiguous=True`` asks for one run of consecutive frames.  Raises
        ``MemoryExhausted`` when the range cannot satisfy the request; nothing
        is allocated then.
        """
        cdef uint64_t n = _check_count(count)
        cdef uint64_t start = lo
        cdef uint64_t stop = self.c.nframes if hi is None else hi
        cdef uint64_t own = _check_owner(owner)
        _check_kind(kind)
        if kind == FRAME_FREE:
            raise ValueError("kind: cannot allocate frames as FRAME_FREE")
        if start > stop or stop > self.c.nframes:
            raise ValueError(f"lo/hi: range [{start:#x}, {stop:#x}) is not within "
                             f"frames [0, {self.c.nframes:#x})")
        out = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] frames = out
        cdef uint64_t found = 0, pfn, run = 0
        cdef uint32_t *info = self.c.frame_info
        if start < self._search_hint:
            start_scan = self._search_hint if self._search_hint < stop else stop
        else:
            start_scan = start
        cdef uint64_t scan = start_scan
        cdef bint want_run = contiguous
        if n == 0:
            return out
        with nogil:
            if want_run:
                pfn = scan
                while pfn < stop and run < n:
                    if info[pfn] == 0:
                        run += 1
                    else:
                        run = 0
                    pfn += 1
                if run == n:
                    for found in range(n):
                        frames[found] = pfn - n + found
                    found = n
            else:
                pfn = scan
                while pfn < stop and found < n:
                    if info[pfn] == 0:
                        frames[found] = pfn
                        found += 1
                    pfn += 1
        if found < n:
            raise MemoryExhausted(
                f"host memory exhausted: {n} {'contiguous ' if contiguous else ''}frame(s) "
                f"requested in frames [{start:#x}, {stop:#x}), {self.free_frames} free in all")
        self._claim(frames, own, kind)
        if start <= self._search_hint and not contiguous:
            self._search_hint = frames[n - 1] + 1
        return out

    def alloc_frame(self, *, owner=0, kind=FRAME_DATA, lo=0, hi=None) -> int:
        """Allocate one frame and return its number."""
        return int(self.alloc(1, owner=owner, kind=kind, lo=lo, hi=hi)[0])

    def alloc_at(self, pfns, *, owner=0, kind=FRAME_DATA):
        """Allocate exactly the frames ``pfns`` (all must be free), e.g. a scattered layout."""
        arr = np.ascontiguousarray(pfns, dtype=np.uint64).reshape(-1)
        cdef uint64_t own = _check_owner(owner)
        _check_kind(kind)
        if kind == FRAME_FREE:
            raise ValueError("kind: cannot allocate frames as FRAME_FREE")
        cdef uint64_t[::1] frames = arr
        cdef Py_ssize_t i
        if _has_duplicates(arr):
            raise ValueError("alloc_at: the same frame is listed twice")
        for i in range(frames.shape[0]):
            if frames[i] >= self.c.nframes:
                raise ValueError(f"alloc_at: frame {frames[i]:#x} is beyond host memory")
            if self.c.frame_info[frames[i]] != 0:
                raise ValueError(f"alloc_at: frame {frames[i]:#x} is already allocated")
        self._claim(frames, own, kind)
        return arr

    cdef void _claim(self, uint64_t[::1] frames, uint64_t owner, int kind) except *:
        cdef Py_ssize_t i
        cdef uint32_t info = _info(kind, owner)
        for i in range(frames.shape[0]):
            self.c.frame_info[frames[i]] = info
        self.free_frames -= frames.shape[0]
        self._owner_frames[owner] = self._owner_frames.get(owner, 0) + frames.shape[0]

    def free(self, pfns):
        """Return frames to the free pool; their content (if any) is erased."""
        arr = np.ascontiguousarray(np.atleast_1d(pfns), dtype=np.uint64)
        cdef uint64_t[::1] frames = arr
        cdef Py_ssize_t i
        cdef uint64_t pfn
        if _has_duplicates(arr):
            raise ValueError("free: the same frame is listed twice")
        for i in range(frames.shape[0]):
            pfn = frames[i]
            if pfn >= self.c.nframes or self.c.frame_info[pfn] == 0:
                raise ValueError(f"free: frame {pfn:#x} is not allocated")
        for i in range(frames.shape[0]):
            pfn = frames[i]
            owner = self.c.frame_info[pfn] >> 8
            self._owner_frames[owner] -= 1
            self.c.frame_info[pfn] = 0
            if self.c.trap[pfn]:
                self.c.trap[pfn] = 0
                self.c.ntraps -= 1
            self._release_slot(pfn)
            if pfn < self._search_hint:
                self._search_hint = pfn
        self.free_frames += frames.shape[0]


cdef int _check_pfn(HostMemory mem, pfn_t pfn, str what) except -1:
    # A frame number, not an address: pfn << 12 could wrap past 2**64 into memory.
    if pfn >= mem.c.nframes:
        raise ValueError(f"{what}: frame {pfn:#x} is beyond host memory "
                         f"({format_size(mem.size)}, {mem.c.nframes:#x} frames)")
    return 0


cdef uint64_t _check_count(object count) except? 0:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count: expected a non-negative integer, got {count!r}")
    return count


def _has_duplicates(arr):
    """Whether a frame list names a frame twice: one pass when it is ascending (a VM's frames
    usually are), else a sort (np.unique is far slower on tens of millions of frames)."""
    if len(arr) < 2:
        return False
    if (arr[1:] > arr[:-1]).all():
        return False
    ordered = np.sort(arr)
    return bool((ordered[1:] == ordered[:-1]).any())


cdef uint64_t _check_owner(object owner) except? 0:
    if isinstance(owner, bool) or not isinstance(owner, (int, np.integer)) \
            or owner < 0 or owner >= _OWNER_LIMIT:
        raise ValueError(f"owner: expected an id in 0..{_OWNER_LIMIT - 1} (0 = hypervisor), "
                         f"got {owner!r}")
    return owner


cdef int _check_kind(object kind) except -1:
    if isinstance(kind, bool) or not isinstance(kind, (int, np.integer)) \
            or kind < 0 or kind > _KIND_LAST:
        raise ValueError(f"kind: expected a FrameKind (0..{_KIND_LAST}), got {kind!r}")
    return 0


def kind_name(int kind) -> str:
    """Human name of a FrameKind value."""
    return _KIND_NAMES.get(kind, f"kind {kind}")


# Whether this module was built with FASTMMU_CYTHON_DEBUG=1 (checks on); `fastmmu info` reports it.
BUILD_DEBUG = FASTMMU_DEBUG


def _address_array(addresses):
    """``addresses`` as a contiguous 1-D uint64 array (a ValueError for anything else)."""
    arr = np.asarray(addresses)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "ui"):
        raise ValueError("addresses: expected a 1-D array of host-physical addresses")
    if arr.size and arr.dtype.kind == "i" and (arr < 0).any():
        raise ValueError("addresses: expected non-negative host-physical addresses")
    return np.ascontiguousarray(arr, dtype=np.uint64)
