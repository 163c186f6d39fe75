"""fastmmu's native compact trace format: accesses and guest-OS events in 64-bit words.

Text traces carry accesses only; a trace that should replay a guest OS (its
process and CR3 switches, VM switches, map/unmap, INVLPG) needs those events
in order with the accesses.  This format carries both, costs 8 bytes per
access, reads back with a few numpy operations per megabyte, and is simple
enough that a C, Rust or Python tool writes it with a dozen lines
(README.md, "The native trace format", is the specification; keep the two in step).

Layout (all integers little-endian):

- header: ``NATIVE_MAGIC`` (8 bytes), version (u32, 2), metadata length N
  (u32), N bytes of UTF-8 JSON (an object), zero bytes up to a multiple of 8;
- then 64-bit words.  Bit 63 clear: an access; bits 0-56 are the virtual
  address as a 57-bit two's-complement value (bit 56 is sign-extended, so
  both halves of the LA57 and 4-level canonical spaces fit), bits 57-58 the
  kind (READ 0, WRITE 1, FETCH 2; 3 is reserved), bits 59-62 are reserved (0).
  Bit 63 set: an event; bits 56-62 its type, bits 54-55 how many operand
  words follow it (raw 64-bit values), bits 0-53 an inline argument;
- last, the end record (version 2): the writer closed the file, and says how
  many accesses and events it wrote.

=====  ==============  ========  ===========================  =================
type   event           operands  inline argument              operand words
=====  ==============  ========  ===========================  =================
1      SwitchProcess   0         pid                          -
2      SwitchCr3       1         0                            cr3
3      SwitchVM        0         vm id                        -
4      MapRegion       2         flags: 1 W, 2 X, 4 huge      base, length
5      UnmapRegion     2         0                            base, length
6      Invlpg          1         0                            va
7      end (v2)        2         flags: 1 partial             accesses, events
=====  ==============  ========  ===========================  =================

Any other type is reserved.  Because an event word says how many operand
words follow, a reader can step over an event it cannot decode, which is how
``skip_bad`` resynchronises.

The end record is what tells a whole file from one whose writer was killed:
a version-2 file without it is truncated (a ``TraceError`` naming the file
and the records read, after every record before it has been delivered).
Its partial flag says the writer stopped before its own input ended (Ctrl-C
during ``trace convert``): the file is whole, its source was not.  Version-1
files (written before the end record existed) are read as before: without
an end record, a truncated one cannot be told from a whole one.

Errors.  Always fatal, even with ``skip_bad``: an empty file, a wrong magic,
an unsupported version, a truncated or unreadable header (metadata that is
not a UTF-8 JSON object, padding that is not zero), data after the end
record.  Skipped and counted as bad records under ``skip_bad`` (else fatal):
an access word with reserved bits set or kind 3; an event word of an unknown
type, with the wrong operand count for its type, or with reserved argument
bits set (the event and its declared operand words are skipped); a truncated
last record (a partial word, or an event whose operand words are missing at
the end of the file); a missing end record (version 2), and an end record
whose counts differ from the records read.  Every record before a fatal one
is delivered first.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import numpy as np

from fastmmu.traces.base import (
    NATIVE_MAGIC,
    Event,
    Invlpg,
    MapRegion,
    ReadOptions,
    StreamError,
    SwitchCr3,
    SwitchProcess,
    SwitchVM,
    TraceChunk,
    TraceError,
    UnmapRegion,
    fill,
    fits_signed,
)
from fastmmu.traces.output import AtomicOutput, PathLike, open_output

VERSION = 2                              # what the writer writes: with the end record
VERSIONS = (1, 2)                        # what the reader reads (1: before the end record existed)
HEADER = struct.Struct("<8sII")          # magic, version, metadata length
MAX_METADATA = 1 << 24                   # a longer metadata block means a corrupt header
WORD = 8

# access words
ADDRESS_BITS = 57
ADDRESS_MASK = (1 << ADDRESS_BITS) - 1
KIND_SHIFT = 57
TAG_EVENT = 1 << 63
# the top 7 bits of a word (63..57) as one byte: 0-2 an access of that kind, >= 64 an event
_TOP_SHIFT = np.uint64(57)
_EVENT_TOP = 64

# event words
TYPE_SHIFT = 56
TYPE_MASK = 0x7F
OPERANDS_SHIFT = 54
OPERANDS_MASK = 3
ARGUMENT_MASK = (1 << OPERANDS_SHIFT) - 1

SWITCH_PROCESS, SWITCH_CR3, SWITCH_VM, MAP_REGION, UNMAP_REGION, INVLPG, END = 1, 2, 3, 4, 5, 6, 7
OPERANDS = {SWITCH_PROCESS: 0, SWITCH_CR3: 1, SWITCH_VM: 0, MAP_REGION: 2, UNMAP_REGION: 2, INVLPG: 1}
OPERANDS_V2 = {**OPERANDS, END: 2}
MAP_WRITABLE, MAP_EXECUTABLE, MAP_HUGE = 1, 2, 4
END_PARTIAL = 1   # the end record's flag: the writer stopped before its input ended
MAX_EVENT_WORDS = 1 + OPERANDS_MASK

BLOCK_WORDS = 1 << 20   # words decoded per numpy pass (8 MiB)
WRITE_WORDS = 1 << 20   # words encoded per pass by the writer (bounded memory for any input size)
_U64 = (1 << 64) - 1


def sniff(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a native trace."""
    return head[:len(NATIVE_MAGIC)] == NATIVE_MAGIC


# -- header ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    version: int
    metadata: dict[str, Any]
    size: int  # bytes, padding included: where the first record starts


def encode_header(metadata: dict[str, Any] | None = None) -> bytes:
    """The header bytes of a trace with ``metadata`` (JSON-serialisable)."""
    block = json.dumps(metadata or {}, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(block) > MAX_METADATA:
        raise ValueError(f"metadata: {len(block)} bytes of JSON, at most {MAX_METADATA}")
    raw = HEADER.pack(NATIVE_MAGIC, VERSION, len(block)) + block
    return raw + bytes(-len(raw) % WORD)


def read_header(stream: BinaryIO, path: str = "<stream>") -> Header:
    """Read and check the header (always fatal if bad); the stream is left at the first record.
    ``trace info`` shows ``Header.metadata``."""
    fixed = _read_fully(stream, HEADER.size)
    if not fixed:
        raise TraceError(path, "empty file: not a native trace", offset=0)
    if fixed[:8] != NATIVE_MAGIC[:len(fixed)]:
        raise TraceError(path, f"not a native trace: expected magic {NATIVE_MAGIC!r}", offset=0, text=fixed[:8])
    if len(fixed) < HEADER.size:
        raise TraceError(path, f"truncated header: {len(fixed)} of {HEADER.size} bytes", offset=len(fixed))
    _, version, length = HEADER.unpack(fixed)
    if version not in VERSIONS:
        raise TraceError(path, f"unsupported version {version} (this fastmmu reads versions "
                               f"{' and '.join(map(str, VERSIONS))})", offset=8, text=fixed[8:12].hex())
    if length > MAX_METADATA:
        raise TraceError(path, f"metadata length {length} is implausible (at most {MAX_METADATA}): corrupt header",
                         offset=12, text=fixed[12:16].hex())
    padding = -(HEADER.size + length) % WORD
    rest = _read_fully(stream, length + padding)
    if len(rest) < length + padding:
        raise TraceError(path, f"truncated header: metadata of {length} bytes (+{padding} padding) ends at "
                               f"byte {HEADER.size + length + padding}, the file at {HEADER.size + len(rest)}",
                         offset=HEADER.size + len(rest))
    if any(rest[length:]):
        raise TraceError(path, "header padding must be zero bytes", offset=HEADER.size + length,
                         text=rest[length:].hex())
    try:
        metadata = json.loads(rest[:length].decode("utf-8")) if length else {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:   # (deep nesting: a hostile file)
        raise TraceError(path, f"metadata is not UTF-8 JSON ({exc})", offset=HEADER.size,
                         text=rest[:length]) from None
    if not isinstance(metadata, dict):
        raise TraceError(path, "metadata must be a JSON object", offset=HEADER.size, text=rest[:length])
    return Header(version, metadata, HEADER.size + length + padding)


def _read_fully(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes: fewer only at the end of the stream (pipes and decompressors read short)."""
    parts, got = [], 0
    while got < size:
        part = stream.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


# -- reading ---------------------------------------------------------------------------

def read(stream: BinaryIO, options: ReadOptions, *, block_words: int = BLOCK_WORDS) -> Iterator[TraceChunk]:
    """The trace's accesses and events in chunks of at most ``options.chunk_records`` accesses.

    Decodes ``block_words`` words per numpy pass; Python runs once per event, never per access.
    Every record before a bad one is delivered before the ``TraceError``.
    """
    if block_words < MAX_EVENT_WORDS:
        raise ValueError(f"block_words: at least {MAX_EVENT_WORDS} (the longest event), got {block_words}")
    if options.chunk_records <= 0:
        raise ValueError(f"chunk_records: expected a positive count, got {options.chunk_records}")
    stats = options.stats
    header = read_header(stream, options.path)
    stats.bytes_read += header.size
    chunks = _ChunkBuilder(options.chunk_records)
    buffer = bytearray(block_words * WORD)
    kept = 0             # bytes carried over at the start of ``buffer`` (an unfinished record)
    offset = header.size  # file offset of buffer[0]
    while True:
        failure = None
        try:
            got = fill(stream, memoryview(buffer)[kept:])
        except StreamError as error:   # the data fails from here: the whole records before it are read first
            failure, got = error, error.bytes_before
        filled = kept + got
        stats.bytes_read += got
        at_end = filled < len(buffer)
        whole = filled - filled % WORD
        words = np.frombuffer(buffer, dtype="<u8", count=whole // WORD)
        decoded = _decode(words, offset, options, header.version)
        stats.records += len(decoded.addresses)
        stats.events += len(decoded.events)
        yield from chunks.add(decoded.addresses, decoded.kinds, decoded.events)
        if decoded.error is not None:
            yield from chunks.finish()
            raise decoded.error
        if failure is not None:
            yield from chunks.finish()
            raise failure.at(stats.records)
        if decoded.end is not None:
            yield from chunks.finish()
            trailing = filled - decoded.used * WORD
            if not trailing and not at_end:
                trailing = fill(stream, memoryview(bytearray(WORD)))
            if trailing:
                raise TraceError(options.path, "data after the end record (two traces joined, or a corrupt file)",
                                 offset=offset + decoded.used * WORD)
            _check_end(decoded.end, options)
            return
        leftover = filled - decoded.used * WORD
        if at_end:
            yield from chunks.finish()
            if leftover:   # (which is why the end record is missing too: one failure, counted once)
                what = "a 64-bit word" if leftover < WORD else "an event's operand words"
                _bad(options, offset + decoded.used * WORD, f"truncated record: the file ends inside {what}",
                     bytes(buffer[decoded.used * WORD:filled]).hex())
            elif header.version >= 2:
                _bad(options, offset + filled, f"truncated: the file ends after {stats.records:,} accesses and "
                     f"{stats.events:,} events without its end record (was its writer stopped?)", None)
            return
        buffer[:leftover] = buffer[decoded.used * WORD:filled]
        kept, offset = leftover, offset + decoded.used * WORD


def _bad(options: ReadOptions, offset: int, message: str, text: str | bytes | None) -> None:
    """A bad record: counted and skipped under ``skip_bad``, else fatal."""
    if not options.skip_bad:
        raise TraceError(options.path, message, offset=offset, text=text)
    options.stats.bad_records += 1


def _hex(word: int) -> str:
    return f"{word:#018x}"


@dataclass
class _Decoded:
    addresses: np.ndarray
    kinds: np.ndarray
    events: list[tuple[int, Event]]  # at their access index
    used: int                        # words decoded; an event whose operands are not all here waits
    end: tuple[int, int, list[int]] | None = None  # the end record: (file offset, word, operands)
    error: TraceError | None = None  # the first bad record (not skipping): the records before it are kept


def _decode(words: np.ndarray, offset: int, options: ReadOptions, version: int) -> _Decoded:
    """Decode whole records of ``words`` (at file ``offset``), up to the end record or the first
    bad record (which, unless skipped, comes back as ``error``)."""
    top = (words >> _TOP_SHIFT).astype(np.uint8)
    if len(top) and int(top.max()) <= 2:  # the common case: accesses only, all valid
        return _Decoded(_addresses(words), top, [], len(words))
    known = OPERANDS_V2 if version >= 2 else OPERANDS
    is_event = top >= _EVENT_TOP
    is_access = ~is_event
    bad = is_access & (top > 2)
    events: list[tuple[int, Event]] = []
    used = len(words)
    end = None
    error: tuple[int, TraceError] | None = None
    position = 0  # the first word not yet known to be an access or an operand
    for index in np.flatnonzero(is_event):
        at = int(index)
        if at < position:  # an operand word of the previous event that happens to have bit 63 set
            continue
        word = int(words[at])
        count = (word >> OPERANDS_SHIFT) & OPERANDS_MASK
        if at + count >= len(words):  # its operands are in the next block (or, at the end, missing:
            used = at                 # read() reports the truncated record)
            break
        operands = [int(w) for w in words[at + 1:at + 1 + count]]
        is_event[at + 1:at + 1 + count] = False
        is_access[at + 1:at + 1 + count] = False
        bad[at + 1:at + 1 + count] = False
        position = at + 1 + count
        problem = _event_problem(word, known)
        if problem is not None:
            if not options.skip_bad:
                error = (at, TraceError(options.path, problem, offset=offset + at * WORD, text=_hex(word)))
                used = at
                break
            options.stats.bad_records += 1
            continue
        if (word >> TYPE_SHIFT) & TYPE_MASK == END:
            end = (offset + at * WORD, word, operands)
            used = position
            break
        events.append((at, _event(word, operands)))
    is_access[used:] = False
    bad[used:] = False
    bad_at = np.flatnonzero(bad)
    if len(bad_at):
        if options.skip_bad:
            options.stats.bad_records += len(bad_at)
        elif error is None or int(bad_at[0]) < error[0]:
            first = int(bad_at[0])
            error = (first, TraceError(options.path, _access_error(int(words[first])), offset=offset + first * WORD,
                                       text=_hex(int(words[first]))))
        is_access &= ~bad
    if error is not None:   # keep what precedes the bad record, drop the rest
        cut = error[0]
        is_access[cut:] = False
        events = [(at, event) for at, event in events if at < cut]
        used, end = cut, None
    placed: list[tuple[int, Event]] = []
    if events:
        before = np.cumsum(is_access)  # at an event word: the accesses before it (it is not one)
        placed = [(int(before[at]), event) for at, event in events]
    return _Decoded(_addresses(words[is_access]), top[is_access], placed, used, end,
                    error[1] if error is not None else None)


def _check_end(end: tuple[int, int, list[int]], options: ReadOptions) -> None:
    """The end record: its flags, and its counts against what was read (when nothing was skipped)."""
    offset, word, (accesses, events) = end
    stats = options.stats
    stats.ended = True
    stats.writer_partial = bool(word & END_PARTIAL)
    if word & ARGUMENT_MASK & ~END_PARTIAL:
        _bad(options, offset, "reserved flag bits set in the end record (1 partial)", _hex(word))
    elif not stats.bad_records and (accesses, events) != (stats.records, stats.events):
        _bad(options, offset, f"the end record counts {accesses:,} accesses and {events:,} events, the file holds "
                              f"{stats.records:,} and {stats.events:,} (records lost or added)", _hex(word))


def _addresses(words: np.ndarray) -> np.ndarray:
    """The 57-bit addresses of access words, sign-extended from bit 56."""
    shifted = words << np.uint64(64 - ADDRESS_BITS)
    return (shifted.view(np.int64) >> np.int64(64 - ADDRESS_BITS)).view(np.uint64)


def _access_error(word: int) -> str:
    if (word >> KIND_SHIFT) & 0x3F == 3:
        return "reserved access kind 3 (READ 0, WRITE 1, FETCH 2)"
    return "reserved bits 59-62 set in an access record"


def _event_problem(word: int, known: dict[int, int]) -> str | None:
    """What is wrong with an event word (types ``known`` with their operand counts), or None."""
    kind = (word >> TYPE_SHIFT) & TYPE_MASK
    count = (word >> OPERANDS_SHIFT) & OPERANDS_MASK
    argument = word & ARGUMENT_MASK
    if kind not in known:
        return f"unknown event type {kind}"
    if count != known[kind]:
        return f"event type {kind} takes {known[kind]} operand words, the record says {count}"
    if kind == MAP_REGION and argument & ~(MAP_WRITABLE | MAP_EXECUTABLE | MAP_HUGE):
        return "reserved flag bits set in a map event (1 W, 2 X, 4 huge)"
    if argument and kind in (SWITCH_CR3, UNMAP_REGION, INVLPG):
        return f"reserved argument bits set in an event of type {kind} (must be 0)"
    return None


def _event(word: int, operands: list[int]) -> Event:
    """The event a valid event ``word`` (not the end record) and its ``operands`` encode."""
    kind = (word >> TYPE_SHIFT) & TYPE_MASK
    argument = word & ARGUMENT_MASK
    if kind == SWITCH_PROCESS:
        return SwitchProcess(argument)
    if kind == SWITCH_VM:
        return SwitchVM(argument)
    if kind == MAP_REGION:
        return MapRegion(operands[0], operands[1], writable=bool(argument & MAP_WRITABLE),
                         executable=bool(argument & MAP_EXECUTABLE), huge=bool(argument & MAP_HUGE))
    if kind == SWITCH_CR3:
        return SwitchCr3(operands[0])
    if kind == UNMAP_REGION:
        return UnmapRegion(operands[0], operands[1])
    return Invlpg(operands[0])


class _ChunkBuilder:
    """Cuts decoded blocks into chunks of at most ``limit`` accesses, each event at its index."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.addresses: list[np.ndarray] = []
        self.kinds: list[np.ndarray] = []
        self.count = 0
        self.events: list[tuple[int, Event]] = []

    def add(self, addresses: np.ndarray, kinds: np.ndarray,
            events: list[tuple[int, Event]]) -> Iterator[TraceChunk]:
        total, position, next_event = len(addresses), 0, 0
        while True:
            end = position + min(self.limit - self.count, total - position)
            full = self.count + end - position == self.limit
            while next_event < len(events) and (events[next_event][0] < end or
                                                (events[next_event][0] == end and not full)):
                index, event = events[next_event]
                self.events.append((self.count + index - position, event))
                next_event += 1
            if end > position:
                self.addresses.append(addresses[position:end])
                self.kinds.append(kinds[position:end])
                self.count += end - position
            position = end
            if full:
                yield self._take()
            if position == total and next_event == len(events):
                return

    def finish(self) -> Iterator[TraceChunk]:
        if self.count or self.events:
            yield self._take()

    def _take(self) -> TraceChunk:
        def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            if not parts:
                return np.empty(0, dtype=dtype)
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        chunk = TraceChunk(joined(self.addresses, np.uint64), joined(self.kinds, np.uint8), self.events)
        self.addresses, self.kinds, self.count, self.events = [], [], 0, []
        return chunk


# -- writing ---------------------------------------------------------------------------

class NativeWriter:
    """Writes a native trace to a path (compressed by its suffix: .gz, .xz, .zst) or a binary stream.

    A path is written under a temporary name and renamed into place by ``close()``, after the end
    record: a killed writer leaves nothing under the final name.  A stream gets the end record at
    ``close()``; without it (``abort()``, or a killed writer) it reads back as truncated.  As a
    context manager, a clean exit closes and an exception aborts.  Every call checks its input
    completely before writing anything, so a rejected call leaves no half-written record.

    >>> import io, numpy as np
    >>> out = io.BytesIO()
    >>> with NativeWriter(out, metadata={"source": "example"}) as w:
    ...     w.write_event(SwitchProcess(1))
    ...     w.write_accesses(np.array([0x1000, 0x2008], dtype=np.uint64), np.array([0, 1], dtype=np.uint8))
    >>> w.records, w.events
    (2, 1)
    """

    def __init__(self, target: PathLike | BinaryIO, metadata: dict[str, Any] | None = None) -> None:
        from fastmmu import __version__

        self.records = 0
        self.events = 0
        info: dict[str, Any] = {"producer": f"fastmmu {__version__}"}
        info.update(metadata or {})
        header = encode_header(info)  # (a bad metadata block fails before a file is created)
        self._file: AtomicOutput | None = open_output(target) if isinstance(target, (str, os.PathLike)) else None
        self._out: BinaryIO | AtomicOutput | None = self._file if self._file is not None else cast(BinaryIO, target)
        try:
            self._stream().write(header)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> NativeWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    @property
    def closed(self) -> bool:
        return self._out is None

    def _stream(self) -> BinaryIO | AtomicOutput:
        if self._out is None:
            raise ValueError("write to a closed NativeWriter")
        return self._out

    def write_accesses(self, addresses: np.ndarray, kinds: np.ndarray | int) -> None:
        """Append accesses: ``addresses`` (integers; a canonical 57-bit address each, negative or
        upper-half values being sign-extended ones) and ``kinds`` (READ 0, WRITE 1, FETCH 2: an
        array of the same length, or one value for all)."""
        out = self._stream()
        addresses = np.asarray(addresses)
        if addresses.dtype.kind not in "iu":
            raise ValueError(f"addresses: expected integers, got dtype {addresses.dtype}")
        addresses = addresses.reshape(-1).astype(np.uint64, copy=False)
        kinds = _check_kinds(kinds, len(addresses))
        wide = np.flatnonzero(~fits_signed(addresses, ADDRESS_BITS))
        if len(wide):
            at = int(wide[0])
            raise ValueError(f"addresses: {int(addresses[at]):#x} at index {at} does not fit in 57 bits "
                             "(bits 56-63 must all be equal: a canonical LA57 address)")
        mask, shift = np.uint64(ADDRESS_MASK), np.uint64(KIND_SHIFT)
        for start in range(0, len(addresses), WRITE_WORDS):
            part = slice(start, start + WRITE_WORDS)
            words = (addresses[part] & mask) | (kinds[part].astype(np.uint64) << shift)
            out.write(words.astype("<u8", copy=False).data.cast("B"))
        self.records += len(addresses)

    def write_event(self, event: Event) -> None:
        """Append one guest-OS event (it takes effect before the accesses written after it)."""
        self._stream().write(encode_event(event))
        self.events += 1

    def flush(self) -> None:
        self._stream().flush()

    def close(self, *, partial: bool = False) -> None:
        """Write the end record (``partial``: the input was not all written, e.g. Ctrl-C) and finish
        the file: a path is renamed into place, a stream the caller gave is flushed, not closed."""
        out = self._out
        if out is None:
            return
        try:
            out.write(encode_end(self.records, self.events, partial=partial))
            if self._file is not None:
                self._file.commit()
            else:
                out.flush()
        except BaseException:
            self.abort()
            raise
        self._out = self._file = None

    def abort(self) -> None:
        """Stop without the end record: a path's temporary file is removed; a stream is left as it
        is, and reads back as truncated."""
        file, self._out, self._file = self._file, None, None
        if file is not None:
            file.discard()


def encode_end(accesses: int, events: int, *, partial: bool = False) -> bytes:
    """The end record of a file of ``accesses`` accesses and ``events`` events."""
    word = TAG_EVENT | END << TYPE_SHIFT | OPERANDS_V2[END] << OPERANDS_SHIFT | (END_PARTIAL if partial else 0)
    return struct.pack("<3Q", word, accesses, events)


def _check_kinds(kinds: np.ndarray | int, count: int) -> np.ndarray:
    if isinstance(kinds, (int, np.integer)):
        if int(kinds) not in (0, 1, 2):
            raise ValueError(f"kinds: expected READ (0), WRITE (1) or FETCH (2), got {int(kinds)}")
        return np.full(count, int(kinds), dtype=np.uint8)
    array = np.asarray(kinds)
    if array.dtype.kind not in "iu":
        raise ValueError(f"kinds: expected integers, got dtype {array.dtype}")
    array = array.reshape(-1)
    if len(array) != count:
        raise ValueError(f"kinds: expected {count} access kinds (one per address), got {len(array)}")
    wrong = (array < 0) | (array > 2)
    if wrong.any():
        at = int(np.argmax(wrong))
        raise ValueError(f"kinds: expected READ (0), WRITE (1) or FETCH (2), got {int(array[at])} at index {at}")
    return array.astype(np.uint8, copy=False)


def _field(name: str, value: int, bits: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= int(value) < 1 << bits:
        raise ValueError(f"event.{name}: expected an integer in [0, 2**{bits}), got {value!r}")
    return int(value)


def _event_word(kind: int, argument: int = 0) -> int:
    return TAG_EVENT | kind << TYPE_SHIFT | OPERANDS[kind] << OPERANDS_SHIFT | argument


def encode_event(event: Event) -> bytes:
    """The words of one event, as bytes (a ValueError names a field that does not fit)."""
    if isinstance(event, SwitchProcess):
        words = [_event_word(SWITCH_PROCESS, _field("pid", event.pid, OPERANDS_SHIFT))]
    elif isinstance(event, SwitchVM):
        words = [_event_word(SWITCH_VM, _field("vm", event.vm, OPERANDS_SHIFT))]
    elif isinstance(event, SwitchCr3):
        words = [_event_word(SWITCH_CR3), _field("cr3", event.cr3, 64)]
    elif isinstance(event, MapRegion):
        flags = ((MAP_WRITABLE if event.writable else 0) | (MAP_EXECUTABLE if event.executable else 0)
                 | (MAP_HUGE if event.huge else 0))
        words = [_event_word(MAP_REGION, flags), _field("base", event.base, 64), _field("length", event.length, 64)]
    elif isinstance(event, UnmapRegion):
        words = [_event_word(UNMAP_REGION), _field("base", event.base, 64), _field("length", event.length, 64)]
    elif isinstance(event, Invlpg):
        words = [_event_word(INVLPG), _field("va", event.va, 64)]
    else:
        raise ValueError(f"event: expected one of the fastmmu.traces.base events, got {event!r}")
    return struct.pack(f"<{len(words)}Q", *words)
