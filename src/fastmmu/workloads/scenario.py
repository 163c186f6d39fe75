"""A scenario: which VMs exist and what their processes run.  ``compare`` runs one under each mode.

``default_scenario()`` is what ``fastmmu compare`` runs when given nothing:
two VMs, six processes, a mix of locality (a hot-set database, a scan, a
uniform scatter), memory pressure in the small VM (so its kernel replaces
pages with the clock), and page-table churn (map/touch/unmap rounds, and
processes that exit while others run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastmmu.workloads.generators import Churn, Sequential, Uniform, Zipf
from fastmmu.workloads.program import Program


@dataclass
class ProcessSpec:
    name: str
    program: Program


@dataclass
class VMSpec:
    name: str
    memory: int | str = "1GiB"
    backing: str = "contiguous"
    allocation: str = "eager"
    seed: int = 0
    processes: list[ProcessSpec] = field(default_factory=list)


@dataclass
class Scenario:
    vms: list[VMSpec]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The scenario as ``scenario_from_dict`` reads it (a run's resolved configuration)."""
        from fastmmu.workloads.registry import program_to_spec

        return {"description": self.description,
                "vms": [{"name": v.name, "memory": v.memory, "backing": v.backing, "allocation": v.allocation,
                         "seed": v.seed,
                         "processes": [{"name": p.name, **program_to_spec(p.program)} for p in v.processes]}
                        for v in self.vms]}


def mix(programs: Mapping[str, Program], *, vm: str = "vm0", memory: int | str = "1GiB",
        description: str = "") -> Scenario:
    """A multi-process mix: one VM running each of ``programs`` (name -> program) as its own process,
    scheduled by the guest kernel's quantum.

    >>> from fastmmu.workloads import mix, strided, zipf
    >>> scenario = mix({"db": zipf(pages=4096, n=100_000), "scan": strided(pages=1024, n=50_000)})
    """
    processes = [ProcessSpec(name, program) for name, program in programs.items()]
    return Scenario([VMSpec(vm, memory=memory, processes=processes)],
                    description=description or "a mix of " + ", ".join(programs))


def scenario_from_dict(data: Mapping[str, Any], key: str = "workload", *, base: str | None = None) -> Scenario:
    """A scenario from a mapping (a config file's ``[workload]`` table, or ``Scenario.to_dict()``).
    Relative trace paths are relative to ``base`` (the config file's directory) when given.

    ``{"vms": [{"name": "web", "memory": "512MiB", "processes": [{"name": "db", "generator": "zipf",
    "pages": 4096, "n": 100000}, {"name": "sort", "trace": "sort.lackey.gz"}]}]}``
    """
    from fastmmu.settings import ConfigError, suggest
    from fastmmu.workloads.registry import program_from_spec

    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: expected a table with a list of vms, got {type(data).__name__}")
    unknown = [k for k in data if k not in ("vms", "description")]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key{suggest(str(unknown[0]), ['vms', 'description'])}; "
                          "expected vms (and description)")
    vms_data = data.get("vms")
    if not isinstance(vms_data, list) or not vms_data:
        raise ConfigError(f"{key}.vms: expected a non-empty list of VMs")
    vm_keys = ("name", "memory", "backing", "allocation", "seed", "processes")
    vms = []
    named: dict[str, int] = {}
    for i, vm in enumerate(vms_data):
        where = f"{key}.vms[{i}]"
        if not isinstance(vm, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(vm).__name__}")
        for k in vm:
            if k not in vm_keys:
                raise ConfigError(f"{where}.{k}: unknown key{suggest(str(k), list(vm_keys))}")
        processes = vm.get("processes")
        if not isinstance(processes, list) or not processes:
            raise ConfigError(f"{where}.processes: expected a non-empty list of processes")
        specs = []
        for j, process in enumerate(processes):
            name = process.get("name", f"p{j}") if isinstance(process, Mapping) else ""
            program_spec = {k: v for k, v in process.items() if k != "name"} if isinstance(process, Mapping) \
                else process
            specs.append(ProcessSpec(str(name), program_from_spec(program_spec, f"{where}.processes[{j}]",
                                                                  base=base)))
        name = str(vm.get("name", f"vm{i}"))
        if name in named:
            raise ConfigError(f"{where}.name: {name!r} is already the name of {key}.vms[{named[name]}]; "
                              "VM names must be unique")
        named[name] = i
        vms.append(VMSpec(name, memory=vm.get("memory", "1GiB"),
                          backing=vm.get("backing", "contiguous"), allocation=vm.get("allocation", "eager"),
                          seed=vm.get("seed", 0), processes=specs))
    return Scenario(vms, description=str(data.get("description", "")))


def default_scenario(scale: float = 1.0, seed: int = 1) -> Scenario:
    """The built-in workload (``scale`` multiplies the number of accesses)."""

    def n(count: int) -> int:
        return max(1, int(count * scale))

    web = VMSpec("web", memory="512MiB", processes=[
        ProcessSpec("db", Zipf(pages=4_096, n=n(900_000), alpha=1.1, writes=0.3, seed=seed)),
        ProcessSpec("scan", Sequential(pages=1_024, n=n(600_000), stride=64, seed=seed + 1,
                                       base=0x0000_2000_0000_0000)),
        ProcessSpec("churn", Churn(pages=128, n=n(4_000), rounds=12, seed=seed + 2, base=0x0000_3000_0000_0000)),
    ])
    batch = VMSpec("batch", memory="24MiB", backing="scattered", seed=seed, processes=[
        ProcessSpec("sort", Zipf(pages=8_192, n=n(400_000), alpha=1.3, writes=0.5, seed=seed + 3)),
        ProcessSpec("hash", Uniform(pages=1_024, n=n(300_000), writes=0.4, seed=seed + 4,
                                    base=0x0000_2000_0000_0000)),
        ProcessSpec("cron", Churn(pages=64, n=n(2_000), rounds=8, seed=seed + 5, base=0x0000_3000_0000_0000)),
    ])
    return Scenario([web, batch], description="two VMs: a web tier (hot-set database, scan, mmap churn) and "
                                              "a batch tier under memory pressure (scattered backing)")
