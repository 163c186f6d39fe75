"""What a guest process does: a sequence of steps (memory accesses and mapping changes).

A ``Program`` is anything with ``steps()`` returning a fresh iterator of
steps, so that one program can run under every mode from the start.  Steps:

- ``Accesses``: a batch of virtual addresses (uint64) and access kinds
  (``fastmmu.Access`` values, uint8 or one int for all; the CPL-3 bit is
  added by the guest).
- ``Mmap`` / ``Munmap``: the process maps or unmaps a region.
- ``Invlpg``: the process's kernel invalidates one translation (a replayed
  trace says so; the guest kernel issues its own after every change it makes).

The process exits when its steps run out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fastmmu.arch import Access


class ProgramError(Exception):
    """A program cannot go on (its trace is malformed, say): the run stops there, keeps what was
    done, and reports this error."""


@dataclass(frozen=True)
class Accesses:
    addresses: np.ndarray
    kinds: np.ndarray

    def __post_init__(self) -> None:
        addresses = np.ascontiguousarray(self.addresses, dtype=np.uint64).reshape(-1)
        kinds = self.kinds
        if isinstance(kinds, (int, np.integer)):
            kinds = np.full(len(addresses), int(kinds), dtype=np.uint8)
        kinds = np.ascontiguousarray(kinds, dtype=np.uint8).reshape(-1)
        if kinds.shape != addresses.shape:
            raise ValueError(f"kinds: expected {len(addresses)} access kinds, got {len(kinds)}")
        if ((kinds & ~np.uint8(Access.WRITE | Access.FETCH)) != 0).any() or ((kinds & 3) == 3).any():
            raise ValueError("kinds: expected READ (0), WRITE (1) or FETCH (2) per access")
        object.__setattr__(self, "addresses", addresses)
        object.__setattr__(self, "kinds", kinds)

    def __len__(self) -> int:
        return len(self.addresses)

    @classmethod
    def trusted(cls, addresses: np.ndarray, kinds: np.ndarray) -> Accesses:
        """A batch of arrays that an earlier ``Accesses`` checked already (a replay): not checked again."""
        batch = object.__new__(cls)
        object.__setattr__(batch, "addresses", addresses)
        object.__setattr__(batch, "kinds", kinds)
        return batch


@dataclass(frozen=True)
class Mmap:
    base: int
    length: int
    writable: bool = True
    executable: bool = False
    huge: bool = False  # back with 2 MiB pages where the guest can

    def __post_init__(self) -> None:
        if self.base % 4096 or self.length <= 0 or self.length % 4096:
            raise ValueError(f"mmap: base {self.base:#x} and length {self.length:#x} must be positive "
                             "multiples of 4 KiB")


@dataclass(frozen=True)
class Munmap:
    base: int
    length: int


@dataclass(frozen=True)
class Invlpg:
    va: int


Step = Accesses | Mmap | Munmap | Invlpg


class Program(Protocol):
    def steps(self) -> Iterator[Step]: ...


@dataclass
class StepList:
    """A program given as a list of steps."""

    items: list[Step] = field(default_factory=list)

    def steps(self) -> Iterator[Step]:
        return iter(self.items)


def as_program(program: Program | Iterable[Step] | Accesses) -> Program:
    """Accept a Program, a single Accesses batch, or a list of steps."""
    if isinstance(program, Accesses):
        return StepList([program])
    if hasattr(program, "steps"):
        return program  # type: ignore[return-value]
    return StepList(list(program))  # type: ignore[arg-type]
