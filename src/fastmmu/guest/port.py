"""The one narrow interface through which a guest touches its page tables.

Everything the guest kernel does to paging goes through a ``PagingPort``:
reading and writing a page-table entry, starting a fresh table, loading CR3,
and invalidating translations.  Each virtualization mode implements the port,
and so decides what traps: natively nothing does, under brute force every
call but ``new_table``/``release_table`` does, under shadow paging CR3 loads
and invalidations do, and under nested paging nothing does.

Addresses are guest-physical frame numbers (``gfn``); entries are what the
guest wrote, with the accessed/dirty flags the hardware (or the hypervisor,
on its behalf) set.

What a bad argument gets, in every mode alike (``check_slot`` and friends, called
once by ``Mode`` before anything is touched: no exit counted, no EPT violation,
nothing read or written):

- ``ValueError`` for an argument no instruction could encode: a frame number
  or an index that is not an int, a negative frame, an index outside 0..511
  (entry 512 of a table is entry 0 of the next frame: name that frame), an
  entry, a CR3 value or an address outside 0..2**64-1.  It is a bug of the
  code driving the port and leaves ``Machine.run`` as it is.
- ``GuestMemoryError`` for a frame the VM does not have (``gfn`` >= its
  frames): the guest touched memory it was not given.  Inside ``Machine.run``
  the VM is then stopped with that reason, as a real hypervisor would on an
  access it cannot back.
- What the hardware would do for a well-formed but faulting operand: a CR3
  value with reserved bits, or an INVPCID type, descriptor or address that
  raises #GP(0) on hardware, stops the VM (``VM.terminate``) with the reason:
  it is a #GP in the guest kernel.  A non-canonical INVLPG is a no-op.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

ENTRIES = 512
U64 = (1 << 64) - 1


class GuestMemoryError(Exception):
    """The guest touched guest-physical memory its VM does not have."""


def _integer(value: object, what: str, expected: str) -> int:
    """``value`` as an int (anything with ``__index__`` but a bool); ValueError naming ``what`` otherwise."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{what}: expected {expected}, got {value!r}")
    return int(value.__index__())  # type: ignore[attr-defined]


def check_u64(value: object, what: str) -> int:
    """``value`` as a 64-bit register or entry value; ValueError (naming ``what``) otherwise."""
    number = _integer(value, what, "an integer")
    if not 0 <= number <= U64:
        raise ValueError(f"{what}: {number:#x} is not a 64-bit value (0..2**64-1)")
    return number


def check_frame(gfn: object, frames: int, what: str) -> int:
    """``gfn`` as a frame of a VM of ``frames`` frames: ValueError when malformed, GuestMemoryError
    when beyond the VM."""
    frame = _integer(gfn, what, "a guest frame number")
    if frame < 0:
        raise ValueError(f"{what}: guest frame {frame} is negative")
    if frame >= frames:
        raise GuestMemoryError(f"{what}: guest frame {frame:#x} is beyond the VM's memory ({frames:#x} frames)")
    return frame


def check_slot(gfn: object, index: object, frames: int, what: str) -> tuple[int, int]:
    """A table frame and an entry index of it (0..511), checked as ``check_frame`` does."""
    entry = _integer(index, what, "an entry index")
    if not 0 <= entry < ENTRIES:
        raise ValueError(f"{what}: entry index {entry} is not 0..511")
    return check_frame(gfn, frames, what), entry


class PagingPort(Protocol):
    def new_table(self, gfn: int) -> None:
        """The guest clears frame ``gfn`` to use it as a page table (plain stores: never a trap)."""

    def release_table(self, gfn: int) -> None:
        """The guest no longer uses ``gfn`` as a page table (its own bookkeeping: never a trap)."""

    def read_pte(self, table_gfn: int, index: int) -> int:
        """Read entry ``index`` (0..511) of the table in frame ``table_gfn``."""

    def write_pte(self, table_gfn: int, index: int, value: int) -> None:
        """Write entry ``index`` (0..511) of the table in frame ``table_gfn``: any 64-bit value."""

    def clear_ptes(self, table_gfns: np.ndarray, indices: np.ndarray) -> None:
        """``write_pte(table, index, 0)`` of each pair, in order, in one call (a process's teardown)."""

    def peek_pte(self, table_gfn: int, index: int) -> int:
        """The entry as ``read_pte`` would return it, with no exit or other effect (inspection only)."""

    def load_cr3(self, value: int) -> None:
        """MOV to CR3: ``value`` holds the root's guest-physical address, the PCID and bit 63 (no-flush)."""

    def invlpg(self, va: int) -> None:
        """INVLPG ``va`` in the current address space (a no-op when ``va`` is not canonical)."""

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> None:
        """INVPCID of type ``kind`` (0 address, 1 context, 2 all with globals, 3 all but globals), with
        the descriptor's PCID (bits 63:0 of it) and linear address."""
