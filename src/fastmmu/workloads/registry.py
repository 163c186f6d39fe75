"""Workloads by name: what ``--workload zipf:pages=4096,n=1M`` and a scenario file's processes name.

A program is described by a plain mapping, so that a run's resolved
configuration (written next to its results) says exactly what ran and can
be run again:

- a generator: ``{"generator": "zipf", "pages": 4096, "n": 1000000, ...}``,
  its parameters those of the generator's class (``GENERATORS``);
- a trace: ``{"trace": "sort.lackey.gz", "format": null, "stream": null, ...}``,
  the parameters of ``TraceProgram``.

Mistakes raise ``ConfigError`` naming the key, with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from fastmmu.settings import ConfigError, suggest
from fastmmu.workloads.generators import (
    Churn,
    Phases,
    Sequential,
    Strided,
    Uniform,
    WorkingSets,
    Zipf,
    expected_range,
)
from fastmmu.workloads.program import Program
from fastmmu.workloads.replay import TraceProgram

GENERATORS: dict[str, type] = {
    "sequential": Sequential,
    "strided": Strided,
    "uniform": Uniform,
    "zipf": Zipf,
    "working_sets": WorkingSets,
    "churn": Churn,
}
_COUNT_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9}


def parse_workload(text: str, key: str = "--workload") -> dict[str, Any]:
    """``"zipf:pages=4096,n=1M,alpha=1.1"`` as a spec mapping (values still strings)."""
    name, _, rest = text.partition(":")
    spec: dict[str, Any] = {"generator": name.strip()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        param, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{key}: {item!r} is not name=value (e.g. {name or 'zipf'}:pages=4096,n=1M)")
        spec[param.strip()] = value.strip()
    return spec


def program_from_spec(spec: Mapping[str, Any], key: str = "program", *, base: str | None = None) -> Program:
    """The program a spec mapping describes (a generator or a trace).  A relative trace path is
    relative to ``base`` (the directory of the config file that names it), else to the current one."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{key}: expected a table such as {{generator = \"zipf\", pages = 4096, n = 100000}} "
                          f"or {{trace = \"FILE\"}}, got {type(spec).__name__}")
    if "trace" in spec:
        path = spec["trace"]
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"{key}.trace: expected a file name, got {path!r}")
        if base is not None:
            path = os.path.join(base, os.fspath(path))   # (an absolute path stays as it is)
        return _build(TraceProgram, {k: v for k, v in spec.items() if k != "trace"} | {"path": os.fspath(path)},
                      key, "trace")
    name = spec.get("generator")
    if name not in GENERATORS:
        raise ConfigError(f"{key}.generator: unknown workload {name!r}"
                          f"{suggest(str(name), list(GENERATORS))}; expected one of {', '.join(GENERATORS)}, "
                          "or a trace = FILE")
    return _build(GENERATORS[name], {k: v for k, v in spec.items() if k != "generator"}, key, name)


def program_to_spec(program: Program) -> dict[str, Any]:
    """The spec mapping of a program built by ``program_from_spec`` (others: their repr)."""
    if isinstance(program, TraceProgram):
        fields = dataclasses.asdict(program)
        # absolute: a config.json written by `compare -o` runs again from any directory
        return {"trace": os.path.abspath(fields.pop("path")), **fields}
    for name, cls in GENERATORS.items():
        if type(program) is cls:
            return {"generator": name, **dataclasses.asdict(program)}  # type: ignore[call-overload]
    return {"program": repr(program)}


def expected_accesses(program: Program) -> int | None:
    """About how many accesses ``program`` makes (a progress bar's total), or None if unknown."""
    if isinstance(program, TraceProgram):
        return program.estimate()
    if isinstance(program, Churn):
        return program.n * program.rounds
    if isinstance(program, Phases):
        counts = [expected_accesses(p) for p in program.programs]  # type: ignore[arg-type]
        return None if None in counts else sum(c or 0 for c in counts)
    n = getattr(program, "n", None)
    return n if isinstance(n, int) else None


def describe_generators() -> list[dict[str, Any]]:
    """Every generator: its name, what it does and its parameters with their defaults."""
    out = []
    for name, cls in GENERATORS.items():
        fields = dataclasses.fields(cls)
        params = {f.name: (None if f.default is dataclasses.MISSING else f.default) for f in fields}
        takes = {f.name: f"{expected_range(f.metadata)}: {f.metadata['description']}" for f in fields
                 if "kind" in f.metadata}
        out.append({"name": name, "doc": " ".join((cls.__doc__ or "").split()), "parameters": params,
                    "takes": takes})
    return out


def _build(cls: type, given: Mapping[str, Any], key: str, name: str) -> Program:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for param, value in given.items():
        if param not in fields:
            raise ConfigError(f"{key}.{param}: {name} has no parameter {param!r}"
                              f"{suggest(str(param), list(fields))}; it takes {', '.join(fields)}")
        values[param] = _coerce(value, fields[param], f"{key}.{param}")
    missing = [f for f, spec in fields.items() if spec.default is dataclasses.MISSING
               and spec.default_factory is dataclasses.MISSING and f not in values]
    if missing:
        raise ConfigError(f"{key}: {name} needs {', '.join(missing)} (e.g. {name}:"
                          + ",".join(f"{m}=..." for m in missing) + ")")
    try:
        program = cls(**values)
        if hasattr(program, "check"):
            program.check()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return program  # type: ignore[no-any-return]


def _coerce(value: Any, field: dataclasses.Field[Any], key: str) -> Any:
    """A parameter's value from a string (command line) or a parsed TOML/JSON value."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if not isinstance(value, str) or kind.startswith("str"):
        return value
    text = value.strip()
    try:
        if kind.startswith("bool"):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("int"):
            return _count(text)
    except ValueError:
        raise ConfigError(f"{key}: expected {kind.split(' ')[0]}, got {value!r}") from None
    return None if text.lower() in ("none", "null", "") and "None" in kind else text


def _count(text: str) -> int:
    """An integer such as 4096, 0x7f0000000000, 1M (10**6), 1e6 or 2_000."""
    lowered = text.lower().replace("_", "")
    if lowered.startswith("0x"):
        return int(lowered, 16)
    if lowered and lowered[-1] in _COUNT_SUFFIXES:
        return int(float(lowered[:-1]) * _COUNT_SUFFIXES[lowered[-1]])
    number = float(lowered) if any(c in lowered for c in ".e") else int(lowered)
    if number != int(number):
        raise ValueError(text)
    return int(number)
