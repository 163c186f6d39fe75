"""Sizes as people write them ("64GiB", "512 MiB", 4096) turned into bytes, and numbers rounded for reading."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
    "p": 1 << 50, "pb": 1 << 50, "pib": 1 << 50,
}
_SIZE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes in ``value``: an int, or a string such as ``"2GiB"``.

    Binary units throughout (``GB`` means GiB, as memory is sized in powers
    of two).  ``what`` names the setting in the error message.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected a size such as 4096 or '2GiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: a size cannot be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match and match.group(2).lower() in _UNITS:
            return int(match.group(1)) * _UNITS[match.group(2).lower()]
        raise ValueError(f"{what}: cannot read {value!r} as a size; write e.g. 4096, '512MiB' or '1TiB'")
    raise TypeError(f"{what}: expected a size such as 4096 or '2GiB', got {type(value).__name__}")


def format_size(nbytes: int) -> str:
    """The shortest exact binary-unit spelling of ``nbytes`` ("2GiB", "4097B")."""
    units = (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
    for suffix, factor in units:
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return f"{nbytes}B"


def approx_size(nbytes: int) -> str:
    """``nbytes`` rounded for reading ("5.6MiB", "1016B"): reports, not settings."""
    for suffix, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= factor:
            return f"{nbytes / factor:.1f}{suffix}"
    return f"{nbytes}B"


def approx_count(n: float, unit_space: str = "") -> str:
    """``n`` rounded for reading in decimal units ("2.3M", "18.8k", "512"): tables, progress, rates."""
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit_space}{unit}"
    return f"{int(n)}"
