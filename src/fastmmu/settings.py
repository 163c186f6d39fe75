"""Settings as plain dataclasses with documented, checked fields, addressed by dotted keys.

Each settings class is a frozen dataclass whose fields carry a description and
a unit in their metadata (``setting(default, "what it is", unit="cycles")``).
``from_dict`` builds one from a mapping and rejects unknown keys with a "did
you mean"; ``check`` functions name the key they reject.  The whole run's
configuration (``fastmmu.config.Config``) is a tree of these, so one error
format and one ``--set key=value`` syntax serve every setting.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from fastmmu.units import format_size, parse_size

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value it cannot take; the message starts with the setting's key."""


def setting(default: Any, description: str, *, unit: str = "", choices: tuple[Any, ...] = ()) -> Any:
    """A dataclass field with its documentation (shown by ``fastmmu config --dump``)."""
    return dataclasses.field(default=default, metadata={"description": description, "unit": unit,
                                                         "choices": choices})


def suggest(word: str, options: list[str]) -> str:
    """' (did you mean "x"?)' for the closest option, or ''."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def check_size(value: Any, key: str, *, page_multiple: bool = True, minimum: int = 0) -> int:
    """A size in bytes from ``value`` (int or "2GiB"), a multiple of 4 KiB when asked."""
    try:
        size = parse_size(value, key)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if page_multiple and size % 4096:
        raise ConfigError(f"{key}: {format_size(size)} is not a multiple of the 4 KiB page size")
    if size < minimum:
        raise ConfigError(f"{key}: expected at least {format_size(minimum)}, got {format_size(size)}")
    return size


def check_int(value: Any, key: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{key}: expected an integer {bound}, got {value}")
    return value


def check_number(value: Any, key: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not minimum <= value < float("inf"):  # also rejects NaN
        raise ConfigError(f"{key}: expected a number >= {minimum:g} (and finite), got {value!r}")
    return float(value)


def check_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def check_choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}"
                          + (suggest(value, list(choices)) if isinstance(value, str) else ""))
    return str(value)


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build settings class ``cls`` from ``data``; unknown keys are errors naming ``where.key``."""
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown setting{suggest(str(key), names)}")
    return cls(**data)


def describe(obj: Any, prefix: str) -> list[dict[str, Any]]:
    """Every setting of a settings tree: key, value, default, unit and description."""
    rows: list[dict[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, key))
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append({"key": key, "value": value, "default": default, "unit": f.metadata.get("unit", ""),
                     "description": f.metadata.get("description", "")})
    return rows


def to_dict(obj: Any) -> dict[str, Any]:
    """A settings tree as plain JSON-able data."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        else:
            out[f.name] = value
    return out

