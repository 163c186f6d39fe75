"""Geometry of the translation caches an MMU has: TLB levels, paging-structure caches, nested TLB.

Every field is optional and overrides a default, so a configuration is
readable code (gem5) and a plain dict (ChampSim's JSON): ``TLBConfig.from_dict``
and ``to_dict`` round-trip.  Nothing here needs a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SIZE_NAMES = ("4K", "2M", "1G")
POLICIES = ("lru", "plru", "fifo", "random")
PSC_LEVELS = ("pde", "pdpte", "pml4e", "pml5e")  # lowest first: the order a walk probes them
PSC_SHIFTS = {"pde": 21, "pdpte": 30, "pml4e": 39, "pml5e": 48}
SIZE_SHIFTS = {"4K": 12, "2M": 21, "1G": 30}


@dataclass(frozen=True)
class CacheGeometry:
    """One set-associative structure: ``entries`` in ``entries // ways`` sets.

    Sets need not be a power of two (a 1536-entry 12-way STLB has 128 sets,
    a 1536-entry 16-way one 96).  ``sizes`` are the page sizes it holds.
    """

    entries: int
    ways: int
    sizes: tuple[str, ...] = ("4K",)
    policy: str = "lru"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes))
        for name in ("entries", "ways"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.entries % self.ways:
            raise ValueError(
                f"entries: {self.entries} entries cannot be split into {self.ways}-way sets "
                f"(entries must be a multiple of ways)")
        if not self.sizes or any(s not in SIZE_NAMES for s in self.sizes):
            raise ValueError(f"sizes: expected page sizes among {SIZE_NAMES}, got {self.sizes!r}")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes: a page size is listed twice in {self.sizes!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {self.policy!r}")

    @property
    def sets(self) -> int:
        return self.entries // self.ways

    def to_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "ways": self.ways, "sizes": list(self.sizes), "policy": self.policy}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "tlb") -> CacheGeometry:
        known = {"entries", "ways", "sizes", "policy"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}.{exc}") from None


def _geometries(value: Any, where: str) -> tuple[CacheGeometry, ...]:
    if value is None:
        return ()
    if isinstance(value, CacheGeometry):
        return (value,)
    if isinstance(value, dict):
        return (CacheGeometry.from_dict(value, where),)
    items = tuple(
        v if isinstance(v, CacheGeometry) else CacheGeometry.from_dict(v, f"{where}[{i}]")
        for i, v in enumerate(value)
    )
    held = [s for g in items for s in g.sizes]
    if len(set(held)) != len(held):
        raise ValueError(f"{where}: two structures of one level hold the same page size ({held})")
    return items


@dataclass(frozen=True)
class TLBConfig:
    """The translation caches of one logical processor.

    A TLB level (``l1i``, ``l1d``, ``l2``) is one structure, or several that
    hold different page sizes and are probed together (Skylake's L1 DTLB has
    separate 4 KiB, 2 MiB and 1 GiB arrays).  ``psc`` maps a paging level
    ("pde", "pdpte", "pml4e", "pml5e") to its paging-structure cache;
    ``nested_tlb`` caches guest-physical -> host-physical for 2D walks.
    Empty levels are absent.

    >>> TLBConfig.skylake().l2[0].sets
    128
    """

    l1i: tuple[CacheGeometry, ...] = ()
    l1d: tuple[CacheGeometry, ...] = ()
    l2: tuple[CacheGeometry, ...] = ()
    psc: dict[str, CacheGeometry] = field(default_factory=dict)
    nested_tlb: CacheGeometry | None = None

    def __post_init__(self) -> None:
        for level in ("l1i", "l1d", "l2"):
            object.__setattr__(self, level, _geometries(getattr(self, level), level))
        psc = {}
        for name, geometry in dict(self.psc).items():
            if name not in PSC_LEVELS:
                raise ValueError(f"psc: unknown level {name!r}; expected one of {PSC_LEVELS}")
            if isinstance(geometry, dict):
                geometry = CacheGeometry.from_dict(geometry, f"psc.{name}")
            psc[name] = geometry
        object.__setattr__(self, "psc", psc)
        if isinstance(self.nested_tlb, dict):
            object.__setattr__(self, "nested_tlb", CacheGeometry.from_dict(self.nested_tlb, "nested_tlb"))

    @classmethod
    def skylake(cls) -> TLBConfig:
        """Intel Skylake client: the TLB sizes of Intel's optimization manual (table 2-6).

        The paging-structure cache and nested-TLB sizes are not published;
        these are the usual estimates (Barr et al., ISCA 2010; Bhargava et al.,
        ASPLOS 2008).
        """
        return cls(
            l1i=(CacheGeometry(128, 8, ("4K",)), CacheGeometry(8, 8, ("2M",))),
            l1d=(CacheGeometry(64, 4, ("4K",)), CacheGeometry(32, 4, ("2M",)), CacheGeometry(4, 4, ("1G",))),
            l2=(CacheGeometry(1536, 12, ("4K", "2M")), CacheGeometry(16, 4, ("1G",))),
            psc={"pde": CacheGeometry(32, 4), "pdpte": CacheGeometry(4, 4), "pml4e": CacheGeometry(2, 2)},
            nested_tlb=CacheGeometry(16, 4),
        )

    @classmethod
    def none(cls) -> TLBConfig:
        """No caches at all: every access walks (the reference counts of the SDM)."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {
            "l1i": [g.to_dict() for g in self.l1i],
            "l1d": [g.to_dict() for g in self.l1d],
            "l2": [g.to_dict() for g in self.l2],
            "psc": {name: g.to_dict() for name, g in self.psc.items()},
            "nested_tlb": self.nested_tlb.to_dict() if self.nested_tlb else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TLBConfig:
        known = {"l1i", "l1d", "l2", "psc", "nested_tlb"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"tlb: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)


def fill_target(geometries: tuple[CacheGeometry, ...], code: int) -> int:
    """Which structure of a TLB level caches a translation of size ``code`` (0 4K, 1 2M, 2 1G; -1: none).

    The one holding the largest page size not above the translation's; the
    first on a tie.  A smaller one caches a piece of the page (splintering).
    """
    best, best_shift = -1, -1
    limit = 12 + 9 * code
    for index, geometry in enumerate(geometries):
        shifts = [SIZE_SHIFTS[s] for s in geometry.sizes if SIZE_SHIFTS[s] <= limit]
        if shifts and max(shifts) > best_shift:
            best, best_shift = index, max(shifts)
    return best
