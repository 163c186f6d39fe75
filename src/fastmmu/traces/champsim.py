"""ChampSim binary traces: one fixed-size little-endian record per instruction.

The layouts are ChampSim's ``inc/trace_instruction.h``, as a C compiler lays
them out on x86-64 (and ChampSim reads ``sizeof`` bytes per record):

``input_instr`` (the standard layout, 64 bytes)::

    0  ip                          u64
    8  is_branch, branch_taken     u8, u8
    10 destination_registers[2]    u8
    12 source_registers[4]         u8
    16 destination_memory[2]       u64
    32 source_memory[4]            u64

``cloudsuite_instr`` (96 bytes: four destinations, and an ASID)::

    0  ip                          u64
    8  is_branch, branch_taken     u8, u8
    10 destination_registers[4]    u8
    14 source_registers[4]         u8
    (2 bytes of padding)
    24 destination_memory[4]       u64
    56 source_memory[4]            u64
    88 asid[2]                     u8
    (6 bytes of padding, to the 8-byte alignment of the struct)

Each instruction becomes a FETCH of its ip, then a READ per nonzero source
memory operand, then a WRITE per nonzero destination memory operand, in
field order.  The cloudsuite ASID is not used.  A file whose size is not a
whole number of records ends in a truncated record: a ``TraceError`` naming
its byte offset (under ``skip_bad`` it counts as one bad record).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from fastmmu.arch import Access
from fastmmu.traces.base import ReadOptions, StreamError, TraceChunk, TraceError, fill, fits_signed, wide_address
from fastmmu.traces.text import BLOCK_BYTES

STANDARD = np.dtype({
    "names": ["ip", "is_branch", "branch_taken", "destination_registers", "source_registers",
              "destination_memory", "source_memory"],
    "formats": ["<u8", "u1", "u1", ("u1", (2,)), ("u1", (4,)), ("<u8", (2,)), ("<u8", (4,))],
    "offsets": [0, 8, 9, 10, 12, 16, 32],
    "itemsize": 64,
})

CLOUDSUITE = np.dtype({
    "names": ["ip", "is_branch", "branch_taken", "destination_registers", "source_registers",
              "destination_memory", "source_memory", "asid"],
    "formats": ["<u8", "u1", "u1", ("u1", (4,)), ("u1", (4,)), ("<u8", (4,)), ("<u8", (4,)), ("u1", (2,))],
    "offsets": [0, 8, 9, 10, 14, 24, 56, 88],
    "itemsize": 96,
})


def read(stream: BinaryIO, options: ReadOptions) -> Iterator[TraceChunk]:
    """The standard (``input_instr``, 64-byte) layout."""
    return read_records(stream, options, STANDARD)


def read_cloudsuite(stream: BinaryIO, options: ReadOptions) -> Iterator[TraceChunk]:
    """The cloudsuite (``cloudsuite_instr``, 96-byte) layout."""
    return read_records(stream, options, CLOUDSUITE)


def read_records(stream: BinaryIO, options: ReadOptions, layout: np.dtype) -> Iterator[TraceChunk]:
    if options.chunk_records < 1:
        raise ValueError(f"chunk_records must be at least 1, got {options.chunk_records}")
    size = layout.itemsize
    sources = layout["source_memory"].shape[0]
    destinations = layout["destination_memory"].shape[0]
    # What each column of an instruction's expansion is: its fetch, its reads, its writes.
    column_kinds = np.array([Access.FETCH] + [Access.READ] * sources + [Access.WRITE] * destinations,
                            dtype=np.uint8)
    # Instructions per read: a block, and never more than a chunk's worth (each gives >= 1 record).
    per_block = max(1, min(BLOCK_BYTES // size, options.chunk_records))
    block = np.empty(per_block * size, dtype=np.uint8)
    view = block.data
    offset = 0     # of block[0] in the (decompressed) file
    while True:
        broken = None
        try:
            got = fill(stream, view)
        except StreamError as error:   # the data fails from here: the whole records before it are read first
            broken, got = error, error.bytes_before
        whole = got // size
        if whole:
            instructions = block[: whole * size].view(layout)
            matrix = np.empty((whole, len(column_kinds)), dtype=np.uint64)
            matrix[:, 0] = instructions["ip"]
            matrix[:, 1:1 + sources] = instructions["source_memory"]
            matrix[:, 1 + sources:] = instructions["destination_memory"]
            present = matrix != 0
            present[:, 0] = True          # the fetch is there even at ip 0
            addresses = matrix[present]   # row-major: each instruction's records stay in order
            kinds = np.broadcast_to(column_kinds, matrix.shape)[present]
            failure = None
            if options.address_bits is not None:
                wide = ~fits_signed(addresses, options.address_bits)
                if wide.any() and options.skip_bad:
                    options.stats.bad_records += int(wide.sum())
                    addresses, kinds = addresses[~wide], kinds[~wide]
                elif wide.any():
                    first = int(np.argmax(wide))
                    row = int(np.nonzero(present)[0][first])
                    failure = wide_address(options.path, int(addresses[first]), options.address_bits,
                                           offset=offset + row * size)
                    addresses, kinds = addresses[:first], kinds[:first]
            options.stats.records += len(addresses)
            for start in range(0, len(addresses), options.chunk_records):
                end = start + options.chunk_records
                yield TraceChunk(addresses[start:end], kinds[start:end])
            if failure is not None:
                raise failure
        if broken is not None:
            raise broken.at(options.stats.records)
        if got < len(view):
            if got % size:
                tail = offset + whole * size
                if not options.skip_bad:
                    raise TraceError(options.path, f"truncated record: {got % size} of {size} bytes "
                                     f"(is this a {'cloudsuite ' if layout is CLOUDSUITE else ''}ChampSim trace?)",
                                     offset=tail)
                options.stats.bad_records += 1
            return
        offset += got


def sniff(head: bytes) -> bool:
    """Binary, and every whole 64-byte record of ``head`` looks like an instruction."""
    return _plausible(head, STANDARD)


def sniff_cloudsuite(head: bytes) -> bool:
    """As ``sniff``, for 96-byte cloudsuite records (detection asks only when ``sniff`` says no)."""
    return _plausible(head, CLOUDSUITE)


def _plausible(head: bytes, layout: np.dtype) -> bool:
    """Binary data whose records all have 0/1 branch flags and a nonzero ip."""
    if len(head) < layout.itemsize or b"\0" not in head:
        return False
    records = np.frombuffer(head, dtype=layout, count=len(head) // layout.itemsize)
    return bool(np.all(records["is_branch"] <= 1) and np.all(records["branch_taken"] <= 1)
                and np.all(records["ip"] != 0))
