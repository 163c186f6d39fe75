"""Seeded, vectorised access generators: each is a program (``steps()``) for one process.

Every generator maps its own region first (``Mmap``), then yields its
accesses in chunks of at most ``chunk`` so that a long program never sits in
memory whole.  The same parameters give the same accesses, every time.

Every parameter is checked when a generator is made (``param`` declares its
range, ``check_params`` enforces it): a ValueError names the generator, the
parameter, what it takes and the value given, e.g. ``zipf: alpha: expected a
number > 0, got -1``.  ``--workload`` and config files report the same text.

>>> from fastmmu.workloads import zipf
>>> program = zipf(pages=1024, n=10_000, seed=1)
>>> steps = list(program.steps())
>>> type(steps[0]).__name__, sum(len(s) for s in steps[1:])
('Mmap', 10000)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, dataclass_transform

import numpy as np

from fastmmu.workloads.program import Accesses, Mmap, Munmap, Step

DEFAULT_BASE = 0x0000_1000_0000_0000
CHUNK = 1 << 20
USER_TOP = 1 << 56         # the top of the lower canonical half of LA57: a generator's region ends below it
MAX_TABLE_PAGES = 1 << 26  # zipf and working_sets hold a table per page: 512 MiB of it at most
MAX_CHUNK = 1 << 26
_BLOCK = 1 << 16  # accesses generated per numpy call inside a chunk: bounds the temporaries


# -- parameters ----------------------------------------------------------------------------


def param(description: str, *, kind: type = int, low: float | None = None, high: float | None = None,
          low_open: bool = False, default: Any = dataclasses.MISSING) -> Any:
    """A generator parameter: what it is and its range, which ``check_params`` enforces."""
    return dataclasses.field(default=default, metadata={"description": description, "kind": kind, "low": low,
                                                        "high": high, "low_open": low_open})


_G = TypeVar("_G")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, param))
def generator(cls: type[_G]) -> type[_G]:
    """A generator's class: a frozen dataclass of ``param``s.  Declared as a dataclass transform so
    that type checkers (and stubtest) know which parameters have defaults."""
    return dataclass(frozen=True)(cls)


def generator_name(program: object) -> str:
    """``WorkingSets`` -> ``working_sets``: the name ``--workload`` and the registry use."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(program).__name__).lower()


def expected_range(meta: Any) -> str:
    """What a parameter takes, in words: "an integer >= 1", "a number in [0, 1]", "a number > 0"."""
    what = "an integer" if meta["kind"] is int else "a number"
    low, high = meta["low"], meta["high"]
    if low is not None and high is not None:
        return f"{what} in {'(' if meta['low_open'] else '['}{_bound(low)}, {_bound(high)}]"
    if low is not None:
        return f"{what} {'>' if meta['low_open'] else '>='} {_bound(low)}"
    return what


def _bound(value: float) -> str:
    if isinstance(value, int) and value >= 1 << 20 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return f"{value:g}"


def fail(program: object, name: str, expected: str, value: Any) -> NoReturn:
    shown = f"{value:#x}" if name == "base" and isinstance(value, int) else repr(value)
    raise ValueError(f"{generator_name(program)}: {name}: expected {expected}, got {shown}")


def check_params(program: Any) -> None:
    """Every ``param`` of ``program`` has its type and lies in its range; numpy scalars and whole
    floats (``n=1e6``) become plain ints."""
    for f in dataclasses.fields(program):
        meta = f.metadata
        if "kind" not in meta:
            continue
        given = getattr(program, f.name)
        if isinstance(given, bool) or not isinstance(given, (int, float, np.integer, np.floating)):
            fail(program, f.name, expected_range(meta), given)
        value: float = float(given)
        if not math.isfinite(value) or (meta["kind"] is int and not value.is_integer()):
            fail(program, f.name, expected_range(meta), given)
        if meta["kind"] is int:
            value = int(given)
        low, high = meta["low"], meta["high"]
        if (low is not None and (value <= low if meta["low_open"] else value < low)) \
                or (high is not None and value > high):
            fail(program, f.name, expected_range(meta), given)
        object.__setattr__(program, f.name, value)


def check_region(program: object, base: int, length: int, pages: int) -> None:
    """[base, base + length) starts on a page and ends by ``USER_TOP`` (``pages`` sized it)."""
    if base % 4096:
        fail(program, "base", "a multiple of 4096 (a page boundary)", base)
    if base + length > USER_TOP:
        fail(program, "pages", f"a region that ends by {USER_TOP:#x} (the lower canonical half of 5-level "
                               f"paging) from base {base:#x}", pages)


PAGES = "pages in its region"
N = "accesses"
WRITES = "the share of accesses that are writes"
SEED = "the seed of its random choices"
BASE = "the virtual address its region starts at (page-aligned)"
CHUNK_DOC = "accesses per batch it yields"
STRIDE = "bytes between accesses: a multiple of 8, at most the region"


# -- helpers -------------------------------------------------------------------------------


def _kinds(rng: np.random.Generator, count: int, writes: float) -> np.ndarray:
    """READ or WRITE per access, a ``writes`` share of them writes.  Drawn a block at a time (the same
    numbers as one draw: the generator's stream does not depend on how it is split), so that no
    8-byte float per access is held at once."""
    out = np.empty(count, dtype=np.uint8)
    for at in range(0, count, _BLOCK):
        size = min(_BLOCK, count - at)
        np.less(rng.random(size), writes, out=out[at:at + size], casting="unsafe")
    return out


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


def _scan_offsets(start: int, count: int, stride: int, span: int) -> np.ndarray:
    """``(i * stride) % span`` for i in [start, start + count), exactly: products are taken in
    blocks short enough never to pass 2**64, each block's first offset in Python integers."""
    out = np.empty(count, dtype=np.uint64)
    block = max(1, min(count, _BLOCK, ((1 << 64) - 1) // stride))
    steps = (np.arange(block, dtype=np.uint64) * np.uint64(stride)) % np.uint64(span)
    for at in range(0, count, block):
        size = min(block, count - at)
        out[at:at + size] = (np.uint64((start + at) * stride % span) + steps[:size]) % np.uint64(span)
    return out


# -- the generators ------------------------------------------------------------------------


@generator
class Zipf:
    """Accesses to ``pages`` pages with Zipf-distributed popularity (exponent ``alpha``); the
    popular pages are spread over the region by a seeded permutation."""

    pages: int = param(PAGES, low=1, high=MAX_TABLE_PAGES)
    n: int = param(N, low=0)
    alpha: float = param("the Zipf exponent: larger is more skewed", kind=float, low=0.0, low_open=True,
                         default=1.0)
    writes: float = param(WRITES, kind=float, low=0.0, high=1.0, default=0.3)
    seed: int = param(SEED, low=0, default=0)
    base: int = param(BASE, low=0, default=DEFAULT_BASE)
    chunk: int = param(CHUNK_DOC, low=1, high=MAX_CHUNK, default=CHUNK)

    def __post_init__(self) -> None:
        check_params(self)
        check_region(self, self.base, self.pages << 12, self.pages)

    def steps(self) -> Iterator[Step]:
        yield Mmap(self.base, self.pages << 12)
        rng = np.random.default_rng(self.seed)
        weights = 1.0 / np.arange(1, self.pages + 1, dtype=np.float64) ** self.alpha
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]
        order = rng.permutation(self.pages).astype(np.uint64)
        for count in _chunks(self.n, self.chunk):
            ranks = np.minimum(np.searchsorted(cdf, rng.random(count)), self.pages - 1)
            yield _on_pages(self.base, order[ranks], rng, self.writes)


@generator
class Uniform:
    """Accesses spread evenly over ``pages`` pages."""

    pages: int = param(PAGES, low=1)
    n: int = param(N, low=0)
    writes: float = param(WRITES, kind=float, low=0.0, high=1.0, default=0.3)
    seed: int = param(SEED, low=0, default=0)
    base: int = param(BASE, low=0, default=DEFAULT_BASE)
    chunk: int = param(CHUNK_DOC, low=1, high=MAX_CHUNK, default=CHUNK)

    def __post_init__(self) -> None:
        check_params(self)
        check_region(self, self.base, self.pages << 12, self.pages)

    def steps(self) -> Iterator[Step]:
        yield Mmap(self.base, self.pages << 12)
        rng = np.random.default_rng(self.seed)
        for count in _chunks(self.n, self.chunk):
            yield _on_pages(self.base, rng.integers(0, self.pages, count, dtype=np.uint64), rng, self.writes)


@generator
class Sequential:
    """Passes over ``pages`` pages in order, ``stride`` bytes apart (a scan or a strided sweep)."""

    pages: int = param(PAGES, low=1)
    n: int = param(N, low=0)
    stride: int = param(STRIDE, default=64)
    writes: float = param(WRITES, kind=float, low=0.0, high=1.0, default=0.0)
    seed: int = param(SEED, low=0, default=0)
    base: int = param(BASE, low=0, default=DEFAULT_BASE)
    chunk: int = param(CHUNK_DOC, low=1, high=MAX_CHUNK, default=CHUNK)

    def __post_init__(self) -> None:
        check_params(self)
        check_region(self, self.base, self.pages << 12, self.pages)
        if self.stride < 8 or self.stride % 8 or self.stride > self.pages << 12:
            fail(self, "stride", f"a multiple of 8 from 8 to the region's {self.pages << 12} bytes", self.stride)

    def steps(self) -> Iterator[Step]:
        yield Mmap(self.base, self.pages << 12)
        rng = np.random.default_rng(self.seed)
        span = self.pages << 12
        for start in range(0, self.n, self.chunk):  # (the start matters here: the scan goes on)
            count = min(self.chunk, self.n - start)
            addresses = _scan_offsets(start, count, self.stride, span)
            addresses += np.uint64(self.base)  # in place: no second array held while the batch runs
            yield Accesses(addresses, _kinds(rng, count, self.writes))
            del addresses


@generator
class Strided(Sequential):
    """A sweep ``stride`` bytes apart, by default one access per page: every access a new page,
    the pattern that defeats a TLB (and, with a stride of 2 MiB, the paging-structure caches)."""

    stride: int = param(STRIDE, default=4096)


@generator
class WorkingSets:
    """Phased working sets: ``phases`` phases, each uniform over its own set of ``set_pages``
    pages drawn from a region of ``pages``; ``keep`` is the share of a set carried over from the
    phase before (0: each phase moves to new pages, 1: one set throughout)."""

    pages: int = param(PAGES, low=1, high=MAX_TABLE_PAGES)
    n: int = param(N, low=0)
    phases: int = param("how many phases", low=1, default=4)
    set_pages: int = param("pages in each phase's working set", low=1, default=256)
    keep: float = param("the share of a set carried over to the next phase", kind=float, low=0.0, high=1.0,
                        default=0.0)
    writes: float = param(WRITES, kind=float, low=0.0, high=1.0, default=0.3)
    seed: int = param(SEED, low=0, default=0)
    base: int = param(BASE, low=0, default=DEFAULT_BASE)
    chunk: int = param(CHUNK_DOC, low=1, high=MAX_CHUNK, default=CHUNK)

    def __post_init__(self) -> None:
        check_params(self)
        check_region(self, self.base, self.pages << 12, self.pages)
        kept = int(round(self.keep * self.set_pages))
        needed = self.set_pages + (self.set_pages - kept if self.phases > 1 else 0)
        if self.pages < needed:
            fail(self, "pages", f"room for each phase's new pages: at least set_pages + the pages not kept = "
                                f"{needed} (phases={self.phases}, set_pages={self.set_pages}, keep={self.keep})",
                 self.pages)

    def steps(self) -> Iterator[Step]:
        kept = int(round(self.keep * self.set_pages))
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


@generator
class Churn:
    """Map/unmap churn: ``rounds`` times, map a region of ``pages`` pages, touch it with ``n``
    accesses, unmap it.  Each round builds and frees page tables."""

    pages: int = param(PAGES, low=1)
    n: int = param("accesses in each round", low=0)
    rounds: int = param("how many map, touch, unmap rounds", low=1, default=10)
    writes: float = param(WRITES, kind=float, low=0.0, high=1.0, default=0.5)
    seed: int = param(SEED, low=0, default=0)
    base: int = param(BASE, low=0, default=DEFAULT_BASE)

    def __post_init__(self) -> None:
        check_params(self)
        length = self.pages << 12
        # the rounds cycle through four places, 2 MiB apart: the last one ends highest
        check_region(self, self.base, 3 * (length + (2 << 20)) + length, self.pages)

    def steps(self) -> Iterator[Step]:
        rng = np.random.default_rng(self.seed)
        length = self.pages << 12
        for round_ in range(self.rounds):
            base = self.base + (round_ % 4) * (length + (2 << 20))
            yield Mmap(base, length)
            for count in _chunks(self.n, CHUNK):
                yield _on_pages(base, rng.integers(0, self.pages, count, dtype=np.uint64), rng, self.writes)
            yield Munmap(base, length)


@generator
class Phases:
    """Programs run one after the other in one process (their regions must not overlap)."""

    programs: tuple[object, ...]

    def __post_init__(self) -> None:
        for i, program in enumerate(self.programs):
            if not callable(getattr(program, "steps", None)):
                raise ValueError(f"phases: programs[{i}]: expected a program (an object with steps()), "
                                 f"got {type(program).__name__}")

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
