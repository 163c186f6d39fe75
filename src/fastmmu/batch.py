"""What both MMU backends share about a batch: its result and the checks of its arrays."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastmmu.arch import Status
from fastmmu.translation import Walk


@dataclass(frozen=True)
class BatchResult:
    """Where a batch stopped: ``stopped`` is the index of the first access not
    translated (``len(addresses)`` when all were), with its fault record."""

    stopped: int
    status: Status
    fault: Walk | None

    @property
    def complete(self) -> bool:
        return self.status == Status.OK


# One memory reference of a walk in the reference log (MMU.log_references / take_references):
# the host-physical address of the entry read, the index of its access in the batch, the
# entry's level (1 PTE .. 5 PML5E) and its dimension (0 x86 paging, 1 EPT).  16 bytes, the
# layout of the compiled core's ref_record_t.
REFERENCE_DTYPE = np.dtype([("address", "<u8"), ("index", "<u4"), ("level", "u1"), ("dimension", "u1")],
                           align=True)


def _no_array() -> None:
    return None


_validated_kinds: Callable[[], Any] = _no_array


def _check_kinds(kinds: np.ndarray) -> None:
    """Every kind valid.  A read-only array that passed is remembered, so resuming a batch after
    a fault does not scan it again (it cannot have changed without being made writable)."""
    global _validated_kinds
    bad = (kinds & ~np.uint8(15)) | ((kinds & 1) & ((kinds >> 1) & 1))
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"kinds[{index}]: {int(kinds[index])} is not a valid access kind "
                         "(bits 0..3, never WRITE|FETCH)")
    if _frozen(kinds):
        _validated_kinds = weakref.ref(kinds)


def _frozen(array: np.ndarray) -> bool:
    """Whether nothing can change ``array``'s data: it and every array it views are read-only,
    down to one that owns its memory."""
    while True:
        if array.flags.writeable:
            return False
        base = array.base
        if base is None:
            return True
        if not isinstance(base, np.ndarray):
            return False
        array = base


_last_batch: tuple[Any, ...] = ()


def check_batch(addresses: Any, kinds: Any, out: Any, status: Any, start: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a batch's arrays (the same checks, and messages, as the compiled MMU).

    Resuming the batch just checked (the same four arrays, after a fault) takes a shortcut:
    only what could have changed since is checked again."""
    global _last_batch
    last = _last_batch
    # (Dead weak references return None: so must the arguments not be None themselves.)
    if (last and isinstance(kinds, np.ndarray) and isinstance(out, np.ndarray) and isinstance(status, np.ndarray)
            and last[0]() is addresses and last[1]() is kinds and last[2]() is out and last[3]() is status
            and kinds is _validated_kinds() and _frozen(kinds) and out.shape == last[4] == status.shape
            == addresses.shape == kinds.shape and out.flags.writeable and status.flags.writeable
            and out.dtype == np.uint64 and status.dtype == np.uint8 and addresses.dtype == np.uint64
            and isinstance(start, int) and not isinstance(start, bool) and 0 <= start <= last[4][0]):
        return addresses, kinds, out, status
    if not isinstance(addresses, np.ndarray) or addresses.dtype != np.uint64 or addresses.ndim != 1:
        raise TypeError("addresses: expected a 1-D numpy array of uint64")
    n = len(addresses)
    if kinds is None or isinstance(kinds, (int, np.integer)):
        kinds = np.full(n, 0 if kinds is None else int(kinds), dtype=np.uint8)
    if not isinstance(kinds, np.ndarray) or kinds.dtype != np.uint8 or kinds.shape != (n,):
        raise TypeError(f"kinds: expected a uint8 array of length {n} (or one int for all)")
    if kinds is not _validated_kinds() or not _frozen(kinds):
        _check_kinds(kinds)
    if out is None:
        out = np.zeros(n, dtype=np.uint64)
    elif not isinstance(out, np.ndarray) or out.dtype != np.uint64 or out.shape != (n,):
        raise TypeError(f"out: expected a uint64 array of length {n}")
    if status is None:
        status = np.zeros(n, dtype=np.uint8)
    elif not isinstance(status, np.ndarray) or status.dtype != np.uint8 or status.shape != (n,):
        raise TypeError(f"status: expected a uint8 array of length {n}")
    for name, array in (("addresses", addresses), ("kinds", kinds), ("out", out), ("status", status)):
        if not array.flags.c_contiguous:
            raise ValueError(f"{name}: expected a contiguous array (use np.ascontiguousarray)")
    if not out.flags.writeable or not status.flags.writeable:
        raise ValueError("out/status: expected writable arrays")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= n:
        raise ValueError(f"start: expected 0..{n}, got {start!r}")
    _last_batch = (weakref.ref(addresses), weakref.ref(kinds), weakref.ref(out), weakref.ref(status),
                   addresses.shape)  # weak: a checked batch must not outlive its user
    return addresses, kinds, out, status
