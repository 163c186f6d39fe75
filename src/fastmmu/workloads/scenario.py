"""A scenario: which VMs exist and what their processes run.  ``compare`` runs one under each mode.

``default_scenario()`` is what ``fastmmu compare`` runs when given nothing:
two VMs, six processes, a mix of locality (a hot-set database, a scan, a
uniform scatter), memory pressure in the small VM (so its kernel replaces
pages with the clock), and page-table churn (map/touch/unmap rounds, and
processes that exit while others run).
"""

from __future__ import annotations

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
        return {"description": self.description,
                "vms": [{"name": v.name, "memory": v.memory, "backing": v.backing, "allocation": v.allocation,
                         "processes": [{"name": p.name, "program": repr(p.program)} for p in v.processes]}
                        for v in self.vms]}


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
