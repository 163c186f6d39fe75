"""The benchmark traces: sequential, uniform and Zipf, seeded with splitmix64.

They reproduce the traces of the C yardstick (``../shared/limit``) bit for
bit, so that fastmmu and C are timed on the same accesses; ``run.py`` checks
the checksums the C program prints.  A trace entry is ``ASID << 48 | VA``.
"""

from __future__ import annotations

import math

import numpy as np

PAGE_SHIFT = 12
ASID_SHIFT = 48
VA_MASK = (1 << ASID_SHIFT) - 1
TRACE_ASID = 1
VA_BASE = 0x0000_7F00_0000_0000
GIB = 1 << 30
SMALL_SPAN = GIB
ZIPF_PAGES = (16 * GIB) >> PAGE_SHIFT
ZIPF_ALPHA = 0.99
ZIPF_SCATTER = 0x9E3779B1
SEED_UNIFORM = 0x5EED0001
SEED_ZIPF = 0x5EED0002

_U = np.uint64
_ASID_BITS = _U(TRACE_ASID << ASID_SHIFT)


def splitmix64(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of splitmix64 from state ``seed``."""
    state = _U(seed) + np.arange(1, n + 1, dtype=np.uint64) * _U(0x9E3779B97F4A7C15)
    z = (state ^ (state >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


def sequential(n: int) -> np.ndarray:
    """An 8-byte stride from VA_BASE, wrapping at 1 GiB."""
    i = np.arange(n, dtype=np.uint64)
    return _ASID_BITS | (_U(VA_BASE) + ((i * _U(8)) & _U(SMALL_SPAN - 1)))


def uniform(n: int) -> np.ndarray:
    """Uniform over the 8-byte-aligned addresses of 1 GiB."""
    r = splitmix64(SEED_UNIFORM, n)
    return _ASID_BITS | (_U(VA_BASE) + ((r >> _U(37)) << _U(3)))


def zipf(n: int) -> np.ndarray:
    """Zipf(0.99) over the 4 Mi pages of 16 GiB, ranks scattered by an odd multiplier."""
    weights = np.fromiter((math.pow(k, -ZIPF_ALPHA) for k in range(1, ZIPF_PAGES + 1)),
                          dtype=np.float64, count=ZIPF_PAGES)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    r = splitmix64(SEED_ZIPF, n)
    u = (r >> _U(11)).astype(np.float64) * 2.0**-53
    rank = np.searchsorted(cdf, u, side="right").astype(np.uint64)
    page = (rank * _U(ZIPF_SCATTER)) & _U(ZIPF_PAGES - 1)
    offset = (r & _U(511)) << _U(3)
    return _ASID_BITS | (_U(VA_BASE) + (page << _U(PAGE_SHIFT)) + offset)


WORKLOADS = {
    "sequential 8 B, 1 GiB": sequential,
    "uniform, 1 GiB": uniform,
    "Zipf 0.99, 16 GiB": zipf,
}


def checksum(trace: np.ndarray) -> int:
    """sum of t[i] * (2i + 1) mod 2^64: the checksum the C program prints."""
    i = np.arange(len(trace), dtype=np.uint64)
    return int((trace * (_U(2) * i + _U(1))).sum(dtype=np.uint64))
