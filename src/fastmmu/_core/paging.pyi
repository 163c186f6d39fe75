"""Type stub of the compiled walkers (pyx/paging.pyx); the C-level contract is paging.pxd."""

from collections.abc import Mapping
from typing import Any, Final

from fastmmu._core.memory import HostMemory
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.translation import Walk

__all__ = ["BUILD_DEBUG", "check_access", "walk", "walk_ept", "walk_nested"]

def walk(
    mem: HostMemory,
    cpu: CpuState,
    va: int,
    access: int = 0,
    *,
    caches: Mapping[str, Any] | None = None,
    trace: bool = False,
) -> Walk: ...
def walk_ept(
    mem: HostMemory,
    ept: EptConfig,
    gpa: int,
    access: int = 0,
    *,
    caches: Mapping[str, Any] | None = None,
    trace: bool = False,
) -> Walk: ...
def walk_nested(
    mem: HostMemory,
    cpu: CpuState,
    ept: EptConfig,
    gva: int,
    access: int = 0,
    *,
    caches: Mapping[str, Any] | None = None,
    trace: bool = False,
) -> Walk: ...
def check_access(attrs: int, access: int, cpu: CpuState) -> int: ...
def _c_constants() -> dict[str, int]: ...
def _time_walks(
    mem: HostMemory, cpu: CpuState, addresses: Any, ept: EptConfig | None = None, access: int = 0
) -> tuple[float, int, int]: ...

BUILD_DEBUG: Final[bool]
