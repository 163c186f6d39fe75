"""``fastmmu explain [ADDRESS]``: one translation, reference by reference (the teaching view)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fastmmu.cli.common import EXIT_OK, UserError, add_command, add_config_options, load_settings
from fastmmu.cli.workload import add_workload_options, load_scenario


def add_explain(subparsers: Any) -> None:
    p = add_command(
        subparsers, "explain",
        "Translate one address the way a mode's hardware does and show every step: the TLB "
        "lookups, which paging-structure cache or nested TLB answered, each memory reference of "
        "the walk (up to 24 of a 2D walk, 35 with 5 levels) with the entry's bits and the A/D "
        "bits it set, and the outcome or fault with what the guest or hypervisor does next.  "
        "The workload runs for --warm accesses first, so tables and caches hold what a run leaves.",
        "fastmmu explain 0x100000001000 --mode nested --access write --resolve",
    )
    p.add_argument("address", nargs="?", default=None, metavar="ADDRESS",
                   help="guest-virtual address (hex with 0x, or decimal); default: a page the process touched "
                        "that no TLB holds")
    p.add_argument("--mode", default="nested", help="native, brute_force, shadow or nested (default: nested)")
    p.add_argument("--access", default="read", choices=("read", "write", "fetch"), help="default: read")
    p.add_argument("--vm", default=None, metavar="NAME", help="the VM (default: the first)")
    p.add_argument("--process", default=None, metavar="NAME|PID", help="the process (default: the VM's first)")
    p.add_argument("--warm", type=int, default=20_000, metavar="N",
                   help="accesses of the workload run before the translation (default: 20000)")
    p.add_argument("--resolve", action="store_true",
                   help="on a fault, let the guest or hypervisor handle it and explain the retry too")
    p.add_argument("--flush", action="store_true", help="empty every TLB and cache first: the whole walk shows")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    add_workload_options(p)
    add_config_options(p)
    p.set_defaults(handler=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from fastmmu.explain import explain_in_scenario
    from fastmmu.settings import ConfigError
    from fastmmu.traces.base import TraceError

    address = None
    if args.address is not None:
        try:
            address = int(args.address, 0)
        except ValueError:
            raise UserError(f"ADDRESS: expected a number such as 0x7f0000001000, got {args.address!r}") from None
        if not 0 <= address < 1 << 64:
            raise UserError(f"ADDRESS: expected a 64-bit address, got {args.address}")
    if args.warm < 0:
        raise UserError(f"--warm: expected a non-negative number, got {args.warm}")
    config, workload = load_settings(args)
    scenario = load_scenario(args, workload)
    process: str | int | None = args.process
    if isinstance(process, str) and process.isdigit():
        process = int(process)
    try:
        result = explain_in_scenario(scenario, args.mode, address, args.access, process=process, vm=args.vm,
                                     warm=args.warm, config=config, resolve=args.resolve, flush=args.flush)
    except (ConfigError, TraceError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return EXIT_OK
