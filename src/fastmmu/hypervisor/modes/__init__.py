"""The ways to virtualize memory, one module each, behind the interface of ``base.Mode``.

To add one: write a module with a ``Mode`` subclass and list it in ``MODES``.
"""

from __future__ import annotations

from fastmmu.hypervisor.modes.base import Mode, Outcome
from fastmmu.hypervisor.modes.brute_force import BruteForce
from fastmmu.hypervisor.modes.native import Native
from fastmmu.hypervisor.modes.nested import Nested
from fastmmu.hypervisor.modes.shadow import Shadow

MODES: dict[str, type[Mode]] = {cls.name: cls for cls in (Native, BruteForce, Shadow, Nested)}

__all__ = ["MODES", "BruteForce", "Mode", "Native", "Nested", "Outcome", "Shadow"]
