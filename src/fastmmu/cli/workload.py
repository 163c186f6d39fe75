"""What the run commands simulate: ``--trace``, ``--workload``, a config file's ``[workload]``, or the default.

``--trace FILE[@VM]`` and ``--workload NAME:k=v,...[@VM]`` each add one
process (repeatable: a multi-process mix); ``@VM`` puts it in that VM
(default ``vm0``), VMs being created in the order they are first named,
each of ``--vm-memory``.  A native trace with several streams (processes,
VMs) and no ``--stream`` becomes one process per stream, in one VM per
VM id of the trace.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import Any, cast

from fastmmu.cli.common import UserError, size_arg


def add_workload_options(p: argparse.ArgumentParser) -> None:
    from fastmmu.traces.source import formats_help

    g = p.add_argument_group("workload (default: the built-in scenario)")
    g.add_argument("--trace", action="append", default=[], metavar="FILE[@VM]",
                   help="replay a trace (lackey, din, ChampSim or native; gz/xz/zstd): one process per "
                        "trace (repeatable)")
    g.add_argument("--format", default=None, metavar="NAME",
                   help=f"the traces' format, instead of detecting it: {formats_help()}")
    g.add_argument("--stream", default=None, metavar="vmV/pidP",
                   help="replay only this stream of a multi-process native trace")
    g.add_argument("--skip-bad", action="store_true",
                   help="count and skip malformed trace records instead of stopping at the first")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="replay at most N records of each trace")
    g.add_argument("--workload", action="append", default=[], metavar="NAME:K=V,...[@VM]",
                   help="a generated process, e.g. zipf:pages=4096,n=1M,alpha=1.1 (repeatable; "
                        "see 'fastmmu workloads')")
    g.add_argument("--vm-memory", type=size_arg, default=1 << 30, metavar="SIZE",
                   help="guest memory of each VM made for --trace/--workload (default: 1GiB)")
    g.add_argument("--scale", type=float, default=1.0, metavar="F",
                   help="multiply the built-in workload's accesses by F (default: 1)")
    g.add_argument("--seed", type=int, default=1, help="seed of the built-in workload (default: 1)")


def load_scenario(args: argparse.Namespace, workload: dict[str, Any] | None) -> Any:
    """The Scenario to run: from the options, else the config file's ``[workload]``, else the default."""
    from fastmmu.settings import ConfigError
    from fastmmu.traces.base import TraceError
    from fastmmu.workloads.scenario import default_scenario, scenario_from_dict

    if not args.scale > 0 or args.scale == float("inf"):
        raise UserError(f"--scale: expected a positive number, got {args.scale}")
    if args.seed < 0:
        raise UserError(f"--seed: expected a non-negative number, got {args.seed}")
    if args.limit is not None and args.limit < 0:
        raise UserError(f"--limit: expected a non-negative number, got {args.limit}")
    try:
        if args.trace or args.workload:
            return _from_options(args)
        if workload is not None:   # from --config FILE: its trace paths are relative to FILE's directory
            return scenario_from_dict(workload, base=os.path.dirname(os.path.abspath(args.config)))
    except (ConfigError, TraceError) as exc:
        raise UserError(str(exc)) from None
    return default_scenario(scale=args.scale, seed=args.seed)


def _from_options(args: argparse.Namespace) -> Any:
    from fastmmu.workloads.registry import parse_workload, program_from_spec
    from fastmmu.workloads.replay import TraceProgram, trace_streams
    from fastmmu.workloads.scenario import ProcessSpec, Scenario, VMSpec

    vms: dict[str, VMSpec] = {}

    def vm(name: str) -> VMSpec:
        if name not in vms:
            vms[name] = VMSpec(name, memory=args.vm_memory, seed=len(vms))
        return vms[name]

    described = []
    for item in args.trace:
        path, vm_name = _target(item)
        program = cast(TraceProgram, program_from_spec({"trace": path, "format": args.format, "stream": args.stream,
                                                        "skip_bad": args.skip_bad, "limit": args.limit}, "--trace"))
        name = os.path.basename(path)
        streams = None
        if args.stream is None and (program.format or program.open().format) == "native":
            streams = sorted(trace_streams(program.open()))
        if streams and len(streams) > 1:
            for stream in streams:
                target = vm_name or stream.split("/")[0]
                vm(target).processes.append(ProcessSpec(f"{name}:{stream}", replace(program, stream=stream)))
        else:
            vm(vm_name or "vm0").processes.append(ProcessSpec(name, program))
        described.append(name)
    for item in args.workload:
        text, vm_name = _target(item)
        generated = program_from_spec(parse_workload(text), "--workload")
        vm(vm_name or "vm0").processes.append(ProcessSpec(text.split(":")[0], generated))
        described.append(text)
    return Scenario(list(vms.values()), description=", ".join(described))


def _target(item: str) -> tuple[str, str]:
    """``WHAT@VM`` as (what, vm); an existing file whose name holds an ``@`` is a file, not a VM."""
    if "@" not in item or os.path.exists(item):
        return item, ""
    what, _, vm_name = item.rpartition("@")
    if not vm_name.strip():
        raise UserError(f"{item}: expected a VM name after '@' (e.g. {what}@vm1)")
    return what, vm_name
