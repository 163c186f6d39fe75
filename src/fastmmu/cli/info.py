"""``fastmmu info``: version, backend, build flags."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fastmmu.cli.common import EXIT_FAILURE, EXIT_OK, add_command

# -- info ----------------------------------------------------------------------


def add_info(subparsers: Any) -> None:
    p = add_command(
        subparsers, "info",
        "Show the version, which backend is loaded (and from where), how it was built, "
        "and the numpy, Python and platform in use.",
        "fastmmu info --json",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from fastmmu._backend import backend_report

    report = backend_report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format_info(report))
    return EXIT_OK if report["ok"] else EXIT_FAILURE


def _format_info(report: dict[str, Any]) -> str:
    lines = [
        f"fastmmu {report['version']}",
        f"  package:   {report['package']}",
        f"  backend:   {report['backend']}",
        f"  build:     {report['build']}",
        "  compiled modules:",
    ]
    for module in report["modules"]:
        if module["state"] == "loaded":
            lines.append(f"    {module['name']:<22} loaded   {module['path']}")
        else:
            lines.append(f"    {module['name']:<22} {module['state'].upper()}: {module['error']}")
            lines.append(f"    {'':<22} fix: {module['fix']}")
    reference = "present (tests only, never a fallback)" if report["reference_model"] else "not present"
    lines += [
        f"  reference model: {reference}",
        f"  numpy:     {report['numpy']}",
        f"  python:    {report['python']} ({report['python_executable']})",
        f"  platform:  {report['platform']}",
    ]
    if report["backend"] != "compiled":
        lines.append("fastmmu: error: the compiled core (fastmmu._core.memory) cannot be imported; "
                     "nothing can run until it is rebuilt (see 'fix' above)")
    return "\n".join(lines)
