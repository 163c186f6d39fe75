"""``fastmmu config`` (every setting: default, unit, description) and ``fastmmu workloads`` (the generators)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fastmmu.cli.common import EXIT_OK, UserError, add_command, add_config_options, load_settings


def add_config(subparsers: Any) -> None:
    p = add_command(
        subparsers, "config",
        "Show every setting with its default, unit and description (--dump), or the settings a "
        "config file and --set overrides resolve to (--config FILE / --set), as TOML or JSON.",
        "fastmmu config --dump --format toml > fastmmu.toml",
    )
    p.add_argument("--dump", action="store_true", help="every setting with its default, unit and description")
    p.add_argument("--format", choices=("table", "toml", "json"), default="table",
                   help="table (default), toml (a config file to edit) or json")
    add_config_options(p)
    p.set_defaults(handler=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    config, workload = load_settings(args)
    rows = config.describe()
    if args.format == "json":
        data: dict[str, Any] = {"settings": rows} if args.dump else config.to_dict()
        if workload is not None and not args.dump:
            data["workload"] = workload
        print(json.dumps(data, indent=2))
    elif args.format == "toml":
        print(_toml(rows))
    else:
        width = max(len(r["key"]) for r in rows)
        for r in rows:
            unit = f" {r['unit']}" if r["unit"] else ""
            changed = "" if r["value"] == r["default"] else f"  (default {r['default']!r})"
            print(f"{r['key']:<{width}}  {r['value']!r}{unit}{changed}")
            print(f"{'':<{width}}    {r['description']}")
    return EXIT_OK


def _toml(rows: list[dict[str, Any]]) -> str:
    """The settings as a TOML file, a comment with each one's description and unit."""
    out: list[str] = []
    section = ""
    for r in rows:
        head, _, name = r["key"].partition(".")
        if head != section:
            section = head
            out.append(f"{'' if not out else chr(10)}[{section}]")
        unit = f" ({r['unit']})" if r["unit"] else ""
        out.append(f"# {r['description']}{unit}")
        out.append(f"{name} = {_toml_value(r['value'])}")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise UserError(f"cannot write {value!r} as TOML")


def add_workloads(subparsers: Any) -> None:
    p = add_command(
        subparsers, "workloads",
        "List the workload generators that --workload NAME:K=V,... and a config file's [workload] "
        "take, with their parameters and defaults.",
        "fastmmu workloads   # then: fastmmu compare --workload working_sets:pages=65536,n=2M,phases=8",
    )
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p.set_defaults(handler=_run_workloads)


def _run_workloads(args: argparse.Namespace) -> int:
    from fastmmu.workloads.registry import describe_generators

    generators = describe_generators()
    if args.json:
        print(json.dumps(generators, indent=2))
        return EXIT_OK
    for g in generators:
        params = ", ".join(k if v is None else f"{k}={v}" for k, v in g["parameters"].items())
        print(f"{g['name']}: {params}")
        print(f"    {g['doc']}")
    print("\ncounts take k/M/G suffixes (decimal: n=1M is 1000000) and 0x for addresses;\n"
          "a trace is a workload too: --trace FILE (see 'fastmmu trace info FILE').")
    return EXIT_OK
