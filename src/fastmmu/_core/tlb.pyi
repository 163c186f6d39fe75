"""Type stub of the compiled ``fastmmu._core.tlb`` (source: pyx/tlb.pyx, contract: tlb.pxd)."""

from collections.abc import Sequence
from typing import Any, Final, Literal, TypedDict

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

__all__ = [
    "BUILD_DEBUG",
    "TLB",
    "simulate",
    "POLICY_NAMES",
    "SIZE_NAMES",
    "INV_MATCH_VPID",
    "INV_MATCH_PCID",
    "INV_MATCH_EPTAG",
    "INV_EPTAG_NONZERO",
    "INV_MATCH_ADDR",
    "INV_KEEP_GLOBAL",
    "INV_GLOBAL_ANY_PCID",
    "INV_SKIP_VPID0",
    "INV_FRACTURED",
    "TLB_ATTR_FRACTURED",
    "POLICY_LRU",
    "POLICY_PLRU",
    "POLICY_FIFO",
    "POLICY_RANDOM",
    "SIZE_4K",
    "SIZE_2M",
    "SIZE_1G",
    "SIZE_REGION",
    "MAX_SIZES",
]

BUILD_DEBUG: Final[bool]
INV_MATCH_VPID: int
INV_MATCH_PCID: int
INV_MATCH_EPTAG: int
INV_EPTAG_NONZERO: int
INV_MATCH_ADDR: int
INV_KEEP_GLOBAL: int
INV_GLOBAL_ANY_PCID: int
INV_SKIP_VPID0: int
INV_FRACTURED: int
"""With INV_MATCH_ADDR: pieces of larger pages go whatever their address."""
TLB_ATTR_FRACTURED: int
"""The ``attrs`` bit that marks a piece of a larger page (``fastmmu.arch.Attr.FRACTURED``)."""
POLICY_LRU: int
POLICY_PLRU: int
POLICY_FIFO: int
POLICY_RANDOM: int
SIZE_4K: int
SIZE_2M: int
SIZE_1G: int
SIZE_REGION: int
MAX_SIZES: int
POLICY_NAMES: tuple[str, ...]
SIZE_NAMES: tuple[str, ...]

_SizeName = Literal["4K", "2M", "1G", "region"]
_PolicyName = Literal["lru", "plru", "fifo", "random"]
_Kind = Literal["tlb", "psc", "ntlb"]

class _TLBStats(TypedDict):
    hits: int  # lookups whose entry served the access
    misses: int  # the others, rights_drops included
    rights_drops: int  # lookups whose entry an MMU dropped: its rights did not allow the access
    fills: int
    evictions: int
    invalidated: int

class _SimulateResult(TypedDict):
    accesses: int
    hits: list[int]
    misses: int

@disjoint_base
class TLB:
    """A set-associative TLB, paging-structure cache (``kind="psc"``) or nested TLB (``kind="ntlb"``)."""

    @property
    def name(self) -> str: ...
    @property
    def clock(self) -> int:
        """The ``now`` the next per-access call uses (starts at 1)."""
    @property
    def kind(self) -> _Kind: ...
    @property
    def seed(self) -> int: ...
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
        kind: _Kind | None = None,
    ) -> None: ...
    @property
    def sets(self) -> int: ...
    @property
    def ways(self) -> int: ...
    @property
    def entries(self) -> int:
        """Capacity (sets * ways); ``contents()`` lists the valid entries."""
    @property
    def policy(self) -> _PolicyName: ...
    @property
    def sizes(self) -> tuple[_SizeName, ...]: ...
    @property
    def region_shift(self) -> int: ...
    def lookup(self, va: int, *, pcid: int = 0, vpid: int = 0, eptag: int = 0) -> tuple[int, int, _SizeName] | None: ...
    def drop(self, va: int, *, pcid: int = 0, vpid: int = 0, eptag: int = 0) -> bool: ...
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
    ) -> None: ...
    def invalidate(self, how: int, *, va: int = 0, pcid: int = 0, vpid: int = 0, eptag: int = 0) -> int: ...
    def flush(self) -> int: ...
    def mov_cr3(self, pcid: int = 0, vpid: int = 0, *, pcide: bool, noflush: bool = False) -> int: ...
    def invlpg(self, va: int, pcid: int = 0, vpid: int = 0, *, la57: bool = False) -> int: ...
    def invpcid(self, type: int, *, pcid: int = 0, va: int = 0, vpid: int = 0, la57: bool = False) -> int: ...
    def invvpid(self, type: int, *, vpid: int = 0, va: int = 0, la57: bool = False) -> int: ...
    def invept(self, type: int, *, eptag: int = 0) -> int: ...
    def page_fault(self, va: int, pcid: int = 0, vpid: int = 0, *, eptag: int = 0) -> int:
        """What a page fault on ``va`` invalidates in this structure (SDM 4.10.4.1)."""
    def ept_violation(self, gpa: int, *, eptag: int, va: int | None = None, pcid: int = 0, vpid: int = 0) -> int:
        """What an EPT violation on ``gpa`` (the translation of ``va``, if given) invalidates here."""
    def contents(self) -> list[dict[str, Any]]: ...
    def stats(self) -> _TLBStats: ...
    def reset_stats(self) -> None: ...

def simulate(
    addresses: npt.NDArray[np.uint64],
    levels: Sequence[TLB],
    *,
    pcid: int = 0,
    vpid: int = 0,
    eptag: int = 0,
    start_clock: int | None = None,
) -> _SimulateResult: ...
