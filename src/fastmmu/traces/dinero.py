"""Dinero ``din`` traces: one ``LABEL ADDRESS [anything]`` per line.

Labels 0, 1, 2 are a data read, a data write and an instruction fetch.
Labels 3 and 4 are Dinero's escape records ("unknown access type" and
"cache flush"): they name no access a TLB would see, so they are skipped and
counted in ``stats.skipped_lines``, as are blank lines.  Addresses are hex,
with or without ``0x``; the rest of a line is a comment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from fastmmu._core.traceparse import parse_din
from fastmmu.traces.base import ReadOptions, TraceChunk
from fastmmu.traces.text import read_lines, sniff_lines

EXPECTED = "'LABEL HEXADDRESS' with LABEL 0 read, 1 write, 2 fetch, 3 or 4 escape"


def read(stream: BinaryIO, options: ReadOptions) -> Iterator[TraceChunk]:
    return read_lines(stream, options, parse_din, EXPECTED)


def sniff(head: bytes) -> bool:
    """``head`` starts as a din trace."""
    return sniff_lines(head, parse_din)
