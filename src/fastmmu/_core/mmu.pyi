"""Type stub of the compiled batch run loop (pyx/mmu.pyx)."""

from typing import Any, Final

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

from fastmmu._core.memory import HostMemory
from fastmmu._core.tlb import TLB
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.tlbconfig import TLBConfig
from fastmmu.translation import Walk

__all__ = ["BUILD_DEBUG", "MMU"]

BUILD_DEBUG: Final[bool]

@disjoint_base
class MMU:
    @property
    def config(self) -> TLBConfig: ...
    def __init__(
        self,
        mem: HostMemory,
        *,
        tlb: TLBConfig | None = None,
        cpu: CpuState | None = None,
        ept: EptConfig | None = None,
        vpid: int = 0,
    ) -> None: ...
    def set_context(self, cpu: CpuState, *, ept: EptConfig | None = None, vpid: int = 0) -> None: ...
    @property
    def cpu(self) -> CpuState: ...
    @property
    def ept_config(self) -> EptConfig | None: ...
    @property
    def vpid(self) -> int: ...
    def mov_cr3(self, value: int) -> None: ...
    def invlpg(self, va: int) -> None: ...
    def invpcid(self, kind: int, *, pcid: int = 0, va: int = 0) -> None: ...
    def invvpid(self, kind: int, *, vpid: int = 0, va: int = 0) -> None: ...
    def invept(self, kind: int, *, eptag: int = 0) -> None: ...
    def flush(self) -> None: ...
    def translate(
        self,
        addresses: npt.NDArray[np.uint64],
        kinds: npt.NDArray[np.uint8] | int | None = None,
        *,
        out: npt.NDArray[np.uint64] | None = None,
        status: npt.NDArray[np.uint8] | None = None,
        start: int = 0,
    ) -> BatchResult: ...
    def translate_one(self, va: int, access: int = 0, *, trace: bool = False) -> Walk: ...
    def log_references(self, on: bool = True) -> None:
        """Record every memory reference of every walk ``translate`` makes (or stop: False)."""
    def take_references(self) -> npt.NDArray[np.void]:
        """The references logged since the last call, in order (``fastmmu.batch.REFERENCE_DTYPE``)."""
    def reset_counters(self) -> None: ...
    def structures(self) -> dict[str, TLB]: ...
    def counters(self) -> dict[str, Any]: ...
