"""Open a trace file: undo its compression, tell its format, and replay it as chunks.

Compression is recognised by its magic bytes (gzip and xz by the standard
library, zstd by the optional ``zstandard`` package), the format by the
decompressed content.  A ``Trace`` holds no open file: each ``chunks()`` call
is a fresh pass, so one trace can be replayed once per simulation mode.
Every problem with the file becomes a ``TraceError``, never a traceback.
"""

from __future__ import annotations

import builtins
import gzip
import importlib
import lzma
import os
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from fastmmu.traces.base import (
    CHUNK_RECORDS,
    NATIVE_MAGIC,
    FormatReader,
    ReadOptions,
    StreamError,
    TraceChunk,
    TraceError,
    TraceStats,
)

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEAD_BYTES = 1 << 16   # of decompressed content, to tell the format


@dataclass(frozen=True)
class TraceFormat:
    """One trace format: where its reader lives, and what to tell a user about it."""

    name: str                # what format= and --format take
    module: str              # imported when first used (native.py may be absent from a build)
    reader: str              # the module's reader function
    sniffer: str             # the module's "does this head look like me" function
    description: str         # one line, for --help and error messages
    skipped: str = ""        # what stats.skipped_lines counts in this format ("" if nothing is skipped)
    aliases: tuple[str, ...] = ()


# The one table of trace formats: format=, --format, detection, --help and `trace info` all read it, in
# the order detection tries them: the native magic is certain, the two text grammars are disjoint, and
# the ChampSim layouts are a plausibility check, so a file both could be is read as the standard one.
TRACE_FORMATS = (
    TraceFormat("native", "fastmmu.traces.native", "read", "sniff",
                "fastmmu's compact format (starts with the magic FMMUTRC1)", aliases=("fmt", "fastmmu")),
    TraceFormat("lackey", "fastmmu.traces.lackey", "read", "sniff",
                "valgrind --tool=lackey --trace-mem=yes output", "valgrind's own ==pid== lines and blank lines",
                aliases=("valgrind",)),
    TraceFormat("din", "fastmmu.traces.dinero", "read", "sniff", "Dinero 'LABEL ADDRESS' lines",
                "escape records, labels 3 and 4, and blank lines", aliases=("dinero",)),
    TraceFormat("champsim", "fastmmu.traces.champsim", "read", "sniff", "ChampSim 64-byte input_instr records"),
    TraceFormat("champsim-cloudsuite", "fastmmu.traces.champsim", "read_cloudsuite", "sniff_cloudsuite",
                "ChampSim 96-byte cloudsuite_instr records", aliases=("champsim_cloudsuite", "cloudsuite")),
)
FORMATS: dict[str, TraceFormat] = {f.name: f for f in TRACE_FORMATS}
_BY_ALIAS = {alias: f.name for f in TRACE_FORMATS for alias in (f.name, *f.aliases)}


def format_name(name: str) -> str | None:
    """The format ``name`` (or one of its aliases, any case) stands for, or None."""
    return _BY_ALIAS.get(name.strip().lower())


def formats_help() -> str:
    """The formats in one line, for --help: each name with its aliases."""
    return ", ".join(f.name + (f" ({', '.join(f.aliases)})" if f.aliases else "") for f in TRACE_FORMATS)


class Trace:
    """A trace file, ready to be read as chunks of (addresses, kinds) any number of times."""

    def __init__(self, path: str, format: str, compression: str | None, *, skip_bad: bool = False,
                 chunk_records: int = CHUNK_RECORDS, address_bits: int | None = None) -> None:
        self.path = path
        self.format = format
        self.compression = compression   # "gzip", "xz", "zstd" or None
        self.skip_bad = skip_bad
        self.chunk_records = chunk_records
        self.address_bits = address_bits
        self.stats = TraceStats()        # of the current (or last) pass

    def __repr__(self) -> str:
        return f"Trace({self.path!r}, format={self.format!r}, compression={self.compression!r})"

    def chunks(self) -> Iterator[TraceChunk]:
        """A fresh pass over the trace; ``stats`` is a new ``TraceStats`` that follows it."""
        self.stats = TraceStats()
        return self._pass(_reader(self.format, self.path), self.stats)

    def metadata(self) -> dict[str, object]:
        """A native trace's metadata block (what made it, from what); {} for other formats."""
        if self.format != "native":
            return {}
        from fastmmu.traces.native import read_header

        with ExitStack() as stack:
            raw = stack.enter_context(_open_raw(self.path))
            stream = cast(BinaryIO, _Checked(stack.enter_context(_decompressed(raw, self.compression, self.path)),
                                             self.path, self.compression, None))
            return dict(read_header(stream, self.path).metadata)

    def _pass(self, reader: FormatReader, stats: TraceStats) -> Iterator[TraceChunk]:
        options = ReadOptions(self.path, skip_bad=self.skip_bad, chunk_records=self.chunk_records, stats=stats,
                              address_bits=self.address_bits)
        with ExitStack() as stack:
            raw = stack.enter_context(_open_raw(self.path))
            stats.bytes_total = _size(raw)
            stream = cast(BinaryIO, _Checked(stack.enter_context(_decompressed(raw, self.compression, self.path)),
                                             self.path, self.compression, stats))
            for chunk in reader(stream, options):
                stats.bytes_read = _tell(raw)
                yield chunk
            stats.bytes_read = _tell(raw)


def open(path: str | os.PathLike[str], format: str | None = None, *, skip_bad: bool = False,
         chunk_records: int = CHUNK_RECORDS, address_bits: int | None = None) -> Trace:
    """Open a trace: ``format`` (one of ``FORMATS``, or an alias) or detected from the content.

    ``address_bits``: a record whose address is not a sign-extended value of that many bits is
    a bad record (57 to convert to the native format); None accepts every 64-bit address.

    >>> trace = fastmmu.traces.open("sort.lackey.gz")         # doctest: +SKIP
    >>> for chunk in trace.chunks(): ...                       # doctest: +SKIP
    """
    path = os.fspath(path)
    if format is not None:
        known = format_name(format) if isinstance(format, str) else None
        if known is None:
            raise TraceError(path, f"unknown trace format {format!r} (known: {formats_help()})")
        format = known
    if isinstance(chunk_records, bool) or not isinstance(chunk_records, int) or chunk_records < 1:
        raise ValueError(f"chunk_records must be a positive int, got {chunk_records!r}")
    if address_bits is not None and (isinstance(address_bits, bool) or not isinstance(address_bits, int)
                                     or not 1 <= address_bits <= 64):
        raise ValueError(f"address_bits must be an int in [1, 64] or None, got {address_bits!r}")
    with _open_raw(path) as raw:
        try:
            magic = raw.peek(8)[:8]  # type: ignore[attr-defined]
        except OSError as error:
            raise TraceError(path, f"cannot read it: {error.strerror or error}") from None
        compression = compression_of(magic)
        with _decompressed(raw, compression, path) as stream:
            head = _Checked(stream, path, compression, None).read(HEAD_BYTES)
    if not head:
        raise TraceError(path, "empty trace" + (f" (nothing inside the {compression} data)" if compression else ""))
    if format is None:
        format = _detect(path, head)
    elif format == "native" and not head.startswith(NATIVE_MAGIC):
        looks = _detected(head)
        raise TraceError(path, f"not a native fastmmu trace: wrong magic (expected {NATIVE_MAGIC!r})"
                         + (f"; it looks like a {looks} trace (leave the format out to detect it)" if looks else ""),
                         offset=0, text=head[: len(NATIVE_MAGIC)])
    _reader(format, path)   # a format whose reader is missing fails now, not at the first pass
    return Trace(path, format, compression, skip_bad=skip_bad, chunk_records=chunk_records,
                 address_bits=address_bits)


def _detected(head: bytes) -> str | None:
    """The first format whose sniffer accepts ``head``, or None."""
    for f in TRACE_FORMATS:
        if getattr(importlib.import_module(f.module), f.sniffer)(head):
            return f.name
    return None


def _detect(path: str, head: bytes) -> str:
    found = _detected(head)
    if found is not None:
        return found
    tried = f"tried {', '.join(FORMATS)}; name one with format= or --format"
    if b"\0" in head[:4096]:
        raise TraceError(path, f"cannot tell the trace format ({tried}): binary data starting "
                               f"{head[:16].hex(' ')}", offset=0)
    raise TraceError(path, f"cannot tell the trace format ({tried}); its first line is", line=1,
                     text=head.split(b"\n", 1)[0])


def _reader(format: str, path: str) -> FormatReader:
    spec = FORMATS[format]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as error:
        raise TraceError(path, f"the {format} reader is not available in this build ({error})") from None
    reader: FormatReader = getattr(module, spec.reader)
    return reader


def _open_raw(path: str) -> BinaryIO:
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, "Is a directory")
        return builtins.open(path, "rb")   # our open() shadows the builtin here
    except FileNotFoundError:
        raise TraceError(path, "no such file") from None
    except IsADirectoryError:
        raise TraceError(path, "is a directory, not a trace file") from None
    except PermissionError:
        raise TraceError(path, "cannot read it: permission denied") from None
    except OSError as error:
        raise TraceError(path, f"cannot open it: {error.strerror or error}") from None


def _size(raw: BinaryIO) -> int:
    try:
        return os.fstat(raw.fileno()).st_size if raw.seekable() else 0
    except OSError:
        return 0


def compression_of(magic: bytes) -> str | None:
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    if magic.startswith(XZ_MAGIC):
        return "xz"
    if magic.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def _decompressed(raw: BinaryIO, compression: str | None, path: str) -> BinaryIO:
    if compression is None:
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    try:
        import zstandard
    except ImportError:
        raise TraceError(path, "zstd-compressed trace: this needs the zstandard package "
                               "(pip install fastmmu[zstd])") from None
    return _ZstdStream(raw, zstandard)  # type: ignore[return-value]


class _ZstdStream:
    """zstd frames, decompressed as a stream that reports a cut one.  zstandard's own stream reader
    ends quietly where the data ends, inside a frame or not, which would read a truncated text
    trace as a whole, shorter one.  Compressed data goes in ``PIECE`` bytes at a time, so one read
    holds a bounded amount of output however well the data compressed."""

    PIECE = 1 << 14

    def __init__(self, raw: BinaryIO, zstandard: Any) -> None:
        self.raw, self.zstandard = raw, zstandard
        self.frame = zstandard.ZstdDecompressor().decompressobj()
        self.in_frame = False           # data went into the current frame, which has not ended
        self.pending = bytearray()

    def __enter__(self) -> _ZstdStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pending = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.pending) < size:
            data = self.raw.read(self.PIECE)
            if not data:
                if self.in_frame:
                    raise EOFError("the zstd data ends inside a frame (the file is cut short)")
                break
            while data:
                self.in_frame = True
                self.pending += self.frame.decompress(data)
                if not self.frame.eof:
                    break
                data = self.frame.unused_data   # the next frame starts here (frames may follow one another)
                self.frame = self.zstandard.ZstdDecompressor().decompressobj()
                self.in_frame = False
        end = len(self.pending) if size < 0 else min(size, len(self.pending))
        out = bytes(self.pending[:end])
        del self.pending[:end]
        return out

    def readinto(self, buffer: memoryview | bytearray) -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[:len(data)] = data
        return len(data)


def _tell(raw: BinaryIO) -> int:
    try:
        return raw.tell()
    except OSError:
        return 0


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """What a decompressor raises on corrupt or truncated data (zstandard's error if it is there)."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


class _Checked:
    """A decompressed stream whose failures are ``StreamError``s naming the file and what went
    wrong (the reader adds how many records it read).  It reads at most ``READ_BYTES`` per call, so
    that a failure loses at most that much decompressed data (a decompressor keeps nothing of a
    read it fails part way: with 1 MiB, a cut 40k-record gzip trace read as 0 records)."""

    READ_BYTES = 1 << 16

    def __init__(self, stream: BinaryIO, path: str, compression: str | None, stats: TraceStats | None) -> None:
        self.stream, self.path, self.compression, self.stats = stream, path, compression, stats
        self.errors = _decompression_errors() if compression else (OSError,)

    def read(self, size: int = -1) -> bytes:
        try:
            return self.stream.read(size)
        except self.errors as error:
            raise self._failure(error) from None

    def readinto(self, buffer: memoryview | bytearray) -> int:
        view = memoryview(buffer)[:self.READ_BYTES]
        try:
            if hasattr(self.stream, "readinto"):
                return self.stream.readinto(view)  # type: ignore[no-any-return]
            data = self.stream.read(len(view))
        except self.errors as error:
            raise self._failure(error) from None
        view[:len(data)] = data
        return len(data)

    def _failure(self, error: BaseException) -> StreamError:
        detail = str(error) or type(error).__name__
        records = None if self.stats is None else self.stats.records
        if self.compression is None:
            return StreamError(self.path, "cannot read it", getattr(error, "strerror", None) or detail, records)
        return StreamError(self.path, f"corrupt or truncated {self.compression} data", detail, records)
