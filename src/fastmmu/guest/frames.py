"""The guest kernel's allocator of guest-physical frames: 4 KiB frames and 2 MiB runs.

It hands out frames lowest-first from a bump pointer, then reuses freed ones
last-freed-first, so the same calls give the same frames in every mode (the
transparency tests rely on it).  It holds no per-frame array, so a 64 GiB
guest costs nothing until it is used.
"""

from __future__ import annotations

HUGE_FRAMES = 512  # 4 KiB frames in a 2 MiB page


class FrameAllocator:
    def __init__(self, first: int, end: int) -> None:
        if not 0 <= first <= end:
            raise ValueError(f"frames [{first:#x}, {end:#x}): not a range")
        self.first, self.end = first, end
        self._next = first
        self._free: list[int] = []
        self._free_huge: list[int] = []

    @property
    def total(self) -> int:
        return self.end - self.first

    @property
    def available(self) -> int:
        return len(self._free) + (self.end - self._next) + HUGE_FRAMES * len(self._free_huge)

    def alloc(self) -> int | None:
        """One frame, or None when none is free."""
        if self._free:
            return self._free.pop()
        if self._next < self.end:
            self._next += 1
            return self._next - 1
        if self._free_huge:  # split a free 2 MiB run
            base = self._free_huge.pop()
            self._free.extend(range(base + HUGE_FRAMES - 1, base, -1))
            return base
        return None

    def alloc_huge(self) -> int | None:
        """The first frame of 512 contiguous, 2 MiB-aligned free frames, or None."""
        if self._free_huge:
            return self._free_huge.pop()
        base = -(-self._next // HUGE_FRAMES) * HUGE_FRAMES
        if base + HUGE_FRAMES > self.end:
            return None
        self._free.extend(range(base - 1, self._next - 1, -1))  # the frames skipped to align
        self._next = base + HUGE_FRAMES
        return base

    def free(self, gfn: int) -> None:
        self._free.append(gfn)

    def free_huge(self, base: int) -> None:
        self._free_huge.append(base)
