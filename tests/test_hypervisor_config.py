"""Bad input to the machine, the hypervisor, the VMs, the guest and the cost model.

Every mistake is a ``ConfigError`` (a ``ValueError``) whose message starts
with the setting's dotted key, and an unknown name gets a "did you mean".
Nothing is half-made by a rejected request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from fastmmu.config import Config
from fastmmu.guest.config import GuestConfig
from fastmmu.hypervisor.config import HypervisorConfig, MachineConfig, VMConfig
from fastmmu.hypervisor.costs import CostModel
from fastmmu.hypervisor.machine import Machine
from fastmmu.settings import ConfigError


def machine() -> Machine:
    return Machine("1GiB", hypervisor={"memory": "64MiB"})


def vm(*args: Any, **kwargs: Any) -> Callable[[], Any]:
    return lambda: machine().create_vm(*args, **kwargs)


# (what is done, the key the message must start with, more it must say)
CASES: list[tuple[str, Callable[[], Any], str, str]] = [
    # sizes
    ("vm memory not a page multiple", vm("1000000"), "vm.memory", "not a multiple of the 4 KiB page"),
    ("vm memory an odd int", vm(4097), "vm.memory", "not a multiple"),
    ("vm memory unreadable", vm("64 MegaBytes"), "vm.memory", "cannot read"),
    ("vm memory negative", vm(-4096), "vm.memory", "negative"),
    ("vm memory zero", vm(0), "vm.memory", "at least"),
    ("vm memory a bool", vm(True), "vm.memory", "expected a size"),
    ("vm memory a float", vm(1.5e9), "vm.memory", "expected a size"),
    ("vm memory beyond the host", vm("2GiB"), "vm.memory", "overcommit"),
    ("host memory not a page multiple", lambda: Machine("1000000"), "machine.host_memory", "not a multiple"),
    ("host memory tiny", lambda: Machine("64KiB"), "machine.host_memory", "at least"),
    ("host memory beyond MAXPHYADDR", lambda: Machine("128TiB", maxphyaddr=46), "machine.host_memory",
     "MAXPHYADDR"),
    ("maxphyaddr out of range", lambda: Machine("1GiB", maxphyaddr=60), "machine.maxphyaddr", "36..52"),
    ("hypervisor memory not a page multiple", lambda: Machine("1GiB", hypervisor={"memory": 100_000}),
     "hypervisor.memory", "not a multiple"),
    ("hypervisor memory the whole host", lambda: Machine("1GiB", hypervisor={"memory": "1GiB"}),
     "hypervisor.memory", "nothing"),
    ("guest reserved not a page multiple", lambda: Machine("1GiB", guest={"reserved": 5000}), "guest.reserved",
     "not a multiple"),
    ("guest reserved all of the vm", vm("4MiB", guest={"reserved": "4MiB"}), "guest.reserved", "not less"),
    # names
    ("unknown mode", vm("64MiB", "shadw"), "mode", 'did you mean "shadow"'),
    ("unknown mode, far off", vm("64MiB", "paravirt"), "mode", "native, brute_force, shadow, nested"),
    ("mode not a string", vm("64MiB", 3), "mode", "unknown mode"),
    ("unknown backing", vm("64MiB", backing="scatered"), "vm.backing", 'did you mean "scattered"'),
    ("unknown allocation", vm("64MiB", allocation="on-demand"), "vm.allocation", 'did you mean "on_demand"'),
    ("unknown tlb preset", lambda: Machine("1GiB", tlb="skylak"), "machine.tlb", 'did you mean "skylake"'),
    ("unknown ept mode", lambda: Machine("1GiB", hypervisor={"ept": "lazyy"}), "hypervisor.ept",
     'did you mean "lazy"'),
    ("unknown ept page size", lambda: Machine("1GiB", hypervisor={"ept_page_size": "2MB"}),
     "hypervisor.ept_page_size", "4K, 2M, 1G"),
    # numbers
    ("negative cost", lambda: Machine("1GiB", costs={"vm_exit": -1}), "costs.vm_exit", ">= 0"),
    ("NaN cost", lambda: Machine("1GiB", costs={"walk_reference": math.nan}), "costs.walk_reference", ">= 0"),
    ("cost not a number", lambda: Machine("1GiB", costs={"cr3_load": "cheap"}), "costs.cr3_load",
     "expected a number"),
    ("zero vm slice", lambda: Machine("1GiB", hypervisor={"vm_slice": 0}), "hypervisor.vm_slice", ">= 1"),
    ("zero shadow cache", lambda: Machine("1GiB", hypervisor={"shadow_cache": 0}), "hypervisor.shadow_cache",
     ">= 1"),
    ("shadow cache a float", lambda: Machine("1GiB", hypervisor={"shadow_cache": 2.5}), "hypervisor.shadow_cache",
     "expected an integer"),
    ("ept levels 3", lambda: Machine("1GiB", hypervisor={"ept_levels": 3}), "hypervisor.ept_levels", "got 3"),
    ("guest levels 3", lambda: Machine("1GiB", guest={"levels": 3}), "guest.levels", "got 3"),
    ("zero quantum", lambda: Machine("1GiB", guest={"quantum": 0}), "guest.quantum", ">= 1"),
    ("negative seed", vm("64MiB", seed=-1), "vm.seed", ">= 0"),
    ("overcommit not a bool", lambda: Machine("1GiB", hypervisor={"overcommit": "maybe"}),
     "hypervisor.overcommit", "true or false"),
    ("pcid not a bool", lambda: Machine("1GiB", guest={"pcid": 2}), "guest.pcid", "true or false"),
    # unknown keys
    ("unknown hypervisor key", lambda: Machine("1GiB", hypervisor={"shadow_cach": 3}),
     "hypervisor.shadow_cach", 'did you mean "shadow_cache"'),
    ("unknown guest key", lambda: Machine("1GiB", guest={"quantm": 10}), "guest.quantm", 'did you mean "quantum"'),
    ("unknown costs key", lambda: Machine("1GiB", costs={"vm_exits": 1}), "costs.vm_exits",
     'did you mean "vm_exit"'),
    ("unknown guest key per vm", vm("64MiB", guest={"huge_page": True}), "guest.huge_page",
     'did you mean "huge_pages"'),
    ("settings not a table", lambda: Machine("1GiB", hypervisor=["overcommit"]), "hypervisor",
     "expected a table"),
    # the whole configuration
    ("unknown section", lambda: Config.from_dict({"hypervisr": {}}), "hypervisr", 'did you mean "hypervisor"'),
    ("unknown key in a section", lambda: Config.from_dict({"hypervisor": {"shadow_cach": 3}}),
     "hypervisor.shadow_cach", 'did you mean "shadow_cache"'),
    ("bad value in a section", lambda: Config.from_dict({"costs": {"vm_exit": -5}}), "costs.vm_exit", ">= 0"),
    ("not a table of sections", lambda: Config.from_dict(["machine"]), "configuration", "expected a table"),
    ("override of an unknown key", lambda: Config().with_overrides(["hypervisor.shadow_cach=3"]),
     "hypervisor.shadow_cach", 'did you mean "shadow_cache"'),
    ("override of an unknown section", lambda: Config().with_overrides(["hypervisr.shadow_cache=3"]),
     "hypervisr.shadow_cache", 'did you mean "hypervisor"'),
    ("override without a value", lambda: Config().with_overrides(["hypervisor.shadow_cache"]),
     "'hypervisor.shadow_cache'", "key=value"),
    ("override with a bad value", lambda: Config().with_overrides(["hypervisor.shadow_cache=lots"]),
     "hypervisor.shadow_cache", "expected an integer"),
    ("override with a bad size", lambda: Config().with_overrides(["machine.host_memory=1000000"]),
     "machine.host_memory", "not a multiple"),
    ("override with a negative cost", lambda: Config().with_overrides(["costs.vm_exit=-1"]), "costs.vm_exit",
     ">= 0"),
    ("override with a bad choice", lambda: Config().with_overrides(["hypervisor.ept=eagre"]), "hypervisor.ept",
     'did you mean "eager"'),
    ("override of a section alone", lambda: Config().with_overrides(["guest=4"]), "guest", "unknown setting"),
    ("settings class directly", lambda: VMConfig(memory="3000"), "vm.memory", "not a multiple"),
    ("settings class directly", lambda: HypervisorConfig(vm_slice=-3), "hypervisor.vm_slice", ">= 1"),
    ("settings class directly", lambda: MachineConfig(tlb="haswell"), "machine.tlb", "skylake, none"),
    ("settings class directly", lambda: GuestConfig(quantum="often"), "guest.quantum", "expected an integer"),
    ("settings class directly", lambda: CostModel(pt_write=-0.5), "costs.pt_write", ">= 0"),
]


@pytest.mark.parametrize(("action", "key", "says"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_a_config_error_naming_the_key(action: Callable[[], Any], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        action()
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith(f"{key}:") or message.startswith(f"{key} "), message
    assert says in message, message
    assert "Traceback" not in message and "\n" not in message


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_a_rejected_vm_leaves_the_machine_as_it_was() -> None:
    m = machine()
    m.create_vm("256MiB", "nested")
    state = (m.mem.free_frames, m.committed, m.partitions.available, dict(m.vms), m._next_id)
    for bad in (vm_kwargs for vm_kwargs in (
            {"memory": "1000000"}, {"memory": "1GiB"}, {"mode": "shadw"}, {"backing": "x"}, {"allocation": "x"},
            {"guest": {"quantm": 1}}, {"memory": "4MiB", "guest": {"reserved": "8MiB"}}, {"seed": -1})):
        kwargs = {"memory": "64MiB", "mode": "nested", **bad}
        with pytest.raises(ConfigError):
            m.create_vm(kwargs.pop("memory"), kwargs.pop("mode"), **kwargs)
        assert (m.mem.free_frames, m.committed, m.partitions.available, dict(m.vms), m._next_id) == state, bad
    m.create_vm("64MiB", "shadow")  # and it still works


def test_good_overrides_are_read_by_each_settings_checks() -> None:
    config = Config().with_overrides(["hypervisor.shadow_cache=3", "guest.pcid=false", "costs.vm_exit=1000.5",
                                      "machine.host_memory=8GiB", "hypervisor.memory = 128MiB",
                                      "hypervisor.overcommit=yes", "hypervisor.ept=eager"])
    assert config.hypervisor.shadow_cache == 3
    assert config.guest.pcid is False
    assert config.costs.vm_exit == 1000.5
    assert config.machine.host_memory == 8 << 30
    assert config.hypervisor.memory == 128 << 20
    assert config.hypervisor.overcommit is True
    assert config.hypervisor.ept == "eager"
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("assignment", ["guest.levels=5", "hypervisor.ept_levels=5", "machine.maxphyaddr=52"])
def test_overrides_of_numeric_choices_are_read_as_numbers(assignment: str) -> None:
    """``--set`` gives every value as a string; the level settings compared it with (4, 5) as is."""
    key, _, value = assignment.partition("=")
    section, _, name = key.partition(".")
    config = Config().with_overrides([assignment])
    assert getattr(getattr(config, section), name) == int(value)


def test_sizes_are_read_as_people_write_them() -> None:
    m = Machine("1 GiB", hypervisor={"memory": "64mb"})
    assert m.config.host_memory == 1 << 30 and m.hypervisor.memory == 64 << 20
    assert m.create_vm("512M", "nested").memory.size == 512 << 20
    assert m.create_vm(8 << 20, "shadow").memory.size == 8 << 20


@pytest.mark.parametrize(("mode", "hypervisor"), [("shadow", {}), ("nested", {"ept": "eager"})],
                         ids=["shadow", "nested-eager-ept"])
def test_a_vm_whose_hypervisor_tables_do_not_fit_is_a_config_error_and_leaves_nothing(
        mode: str, hypervisor: dict[str, Any]) -> None:
    """The shadow's map of guest memory and an eager EPT are built at creation, in the hypervisor's
    pool.  When the pool is too small that was a bare HostExhausted (not a ValueError), and the VM's
    partition, its frames and its id stayed taken by a VM that does not exist."""
    m = Machine("1GiB", hypervisor={"memory": "64KiB", **hypervisor})
    state = (m.mem.free_frames, m.committed, m.partitions.available, dict(m.vms))
    with pytest.raises(ConfigError, match=r"^hypervisor\.memory"):
        m.create_vm("256MiB", mode, backing="scattered")
    assert (m.mem.free_frames, m.committed, m.partitions.available, dict(m.vms)) == state
    assert m.mem.frames_owned(m._next_id - 1) == 0
