"""Real traces as guest processes: ``TraceProgram`` replays a trace file's accesses in one process.

A trace records what a program did, not how its memory was laid out, so the
process maps what the trace touches as it meets it: aligned regions of
``2**region_shift`` bytes (1 GiB by default: few mappings, pages still come
one fault at a time), readable, writable and executable, since the original
program evidently had the rights it used.  A native-format trace may carry
its own events; those of the replayed stream are replayed as they come
(map and unmap, INVLPG), and mapping on first touch only fills what they
leave uncovered.

Streams: a native trace can interleave several processes and VMs
(``SwitchProcess``, ``SwitchCr3``, ``SwitchVM`` events).  Records belong to the
stream named ``vm<V>/pid<P>`` (or ``vm<V>/cr3=<hex>``) of the latest switch;
before any, to ``vm0/pid0``.  ``stream=None`` replays every record in one
process; ``trace_streams`` lists a trace's streams.  Each process reads the
file on its own, so several processes replaying one file (or one stream
each) use no memory for one another: the order in which the original
interleaved them is not kept, the guest kernel schedules them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastmmu.workloads.program import Accesses, Invlpg, Mmap, Munmap, Step

CHUNK_RECORDS = 1 << 20
FIRST_STREAM = "vm0/pid0"
PEEL_REGIONS = 16   # distinct regions of a chunk found one pass each, before np.unique takes the rest


@dataclass(frozen=True)
class TraceProgram:
    """One process replaying ``path`` (format detected from its content unless ``format`` names it)."""

    path: str
    format: str | None = None
    stream: str | None = None      # one stream of a multi-stream native trace; None: every record
    skip_bad: bool = False         # count and skip malformed records instead of stopping
    limit: int | None = None       # replay at most this many accesses
    region_shift: int = 30         # map touched memory in aligned regions of 2**region_shift bytes
    chunk_records: int = CHUNK_RECORDS

    def check(self) -> None:
        """Open the trace now (a missing file or an unknown format is an error before any run)."""
        if not 12 <= self.region_shift <= 39:
            raise ValueError(f"region_shift: expected 12 (4 KiB) .. 39 (512 GiB), got {self.region_shift}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit: expected a non-negative number of accesses, got {self.limit}")
        trace = self.open()
        if self.stream is not None:   # one pass over the trace: a stream it lacks would replay nothing
            streams = trace_streams(trace)
            if self.stream not in streams:
                have = ", ".join(f"{label} ({count:,} records)" for label, count in sorted(streams.items()))
                raise ValueError(f"stream: {self.path} has no stream {self.stream!r}; its streams are "
                                 f"{have or 'none (it holds no records)'}")

    def open(self) -> Any:
        from fastmmu.traces import open as open_trace

        return open_trace(self.path, self.format, skip_bad=self.skip_bad, chunk_records=self.chunk_records)

    def steps(self) -> Iterator[Step]:
        return _replay(self.open(), self)

    def estimate(self) -> int | None:
        """About how many accesses it replays (for a progress bar): the first chunk's records per byte
        of the file as stored, times its size; exact for a trace read in one chunk."""
        from fastmmu.workloads.program import ProgramError

        trace = self.open()
        try:
            first = next(iter(trace.chunks()), None)
        except ProgramError:  # a bad record early on: the run itself will stop there and say so
            return None
        stats = trace.stats
        if first is None:
            return 0
        if stats.bytes_total and stats.bytes_read and stats.bytes_read < stats.bytes_total:
            total = int(stats.records * stats.bytes_total / stats.bytes_read)
        else:
            total = stats.records
        return total if self.limit is None else min(total, self.limit)


def trace_streams(trace: Any) -> Counter[str]:
    """Records per stream of an opened trace (reads it through once)."""
    counts: Counter[str] = Counter()
    demux = Streams(None)
    for chunk in trace.chunks():
        for label, start, stop in demux.segments(chunk):
            counts[label] += stop - start
    return counts


# -- the replay --------------------------------------------------------------------------


def _replay(trace: Any, program: TraceProgram) -> Iterator[Step]:
    demux = Streams(program.stream)
    space = _AddressSpace(program.region_shift)
    left = -1 if program.limit is None else program.limit
    for chunk in trace.chunks():
        for item in demux.items(chunk):
            if isinstance(item, tuple):
                start, stop = item
                if left >= 0:
                    stop = min(stop, start + left)
                    left -= stop - start
                if stop <= start:
                    continue
                addresses, kinds = chunk.addresses[start:stop], chunk.kinds[start:stop]
                yield from space.touch(addresses)
                yield Accesses(addresses, kinds)
                if left == 0:
                    return
            else:
                yield from space.event(item)


class Streams:
    """Follows the switch events of a trace: which records (and events) belong to ``stream``."""

    def __init__(self, stream: str | None) -> None:
        self.stream = stream
        self.vm, self.space = 0, "pid0"

    @property
    def label(self) -> str:
        return f"vm{self.vm}/{self.space}"

    def segments(self, chunk: Any) -> Iterator[tuple[str, int, int]]:
        """(stream, start, stop) runs of the chunk's records, switch events applied."""
        start = 0
        for index, event in chunk.events:
            if index > start:
                yield self.label, start, index
                start = index
            self._switch(event)
        if len(chunk) > start:
            yield self.label, start, len(chunk)

    def items(self, chunk: Any) -> Iterator[tuple[int, int] | Any]:
        """This stream's record runs (start, stop) and its own non-switch events, in order."""
        start = 0
        for index, event in chunk.events:
            if index > start and self._mine():
                yield start, index
            start = max(start, index)
            if not self._switch(event) and self._mine():
                yield event
        if len(chunk) > start and self._mine():
            yield start, len(chunk)

    def _mine(self) -> bool:
        return self.stream is None or self.stream == self.label

    def _switch(self, event: Any) -> bool:
        name = type(event).__name__
        if name == "SwitchVM":
            self.vm, self.space = event.vm, "pid0"
        elif name == "SwitchProcess":
            self.space = f"pid{event.pid}"
        elif name == "SwitchCr3":
            self.space = f"cr3={event.cr3 & ~0xFFF:#x}"
        else:
            return False
        return True


class _AddressSpace:
    """What the replaying process has mapped: regions on first touch, and the trace's own events."""

    def __init__(self, region_shift: int) -> None:
        self.shift = region_shift
        self.mapped: list[tuple[int, int]] = []   # disjoint [start, end), sorted
        self.regions: set[int] = set()            # regions known to be fully mapped

    def touch(self, addresses: np.ndarray) -> Iterator[Mmap]:
        for region in self._distinct_regions(addresses):
            if region in self.regions:
                continue
            lo, hi = region << self.shift, (region + 1) << self.shift
            for start, end in self._uncovered(lo, hi):
                yield Mmap(start, end - start, writable=True, executable=True)
            self._add(lo, hi)
            self.regions.add(region)

    def _distinct_regions(self, addresses: np.ndarray) -> list[int]:
        """The regions ``addresses`` touch, in ascending order.  A trace touches few regions, so each
        is peeled off in one pass (one pass per region beats sorting the chunk for np.unique)."""
        regions = addresses >> np.uint64(self.shift)
        found: list[int] = []
        while len(regions):
            if len(found) == PEEL_REGIONS:   # a scattered trace: sort out the rest at once
                found += np.unique(regions).tolist()
                break
            region = regions[0]
            found.append(int(region))
            regions = regions[regions != region]
        return sorted(found)

    def event(self, event: Any) -> Iterator[Step]:
        name = type(event).__name__
        if name in ("MapRegion", "Mmap"):
            for start, end in self._uncovered(event.base, event.base + event.length):
                yield Mmap(start, end - start, writable=event.writable, executable=event.executable,
                           huge=event.huge)
            self._add(event.base, event.base + event.length)
        elif name in ("UnmapRegion", "Munmap"):
            yield Munmap(event.base, event.length)
            self._remove(event.base, event.base + event.length)
        elif name == "Invlpg":
            yield Invlpg(event.va)

    def _uncovered(self, lo: int, hi: int) -> list[tuple[int, int]]:
        pieces, at = [], lo
        for start, end in self.mapped:
            if end <= at or start >= hi:
                continue
            if start > at:
                pieces.append((at, start))
            at = max(at, end)
        if at < hi:
            pieces.append((at, hi))
        return pieces

    def _add(self, lo: int, hi: int) -> None:
        merged = sorted(self.mapped + [(lo, hi)])
        self.mapped = []
        for start, end in merged:
            if self.mapped and start <= self.mapped[-1][1]:
                self.mapped[-1] = (self.mapped[-1][0], max(self.mapped[-1][1], end))
            else:
                self.mapped.append((start, end))

    def _remove(self, lo: int, hi: int) -> None:
        kept = []
        for start, end in self.mapped:
            if start < lo:
                kept.append((start, min(end, lo)))
            if end > hi:
                kept.append((max(start, hi), end))
        self.mapped = [(s, e) for s, e in kept if s < e]
        self.regions = {r for r in self.regions if (r + 1) << self.shift <= lo or r << self.shift >= hi}
