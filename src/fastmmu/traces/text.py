"""Line-oriented text traces read in large blocks through a compiled parser.

The file is read into one preallocated block (``readinto``, no copy per
line); the compiled parser handles the block's complete lines and the partial
last line moves to the front for the next read.  Line numbers count across
blocks, so an error names the line as an editor would.  At most one block
and one chunk being filled are held at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from fastmmu.traces.base import ReadOptions, StreamError, TraceChunk, TraceError, fill, fits_signed, wide_address

BLOCK_BYTES = 1 << 24
NEWLINE = 0x0A

# A compiled parser (fastmmu._core.traceparse.parse_lackey / parse_din).
Parser = Callable[..., tuple[int, int, int, int, int, int]]


def read_lines(stream: BinaryIO, options: ReadOptions, parse: Parser, expected: str, *,
               block_bytes: int = BLOCK_BYTES) -> Iterator[TraceChunk]:
    """Chunks of at most ``options.chunk_records`` records from a text trace ``parse`` understands.

    ``expected`` says what a valid line looks like, for the message about a bad one.
    """
    if options.chunk_records < 1:
        raise ValueError(f"chunk_records must be at least 1, got {options.chunk_records}")
    stats = options.stats
    block = np.empty(block_bytes + 1, dtype=np.uint8)   # + 1: room for a final newline the file lacks
    view = block.data
    carry = 0          # bytes of a partial line kept from the previous block
    lines_before = 0   # lines of the file before block[0]
    addresses, kinds, filled = _new_chunk(options.chunk_records)
    while True:
        broken = None
        try:
            got = fill(stream, view[carry:block_bytes])
        except StreamError as exc:   # the data fails from here: the whole lines before it are read first
            broken, got = exc, exc.bytes_before
        length = carry + got
        if got == 0 and broken is None:
            if length == 0:
                break
            block[length] = NEWLINE        # the last line had no newline: it is still a line
            length += 1
        pos = 0
        while True:
            parsed = parse(block[pos:length], addresses[filled:], kinds[filled:], skip_bad=options.skip_bad)
            consumed, records, lines, skipped, bad, error = parsed
            failure = None
            if options.address_bits is not None and records:
                records, failure = _drop_wide(block, pos, length, parse, addresses, kinds, filled, records,
                                              lines_before, options)
            if failure is None:
                pos += consumed
                lines_before += lines
            filled += records
            stats.records += records
            stats.skipped_lines += skipped
            stats.bad_records += bad
            if failure is not None or error >= 0:  # the records before it are delivered first: work done is kept
                if failure is None:
                    failure = _bad_line(options.path, block[pos:length], lines_before + 1, expected)
                if filled:
                    yield TraceChunk(addresses[:filled].copy(), kinds[:filled].copy())
                raise failure
            if filled == len(addresses):
                yield TraceChunk(addresses, kinds)
                addresses, kinds, filled = _new_chunk(options.chunk_records)
                continue
            break      # only a partial line (or nothing) is left in the block
        if broken is not None:
            if filled:
                yield TraceChunk(addresses[:filled].copy(), kinds[:filled].copy())
            raise broken.at(stats.records)
        carry = length - pos
        if got == 0:
            break
        if carry == block_bytes:
            raise TraceError(options.path, f"a line longer than {block_bytes} bytes (is this a text trace?)",
                             line=lines_before + 1, text=bytes(block[:80]))
        block[:carry] = block[pos:length]
    if filled:
        yield TraceChunk(addresses[:filled].copy(), kinds[:filled].copy())


def _new_chunk(records: int) -> tuple[np.ndarray, np.ndarray, int]:
    # Fresh arrays per chunk: a consumer may keep a chunk while the next one is read.
    return np.empty(records, dtype=np.uint64), np.empty(records, dtype=np.uint8), 0


def _drop_wide(block: np.ndarray, pos: int, length: int, parse: Parser, addresses: np.ndarray, kinds: np.ndarray,
               filled: int, records: int, lines_before: int, options: ReadOptions) -> tuple[int, TraceError | None]:
    """Records just parsed (``records`` from ``filled``) whose address does not fit in
    ``options.address_bits`` bits (sign-extended) are bad: skipped and counted under ``skip_bad``
    (the records kept, and the error None), else the records before the first one are kept and
    its ``TraceError`` (with its line, found by parsing the block again up to it) is returned."""
    new = addresses[filled:filled + records]
    wide = ~fits_signed(new, options.address_bits or 64)
    if not wide.any():
        return records, None
    if options.skip_bad:
        keep = ~wide
        kept = int(keep.sum())
        addresses[filled:filled + kept] = new[keep]
        kinds[filled:filled + kept] = kinds[filled:filled + records][keep]
        options.stats.bad_records += records - kept
        return kept, None
    first = int(np.argmax(wide))
    scratch_addresses, scratch_kinds = np.empty(first + 1, dtype=np.uint64), np.empty(first + 1, dtype=np.uint8)
    upto = parse(block[pos:length], scratch_addresses, scratch_kinds)   # up to and including that record
    line_end = pos + upto[0] - 1                                        # its newline
    earlier = np.flatnonzero(block[pos:line_end] == NEWLINE)
    start = pos + int(earlier[-1]) + 1 if len(earlier) else pos
    text = bytes(block[start:line_end]).rstrip(b"\r")
    return first, wide_address(options.path, int(new[first]), options.address_bits or 64, line=lines_before + upto[2],
                               text=text)


def _bad_line(path: str, rest: np.ndarray, line: int, expected: str) -> TraceError:
    end = np.flatnonzero(rest == NEWLINE)
    text = bytes(rest[: end[0] if len(end) else len(rest)]).rstrip(b"\r")
    return TraceError(path, f"not a valid record (expected {expected})", line=line, text=text)


def sniff_lines(head: bytes, parse: Parser) -> bool:
    """Whether ``head`` starts as ``parse``'s format: its first line that is not skipped by design
    (a comment, a blank line) is a valid record.  A bad line later on is then reported as one, with
    its line number, instead of making the whole file unrecognisable."""
    end = head.rfind(b"\n")
    text = head[: end + 1] if end >= 0 else head + b"\n"
    capacity = text.count(b"\n")
    addresses = np.empty(capacity, dtype=np.uint64)
    kinds = np.empty(capacity, dtype=np.uint8)
    records = parse(text, addresses, kinds)[1]
    return records > 0
