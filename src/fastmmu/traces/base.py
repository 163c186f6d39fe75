"""What every trace reader yields, and how it reports a bad trace.

A reader turns a file into a stream of ``TraceChunk``s: parallel arrays of
virtual addresses and access kinds, at most ``chunk_records`` long, so that a
trace larger than memory streams through in bounded space.  Formats that
carry guest-OS events (the native format) put them between records:
``events`` lists ``(index, event)`` pairs, the event taking effect before
record ``index`` of the chunk (``index == len(chunk)``: after the last one).

Access kinds are ``fastmmu.Access`` values: READ 0, WRITE 1, FETCH 2.  A
read-modify-write (lackey ``M``) is one WRITE: it needs write permission and
its translation is the store's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

import numpy as np

from fastmmu.workloads.program import ProgramError

CHUNK_RECORDS = 1 << 20
NATIVE_MAGIC = b"FMMUTRC1"  # the first 8 bytes of a native-format trace (traces/native.py)


class TraceError(ProgramError, ValueError):
    """A trace the user gave cannot be read: where, what, and the offending text."""

    def __init__(self, path: str, message: str, *, line: int | None = None, offset: int | None = None,
                 text: str | bytes | None = None) -> None:
        self.path, self.message, self.line, self.offset, self.text = path, message, line, offset, text
        where = path
        if line is not None:
            where += f":{line}"
        elif offset is not None:
            where += f": byte {offset}"
        detail = f": {message}"
        if text is not None:
            shown = text.decode("utf-8", "backslashreplace") if isinstance(text, bytes) else text
            detail += f": {shown[:80]!r}"
        super().__init__(where + detail)


class StreamError(TraceError):
    """The data under a reader failed part way (corrupt or truncated compressed data, a read error).

    ``fill`` records in ``bytes_before`` what it had read of its block before the failure; the
    reader delivers the whole records among them, then raises ``at(records)``: the same error
    saying how many records were read in all."""

    def __init__(self, path: str, what: str, detail: str, records: int | None = None) -> None:
        self.what, self.detail, self.records = what, detail, records
        self.bytes_before = 0
        where = "at its start" if records is None else f"after {records:,} records"
        super().__init__(path, f"{what} {where} ({detail}); every record before it was read")

    def at(self, records: int) -> StreamError:
        return StreamError(self.path, self.what, self.detail, records)


# -- guest-OS events (the native format carries them; text formats have none) ----------

@dataclass(frozen=True)
class SwitchProcess:
    """The records that follow belong to process ``pid`` (of the current VM)."""
    pid: int


@dataclass(frozen=True)
class SwitchCr3:
    """A MOV to CR3: the records that follow belong to the address space ``cr3`` names."""
    cr3: int


@dataclass(frozen=True)
class SwitchVM:
    """The records that follow belong to VM ``vm``."""
    vm: int


@dataclass(frozen=True)
class MapRegion:
    """The current process maps [base, base + length)."""
    base: int
    length: int
    writable: bool = True
    executable: bool = False
    huge: bool = False


@dataclass(frozen=True)
class UnmapRegion:
    """The current process unmaps [base, base + length)."""
    base: int
    length: int


@dataclass(frozen=True)
class Invlpg:
    """The current process's kernel invalidates the translation of ``va``."""
    va: int


Event = SwitchProcess | SwitchCr3 | SwitchVM | MapRegion | UnmapRegion | Invlpg


@dataclass
class TraceChunk:
    addresses: np.ndarray  # uint64, virtual addresses
    kinds: np.ndarray      # uint8, fastmmu.Access: READ 0, WRITE 1, FETCH 2
    events: list[tuple[int, Event]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.addresses)


@dataclass
class TraceStats:
    """What reading a trace met: records kept, lines skipped by design (valgrind's own ``==pid==``
    lines, comments), bad records skipped under ``skip_bad``, and how far into the file it is."""
    records: int = 0
    events: int = 0
    skipped_lines: int = 0
    bad_records: int = 0
    bytes_read: int = 0    # of the file as stored (compressed bytes for a compressed file)
    bytes_total: int = 0   # its size; 0 when unknown (a pipe)
    ended: bool = False    # a native trace's end record was read (version 2)
    writer_partial: bool = False  # ... and it says its writer stopped before its input ended


@dataclass
class ReadOptions:
    path: str                       # for messages
    skip_bad: bool = False
    chunk_records: int = CHUNK_RECORDS
    stats: TraceStats = field(default_factory=TraceStats)
    # a record whose address is not a sign-extended value of this many bits is bad (text and
    # ChampSim readers; 57 for a conversion to the native format); None: any 64-bit address
    address_bits: int | None = None


class FormatReader(Protocol):
    """A format module's reader: decompressed bytes in, chunks out (raises TraceError)."""

    def __call__(self, stream: BinaryIO, options: ReadOptions) -> Iterator[TraceChunk]: ...


def fits_signed(addresses: np.ndarray, bits: int) -> np.ndarray:
    """Per uint64 address: is it a ``bits``-bit two's-complement value (bits ``bits-1``..63 equal)?"""
    if bits >= 64:
        return np.ones(len(addresses), dtype=bool)
    high = np.asarray(addresses, dtype=np.uint64) >> np.uint64(bits - 1)
    return (high == 0) | (high == np.uint64((1 << (65 - bits)) - 1))


def wide_address(path: str, address: int, bits: int, *, line: int | None = None, offset: int | None = None,
                 text: str | bytes | None = None) -> TraceError:
    """The error of a record whose address does not fit in ``ReadOptions.address_bits``."""
    return TraceError(path, f"address {address:#x} does not fit in {bits} bits (the native format holds "
                            "canonical addresses of 5-level paging)", line=line, offset=offset, text=text)


def fill(stream: BinaryIO, view: memoryview) -> int:
    """Read into ``view`` until it is full or the stream ends; how many bytes came.  A
    ``StreamError`` says in ``bytes_before`` how many bytes of ``view`` came before it."""
    got = 0
    readinto = getattr(stream, "readinto", None)
    try:
        while got < len(view):
            if readinto is not None:
                n = readinto(view[got:])
            else:
                data = stream.read(len(view) - got)
                n = len(data)
                view[got:got + n] = data
            if not n:
                break
            got += n
    except StreamError as error:
        error.bytes_before = got
        raise
    return got
