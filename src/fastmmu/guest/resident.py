"""The guest kernel's record of resident pages: numpy arrays, and the clock as a queue.

One record per resident page (a 4 KiB page or a 2 MiB one): the process that
maps it, its linear address, its frame, the slot of its leaf entry, and when
it was mapped.  Records are numbered from 0 and reused (a free stack), so the
arrays are as long as the most pages resident at once (a frame is not a key: a
hostile guest's tables can make its kernel free a frame a page still uses, and
both pages then keep their records).  That is the kernel's
reverse map (Linux's ``struct page`` and rmap), in numpy arrays of about 40
bytes a frame, committed only where frames are used, instead of an object, a
dict entry and an ordered-dict entry per page (~500 bytes, and the
allocations on every fault).  The order stamps are 32-bit (renumbered in the
rare run that maps 2**32 pages) unless the VM has 2**31 frames or more.

The clock's order is a queue of frames: a page enters at the tail when it is
mapped and again when it gets a second chance; an entry is live while the
frame's ``stamp`` is its position (older entries of the same frame, and
entries of pages since unmapped, are skipped and compacted away).  That is
the order an ordered dict with ``move_to_end`` would give, with O(1)
operations and no object per page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

SLOT_HUGE = 1  # bit 0 of a slot record: the page is 2 MiB
_FREE = 0
_STAMP_LIMIT = (1 << 32) - 1
_SCAN_BLOCK = 1 << 16  # frames scanned per numpy call when looking for a process's pages


class ResidentPages:
    """Resident pages of one guest, by record number."""

    pid: np.ndarray
    va: np.ndarray
    gfn: np.ndarray
    slot: np.ndarray
    mapped: np.ndarray
    stamp: np.ndarray
    _pid: memoryview
    _va: memoryview
    _gfn: memoryview
    _slot: memoryview
    _mapped: memoryview
    _stamp: memoryview
    _queue: np.ndarray
    _queue_view: memoryview
    _head: int
    _tail: int
    _free: np.ndarray

    def __init__(self, frames: int) -> None:
        # np.zeros is calloc: a record costs memory only once it is written.
        self._frames = frames
        wide = frames >= 1 << 31  # a queue position (< 2 * records + 64) needs more than 32 bits
        self._index = np.dtype(np.uint64 if wide else np.uint32)
        self._frame_type = np.dtype(np.uint64 if frames > 1 << 32 else np.uint32)
        self._free_count = 0  # records given back (in _free), reused last first
        self._allocate(max(frames, 64))
        self._clock = 0
        self.count = 0
        self.high = 0  # one past the highest record ever used: the scans stop there

    def _allocate(self, size: int) -> None:
        old = getattr(self, "pid", None)  # (growing: only a hostile guest's kernel can need more than frames)
        fields: dict[str, Any] = {"pid": np.int32,       # the owning process (0: the record is free)
                  "va": np.uint64,       # the page's linear address
                  "gfn": self._frame_type,  # its (first) guest frame
                  "slot": np.uint64,     # its leaf entry: table gfn << 10 | index << 1 | huge
                  "mapped": np.uint32,   # when it was mapped (1, 2, ...): a process's order
                  "stamp": self._index}  # its live position in the clock queue, plus one
        for name, dtype in fields.items():
            array = np.zeros(size, dtype=dtype)
            if old is not None:
                array[:self.high] = getattr(self, name)[:self.high]
            setattr(self, name, array)
            setattr(self, "_" + name, array.data)
        free = np.zeros(size, dtype=self._index)  # room for every record: never reallocated at a teardown
        if old is not None:
            free[:self._free_count] = self._free[:self._free_count]
        self._free = free
        queue = np.zeros(2 * size + 64, dtype=self._index)  # room for every record twice, live and dead
        if old is not None:
            queue[:self._tail - self._head] = self._queue[self._head:self._tail]
            self.stamp[self._queue[self._head:self._tail]] -= self._index.type(self._head)
            self._tail -= self._head
        else:
            self._tail = 0
        self._head = 0
        self._queue, self._queue_view = queue, queue.data

    # -- one page ------------------------------------------------------------------

    def add(self, gfn: int, pid: int, va: int, table: int, index: int, huge: bool) -> int:
        """Record a page; its record number."""
        if self._free_count:
            self._free_count -= 1
            record = int(self._free[self._free_count])
        else:
            record = self.high
            if record == len(self.pid):
                self._allocate(2 * record)
            self.high += 1
        self._pid[record] = pid
        self._va[record] = va
        self._gfn[record] = gfn
        self._slot[record] = table << 10 | index << 1 | (SLOT_HUGE if huge else 0)
        if self._clock == _STAMP_LIMIT:
            self._renumber()
        self._clock += 1
        self._mapped[record] = self._clock
        self.count += 1
        self.to_tail(record)
        return record

    def replace(self, record: int, gfn: int, table: int, index: int, huge: bool) -> None:
        """The page of ``record`` is now frame ``gfn`` with this leaf entry (same process, address and
        place in both orders)."""
        self._gfn[record] = gfn
        self._slot[record] = table << 10 | index << 1 | (SLOT_HUGE if huge else 0)

    def find(self, pid: int, va: int) -> int:
        """The record of ``pid``'s page at ``va`` (which must be recorded): a scan, for the rare case."""
        records = np.flatnonzero(self.pid[:self.high] == pid)
        return int(records[self.va[records] == np.uint64(va)][0])

    def remove(self, record: int) -> None:
        self.remove_many(np.array([record], dtype=np.int64))

    def remove_many(self, records: np.ndarray) -> None:
        self.pid[records] = _FREE
        self.stamp[records] = 0
        self.count -= len(records)
        if not self.count:  # nothing left: start over (a teardown then fills no free stack)
            self.high = self._free_count = self._head = self._tail = 0
            return
        self._free[self._free_count:self._free_count + len(records)] = records
        self._free_count += len(records)

    def owner(self, record: int) -> int:
        return self._pid[record]  # type: ignore[no-any-return]

    def page_va(self, record: int) -> int:
        return self._va[record]  # type: ignore[no-any-return]

    def frame(self, record: int) -> int:
        return self._gfn[record]  # type: ignore[no-any-return]

    def leaf(self, record: int) -> tuple[int, int, bool]:
        """(table gfn, index, huge) of the page's leaf entry."""
        slot = self._slot[record]
        return slot >> 10, (slot >> 1) & 511, bool(slot & SLOT_HUGE)

    # -- the clock -----------------------------------------------------------------

    def to_tail(self, record: int) -> None:
        """Put ``record`` at the tail of the clock (its older entry, if any, dies)."""
        if self._tail == len(self._queue):
            self._compact()
        self._queue_view[self._tail] = record
        self._tail += 1
        self._stamp[record] = self._tail

    def first(self) -> int | None:
        """The record at the head of the clock, or None when no page is resident."""
        queue, stamp = self._queue_view, self._stamp
        head, tail = self._head, self._tail
        while head < tail:
            record = queue[head]
            if stamp[record] == head + 1:
                self._head = head
                return record  # type: ignore[no-any-return]
            head += 1
        self._head = head
        return None

    def _compact(self) -> None:
        """Drop the dead entries and start the positions again from 0 (at most one entry a record is
        live, so they fit in half the queue)."""
        live = self.clock_order()
        self._queue[:len(live)] = live
        self._head, self._tail = 0, len(live)
        self.stamp[live] = np.arange(1, len(live) + 1, dtype=self._index)

    def clock_order(self) -> np.ndarray:
        """Every record, head of the clock first (inspection and tests)."""
        live = self._queue[self._head:self._tail]
        positions = np.arange(self._head + 1, self._tail + 1, dtype=self._index)
        return live[self.stamp[live] == positions]

    def _renumber(self) -> None:
        """The mapping stamps ran out of 32 bits: number the live pages again 1, 2, ... in their order."""
        live = np.flatnonzero(self.pid[:self.high])
        live = live[np.argsort(self.mapped[live], kind="stable")]
        self.mapped[live] = np.arange(1, len(live) + 1, dtype=np.uint32)
        self._clock = len(live)

    # -- a process's pages -----------------------------------------------------------

    def runs_of(self, pid: int, count: int, size: int) -> Iterator[np.ndarray]:
        """``of_process`` in runs of at most ``size`` records.  When record numbers are already in
        mapping order (a process whose pages were never given back while it ran: the common case)
        the runs are found a block at a time with no key per page; a run may be consumed (its
        records removed) before the next is asked for."""
        last, in_order = 0, True
        for lo in range(0, self.high, _SCAN_BLOCK):
            found = np.flatnonzero(self.pid[lo:lo + _SCAN_BLOCK] == pid)
            if len(found):
                stamps = self.mapped[found + lo]
                if stamps[0] <= last or (len(stamps) > 1 and not (stamps[1:] > stamps[:-1]).all()):
                    in_order = False
                    break
                last = int(stamps[-1])
        if not in_order:
            order = self.of_process(pid, count)
            for start in range(0, len(order), size):
                yield order[start:start + size]
            return
        pending: list[np.ndarray] = []
        held = 0
        for lo in range(0, self.high, _SCAN_BLOCK):
            found = np.flatnonzero(self.pid[lo:lo + _SCAN_BLOCK] == pid)
            if len(found):
                pending.append(found + lo)
                held += len(found)
            while held >= size or (held and lo + _SCAN_BLOCK >= self.high):
                run = np.concatenate(pending)
                yield run[:size]
                rest = run[size:]
                pending, held = ([rest] if len(rest) else []), len(rest)

    def of_process(self, pid: int, count: int | None = None) -> np.ndarray:
        """The records of ``pid``'s resident pages, in the order they were mapped (no two pages have
        the same stamp).  Where record numbers fit in 32 bits they are sorted as one 64-bit key per
        page (stamp, record), found a block at a time: 8 bytes a page at most, for a teardown of
        millions of pages."""
        if self.high > _STAMP_LIMIT:
            records = np.flatnonzero(self.pid[:self.high] == pid)
            return records[np.argsort(self.mapped[records])]
        if count is None:
            count = int(np.count_nonzero(self.pid[:self.high] == pid))
        keys = np.empty(count, dtype=np.uint64)
        filled = 0
        for lo in range(0, self.high, _SCAN_BLOCK):
            found = np.flatnonzero(self.pid[lo:lo + _SCAN_BLOCK] == pid).astype(np.uint64)
            if len(found):
                found += np.uint64(lo)
                part = keys[filled:filled + len(found)]
                np.left_shift(self.mapped[found].astype(np.uint64), np.uint64(32), out=part)
                part |= found
                filled += len(found)
        if filled != count:
            raise RuntimeError(f"simulator bug: process {pid} has {filled} pages recorded, not {count}")
        keys.sort()
        keys &= np.uint64(_STAMP_LIMIT)
        return keys
