"""Host physical memory in plain Python: the readable twin of ``fastmmu._core.memory``.

Same public API, same allocation decisions, same errors and messages as the
compiled ``HostMemory`` (pyx/memory.pyx), so that a table built in one is
built identically in the other and the two can be compared word by word.

Only frames that were written hold content: a dict maps a frame number to
its 512 entries.  Every other frame, and every address past the end of
memory, reads as zeros.  Ownership is a dict too (frame -> (kind, owner)),
so a memory of 1 TiB costs only what is allocated and written.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from fastmmu.arch import ENTRIES_PER_TABLE, PAGE_SHIFT, FrameKind
from fastmmu.units import format_size, parse_size

_U64 = (1 << 64) - 1
_OWNER_LIMIT = 1 << 24
_KIND_LAST = int(FrameKind.HYPERVISOR)


class MemoryExhausted(MemoryError):
    """No free host frames satisfy an allocation request."""


def _u64(value: Any) -> int:
    """``value`` as a C uint64_t argument, with the errors Cython raises for one."""
    value = operator.index(value)
    if value < 0:
        raise OverflowError("can't convert negative value to uint64_t")
    if value > _U64:
        raise OverflowError("Python int too large to convert to C unsigned long")
    return value


def _check_count(count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count: expected a non-negative integer, got {count!r}")
    return _u64(count)


def _check_owner(owner: Any) -> int:
    if (isinstance(owner, bool) or not isinstance(owner, (int, np.integer))
            or owner < 0 or owner >= _OWNER_LIMIT):
        raise ValueError(f"owner: expected an id in 0..{_OWNER_LIMIT - 1} (0 = hypervisor), got {owner!r}")
    return int(owner)


def _check_kind(kind: Any) -> int:
    if isinstance(kind, bool) or not isinstance(kind, (int, np.integer)) or kind < 0 or kind > _KIND_LAST:
        raise ValueError(f"kind: expected a FrameKind (0..{_KIND_LAST}), got {kind!r}")
    return int(kind)


class HostMemory:
    """Host physical memory of any configured size, resident only where used.

    >>> mem = HostMemory("1TiB")
    >>> root = mem.alloc_frame(kind=FrameKind.HYPERVISOR)
    >>> mem.write(root << 12, 0x5000 | 1)
    >>> hex(mem.read(root << 12))
    '0x5001'
    """

    def __init__(self, size: int | str, *, maxphyaddr: int = 46) -> None:
        nbytes = _u64(parse_size(size, "host memory size"))
        if isinstance(maxphyaddr, bool) or not isinstance(maxphyaddr, (int, np.integer)):
            raise TypeError("an integer is required")
        if maxphyaddr < 36 or maxphyaddr > 52:
            raise ValueError(f"maxphyaddr: expected 36..52 bits, got {maxphyaddr}")
        if nbytes == 0 or nbytes % 4096:
            raise ValueError(f"host memory size: expected a positive multiple of 4 KiB, got {nbytes} bytes")
        if nbytes > 1 << maxphyaddr:
            raise ValueError(
                f"host memory size: {format_size(nbytes)} exceeds what MAXPHYADDR={maxphyaddr} "
                f"can address ({format_size(1 << maxphyaddr)})")
        self._nframes = nbytes >> PAGE_SHIFT
        self._maxphyaddr = int(maxphyaddr)
        self._content: dict[int, list[int]] = {}  # frame -> its 512 entries (frames ever written)
        self._info: dict[int, tuple[int, int]] = {}  # allocated frame -> (kind, owner)
        self._trapped: set[int] = set()
        self._owner_frames: dict[int, int] = {}
        self._search_hint = 0  # every frame below it is allocated
        self._free_frames = self._nframes

    # -- sizes -----------------------------------------------------------------

    @property
    def size(self) -> int:
        """Configured size in bytes."""
        return self._nframes << PAGE_SHIFT

    @property
    def nframes(self) -> int:
        return self._nframes

    @property
    def maxphyaddr(self) -> int:
        return self._maxphyaddr

    @property
    def free_frames(self) -> int:
        return self._free_frames

    @property
    def table_frames(self) -> int:
        """Frames that currently hold content (page tables of any kind)."""
        return len(self._content)

    def __repr__(self) -> str:
        return (f"HostMemory({format_size(self.size)!r}, maxphyaddr={self._maxphyaddr}: "
                f"{self._nframes - self._free_frames} frames allocated, "
                f"{self.table_frames} with content)")

    # -- content ---------------------------------------------------------------

    def _checked_frame(self, addr: Any, what: str) -> int:
        addr = _u64(addr)
        if addr & 7:
            raise ValueError(f"{what}: address {addr:#x} is not 8-byte aligned")
        if addr >> PAGE_SHIFT >= self._nframes:
            raise ValueError(f"{what}: address {addr:#x} is beyond host memory ({format_size(self.size)})")
        return addr >> PAGE_SHIFT

    def _check_pfn(self, pfn: Any, what: str) -> int:
        pfn = _u64(pfn)
        if pfn >= self._nframes:
            raise ValueError(f"{what}: frame {pfn:#x} is beyond host memory "
                             f"({format_size(self.size)}, {self._nframes:#x} frames)")
        return pfn

    def _frame_content(self, pfn: int) -> list[int]:
        """The entries of ``pfn``, giving it content (zeros) if it had none."""
        content = self._content.get(pfn)
        if content is None:
            content = self._content[pfn] = [0] * ENTRIES_PER_TABLE
        return content

    def read(self, addr: int) -> int:
        """The 64-bit entry at host-physical ``addr`` (0 where the frame has no content)."""
        pfn = self._checked_frame(addr, "read")
        content = self._content.get(pfn)
        return 0 if content is None else content[(addr >> 3) & 511]

    def write(self, addr: int, value: int) -> None:
        """Store a 64-bit entry at host-physical ``addr``; the frame must be allocated."""
        pfn = self._checked_frame(addr, "write")
        value = _u64(value)
        if pfn not in self._info:
            raise ValueError(f"write: frame {pfn:#x} (address {addr:#x}) is not allocated")
        if value == 0 and pfn not in self._content:
            return  # a zero written where there is no content changes nothing
        self._frame_content(pfn)[(addr >> 3) & 511] = value

    def write_run(self, addr: int, count: int, first: int, step: int) -> None:
        """Write ``count`` consecutive entries from ``addr``: ``first``, ``first + step``, ... (mod 2**64).

        The run must stay inside one allocated frame.
        """
        addr, count, first, step = _u64(addr), _u64(count), _u64(first), _u64(step)
        pfn = self._checked_frame(addr, "write_run")
        index = (addr >> 3) & 511
        if count > ENTRIES_PER_TABLE - index:
            raise ValueError(f"write_run: {count} entries from {addr:#x} cross the end of the frame")
        if pfn not in self._info:
            raise ValueError(f"write_run: frame {pfn:#x} (address {addr:#x}) is not allocated")
        if count == 0:
            return
        content = self._frame_content(pfn)
        for i in range(count):
            content[index + i] = (first + i * step) & _U64

    def read_frame(self, pfn: int) -> np.ndarray:
        """A copy of the 512 entries of frame ``pfn``."""
        pfn = self._check_pfn(pfn, "read_frame")
        content = self._content.get(pfn)
        if content is None:
            return np.zeros(ENTRIES_PER_TABLE, dtype=np.uint64)
        return np.array(content, dtype=np.uint64)

    # -- ownership ---------------------------------------------------------------

    def owner_of(self, pfn: int) -> int:
        """Owner id of frame ``pfn`` (0: the hypervisor).  Meaningless for a free frame."""
        pfn = self._check_pfn(pfn, "owner_of")
        return self._info.get(pfn, (0, 0))[1]

    def kind_of(self, pfn: int) -> int:
        """Kind of frame ``pfn`` (a FrameKind value; 0 = free)."""
        pfn = self._check_pfn(pfn, "kind_of")
        return self._info.get(pfn, (FrameKind.FREE, 0))[0]

    def set_kind(self, pfn: int, kind: int) -> None:
        """Change the kind of an allocated frame (a guest data page becoming a table)."""
        pfn = self._check_pfn(pfn, "set_kind")
        kind = _check_kind(kind)
        if pfn not in self._info:
            raise ValueError(f"set_kind: frame {pfn:#x} is not allocated")
        if kind == FrameKind.FREE:
            # (The compiled memory accepts this and loses track of the frame: see the tests.)
            raise ValueError("kind: cannot set a frame's kind to FRAME_FREE; free the frame instead")
        self._info[pfn] = (kind, self._info[pfn][1])

    def frames_owned(self, owner: int) -> int:
        """How many frames ``owner`` holds."""
        return self._owner_frames.get(owner, 0)

    def set_trap(self, pfn: int, on: bool = True) -> None:
        """Make every translated access to frame ``pfn`` stop the batch run loop (status TRAP)."""
        pfn = self._check_pfn(pfn, "set_trap")
        if on:
            self._trapped.add(pfn)
        else:
            self._trapped.discard(pfn)

    def is_trapped(self, pfn: int) -> bool:
        pfn = self._check_pfn(pfn, "is_trapped")
        return pfn in self._trapped

    # -- allocation ----------------------------------------------------------------

    def alloc(self, count: int = 1, *, owner: int = 0, kind: int = FrameKind.DATA, lo: int = 0,
              hi: int | None = None, contiguous: bool = False) -> np.ndarray:
        """Allocate ``count`` free frames in ``[lo, hi)`` (frame numbers) for ``owner``.

        The lowest free frames of the range are taken (with ``contiguous=True``,
        the lowest run of ``count`` free frames).  Returns their frame numbers,
        ascending, as a ``uint64`` array.  Raises ``MemoryExhausted`` when the
        range cannot satisfy the request; nothing is allocated then.
        """
        n = _check_count(count)
        start = _u64(lo)
        stop = self._nframes if hi is None else _u64(hi)
        own = _check_owner(owner)
        kind = _check_kind(kind)
        if kind == FrameKind.FREE:
            raise ValueError("kind: cannot allocate frames as FRAME_FREE")
        if start > stop or stop > self._nframes:
            raise ValueError(f"lo/hi: range [{start:#x}, {stop:#x}) is not within frames [0, {self._nframes:#x})")
        if n == 0:
            return np.empty(0, dtype=np.uint64)
        # Frames below the hint are all allocated: start there (the same scan as the compiled memory).
        pfn = max(start, min(self._search_hint, stop))
        found: list[int] = []
        if contiguous:
            run = 0
            while pfn < stop and run < n:
                run = run + 1 if pfn not in self._info else 0
                pfn += 1
            if run == n:
                found = list(range(pfn - n, pfn))
        else:
            while pfn < stop and len(found) < n:
                if pfn not in self._info:
                    found.append(pfn)
                pfn += 1
        if len(found) < n:
            raise MemoryExhausted(
                f"host memory exhausted: {n} {'contiguous ' if contiguous else ''}frame(s) "
                f"requested in frames [{start:#x}, {stop:#x}), {self._free_frames} free in all")
        self._claim(found, own, kind)
        if start <= self._search_hint and not contiguous:
            self._search_hint = found[-1] + 1
        return np.array(found, dtype=np.uint64)

    def alloc_frame(self, *, owner: int = 0, kind: int = FrameKind.DATA, lo: int = 0, hi: int | None = None) -> int:
        """Allocate one frame and return its number."""
        return int(self.alloc(1, owner=owner, kind=kind, lo=lo, hi=hi)[0])

    def alloc_at(self, pfns: Any, *, owner: int = 0, kind: int = FrameKind.DATA) -> np.ndarray:
        """Allocate exactly the frames ``pfns`` (all must be free), e.g. a scattered layout."""
        arr = np.ascontiguousarray(pfns, dtype=np.uint64).reshape(-1)
        own = _check_owner(owner)
        kind = _check_kind(kind)
        if kind == FrameKind.FREE:
            raise ValueError("kind: cannot allocate frames as FRAME_FREE")
        frames = [int(pfn) for pfn in arr]
        if len(set(frames)) != len(frames):
            raise ValueError("alloc_at: the same frame is listed twice")
        for pfn in frames:
            if pfn >= self._nframes:
                raise ValueError(f"alloc_at: frame {pfn:#x} is beyond host memory")
            if pfn in self._info:
                raise ValueError(f"alloc_at: frame {pfn:#x} is already allocated")
        self._claim(frames, own, kind)
        return arr

    def _claim(self, frames: list[int], owner: int, kind: int) -> None:
        for pfn in frames:
            self._info[pfn] = (kind, owner)
        self._free_frames -= len(frames)
        self._owner_frames[owner] = self._owner_frames.get(owner, 0) + len(frames)

    def free(self, pfns: Any) -> None:
        """Return frames to the free pool; their content (if any) is erased."""
        arr = np.ascontiguousarray(np.atleast_1d(pfns), dtype=np.uint64)
        frames = [int(pfn) for pfn in arr.reshape(-1)]
        if len(set(frames)) != len(frames):
            raise ValueError("free: the same frame is listed twice")
        for pfn in frames:
            if pfn >= self._nframes or pfn not in self._info:
                raise ValueError(f"free: frame {pfn:#x} is not allocated")
        for pfn in frames:
            owner = self._info.pop(pfn)[1]
            self._owner_frames[owner] -= 1
            self._trapped.discard(pfn)
            self._content.pop(pfn, None)
            self._search_hint = min(self._search_hint, pfn)
        self._free_frames += len(frames)


__all__ = ["HostMemory", "MemoryExhausted"]
