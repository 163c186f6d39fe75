"""Settings of the machine, the hypervisor and each VM (``machine.*``, ``hypervisor.*``, ``vms``)."""

from __future__ import annotations

from dataclasses import dataclass

from fastmmu.settings import ConfigError, check_bool, check_choice, check_int, check_size, setting


def mode_names() -> tuple[str, ...]:
    """The registered modes, in the order reports list them (``fastmmu.hypervisor.modes.MODES``)."""
    from fastmmu.hypervisor.modes import MODES

    return tuple(MODES)


@dataclass(frozen=True)
class MachineConfig:
    host_memory: int = setting(16 << 30, "host physical memory (resident only where page tables live)",
                               unit="bytes")
    maxphyaddr: int = setting(46, "physical-address width of the host (and of each VM)", unit="bits")
    tlb: str = setting("skylake", "TLB and translation-cache hierarchy: a preset", choices=("skylake", "none"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_memory", check_size(self.host_memory, "machine.host_memory",
                                                           minimum=1 << 20))
        object.__setattr__(self, "maxphyaddr", check_int(self.maxphyaddr, "machine.maxphyaddr",
                                                         minimum=36, maximum=52))
        if self.host_memory > 1 << self.maxphyaddr:
            raise ConfigError(f"machine.host_memory: more than MAXPHYADDR={self.maxphyaddr} bits address")
        check_choice(self.tlb, "machine.tlb", ("skylake", "none"))


@dataclass(frozen=True)
class HypervisorConfig:
    memory: int = setting(256 << 20, "host memory kept for the hypervisor's own tables (shadow, EPT)",
                          unit="bytes")
    vm_slice: int = setting(200_000, "accesses a VM runs before the hypervisor schedules the next",
                            unit="accesses")
    shadow_cache: int = setting(16, "shadow address spaces cached per VM (least recently used evicted)")
    ept: str = setting("lazy", "build the EPT on EPT violations, or whole at VM creation",
                       choices=("lazy", "eager"))
    ept_page_size: str = setting("4K", "largest EPT page used where the backing is contiguous",
                                 choices=("4K", "2M", "1G"))
    ept_levels: int = setting(4, "EPT levels (5 allows 57-bit guest-physical addresses)", choices=(4, 5))
    ept_ad: bool = setting(False, "EPT accessed/dirty flags (guest table walks then count as writes)")
    overcommit: bool = setting(False, "let VMs' memory exceed the host's: frames are taken on first use and "
                                      "a VM that cannot get one is stopped")

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory", check_size(self.memory, "hypervisor.memory", minimum=64 << 10))
        object.__setattr__(self, "vm_slice", check_int(self.vm_slice, "hypervisor.vm_slice", minimum=1))
        object.__setattr__(self, "shadow_cache", check_int(self.shadow_cache, "hypervisor.shadow_cache",
                                                           minimum=1))
        check_choice(self.ept, "hypervisor.ept", ("lazy", "eager"))
        check_choice(self.ept_page_size, "hypervisor.ept_page_size", ("4K", "2M", "1G"))
        object.__setattr__(self, "ept_levels", check_int(self.ept_levels, "hypervisor.ept_levels", minimum=4,
                                                         maximum=5))
        object.__setattr__(self, "ept_ad", check_bool(self.ept_ad, "hypervisor.ept_ad"))
        object.__setattr__(self, "overcommit", check_bool(self.overcommit, "hypervisor.overcommit"))


@dataclass(frozen=True)
class VMConfig:
    memory: int = setting(1 << 30, "guest-physical memory of the VM", unit="bytes")
    backing: str = setting("contiguous", "how its host frames lie: one run, or a seeded random scatter",
                           choices=("contiguous", "scattered"))
    allocation: str = setting("eager", "take the host frames at creation, or at first use",
                              choices=("eager", "on_demand"))
    seed: int = setting(0, "seed of the scattered layout")
    name: str = setting("", "a name for reports (default vm<id>)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory", check_size(self.memory, "vm.memory", minimum=1 << 20))
        check_choice(self.backing, "vm.backing", ("contiguous", "scattered"))
        check_choice(self.allocation, "vm.allocation", ("eager", "on_demand"))
        object.__setattr__(self, "seed", check_int(self.seed, "vm.seed"))


def check_mode(name: object, key: str = "mode") -> str:
    from fastmmu.settings import suggest

    names = mode_names()
    if name not in names:
        raise ConfigError(f"{key}: unknown mode {name!r}; expected one of {', '.join(names)}"
                          + (suggest(name, list(names)) if isinstance(name, str) else ""))
    return str(name)
