"""Type stub of the compiled ``fastmmu._core.traceparse`` (source: pyx/traceparse.pyx)."""

from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

__all__ = ["BUILD_DEBUG", "Parsed", "parse_lackey", "parse_din"]

BUILD_DEBUG: Final[bool]

class Parsed(NamedTuple):
    consumed: int   # bytes of whole lines handled
    records: int    # written to the arrays
    lines: int      # handled: records, skipped and bad lines
    skipped: int    # lines skipped by design (valgrind's own lines, din escapes, blank lines)
    bad: int        # bad lines skipped under skip_bad
    error: int      # byte offset of the bad line that stopped the parse, or -1

def parse_lackey(block: Buffer, addresses: npt.NDArray[np.uint64], kinds: npt.NDArray[np.uint8], *,
                 skip_bad: bool = False) -> Parsed: ...
def parse_din(block: Buffer, addresses: npt.NDArray[np.uint64], kinds: npt.NDArray[np.uint8], *,
              skip_bad: bool = False) -> Parsed: ...
