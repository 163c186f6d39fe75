"""Seeded, vectorised access generators: each is a program (``steps()``) for one process.

Every generator maps its own region first (``Mmap``), then yields its
accesses in chunks of at most ``chunk`` so that a long program never sits in
memory whole.  The same parameters give the same accesses, every time.

>>> from fastmmu.workloads import zipf
>>> program = zipf(pages=1024, n=10_000, seed=1)
>>> steps = list(program.steps())
>>> type(steps[0]).__name__, sum(len(s) for s in steps[1:])
('Mmap', 10000)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fastmmu.workloads.program import Accesses, Mmap, Munmap, Step

DEFAULT_BASE = 0x0000_1000_0000_0000
CHUNK = 1 << 20


def _check(pages: int, n: int) -> None:
    if pages <= 0 or n < 0:
        raise ValueError(f"pages must be positive and n non-negative, got pages={pages}, n={n}")


def _kinds(rng: np.random.Generator, count: int, writes: float) -> np.ndarray:
    return (rng.random(count) < writes).astype(np.uint8)


def _offsets(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 512, count, dtype=np.uint64) << np.uint64(3)


def _chunks(n: int, chunk: int) -> Iterator[int]:
    """The sizes of the batches ``n`` accesses are yielded in."""
    for start in range(0, n, chunk):
        yield min(chunk, n - start)


def _on_pages(base: int, pages: np.ndarray, rng: np.random.Generator, writes: float) -> Accesses:
    """One access somewhere in each of ``pages`` (page numbers from ``base``), a ``writes`` share of
    them writes."""
    count = len(pages)
    return Accesses(np.uint64(base) + (pages << np.uint64(12)) + _offsets(rng, count), _kinds(rng, count, writes))


@dataclass(frozen=True)
class Zipf:
    """Accesses to ``pages`` pages with Zipf-distributed popularity (exponent ``alpha``); the
    popular pages are spread over the region by a seeded permutation."""

    pages: int
    n: int
    alpha: float = 1.0
    writes: float = 0.3
    seed: int = 0
    base: int = DEFAULT_BASE
    chunk: int = CHUNK

    def steps(self) -> Iterator[Step]:
        _check(self.pages, self.n)
        yield Mmap(self.base, self.pages << 12)
        rng = np.random.default_rng(self.seed)
        weights = 1.0 / np.arange(1, self.pages + 1, dtype=np.float64) ** self.alpha
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]
        order = rng.permutation(self.pages).astype(np.uint64)
        for count in _chunks(self.n, self.chunk):
            ranks = np.minimum(np.searchsorted(cdf, rng.random(count)), self.pages - 1)
            yield _on_pages(self.base, order[ranks], rng, self.writes)


@dataclass(frozen=True)
class Uniform:
    """Accesses spread evenly over ``pages`` pages."""

    pages: int
    n: int
    writes: float = 0.3
    seed: int = 0
    base: int = DEFAULT_BASE
    chunk: int = CHUNK

    def steps(self) -> Iterator[Step]:
        _check(self.pages, self.n)
        yield Mmap(self.base, self.pages << 12)
        rng = np.random.default_rng(self.seed)
        for count in _chunks(self.n, self.chunk):
            yield _on_pages(self.base, rng.integers(0, self.pages, count, dtype=np.uint64), rng, self.writes)


@dataclass(frozen=True)
class Sequential:
    """Passes over ``pages`` pages in order, ``stride`` bytes apart (a scan or a strided sweep)."""

    pages: int
    n: int
    stride: int = 64
    writes: float = 0.0
    seed: int = 0
    base: int = DEFAULT_BASE
    chunk: int = CHUNK

    def steps(self) -> Iterator[Step]:
        _check(self.pages, self.n)
        if self.stride <= 0 or self.stride % 8:
            raise ValueError(f"stride: expected a positive multiple of 8 bytes, got {self.stride}")
        yield Mmap(self.base, self.pages << 12)
        rng = np.random.default_rng(self.seed)
        span = self.pages << 12
        for start in range(0, self.n, self.chunk):  # (the start matters here: the scan goes on)
            count = min(self.chunk, self.n - start)
            offsets = (np.arange(start, start + count, dtype=np.uint64) * np.uint64(self.stride)) % np.uint64(span)
            yield Accesses(np.uint64(self.base) + offsets, _kinds(rng, count, self.writes))


@dataclass(frozen=True)
class Strided(Sequential):
    """A sweep ``stride`` bytes apart, by default one access per page: every access a new page,
    the pattern that defeats a TLB (and, with a stride of 2 MiB, the paging-structure caches)."""

    stride: int = 4096


@dataclass(frozen=True)
class WorkingSets:
    """Phased working sets: ``phases`` phases, each uniform over its own set of ``set_pages``
    pages drawn from a region of ``pages``; ``keep`` is the share of a set carried over from the
    phase before (0: each phase moves to new pages, 1: one set throughout)."""

    pages: int
    n: int
    phases: int = 4
    set_pages: int = 256
    keep: float = 0.0
    writes: float = 0.3
    seed: int = 0
    base: int = DEFAULT_BASE
    chunk: int = CHUNK

    def steps(self) -> Iterator[Step]:
        _check(self.pages, self.n)
        kept = int(round(self.keep * self.set_pages))
        if self.phases <= 0 or self.set_pages <= 0 or not 0.0 <= self.keep <= 1.0 \
                or self.pages < self.set_pages + (self.set_pages - kept if self.phases > 1 else 0):
            raise ValueError(f"working sets: expected phases > 0, 0 <= keep <= 1 and room for each phase's new "
                             f"pages (pages >= set_pages + the pages not kept), got pages={self.pages}, "
                             f"phases={self.phases}, set_pages={self.set_pages}, keep={self.keep}")
        yield Mmap(self.base, self.pages << 12)
        rng = np.random.default_rng(self.seed)
        current = rng.choice(self.pages, self.set_pages, replace=False).astype(np.uint64)
        for phase in range(self.phases):
            if phase:   # keep a share of the set; the rest moves to pages the last phase did not use
                fresh = np.setdiff1d(np.arange(self.pages, dtype=np.uint64), current, assume_unique=True)
                current = np.concatenate([current[:kept], rng.choice(fresh, self.set_pages - kept, replace=False)])
                rng.shuffle(current)
            share = self.n // self.phases + (1 if phase < self.n % self.phases else 0)
            for count in _chunks(share, self.chunk):
                yield _on_pages(self.base, current[rng.integers(0, self.set_pages, count)], rng, self.writes)


@dataclass(frozen=True)
class Churn:
    """Map/unmap churn: ``rounds`` times, map a region of ``pages`` pages, touch it with ``n``
    accesses, unmap it.  Each round builds and frees page tables."""

    pages: int
    n: int
    rounds: int = 10
    writes: float = 0.5
    seed: int = 0
    base: int = DEFAULT_BASE

    def steps(self) -> Iterator[Step]:
        _check(self.pages, self.n)
        rng = np.random.default_rng(self.seed)
        length = self.pages << 12
        for round_ in range(self.rounds):
            base = self.base + (round_ % 4) * (length + (2 << 20))
            yield Mmap(base, length)
            yield _on_pages(base, rng.integers(0, self.pages, self.n, dtype=np.uint64), rng, self.writes)
            yield Munmap(base, length)


@dataclass(frozen=True)
class Phases:
    """Programs run one after the other in one process (their regions must not overlap)."""

    programs: tuple[object, ...]

    def steps(self) -> Iterator[Step]:
        for program in self.programs:
            yield from program.steps()  # type: ignore[attr-defined]


def zipf(pages: int, n: int, **options: object) -> Zipf:
    return Zipf(pages, n, **options)  # type: ignore[arg-type]


def uniform(pages: int, n: int, **options: object) -> Uniform:
    return Uniform(pages, n, **options)  # type: ignore[arg-type]


def sequential(pages: int, n: int, **options: object) -> Sequential:
    return Sequential(pages, n, **options)  # type: ignore[arg-type]


def strided(pages: int, n: int, **options: object) -> Strided:
    return Strided(pages, n, **options)  # type: ignore[arg-type]


def working_sets(pages: int, n: int, **options: object) -> WorkingSets:
    return WorkingSets(pages, n, **options)  # type: ignore[arg-type]


def churn(pages: int, n: int, **options: object) -> Churn:
    return Churn(pages, n, **options)  # type: ignore[arg-type]
