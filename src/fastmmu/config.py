"""The whole configuration of a run: ``machine``, ``hypervisor``, ``guest`` and ``costs`` settings.

Keys are dotted (``hypervisor.shadow_cache``).  ``Config.from_dict`` reads a
nested mapping (a parsed TOML or JSON file), ``with_overrides`` applies
``key=value`` strings as ``--set`` gives them, and ``describe`` lists every
setting with its default, unit and description.  Mistakes raise
``ConfigError`` naming the key, with a "did you mean" for unknown ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastmmu.guest.config import GuestConfig
from fastmmu.hypervisor.config import HypervisorConfig, MachineConfig
from fastmmu.hypervisor.costs import CostModel
from fastmmu.settings import ConfigError, describe, from_dict, suggest, to_dict

SECTIONS = {"machine": MachineConfig, "hypervisor": HypervisorConfig, "guest": GuestConfig, "costs": CostModel}


@dataclass(frozen=True)
class Config:
    machine: MachineConfig = field(default_factory=MachineConfig)
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    guest: GuestConfig = field(default_factory=GuestConfig)
    costs: CostModel = field(default_factory=CostModel)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Config:
        data = data or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"configuration: expected a table of sections, got {type(data).__name__}")
        for key in data:
            if key not in SECTIONS:
                raise ConfigError(f"{key}: unknown section{suggest(str(key), list(SECTIONS))}; "
                                  f"expected {', '.join(SECTIONS)}")
        return cls(**{name: from_dict(kind, data.get(name), name) for name, kind in SECTIONS.items()})

    def with_overrides(self, assignments: Iterable[str]) -> Config:
        """Apply ``section.key=value`` assignments (values are read by each setting's checks)."""
        data = self.to_dict()
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(f"{assignment!r}: expected key=value, e.g. hypervisor.shadow_cache=4")
            section, dot, name = key.partition(".")
            if section not in SECTIONS:
                raise ConfigError(f"{key}: unknown section{suggest(section, list(SECTIONS))}")
            names = [f.name for f in dataclasses.fields(SECTIONS[section])]
            if not dot or name not in names:
                raise ConfigError(f"{key}: unknown setting{suggest(name, names)}")
            data[section][name] = value.strip()
        return Config.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def describe(self) -> list[dict[str, Any]]:
        return describe(self, "")
