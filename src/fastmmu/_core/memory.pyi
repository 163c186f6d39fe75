"""Type stub for the compiled module ``fastmmu._core.memory`` (source: ``pyx/memory.pyx``).

Frame numbers (``pfn``) and host-physical addresses are plain ints at the
Python level; frame kinds are ``FrameKind`` values from
``fastmmu/_core/types.pxd`` (0 free, 1 data, 2 guest page table, 3 shadow
table, 4 EPT, 5 hypervisor).
"""

from typing import Final

from typing_extensions import disjoint_base

__all__ = ["BUILD_DEBUG", "HostMemory", "MemoryExhausted", "kind_name"]

import numpy as np
import numpy.typing as npt

BUILD_DEBUG: Final[bool]
"""True when built with ``FASTMMU_CYTHON_DEBUG=1`` (bounds and wraparound checks on)."""

class MemoryExhausted(MemoryError):
    """No free host frames satisfy an allocation request."""

@disjoint_base
class HostMemory:
    """Host physical memory of any configured size, resident only where used."""

    def __init__(self, size: int | str, *, maxphyaddr: int = 46, layout: str = "auto") -> None:
        """``layout``: "auto" (flat where the OS can reserve address space lazily, else slots;
        ``FASTMMU_MEMORY_LAYOUT=slots`` forces slots), "flat" (MemoryError if unavailable)
        or "slots"."""
    @property
    def size(self) -> int: ...
    @property
    def nframes(self) -> int: ...
    @property
    def maxphyaddr(self) -> int: ...
    @property
    def layout(self) -> str:
        """"flat" (row of frame pfn in ``entries`` is pfn) or "slots"."""
    @property
    def free_frames(self) -> int: ...
    @property
    def table_frames(self) -> int: ...
    @property
    def table_bytes(self) -> int: ...
    @property
    def entries(self) -> npt.NDArray[np.uint64]:
        """Read-only view, shape (slots, 512), row 0 the zero frame; flat: (nframes + 1, 512), row pfn."""
    def content_frames(self) -> npt.NDArray[np.uint64]: ...
    # -- content
    def read(self, addr: int) -> int: ...
    def write(self, addr: int, value: int) -> None: ...
    def write_run(self, addr: int, count: int, first: int, step: int) -> None: ...
    def read_entries(self, addresses: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """The entries at host-physical ``addresses``, as ``read`` of each."""
    def write_entries(self, addresses: npt.ArrayLike, values: npt.ArrayLike | int) -> None:
        """``write`` of ``values[i]`` at ``addresses[i]``, in order (every address checked first)."""
    def read_frame(self, pfn: int) -> npt.NDArray[np.uint64]: ...
    def slot_of(self, pfn: int) -> int: ...
    # -- ownership
    def owner_of(self, pfn: int) -> int: ...
    def kind_of(self, pfn: int) -> int: ...
    def set_kind(self, pfn: int, kind: int) -> None: ...
    def frames_owned(self, owner: int) -> int: ...
    def set_trap(self, pfn: int, on: bool = True) -> None: ...
    def is_trapped(self, pfn: int) -> bool: ...
    # -- allocation
    def alloc(
        self,
        count: int = 1,
        *,
        owner: int = 0,
        kind: int = 1,
        lo: int = 0,
        hi: int | None = None,
        contiguous: bool = False,
    ) -> npt.NDArray[np.uint64]: ...
    def alloc_frame(self, *, owner: int = 0, kind: int = 1, lo: int = 0, hi: int | None = None) -> int: ...
    def alloc_at(self, pfns: npt.ArrayLike, *, owner: int = 0, kind: int = 1) -> npt.NDArray[np.uint64]: ...
    def free(self, pfns: npt.ArrayLike) -> None: ...

def kind_name(kind: int) -> str:
    """Human name of a FrameKind value."""
