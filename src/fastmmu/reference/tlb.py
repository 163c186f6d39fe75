"""Pure-Python model of a set-associative translation cache (TLB, paging-structure cache, nested TLB).

It has the same public API as the compiled ``fastmmu._core.tlb`` and makes
exactly the same decisions (hits, victims, invalidations), so the two can be
compared step by step.  It is written from the semantics in
docs/core-semantics.md ("Translation caches", "Invalidations"), for clarity
rather than speed: a set is a list of ways, a way is ``None`` or an ``Entry``.

The argument checks at the top of this module are shared with the compiled
TLB, so both reject the same inputs with the same messages.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# -- constants (the same values as src/fastmmu/_core/tlb.pxd) -------------------

POLICY_LRU = 0  # true LRU: the victim is the way used longest ago
POLICY_PLRU = 1  # bit-PLRU: one MRU bit per way; when all are set, the others clear
POLICY_FIFO = 2  # the victim is the way filled longest ago; hits do not count
POLICY_RANDOM = 3  # xorshift64 over the ways

SIZE_4K = 0
SIZE_2M = 1
SIZE_1G = 2
SIZE_REGION = 3  # a paging-structure cache entry: the region one upper-level entry maps
MAX_SIZES = 4

INV_MATCH_VPID = 1
INV_MATCH_PCID = 2
INV_MATCH_EPTAG = 4
INV_EPTAG_NONZERO = 8
INV_MATCH_ADDR = 16
INV_KEEP_GLOBAL = 32
INV_GLOBAL_ANY_PCID = 64
INV_SKIP_VPID0 = 128
INV_FRACTURED = 256  # with INV_MATCH_ADDR: entries holding a piece of a larger page go whatever their address
INV_ALL_FLAGS = 511
TLB_ATTR_FRACTURED = 1 << 23  # the attrs bit that marks such a piece (fastmmu.arch.Attr.FRACTURED)

POLICY_NAMES = ("lru", "plru", "fifo", "random")
SIZE_NAMES = ("4K", "2M", "1G", "region")
KINDS = ("tlb", "psc", "ntlb")  # TLB, paging-structure cache, nested TLB
PAGE_SHIFTS = (12, 21, 30)  # address shift of SIZE_4K, SIZE_2M, SIZE_1G
REGION_SHIFTS = (21, 30, 39, 48)  # PDE, PDPTE, PML4E, PML5E caches

VPN_MASK = (1 << 48) - 1  # tags keep 48 bits of page number
MAX_ENTRIES = 1 << 24
MAX_PCID = (1 << 12) - 1
MAX_VPID = (1 << 16) - 1
MAX_EPTAG = (1 << 32) - 1
MAX_ATTRS = (1 << 32) - 1
MAX_FRAME = (1 << 52) - 1
MAX_U64 = (1 << 64) - 1
MAX_LEVELS = 8

# -- argument checks, shared with the compiled TLB ------------------------------


def check_int(value: Any, what: str, low: int, high: int, expected: str | None = None) -> int:
    """``value`` as an int in ``low..high``; a TypeError or ValueError that names ``what`` otherwise."""
    if type(value) is int and low <= value <= high:   # the common case, first: every INVLPG checks three
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what}: expected an integer, got {value!r}")
    value = operator.index(value)
    if not low <= value <= high:
        raise ValueError(f"{what}: expected {expected or f'{low}..{high}'}, got {value}")
    return value


def is_canonical(va: int, la57: bool = False) -> bool:
    """Bits 63:47 (63:56 with LA57) all equal: an address the CPU accepts (SDM 3.3.7.1)."""
    top = va >> (56 if la57 else 47)
    return top == 0 or top == (MAX_U64 >> (56 if la57 else 47))


def check_canonical(va: int, what: str, la57: bool) -> int:
    if not is_canonical(va, la57):
        width = 57 if la57 else 48
        raise ValueError(f"va: {what} needs a canonical {width}-bit address, got {va:#x}")
    return va


def check_type(value: Any, instruction: str, allowed: Sequence[int]) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"type: expected an integer, got {value!r}")
    value = operator.index(value)
    if value not in allowed:
        raise ValueError(f"type: {instruction} type must be {' or '.join(map(str, allowed))}, got {value}")
    return value


def check_ctx(pcid: Any, vpid: Any, eptag: Any) -> tuple[int, int, int]:
    if (type(pcid) is int and type(vpid) is int and type(eptag) is int and 0 <= pcid <= MAX_PCID
            and 0 <= vpid <= MAX_VPID and 0 <= eptag <= MAX_EPTAG):
        return pcid, vpid, eptag
    return (
        check_int(pcid, "pcid", 0, MAX_PCID),
        check_int(vpid, "vpid", 0, MAX_VPID),
        check_int(eptag, "eptag", 0, MAX_EPTAG),
    )


def check_nonzero_vpid(vpid: int, instruction: str) -> None:
    """INVVPID with VPID 0 (the host's) fails on hardware (SDM Vol. 3C, INVVPID)."""
    if vpid == 0:
        raise ValueError(f"vpid: {instruction} fails with VPID 0 (the host's); expected 1..{MAX_VPID}")


def check_nonzero_eptag(eptag: int) -> None:
    if eptag == 0:
        raise ValueError(f"eptag: EPT tag 0 marks translations made without EPT; expected 1..{MAX_EPTAG}")


def check_kind_ctx(kind: str, pcid: int, vpid: int, global_: bool) -> None:
    """A nested TLB is tagged by EPT tag alone; paging-structure caches hold no global entries."""
    if kind == "ntlb":
        for what, value in (("pcid", pcid), ("vpid", vpid)):
            if value:
                raise ValueError(f"{what}: a nested TLB is tagged by EPT tag only; expected 0, got {value}")
    if global_ and kind != "tlb":
        raise ValueError(f"global_: only a TLB holds global entries, not a {kind!r}")


@dataclass(frozen=True)
class Geometry:
    """A validated TLB configuration (what the constructor arguments mean)."""

    entries: int
    ways: int
    sets: int
    codes: tuple[int, ...]  # size codes held, in probe order (smallest page first)
    shifts: tuple[int, int, int, int]  # address shift per size code
    policy: int
    kind: str
    seed: int

    @property
    def region_shift(self) -> int:
        return self.shifts[SIZE_REGION]


def parse_geometry(
    entries: Any, ways: Any, *, sizes: Any, policy: Any, region_shift: Any, seed: Any, kind: Any
) -> Geometry:
    """Check every constructor argument (before anything is allocated) and resolve the defaults."""
    entries = check_int(entries, "entries", 1, MAX_ENTRIES, f"a positive number of entries up to {MAX_ENTRIES}")
    ways = check_int(ways, "ways", 1, entries, f"1..entries ({entries})")
    if entries % ways:
        raise ValueError(
            f"entries: {entries} entries cannot be split into sets of {ways} ways; "
            f"expected a multiple of ways (e.g. {entries - entries % ways} or {entries - entries % ways + ways})"
        )
    if isinstance(sizes, str):
        sizes = (sizes,)
    try:
        names = tuple(sizes)
    except TypeError:
        raise TypeError(f"sizes: expected a tuple of size names such as ('4K', '2M'), got {sizes!r}") from None
    if not names:
        raise ValueError("sizes: expected at least one of '4K', '2M', '1G' (or 'region' alone)")
    codes = tuple(size_code(name, "sizes") for name in names)
    if len(set(codes)) != len(codes):
        raise ValueError(f"sizes: each size at most once, got {names!r}")
    region_shift = check_int(region_shift, "region_shift", 0, 63)
    if SIZE_REGION in codes:
        if len(codes) != 1:
            raise ValueError(
                f"sizes: 'region' (a paging-structure cache) cannot be mixed with page sizes, got {names!r}"
            )
        if region_shift not in REGION_SHIFTS:
            raise ValueError(
                f"region_shift: a 'region' cache needs 21 (PDE), 30 (PDPTE), 39 (PML4E) "
                f"or 48 (PML5E), got {region_shift}"
            )
    elif region_shift != 0:
        raise ValueError(f"region_shift: only meaningful with sizes=('region',), got {region_shift}")
    if not isinstance(policy, str) or policy.lower() not in POLICY_NAMES:
        raise ValueError(f"policy: expected one of {', '.join(map(repr, POLICY_NAMES))}, got {policy!r}")
    seed = check_int(seed, "seed", 1, MAX_U64, "1..2**64-1 (xorshift64 never leaves state 0)")
    if kind is None:
        kind = "psc" if SIZE_REGION in codes else "tlb"
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if (kind == "psc") != (SIZE_REGION in codes):
        raise ValueError(
            f"kind: {kind!r} does not fit sizes={names!r}; a paging-structure cache "
            f"('psc') holds sizes=('region',), a TLB or nested TLB holds page sizes"
        )
    shifts = (*PAGE_SHIFTS, region_shift)
    return Geometry(
        entries=entries,
        ways=ways,
        sets=entries // ways,
        codes=tuple(sorted(codes, key=lambda code: shifts[code])),
        shifts=shifts,
        policy=POLICY_NAMES.index(policy.lower()),
        kind=kind,
        seed=seed,
    )


def check_addresses(addresses: Any) -> np.ndarray:
    """The trace given to ``simulate``: a 1-D, C-contiguous numpy array of uint64."""
    if not isinstance(addresses, np.ndarray):
        raise TypeError(f"addresses: expected a numpy array of uint64, got {type(addresses).__name__}")
    if addresses.dtype != np.uint64:
        raise TypeError(
            f"addresses: expected dtype uint64, got {addresses.dtype} (convert with addresses.astype(np.uint64))"
        )
    if addresses.ndim != 1:
        raise ValueError(f"addresses: expected a 1-D array, got {addresses.ndim} dimensions")
    if not addresses.flags.c_contiguous:
        raise ValueError("addresses: expected a C-contiguous array (use np.ascontiguousarray(addresses))")
    return addresses


def check_levels(levels: Any, cls: type[Any]) -> list[Any]:
    """The TLB hierarchy given to ``simulate``: 1..MAX_LEVELS distinct page TLBs, level 0 first."""
    if not isinstance(levels, (list, tuple)):
        raise TypeError(f"levels: expected a list of {cls.__name__} objects, got {type(levels).__name__}")
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"levels: expected 1..{MAX_LEVELS} TLBs, level 0 first, got {len(levels)}")
    for k, level in enumerate(levels):
        if not isinstance(level, cls):
            raise TypeError(
                f"levels[{k}]: expected a {cls.__module__}.{cls.__name__}, "
                f"got {type(level).__module__}.{type(level).__name__}"
            )
        if level.kind == "psc":
            raise ValueError(
                f"levels[{k}]: {level.name!r} is a paging-structure cache; simulate needs TLBs that hold pages"
            )
    if len({id(level) for level in levels}) != len(levels):
        raise ValueError("levels: the same TLB object appears twice")
    return list(levels)


def check_start_clock(start_clock: Any, levels: Sequence[Any], n: int) -> int:
    if start_clock is None:
        return max(level.clock for level in levels)
    return check_int(start_clock, "start_clock", 1, MAX_U64 - n, f"1..2**64-1-len(addresses) ({MAX_U64 - n})")


def size_code(name: Any, what: str = "size") -> int:
    """The SIZE_* code of a size name ('4K', '2M', '1G', 'region'; any case)."""
    if isinstance(name, str):
        for code, known in enumerate(SIZE_NAMES):
            if name.lower() == known.lower():
                return code
    raise ValueError(f"{what}: expected one of {', '.join(map(repr, SIZE_NAMES))}, got {name!r}")


def check_lookup(kind: str, va: Any, pcid: Any, vpid: Any, eptag: Any) -> tuple[int, int, int, int]:
    va = check_int(va, "va", 0, MAX_U64)
    pcid, vpid, eptag = check_ctx(pcid, vpid, eptag)
    check_kind_ctx(kind, pcid, vpid, False)
    return va, pcid, vpid, eptag


def check_fill(
    kind: str, va: Any, frame: Any, size: Any, attrs: Any, pcid: Any, vpid: Any, eptag: Any, global_: Any
) -> tuple[int, int, int, int, int, int, int, bool]:
    """Arguments of ``fill`` as (va, frame, code, attrs, pcid, vpid, eptag, global_)."""
    va = check_int(va, "va", 0, MAX_U64)
    frame = check_int(frame, "frame", 0, MAX_FRAME, "a frame number below 2**52")
    code = size_code(size)
    if (code == SIZE_REGION) != (kind == "psc"):
        holds = "'region' entries" if kind == "psc" else "pages ('4K', '2M', '1G')"
        raise ValueError(f"size: a {kind!r} holds {holds}, got {size!r}")
    if code != SIZE_REGION and frame % (1 << (PAGE_SHIFTS[code] - 12)):
        raise ValueError(
            f"frame: a {SIZE_NAMES[code]} page starts at a frame that is a multiple of "
            f"{1 << (PAGE_SHIFTS[code] - 12)}, got {frame:#x}"
        )
    attrs = check_int(attrs, "attrs", 0, MAX_ATTRS)
    pcid, vpid, eptag = check_ctx(pcid, vpid, eptag)
    global_ = bool(global_)
    check_kind_ctx(kind, pcid, vpid, global_)
    return va, frame, code, attrs, pcid, vpid, eptag, global_


def check_invalidate(how: Any, va: Any, pcid: Any, vpid: Any, eptag: Any) -> tuple[int, int, int, int, int]:
    how = check_int(how, "how", 0, INV_ALL_FLAGS, "a combination of INV_* flags (0..511)")
    va = check_int(va, "va", 0, MAX_U64)
    return (how, va, *check_ctx(pcid, vpid, eptag))


def check_mov_cr3(pcid: Any, vpid: Any, pcide: Any, noflush: Any) -> tuple[int, int, bool, bool]:
    pcid, vpid, _ = check_ctx(pcid, vpid, 0)
    pcide, noflush = bool(pcide), bool(noflush)
    if not pcide and pcid:
        raise ValueError(f"pcid: with CR4.PCIDE=0 the PCID is 0 (CR3 bits 11:0 are PWT/PCD), got {pcid}")
    if noflush and not pcide:
        raise ValueError("noflush: CR3 bit 63 is reserved when CR4.PCIDE=0")
    return pcid, vpid, pcide, noflush


def check_invlpg(va: Any, pcid: Any, vpid: Any) -> tuple[int, int, int]:
    va = check_int(va, "va", 0, MAX_U64)
    pcid, vpid, _ = check_ctx(pcid, vpid, 0)
    return va, pcid, vpid


def check_invpcid(type: Any, pcid: Any, va: Any, vpid: Any, la57: Any) -> tuple[int, int, int, int]:
    type = check_type(type, "INVPCID", (0, 1, 2, 3))
    va = check_int(va, "va", 0, MAX_U64)
    pcid, vpid, _ = check_ctx(pcid, vpid, 0)
    if type == 0:
        check_canonical(va, "INVPCID type 0", bool(la57))
    return type, pcid, va, vpid


def check_invvpid(type: Any, vpid: Any, va: Any, la57: Any) -> tuple[int, int, int]:
    type = check_type(type, "INVVPID", (0, 1, 2, 3))
    va = check_int(va, "va", 0, MAX_U64)
    vpid = check_int(vpid, "vpid", 0, MAX_VPID)
    if type != 2:
        check_nonzero_vpid(vpid, f"INVVPID type {type}")
    if type == 0:
        check_canonical(va, "INVVPID type 0", bool(la57))
    return type, vpid, va


def check_fault(va: Any, pcid: Any, vpid: Any, eptag: Any, *, what: str = "va") -> tuple[int, int, int, int]:
    """The operands of a fault's invalidation (``TLB.page_fault``, ``TLB.ept_violation``)."""
    return (check_int(va, what, 0, MAX_U64), *check_ctx(pcid, vpid, eptag))


def check_invept(type: Any, eptag: Any) -> tuple[int, int]:
    type = check_type(type, "INVEPT", (1, 2))
    eptag = check_int(eptag, "eptag", 0, MAX_EPTAG)
    if type == 1:
        check_nonzero_eptag(eptag)
    return type, eptag


# -- the model -------------------------------------------------------------------


@dataclass(eq=False)
class Entry:
    """One valid way: what it translates, whose it is, and the replacement state.

    Compared by identity: two ways may hold equal entries (a fill looks for no duplicate).
    """

    code: int  # size code
    vpn: int  # (va >> shift of code) & VPN_MASK
    pcid: int
    global_: bool
    vpid: int
    eptag: int
    frame: int  # 4 KiB frame number where the cached region starts
    attrs: int
    last_use: int = 0  # LRU: clock of the last hit or fill
    filled_at: int = 0  # FIFO: clock of the fill
    recently_used: bool = False  # PLRU: the MRU bit


def xorshift64(state: int) -> int:
    state ^= (state << 13) & MAX_U64
    state ^= state >> 7
    state ^= (state << 17) & MAX_U64
    return state


class TLB:
    """A set-associative translation cache; see the compiled ``fastmmu._core.tlb.TLB``."""

    def __init__(
        self,
        entries: int,
        ways: int,
        *,
        sizes: Sequence[str] | str = ("4K",),
        policy: str = "lru",
        name: str = "tlb",
        region_shift: int = 0,
        seed: int = 1,
        kind: str | None = None,
    ) -> None:
        geometry = parse_geometry(
            entries, ways, sizes=sizes, policy=policy, region_shift=region_shift, seed=seed, kind=kind
        )
        if not isinstance(name, str):
            raise TypeError(f"name: expected a string, got {name!r}")
        self._geometry = geometry
        self.name = name
        self.clock = 1
        self._rng = geometry.seed
        self._sets: list[list[Entry | None]] = [[None] * geometry.ways for _ in range(geometry.sets)]
        self.reset_stats()

    # -- configuration ---------------------------------------------------------

    @property
    def sets(self) -> int:
        return self._geometry.sets

    @property
    def ways(self) -> int:
        return self._geometry.ways

    @property
    def entries(self) -> int:
        """Capacity in entries (sets * ways); ``contents()`` lists the valid ones."""
        return self._geometry.entries

    @property
    def kind(self) -> str:
        return self._geometry.kind

    @property
    def seed(self) -> int:
        return self._geometry.seed

    @property
    def region_shift(self) -> int:
        return self._geometry.region_shift

    @property
    def policy(self) -> str:
        return POLICY_NAMES[self._geometry.policy]

    @property
    def sizes(self) -> tuple[str, ...]:
        """Size names held, in probe order (smallest page first)."""
        return tuple(SIZE_NAMES[code] for code in self._geometry.codes)

    def __repr__(self) -> str:
        g = self._geometry
        extra = f", region_shift={g.region_shift}" if g.kind == "psc" else ""
        return (
            f"TLB({g.entries}, {g.ways}, sizes={self.sizes!r}, policy={self.policy!r}, "
            f"name={self.name!r}, kind={g.kind!r}{extra})"
        )

    # -- what an entry covers --------------------------------------------------

    def _vpn(self, va: int, code: int) -> int:
        return (va >> self._geometry.shifts[code]) & VPN_MASK

    def _covers(self, entry: Entry, va: int) -> bool:
        return self._vpn(va, entry.code) == entry.vpn

    def _set_of(self, vpn: int) -> list[Entry | None]:
        return self._sets[vpn % self._geometry.sets]

    def _tick(self) -> int:
        now = self.clock
        self.clock += 1
        return now

    # -- replacement -------------------------------------------------------------

    def _touch(self, ways: list[Entry | None], entry: Entry, now: int) -> None:
        """Record a use of ``entry``, one of ``ways`` (a hit, or the fill that just wrote it)."""
        policy = self._geometry.policy
        if policy == POLICY_LRU:
            entry.last_use = now
        elif policy == POLICY_PLRU:
            entry.recently_used = True
            if all(other is not None and other.recently_used for other in ways):
                for other in ways:
                    if other is not None:
                        other.recently_used = other is entry

    def _victim(self, ways: list[Entry | None]) -> int:
        """The way a fill overwrites: an empty way if there is one, else the policy's choice."""
        for way, entry in enumerate(ways):
            if entry is None:
                return way
        full: list[Entry] = ways  # type: ignore[assignment]  # no None left
        policy = self._geometry.policy
        if policy == POLICY_LRU:
            return min(range(len(full)), key=lambda w: full[w].last_use)  # first of the oldest
        if policy == POLICY_FIFO:
            return min(range(len(full)), key=lambda w: full[w].filled_at)
        if policy == POLICY_PLRU:
            return next((w for w, entry in enumerate(full) if not entry.recently_used), 0)
        self._rng = xorshift64(self._rng)
        return self._rng % len(full)

    # -- lookup and fill ---------------------------------------------------------

    def _find(self, va: int, pcid: int, vpid: int, eptag: int, now: int) -> Entry | None:
        for code in self._geometry.codes:
            vpn = self._vpn(va, code)
            ways = self._set_of(vpn)
            for entry in ways:
                if (
                    entry is not None
                    and entry.code == code
                    and entry.vpn == vpn
                    and entry.vpid == vpid
                    and entry.eptag == eptag
                    and (entry.global_ or entry.pcid == pcid)
                ):
                    self._touch(ways, entry, now)
                    self._hits += 1
                    return entry
        self._misses += 1
        return None

    def _held_code_for(self, code: int) -> int | None:
        """The largest size held that fits in a page of size ``code`` (a fill splinters to it)."""
        shifts = self._geometry.shifts
        fitting = [held for held in self._geometry.codes if shifts[held] <= shifts[code]]
        return max(fitting, key=lambda held: shifts[held]) if fitting else None

    def _store(
        self, va: int, code: int, frame: int, attrs: int, pcid: int, vpid: int, eptag: int, global_: bool, now: int
    ) -> None:
        use = self._held_code_for(code)
        if use is None:
            return
        shifts = self._geometry.shifts
        if use != code:
            piece = (va & ((1 << shifts[code]) - 1)) >> shifts[use]
            frame += piece << (shifts[use] - 12)
            attrs |= TLB_ATTR_FRACTURED  # a piece of a larger page: INVLPG of any of its addresses removes it
        vpn = self._vpn(va, use)
        ways = self._set_of(vpn)
        way = self._victim(ways)
        if ways[way] is not None:
            self._evictions += 1
        entry = ways[way] = Entry(
            code=use,
            vpn=vpn,
            pcid=pcid,
            global_=global_,
            vpid=vpid,
            eptag=eptag,
            frame=frame,
            attrs=attrs,
            last_use=now,
            filled_at=now,
        )
        self._fills += 1
        self._touch(ways, entry, now)

    def _check_kind_ctx(self, pcid: int, vpid: int, global_: bool) -> None:
        check_kind_ctx(self._geometry.kind, pcid, vpid, global_)

    def lookup(self, va: int, *, pcid: int = 0, vpid: int = 0, eptag: int = 0) -> tuple[int, int, str] | None:
        """``(frame, attrs, size)`` of the entry translating ``va`` for this context, or None."""
        va, pcid, vpid, eptag = check_lookup(self.kind, va, pcid, vpid, eptag)
        entry = self._find(va, pcid, vpid, eptag, self._tick())
        return None if entry is None else (entry.frame, entry.attrs, SIZE_NAMES[entry.code])

    def drop(self, va: int, *, pcid: int = 0, vpid: int = 0, eptag: int = 0) -> bool:
        """Remove the entry a lookup of ``va`` in this context would hit; True if there was one.

        No replacement update, no hit or miss counted, no clock tick (it counts
        as invalidated).  The MMU, when a cached translation's rights do not
        allow an access, also turns the lookup that found it into a miss (``_reject``).
        """
        va, pcid, vpid, eptag = check_lookup(self.kind, va, pcid, vpid, eptag)
        for code in self._geometry.codes:
            vpn = self._vpn(va, code)
            ways = self._set_of(vpn)
            for way, entry in enumerate(ways):
                if (entry is not None and entry.code == code and entry.vpn == vpn and entry.vpid == vpid
                        and entry.eptag == eptag and (entry.global_ or entry.pcid == pcid)):
                    ways[way] = None
                    self._invalidated += 1
                    return True
        return False

    def _reject(self, entry: Entry) -> None:
        """A lookup just hit ``entry``, but its cached rights do not allow the access: remove exactly it,
        and count that lookup as a miss (docs/core-semantics.md: a hit is a lookup whose entry served)."""
        ways = self._set_of(entry.vpn)
        ways[ways.index(entry)] = None
        self._invalidated += 1
        self._hits -= 1
        self._misses += 1
        self._rights_drops += 1

    def fill(
        self,
        va: int,
        frame: int,
        *,
        size: str = "4K",
        attrs: int = 0,
        pcid: int = 0,
        vpid: int = 0,
        eptag: int = 0,
        global_: bool = False,
    ) -> None:
        """Cache a translation of ``va`` (as after a miss: no duplicate is looked for)."""
        va, frame, code, attrs, pcid, vpid, eptag, global_ = check_fill(
            self.kind, va, frame, size, attrs, pcid, vpid, eptag, global_
        )
        self._store(va, code, frame, attrs, pcid, vpid, eptag, global_, self._tick())

    # -- invalidation ------------------------------------------------------------

    def _remove(self, selected: Callable[[Entry], bool]) -> int:
        removed = 0
        for ways in self._sets:
            for way, entry in enumerate(ways):
                if entry is not None and selected(entry):
                    ways[way] = None
                    removed += 1
        self._invalidated += removed
        return removed

    def invalidate(self, how: int, *, va: int = 0, pcid: int = 0, vpid: int = 0, eptag: int = 0) -> int:
        """Remove the entries that pass every INV_* selector in ``how``; returns how many."""
        how, va, pcid, vpid, eptag = check_invalidate(how, va, pcid, vpid, eptag)

        def selected(e: Entry) -> bool:
            return not (
                (how & INV_MATCH_VPID and e.vpid != vpid)
                or (how & INV_SKIP_VPID0 and e.vpid == 0)
                or (how & INV_MATCH_EPTAG and e.eptag != eptag)
                or (how & INV_EPTAG_NONZERO and e.eptag == 0)
                or (how & INV_KEEP_GLOBAL and e.global_)
                or (how & INV_MATCH_PCID and e.pcid != pcid and not (e.global_ and how & INV_GLOBAL_ANY_PCID))
                or (how & INV_MATCH_ADDR and not self._covers(e, va)
                    and not (how & INV_FRACTURED and e.attrs & TLB_ATTR_FRACTURED))
            )

        return self._remove(selected)

    def flush(self) -> int:
        """Remove everything."""
        return self._remove(lambda e: True)

    def mov_cr3(self, pcid: int = 0, vpid: int = 0, *, pcide: bool, noflush: bool = False) -> int:
        """MOV to CR3 (SDM 4.10.4.1): drop the new PCID's non-global translations unless no-flush."""
        pcid, vpid, pcide, noflush = check_mov_cr3(pcid, vpid, pcide, noflush)
        if noflush:
            return 0
        if self.kind == "tlb":
            return self._remove(lambda e: e.vpid == vpid and e.pcid == pcid and not e.global_)
        if self.kind == "psc":
            return self._remove(lambda e: e.vpid == vpid and e.pcid == pcid)
        return 0

    def _of_page(self, e: Entry, va: int) -> bool:
        """Whether an address-specific invalidation of ``va`` removes ``e``: it covers ``va``, or it is
        a piece of a larger page (SDM 4.10.4.1: INVLPG removes "all TLB entries for that page"; which
        page a piece belongs to is not kept, so every piece goes)."""
        return self._covers(e, va) or bool(e.attrs & TLB_ATTR_FRACTURED)

    def invlpg(self, va: int, pcid: int = 0, vpid: int = 0, *, la57: bool = False) -> int:
        """INVLPG: the page of ``va`` for the current PCID, global or not, and every PSC entry of the PCID.

        A non-canonical ``va`` makes INVLPG a no-op, as on hardware.
        """
        va, pcid, vpid = check_invlpg(va, pcid, vpid)
        if not is_canonical(va, bool(la57)):
            return 0
        if self.kind == "tlb":
            return self._remove(lambda e: e.vpid == vpid and self._of_page(e, va) and (e.global_ or e.pcid == pcid))
        if self.kind == "psc":
            return self._remove(lambda e: e.vpid == vpid and e.pcid == pcid)
        return 0

    def invpcid(self, type: int, *, pcid: int = 0, va: int = 0, vpid: int = 0, la57: bool = False) -> int:
        """INVPCID types 0 (address), 1 (PCID), 2 (everything), 3 (everything but globals)."""
        type, pcid, va, vpid = check_invpcid(type, pcid, va, vpid, la57)
        if self.kind == "ntlb":
            return 0
        if self.kind == "psc":
            if type <= 1:
                return self._remove(lambda e: e.vpid == vpid and e.pcid == pcid)
            return self._remove(lambda e: e.vpid == vpid)
        if type == 0:
            return self._remove(lambda e: e.vpid == vpid and e.pcid == pcid and not e.global_ and self._of_page(e, va))
        if type == 1:
            return self._remove(lambda e: e.vpid == vpid and e.pcid == pcid and not e.global_)
        if type == 2:
            return self._remove(lambda e: e.vpid == vpid)
        return self._remove(lambda e: e.vpid == vpid and not e.global_)

    def invvpid(self, type: int, *, vpid: int = 0, va: int = 0, la57: bool = False) -> int:
        """INVVPID types 0 (address), 1 (VPID), 2 (every VPID but 0), 3 (VPID, globals kept)."""
        type, vpid, va = check_invvpid(type, vpid, va, la57)
        if self.kind == "ntlb":
            return 0
        if type == 2:
            return self._remove(lambda e: e.vpid != 0)
        if self.kind == "psc":
            return self._remove(lambda e: e.vpid == vpid)
        if type == 0:
            return self._remove(lambda e: e.vpid == vpid and self._of_page(e, va))
        if type == 1:
            return self._remove(lambda e: e.vpid == vpid)
        return self._remove(lambda e: e.vpid == vpid and not e.global_)

    def invept(self, type: int, *, eptag: int = 0) -> int:
        """INVEPT types 1 (one EPT tag) and 2 (every translation derived from an EPT)."""
        type, eptag = check_invept(type, eptag)
        if type == 1:
            return self._remove(lambda e: e.eptag == eptag)
        if self.kind == "ntlb":
            return self._remove(lambda e: True)
        return self._remove(lambda e: e.eptag != 0)

    def page_fault(self, va: int, pcid: int = 0, vpid: int = 0, *, eptag: int = 0) -> int:
        """What a page fault on linear address ``va`` invalidates (SDM 4.10.4.1): the entries that would
        translate it in this context (PCID, or global; VPID; EPT tag), every piece of a larger page of
        that context, and the paging-structure-cache entries that would be used for it."""
        va, pcid, vpid, eptag = check_fault(va, pcid, vpid, eptag)
        return self._page_fault(va, pcid, vpid, eptag)

    def _page_fault(self, va: int, pcid: int, vpid: int, eptag: int) -> int:
        if self.kind == "tlb":
            return self._remove(lambda e: e.vpid == vpid and e.eptag == eptag and (e.global_ or e.pcid == pcid)
                                and self._of_page(e, va))
        if self.kind == "psc":
            return self._remove(lambda e: e.vpid == vpid and e.eptag == eptag and e.pcid == pcid
                                and self._covers(e, va))
        return 0

    def ept_violation(self, gpa: int, *, eptag: int, va: int | None = None, pcid: int = 0, vpid: int = 0) -> int:
        """What an EPT violation on guest-physical ``gpa`` invalidates (SDM Vol. 3C 29.4.3.1): the
        nested-TLB entries that would translate it for ``eptag``; and when ``gpa`` was the translation
        of linear address ``va``, what a page fault on ``va`` does in that context."""
        gpa, _, _, eptag = check_fault(gpa, 0, 0, eptag, what="gpa")
        if va is not None:
            va, pcid, vpid, eptag = check_fault(va, pcid, vpid, eptag)
        removed = self._remove(lambda e: e.eptag == eptag and self._covers(e, gpa)) if self.kind == "ntlb" else 0
        if va is not None:
            removed += self._page_fault(va, pcid, vpid, eptag)
        return removed

    # -- inspection ----------------------------------------------------------------

    def contents(self) -> list[dict[str, Any]]:
        """Every valid way, in (set, way) order."""
        policy = self._geometry.policy
        rows = []
        for set_index, ways in enumerate(self._sets):
            for way, e in enumerate(ways):
                if e is None:
                    continue
                stamp = {
                    POLICY_LRU: e.last_use,
                    POLICY_FIFO: e.filled_at,
                    POLICY_PLRU: int(e.recently_used),
                    POLICY_RANDOM: 0,
                }[policy]
                rows.append(
                    {
                        "set": set_index,
                        "way": way,
                        "vpn": e.vpn,
                        "size": SIZE_NAMES[e.code],
                        "pcid": e.pcid,
                        "global": e.global_,
                        "vpid": e.vpid,
                        "eptag": e.eptag,
                        "frame": e.frame,
                        "attrs": e.attrs,
                        "stamp": stamp,
                    }
                )
        return rows

    def stats(self) -> dict[str, int]:
        """Counters since construction or ``reset_stats()`` (``hits``: lookups whose entry served)."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "rights_drops": self._rights_drops,
            "fills": self._fills,
            "evictions": self._evictions,
            "invalidated": self._invalidated,
        }

    def reset_stats(self) -> None:
        self._hits = self._misses = self._rights_drops = self._fills = self._evictions = self._invalidated = 0


def simulate(
    addresses: np.ndarray,
    levels: list[TLB],
    *,
    pcid: int = 0,
    vpid: int = 0,
    eptag: int = 0,
    start_clock: int | None = None,
) -> dict[str, Any]:
    """Run a trace of addresses through a TLB hierarchy alone (no page tables).

    Level 0 is looked up first; a hit at level k refills levels 0..k-1 with
    that entry; a miss everywhere fills every level with the identity
    translation ``frame = va >> 12`` (4 KiB, attrs 0).  Access i uses clock
    ``start_clock + i``.
    """
    addresses = check_addresses(addresses)
    levels = check_levels(levels, TLB)
    pcid, vpid, eptag = check_ctx(pcid, vpid, eptag)
    for level in levels:
        level._check_kind_ctx(pcid, vpid, False)
    start = check_start_clock(start_clock, levels, len(addresses))
    hits = [0] * len(levels)
    misses = 0
    for i, va in enumerate(addresses.tolist()):
        now = start + i
        for k, level in enumerate(levels):
            entry = level._find(va, pcid, vpid, eptag, now)
            if entry is not None:
                hits[k] += 1
                for upper in levels[:k]:
                    upper._store(
                        va,
                        entry.code,
                        entry.frame,
                        entry.attrs,
                        entry.pcid,
                        entry.vpid,
                        entry.eptag,
                        entry.global_,
                        now,
                    )
                break
        else:
            misses += 1
            for level in levels:
                level._store(va, SIZE_4K, va >> 12, 0, pcid, vpid, eptag, False, now)
    for level in levels:
        level.clock = start + len(addresses)
    return {"accesses": len(addresses), "hits": hits, "misses": misses}
