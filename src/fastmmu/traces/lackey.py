"""valgrind lackey traces (``valgrind --tool=lackey --trace-mem=yes``).

Lines are ``I  addr,size`` (an instruction fetch), `` L addr,size`` (a load),
`` S addr,size`` (a store) and `` M addr,size`` (a modify: one WRITE, see
``traces.base``), with hex addresses and decimal sizes.  Valgrind's own
``==pid==`` and ``--pid--`` lines and blank lines are skipped and counted in
``stats.skipped_lines``; anything else is a bad record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from fastmmu._core.traceparse import parse_lackey
from fastmmu.traces.base import ReadOptions, TraceChunk
from fastmmu.traces.text import read_lines, sniff_lines

EXPECTED = "'I  hexaddr,size' or ' L|S|M hexaddr,size'"


def read(stream: BinaryIO, options: ReadOptions) -> Iterator[TraceChunk]:
    return read_lines(stream, options, parse_lackey, EXPECTED)


def sniff(head: bytes) -> bool:
    """``head`` starts as a lackey trace (valgrind's own lines aside)."""
    return sniff_lines(head, parse_lackey)
