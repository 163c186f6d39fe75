"""Real traces: read valgrind lackey, Dinero din, ChampSim and native traces as chunks of arrays.

>>> trace = fastmmu.traces.open("sort.lackey.gz")    # doctest: +SKIP
>>> for chunk in trace.chunks():                      # doctest: +SKIP
...     mmu.translate(chunk.addresses, chunk.kinds)
"""

from fastmmu.traces.base import (
    CHUNK_RECORDS,
    NATIVE_MAGIC,
    Event,
    Invlpg,
    MapRegion,
    ReadOptions,
    SwitchCr3,
    SwitchProcess,
    SwitchVM,
    TraceChunk,
    TraceError,
    TraceStats,
    UnmapRegion,
)
from fastmmu.traces.source import FORMATS, TRACE_FORMATS, Trace, TraceFormat, format_name, open

__all__ = [
    "CHUNK_RECORDS", "FORMATS", "NATIVE_MAGIC", "Event", "Invlpg", "MapRegion", "ReadOptions", "SwitchCr3",
    "SwitchProcess", "SwitchVM", "TRACE_FORMATS", "Trace", "TraceChunk", "TraceError", "TraceFormat", "TraceStats",
    "UnmapRegion", "format_name", "open",
]
