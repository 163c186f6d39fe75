"""Opening a trace file for writing, compressed by its suffix.

Traces are large and compress well, and the readers decompress ``.gz``,
``.xz`` and ``.zst`` transparently; the writers compress the same way, so a
user names the file and gets what the name says.  zstd is optional (the
``zstandard`` package): asking for it without the package is a clear error,
never a silently uncompressed file with a ``.zst`` name.
"""

from __future__ import annotations

import gzip
import lzma
import os
from typing import BinaryIO, cast

PathLike = str | os.PathLike[str]


def open_output(path: PathLike) -> BinaryIO:
    """``path`` opened for binary writing, compressed if it ends in ``.gz``, ``.xz`` or ``.zst``."""
    name = os.fspath(path)
    lowered = name.lower()
    if lowered.endswith(".gz"):
        return cast(BinaryIO, gzip.open(name, "wb", compresslevel=6))
    if lowered.endswith(".xz"):
        return cast(BinaryIO, lzma.open(name, "wb"))
    if lowered.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{name}: writing a .zst file needs the optional 'zstandard' package "
                             "(pip install zstandard), or choose .gz or .xz") from None
        return cast(BinaryIO, zstandard.open(name, "wb"))
    return open(name, "wb")  # the caller owns and closes it
