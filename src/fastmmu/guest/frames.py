"""The guest kernel's allocator of guest-physical frames: 4 KiB frames and 2 MiB runs.

It hands out frames lowest-first from a bump pointer, then reuses freed ones
last-freed-first, so the same calls give the same frames in every mode (the
transparency tests rely on it).  It holds no per-frame array, so a 64 GiB
guest costs nothing until it is used; the freed frames wait on a stack of
4 bytes a frame (a list of Python ints cost 36: a process of 16 M pages that
exits would free half a gigabyte of them).
"""

from __future__ import annotations

import numpy as np

HUGE_FRAMES = 512  # 4 KiB frames in a 2 MiB page


class _Stack:
    """A last-in-first-out stack of frame numbers in a growable array (uint32 when they fit)."""

    def __init__(self, end: int) -> None:
        self._dtype = np.dtype(np.uint32 if end <= 1 << 32 else np.int64)
        # Room for every frame, allocated once (calloc: committed only as it fills), so that a
        # teardown of millions of frames grows nothing.
        self._items = np.zeros(max(end, 64), dtype=self._dtype)
        self._view = self._items.data  # scalar access without numpy's per-item boxing
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, item: int) -> None:
        if self.size == len(self._items):
            self._grow(self.size + 1)
        self._view[self.size] = item
        self.size += 1

    def pop(self) -> int:
        self.size -= 1
        return int(self._view[self.size])

    def extend(self, items: np.ndarray) -> None:
        """Push ``items`` in order (the last one is popped first)."""
        count = len(items)
        if self.size + count > len(self._items):
            self._grow(self.size + count)
        self._items[self.size:self.size + count] = items
        self.size += count

    def tolist(self) -> list[int]:
        return self._items[:self.size].tolist()

    def _grow(self, needed: int) -> None:
        items = np.zeros(max(needed, 2 * len(self._items)), dtype=self._dtype)
        items[:self.size] = self._items[:self.size]
        self._items, self._view = items, items.data


class FrameAllocator:
    def __init__(self, first: int, end: int) -> None:
        if not 0 <= first <= end:
            raise ValueError(f"frames [{first:#x}, {end:#x}): not a range")
        self.first, self.end = first, end
        self._next = first
        self._free_stack = _Stack(end)
        self._free_huge: list[int] = []

    @property
    def _free(self) -> list[int]:
        """The freed 4 KiB frames, the next one handed out last (inspection)."""
        return self._free_stack.tolist()

    @property
    def total(self) -> int:
        return self.end - self.first

    @property
    def available(self) -> int:
        return len(self._free_stack) + (self.end - self._next) + HUGE_FRAMES * len(self._free_huge)

    def alloc(self) -> int | None:
        """One frame, or None when none is free."""
        if self._free_stack.size:
            return self._free_stack.pop()
        if self._next < self.end:
            self._next += 1
            return self._next - 1
        if self._free_huge:  # split a free 2 MiB run
            base = self._free_huge.pop()
            self._free_stack.extend(np.arange(base + HUGE_FRAMES - 1, base, -1, dtype=np.int64))
            return base
        return None

    def alloc_huge(self) -> int | None:
        """The first frame of 512 contiguous, 2 MiB-aligned free frames, or None."""
        if self._free_huge:
            return self._free_huge.pop()
        base = -(-self._next // HUGE_FRAMES) * HUGE_FRAMES
        if base + HUGE_FRAMES > self.end:
            return None
        self._free_stack.extend(np.arange(base - 1, self._next - 1, -1, dtype=np.int64))  # the frames skipped to align
        self._next = base + HUGE_FRAMES
        return base

    def free(self, gfn: int) -> None:
        self._free_stack.push(gfn)

    def free_many(self, gfns: np.ndarray) -> None:
        """``free`` of each of ``gfns``, in order."""
        self._free_stack.extend(gfns)

    def free_huge(self, base: int) -> None:
        self._free_huge.append(base)
