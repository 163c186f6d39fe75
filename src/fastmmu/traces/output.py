"""Opening an output file: compressed by its suffix, and written whole or not at all.

Traces are large and compress well, and the readers decompress ``.gz``,
``.xz`` and ``.zst`` transparently; the writers compress the same way, so a
user names the file and gets what the name says.  zstd is optional (the
``zstandard`` package): asking for it without the package is a clear error,
never a silently uncompressed file with a ``.zst`` name.

Every file goes to a temporary name beside its final one
(``.NAME.<random>.partial``) and is renamed into place only when ``commit()``
closes it: a writer that fails, is interrupted or is killed never leaves a
file under the final name that looks complete.  ``discard()`` (and leaving a
``with`` block by an exception) removes the temporary file; only a kill -9
can leave one behind, and its name says what it is.
"""

from __future__ import annotations

import gzip
import lzma
import os
import secrets
from types import TracebackType
from typing import Any, BinaryIO, cast

PathLike = str | os.PathLike[str]
COMPRESSED_SUFFIXES = (".gz", ".xz", ".zst")


class OutputError(ValueError):
    """An output path that cannot be written: the message names it and says why."""


def check_output_path(path: PathLike, what: str = "output") -> None:
    """Fail now, before any work, if ``path`` cannot be written: a directory, a missing or
    read-only parent directory, or a ``.zst`` name without the zstandard package."""
    name = os.fspath(path)
    if not name:
        raise OutputError(f"{what}: an empty file name")
    if os.path.isdir(name):
        raise OutputError(f"{name}: is a directory; give a file name for the {what}")
    parent = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(parent):
        raise OutputError(f"{name}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{name}: cannot write into the directory {parent} (permission denied)")
    if os.path.exists(name) and not os.path.isfile(name):
        raise OutputError(f"{name}: exists and is not a regular file")
    if name.lower().endswith(".zst"):
        _zstandard(name)


def _zstandard(name: str) -> Any:
    try:
        import zstandard
    except ImportError:
        raise OutputError(f"{name}: writing a .zst file needs the optional 'zstandard' package "
                          "(pip install zstandard), or choose .gz or .xz") from None
    return zstandard


class AtomicOutput:
    """A binary file written under a temporary name: ``commit()`` renames it to ``path``,
    ``discard()`` removes it.  Compressed by ``path``'s suffix.  A context manager: a clean exit
    commits, an exception discards."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        check_output_path(self.path)
        head, tail = os.path.split(os.path.abspath(self.path))
        while True:   # a name no one else uses; created with the umask's permissions, as open() would
            self.temporary = os.path.join(head, f".{tail}.{secrets.token_hex(4)}.partial")
            try:
                fd = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create it: {exc.strerror}") from None
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._stream: BinaryIO | None = None
        try:
            self._stream = _compressor(self._file, self.path)
        except BaseException:
            self.discard()
            raise

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, data: Any) -> int:
        if self._stream is None:
            raise ValueError(f"write to {self.path}, which is closed")
        return self._stream.write(data)

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def commit(self) -> None:
        """Finish the file (the compressor's end included) and rename it to its final name."""
        if self._file is None:
            return
        try:
            if self._stream is not self._file and self._stream is not None:
                self._stream.close()
            self._file.close()
            os.replace(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        self._file = self._stream = None

    def discard(self) -> None:
        """Drop the file: nothing appears under its final name."""
        file, self._file, self._stream = self._file, None, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass

    close = commit

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def _compressor(file: BinaryIO, name: str) -> BinaryIO:
    lowered = name.lower()
    if lowered.endswith(".gz"):
        # the gzip header names the final file, not the temporary one
        return cast(BinaryIO, gzip.GzipFile(filename=os.path.basename(name), mode="wb", compresslevel=6,
                                            fileobj=file))
    if lowered.endswith(".xz"):
        return cast(BinaryIO, lzma.LZMAFile(file, "wb"))
    if lowered.endswith(".zst"):
        return cast(BinaryIO, _zstandard(name).ZstdCompressor().stream_writer(file, closefd=False))
    return file


def open_output(path: PathLike) -> AtomicOutput:
    """``path`` opened for binary writing (an ``AtomicOutput``), compressed if it ends in ``.gz``,
    ``.xz`` or ``.zst``; an ``OutputError`` (a ValueError) if it cannot be written."""
    return AtomicOutput(path)
