"""fastmmu: a fast simulator of x86-64 memory virtualization.

Everything a user touches is importable from here.  The compiled core
(``HostMemory``, ``TLB``, ``MMU``, the walkers) is loaded on first use, so
that ``fastmmu info`` can still explain a broken or missing build instead of
failing on import.  ``fastmmu.reference`` holds the pure-Python twin of every
compiled structure.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fastmmu.arch import EPT, PTE, Access, Attr, ExitQual, FrameKind, MemType, PFErr, Status
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.tlbconfig import CacheGeometry, TLBConfig
from fastmmu.translation import Reference, Walk

if TYPE_CHECKING:
    from fastmmu._core.memory import HostMemory, MemoryExhausted
    from fastmmu._core.mmu import MMU
    from fastmmu._core.paging import walk, walk_ept, walk_nested
    from fastmmu._core.tlb import TLB
    from fastmmu.tables import EptTable, PageTable

__version__ = "0.1.0.dev0"

_LAZY = {
    "HostMemory": "fastmmu._core.memory",
    "MemoryExhausted": "fastmmu._core.memory",
    "TLB": "fastmmu._core.tlb",
    "MMU": "fastmmu._core.mmu",
    "walk": "fastmmu._core.paging",
    "walk_ept": "fastmmu._core.paging",
    "walk_nested": "fastmmu._core.paging",
    "PageTable": "fastmmu.tables",
    "EptTable": "fastmmu.tables",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmmu' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "EPT", "PTE", "Access", "Attr", "BatchResult", "CacheGeometry", "CpuState", "EptConfig", "EptTable",
    "ExitQual", "FrameKind", "HostMemory", "MMU", "MemType", "MemoryExhausted", "PFErr", "PageTable",
    "Reference", "Status", "TLB", "TLBConfig", "Walk", "walk", "walk_ept", "walk_nested", "__version__",
]
