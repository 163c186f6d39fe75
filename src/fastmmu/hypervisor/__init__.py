"""The hypervisor layer: the machine, its VMs, the modes of memory virtualization, and their costs."""

from fastmmu.hypervisor.config import HypervisorConfig, MachineConfig, VMConfig
from fastmmu.hypervisor.costs import EXIT_REASONS, CostModel
from fastmmu.hypervisor.machine import VM, Machine, VMTerminated
from fastmmu.hypervisor.modes import MODES, Mode
from fastmmu.hypervisor.result import RunResult

__all__ = ["EXIT_REASONS", "MODES", "VM", "CostModel", "HypervisorConfig", "Machine", "MachineConfig", "Mode",
           "RunResult", "VMConfig", "VMTerminated"]
