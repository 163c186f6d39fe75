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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import BinaryIO

from fastmmu.traces.base import (
    CHUNK_RECORDS,
    NATIVE_MAGIC,
    FormatReader,
    ReadOptions,
    TraceChunk,
    TraceError,
    TraceStats,
)

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HEAD_BYTES = 1 << 16   # of decompressed content, to tell the format

# name -> (module, reader, sniffer): modules are imported when first used (native.py may be absent).
FORMATS: dict[str, tuple[str, str, str]] = {
    "native": ("fastmmu.traces.native", "read", "sniff"),
    "lackey": ("fastmmu.traces.lackey", "read", "sniff"),
    "din": ("fastmmu.traces.dinero", "read", "sniff"),
    "champsim": ("fastmmu.traces.champsim", "read", "sniff"),
    "champsim-cloudsuite": ("fastmmu.traces.champsim", "read_cloudsuite", "sniff_cloudsuite"),
}
# The order detection tries them in: the native magic is certain, the two text grammars are disjoint,
# and the ChampSim layouts are a plausibility check, so a file both could be is read as the standard one.


class Trace:
    """A trace file, ready to be read as chunks of (addresses, kinds) any number of times."""

    def __init__(self, path: str, format: str, compression: str | None, *, skip_bad: bool = False,
                 chunk_records: int = CHUNK_RECORDS) -> None:
        self.path = path
        self.format = format
        self.compression = compression   # "gzip", "xz", "zstd" or None
        self.skip_bad = skip_bad
        self.chunk_records = chunk_records
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
            stream = stack.enter_context(_decompressed(raw, self.compression, self.path))
            with _translated_errors(self.path, self.compression):
                return dict(read_header(stream, self.path).metadata)

    def _pass(self, reader: FormatReader, stats: TraceStats) -> Iterator[TraceChunk]:
        options = ReadOptions(self.path, skip_bad=self.skip_bad, chunk_records=self.chunk_records, stats=stats)
        with ExitStack() as stack:
            raw = stack.enter_context(_open_raw(self.path))
            stats.bytes_total = _size(raw)
            stream = stack.enter_context(_decompressed(raw, self.compression, self.path))
            with _translated_errors(self.path, self.compression):
                for chunk in reader(stream, options):
                    stats.bytes_read = raw.tell()
                    yield chunk
            stats.bytes_read = raw.tell()


def open(path: str | os.PathLike[str], format: str | None = None, *, skip_bad: bool = False,
         chunk_records: int = CHUNK_RECORDS) -> Trace:
    """Open a trace: ``format`` (one of ``FORMATS``) or detected from the content.

    >>> trace = fastmmu.traces.open("sort.lackey.gz")         # doctest: +SKIP
    >>> for chunk in trace.chunks(): ...                       # doctest: +SKIP
    """
    path = os.fspath(path)
    if format is not None and format not in FORMATS:
        raise TraceError(path, f"unknown trace format {format!r} (known: {', '.join(FORMATS)})")
    if isinstance(chunk_records, bool) or not isinstance(chunk_records, int) or chunk_records < 1:
        raise ValueError(f"chunk_records must be a positive int, got {chunk_records!r}")
    with _open_raw(path) as raw:
        compression = _compression(raw.peek(8)[:8])  # type: ignore[attr-defined]
        with _decompressed(raw, compression, path) as stream, _translated_errors(path, compression):
            head = stream.read(HEAD_BYTES)
    if not head:
        raise TraceError(path, "empty trace" + (f" (nothing inside the {compression} data)" if compression else ""))
    if format is None:
        format = _detect(path, head)
    elif format == "native" and not head.startswith(NATIVE_MAGIC):
        raise TraceError(path, f"not a native fastmmu trace: wrong magic (expected {NATIVE_MAGIC!r})",
                         offset=0, text=head[: len(NATIVE_MAGIC)])
    _reader(format, path)   # a format whose reader is missing fails now, not at the first pass
    return Trace(path, format, compression, skip_bad=skip_bad, chunk_records=chunk_records)


def _detect(path: str, head: bytes) -> str:
    if head.startswith(NATIVE_MAGIC):
        return "native"
    for name, (module_name, _, sniffer) in FORMATS.items():
        if name != "native" and getattr(importlib.import_module(module_name), sniffer)(head):
            return name
    hint = f"cannot tell the trace format (pass format=, one of: {', '.join(FORMATS)})"
    if b"\0" in head:
        raise TraceError(path, hint, offset=0, text=head[:16])
    raise TraceError(path, hint, line=1, text=head.split(b"\n", 1)[0])


def _reader(format: str, path: str) -> FormatReader:
    module_name, function, _ = FORMATS[format]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise TraceError(path, f"the {format} reader is not available in this build ({error})") from None
    reader: FormatReader = getattr(module, function)
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


def _compression(magic: bytes) -> str | None:
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
    return zstandard.ZstdDecompressor().stream_reader(raw, closefd=False)  # type: ignore[no-any-return]


@contextmanager
def _translated_errors(path: str, compression: str | None) -> Iterator[None]:
    """Turn a decompressor's complaint about corrupt data into a TraceError."""
    try:
        yield
    except (EOFError, OSError, lzma.LZMAError) as error:
        if compression is None:
            raise
        raise TraceError(path, f"corrupt or truncated {compression} data: {error}") from None
    except Exception as error:
        if compression == "zstd" and type(error).__name__ == "ZstdError":
            raise TraceError(path, f"corrupt or truncated zstd data: {error}") from None
        raise
