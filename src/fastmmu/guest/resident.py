"""The guest kernel's record of resident pages: per-frame arrays, and the clock as a queue.

One entry per guest frame that starts a resident page (a 4 KiB page, or the
first frame of a 2 MiB one): the process that maps it, its linear address,
the slot of its leaf entry, and when it was mapped.  That is the kernel's
reverse map (Linux's ``struct page`` and rmap), in numpy arrays of about 40
bytes a frame, committed only where frames are used, instead of an object, a
dict entry and an ordered-dict entry per page (~500 bytes, and the
allocations on every fault).

The clock's order is a queue of frames: a page enters at the tail when it is
mapped and again when it gets a second chance; an entry is live while the
frame's ``stamp`` is its position (older entries of the same frame, and
entries of pages since unmapped, are skipped and compacted away).  That is
the order an ordered dict with ``move_to_end`` would give, with O(1)
operations and no object per page.
"""

from __future__ import annotations

import numpy as np

SLOT_HUGE = 1  # bit 0 of a slot record: the page is 2 MiB
_FREE = 0


class ResidentPages:
    """Resident pages of one guest, by the guest frame that starts them."""

    def __init__(self, frames: int) -> None:
        # np.zeros is calloc: a frame's records cost memory only once they are written.
        self.pid = np.zeros(frames, dtype=np.int32)  # the owning process (0: no page starts here)
        self.va = np.zeros(frames, dtype=np.uint64)  # the page's linear address
        self.slot = np.zeros(frames, dtype=np.uint64)  # leaf table gfn << 10 | index << 1 | huge
        self.mapped = np.zeros(frames, dtype=np.uint64)  # when it was mapped (1, 2, ...): a process's order
        self.stamp = np.zeros(frames, dtype=np.uint64)  # its live position in the clock queue, plus one
        self._pid, self._va, self._slot = self.pid.data, self.va.data, self.slot.data
        self._mapped, self._stamp = self.mapped.data, self.stamp.data
        self._queue = np.zeros(64, dtype=np.int64)
        self._queue_view = self._queue.data
        self._head = self._tail = 0  # the queue's live part is [head, tail); positions are absolute
        self._base = 0  # absolute position of _queue[0]
        self._clock = 0
        self.count = 0
        self.high = 0  # one past the highest frame ever recorded: the scans stop there

    # -- one page ------------------------------------------------------------------

    def add(self, gfn: int, pid: int, va: int, table: int, index: int, huge: bool) -> None:
        self._pid[gfn] = pid
        self._va[gfn] = va
        self._slot[gfn] = table << 10 | index << 1 | (SLOT_HUGE if huge else 0)
        self._clock += 1
        self._mapped[gfn] = self._clock
        self.count += 1
        if gfn >= self.high:
            self.high = gfn + 1
        self.to_tail(gfn)

    def remove(self, gfn: int) -> None:
        self._pid[gfn] = _FREE
        self._stamp[gfn] = 0
        self.count -= 1

    def owner(self, gfn: int) -> int:
        return self._pid[gfn]  # type: ignore[no-any-return]

    def page_va(self, gfn: int) -> int:
        return self._va[gfn]  # type: ignore[no-any-return]

    def leaf(self, gfn: int) -> tuple[int, int, bool]:
        """(table gfn, index, huge) of the page's leaf entry."""
        slot = self._slot[gfn]
        return slot >> 10, (slot >> 1) & 511, bool(slot & SLOT_HUGE)

    # -- the clock -----------------------------------------------------------------

    def to_tail(self, gfn: int) -> None:
        """Put ``gfn`` at the tail of the clock (its older entry, if any, dies)."""
        position = self._tail - self._base
        if position == len(self._queue):
            self._compact()
            position = self._tail - self._base
        self._queue_view[position] = gfn
        self._tail += 1
        self._stamp[gfn] = self._tail

    def first(self) -> int | None:
        """The frame at the head of the clock, or None when no page is resident."""
        queue, stamp, base = self._queue_view, self._stamp, self._base
        head, tail = self._head, self._tail
        while head < tail:
            gfn = queue[head - base]
            if stamp[gfn] == head + 1:
                self._head = head
                return gfn  # type: ignore[no-any-return]
            head += 1
        self._head = head
        return None

    def _compact(self) -> None:
        """Drop the dead entries; grow the queue when the live ones fill half of it."""
        live = self._queue[self._head - self._base:self._tail - self._base]
        positions = np.arange(self._head + 1, self._tail + 1, dtype=np.uint64)
        live = live[self.stamp[live] == positions]
        size = len(self._queue)
        if 2 * len(live) >= size:
            size *= 2
        queue = np.zeros(size, dtype=np.int64)
        queue[:len(live)] = live
        self._queue, self._queue_view = queue, queue.data
        self._base = self._head = self._tail
        self._tail += len(live)
        self.stamp[live] = np.arange(self._head + 1, self._tail + 1, dtype=np.uint64)

    def clock_order(self) -> np.ndarray:
        """Every resident frame, head of the clock first (inspection and tests)."""
        live = self._queue[self._head - self._base:self._tail - self._base]
        positions = np.arange(self._head + 1, self._tail + 1, dtype=np.uint64)
        return live[self.stamp[live] == positions]

    # -- a process's pages -----------------------------------------------------------

    def of_process(self, pid: int) -> np.ndarray:
        """The frames of ``pid``'s resident pages, in the order they were mapped."""
        gfns = np.flatnonzero(self.pid[:self.high] == pid)
        return gfns[np.argsort(self.mapped[gfns], kind="stable")]
