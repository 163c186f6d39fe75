"""fastmmu: a fast simulator of x86-64 memory virtualization.

One workload runs under each way a hypervisor virtualizes memory (native,
brute-force trap-and-emulate, shadow paging, nested paging/EPT), and fastmmu
reports what each costs: TLB misses, page walks and their memory references,
guest page faults, VM exits by reason, estimated cycles and the overhead
versus native.

Main entry points (everything here is importable from ``fastmmu``):

- ``compare(scenario, modes="all")``: every mode on one workload, a ``Comparison``
  (``.table()``, ``.to_json()``, ``.to_csv()``): what ``fastmmu compare`` prints;
- ``Machine(host_memory=...)``, ``Machine.create_vm(memory, mode)``, ``VM.spawn``,
  ``Machine.run()``: build and run machines by hand, a ``RunResult`` each run;
- ``workloads``: generators (``zipf``, ``uniform``, ``sequential``, ``strided``,
  ``working_sets``, ``churn``), ``TraceProgram``, ``Scenario``/``VMSpec``/``mix``;
- ``traces``: ``traces.open(path)`` reads lackey, din, ChampSim and native
  traces (gz/xz/zstd), ``traces.native.NativeWriter`` writes the native format;
- ``Config`` (``.from_dict``, ``.with_overrides``): every setting, as ``--config`` and ``--set``;
- ``explain(machine, vm, process, va)``: one translation, reference by reference;
- the core on its own: ``HostMemory``, ``PageTable``, ``EptTable``, ``walk``,
  ``walk_nested``, ``TLB``, ``MMU`` (batch translation, GIL released).

The compiled core is loaded on first use, so that ``fastmmu info`` can still
explain a broken or missing build instead of failing on import.
``fastmmu.reference`` holds the pure-Python twin of every compiled structure
(for the tests; never a fallback).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fastmmu.arch import EPT, PTE, Access, Attr, ExitQual, FrameKind, MemType, PFErr, Status
from fastmmu.batch import BatchResult
from fastmmu.cpu import CpuState, EptConfig, VMEntryFailure
from fastmmu.tlbconfig import CacheGeometry, TLBConfig
from fastmmu.translation import Reference, Walk

if TYPE_CHECKING:
    from fastmmu import guest, hypervisor, observers, plots, traces, workloads
    from fastmmu._core.memory import HostMemory, MemoryExhausted
    from fastmmu._core.mmu import MMU
    from fastmmu._core.paging import walk, walk_ept, walk_nested
    from fastmmu._core.tlb import TLB
    from fastmmu.comparison import Comparison, compare
    from fastmmu.config import Config
    from fastmmu.explain import Explanation, explain, explain_in_scenario
    from fastmmu.guest.config import GuestConfig
    from fastmmu.hypervisor.config import HypervisorConfig
    from fastmmu.hypervisor.costs import CostModel
    from fastmmu.hypervisor.machine import VM, Machine, VMTerminated
    from fastmmu.hypervisor.result import RunResult
    from fastmmu.settings import ConfigError
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
    "Machine": "fastmmu.hypervisor.machine",
    "VM": "fastmmu.hypervisor.machine",
    "VMTerminated": "fastmmu.hypervisor.machine",
    "RunResult": "fastmmu.hypervisor.result",
    "CostModel": "fastmmu.hypervisor.costs",
    "HypervisorConfig": "fastmmu.hypervisor.config",
    "GuestConfig": "fastmmu.guest.config",
    "Config": "fastmmu.config",
    "ConfigError": "fastmmu.settings",
    "compare": "fastmmu.comparison",
    "Comparison": "fastmmu.comparison",
    "explain": "fastmmu.explain",
    "explain_in_scenario": "fastmmu.explain",
    "Explanation": "fastmmu.explain",
}
_SUBPACKAGES = ("workloads", "traces", "hypervisor", "guest", "reference", "plots", "observers")


def __dir__() -> list[str]:
    """What ``dir(fastmmu)`` and ``help(fastmmu)`` list: the public API, loaded or not yet."""
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return import_module(f"fastmmu.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmmu' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "EPT", "PTE", "VM", "Access", "Attr", "BatchResult", "CacheGeometry", "Comparison", "Config", "ConfigError",
    "CostModel", "CpuState", "EptConfig", "EptTable", "ExitQual", "Explanation", "FrameKind", "GuestConfig",
    "HostMemory", "HypervisorConfig", "MMU", "Machine", "MemType", "MemoryExhausted", "PFErr", "PageTable",
    "Reference", "RunResult", "Status", "TLB", "TLBConfig", "VMEntryFailure", "VMTerminated", "Walk", "__version__",
    "compare", "explain", "explain_in_scenario", "walk", "walk_ept", "walk_nested", "traces", "workloads", "hypervisor",
    "guest", "plots", "observers",
]
