"""The ``fastmmu`` command line: argparse sub-commands, one small function each.

A sub-command is a pair: ``_add_<name>(subparsers)`` declares its arguments
(with an example in its ``--help``) and sets ``handler`` to a function
``(args) -> int`` that returns the exit status.  To add one, write the pair
and list it in ``COMMANDS``.  Heavy imports happen inside the handlers so
that ``fastmmu --help`` and ``fastmmu info`` stay fast and work even when
parts of the core are missing.

Errors: a mistake in the user's input prints ``fastmmu: error: ...`` and
exits 2, never a traceback.  Handlers raise ``UserError`` for that.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1  # the run itself failed (e.g. the compiled core does not load)
EXIT_USAGE = 2  # the user's input was wrong
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in the user's input: reported as ``fastmmu: error: ...``, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors read ``fastmmu: error: ...`` in every sub-command."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"fastmmu: error: {message}\n")


def _size(text: str) -> int:
    """argparse type for sizes such as 1TiB or 4096."""
    from fastmmu.units import parse_size

    try:
        return parse_size(text, "size")
    except (TypeError, ValueError) as exc:
        # argparse already names the option: drop parse_size's own "size: " prefix.
        raise argparse.ArgumentTypeError(str(exc).removeprefix("size: ")) from None


def _add_command(subparsers: Any, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# -- info ----------------------------------------------------------------------


def _add_info(subparsers: Any) -> None:
    p = _add_command(
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


# -- demo ----------------------------------------------------------------------


def _add_demo(subparsers: Any) -> None:
    p = _add_command(
        subparsers, "demo",
        "Show the core's host memory at work: configure a large host memory, give two VMs "
        "their guest memory (one contiguous, one scattered), write the tables that map it, "
        "and compare what the tables cost with the configured size.",
        "fastmmu demo --memory 1TiB --vm-memory 2GiB --seed 1",
    )
    p.add_argument("--memory", type=_size, default="1TiB", metavar="SIZE",
                   help="configured host memory (default: 1TiB)")
    p.add_argument("--vm-memory", type=_size, default="2GiB", metavar="SIZE",
                   help="guest memory of each of the two VMs (default: 2GiB)")
    p.add_argument("--seed", type=int, default=1, help="seed of the scattered layout (default: 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from fastmmu.units import format_size

    result = demo(args.memory, args.vm_memory, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"host memory: {format_size(result['host_memory'])} configured "
          f"({result['host_frames']} frames of 4 KiB)")
    print()
    print(f"{'owner':<8} {'layout':<11} {'guest memory':>12} {'data frames':>12} "
          f"{'leaf tables':>12} {'entries':>9}")
    for vm in result["vms"]:
        print(f"{'VM ' + str(vm['owner']):<8} {vm['layout']:<11} {format_size(vm['memory']):>12} "
              f"{vm['data_frames']:>12} {vm['table_frames']:>12} {vm['entries_written']:>9}")
    print()
    ratio = result["host_memory"] / result["table_bytes"]
    print(f"table content held in RAM: {format_size(result['table_bytes'])} "
          f"({result['table_frames']} table frames) for {format_size(result['host_memory'])} "
          f"configured: 1/{ratio:,.0f} of it")
    check = result["check"]
    print(f"read back: VM {check['owner']} guest page {check['guest_page']:#x} -> host frame "
          f"{check['host_frame']:#x} (entry {check['entry']:#x})")
    print(f"took {result['seconds']:.2f} s")
    return EXIT_OK


def demo(host_memory: int, vm_memory: int, *, seed: int = 1) -> dict[str, Any]:
    """What ``fastmmu demo`` does, returned as data (the tests call this).

    Owner 1 gets its guest memory as one contiguous run of host frames,
    owner 2 as frames scattered above it (seeded).  For
    each VM the hypervisor (owner 0) then allocates leaf tables of kind EPT,
    one entry per guest page, pointing at the host frame that backs it.
    """
    import numpy as np

    from fastmmu import HostMemory, MemoryExhausted
    from fastmmu.arch import (
        ADDR_MASK,
        ENTRIES_PER_TABLE,
        EPT,
        EPT_MEMTYPE_SHIFT,
        PAGE_SHIFT,
        FrameKind,
        MemType,
    )
    from fastmmu.units import format_size

    page = 1 << PAGE_SHIFT
    if vm_memory == 0 or vm_memory % page:
        raise UserError(f"--vm-memory: expected a positive multiple of 4 KiB, got {vm_memory} bytes")
    started = time.perf_counter()
    try:
        mem = HostMemory(host_memory)
    except ValueError as exc:
        raise UserError(f"--memory: {exc}") from None
    pages = vm_memory >> PAGE_SHIFT
    tables_per_vm = -(-pages // ENTRIES_PER_TABLE)
    needed = 2 * (pages + tables_per_vm)
    if needed > mem.nframes:
        raise UserError(f"--vm-memory: two VMs of {format_size(vm_memory)} and their tables need "
                        f"{needed} frames; host memory has {mem.nframes} ({format_size(mem.size)})")
    leaf_bits = int(EPT.R | EPT.W | EPT.X) | (MemType.WB << EPT_MEMTYPE_SHIFT)  # int: IntFlag | is slow
    try:
        contiguous = mem.alloc(pages, owner=1, kind=FrameKind.DATA, contiguous=True)
        # VM 2's frames are picked among the frames above VM 1's run (all free on a fresh
        # memory), in a window 8 times its size: the per-frame records (9 bytes per frame)
        # become resident where frames are used, so scattering over all of 1 TiB would
        # make most of them resident.
        rng = np.random.default_rng(seed)
        window = min(mem.nframes - pages, 8 * pages)
        picked = pages + rng.choice(window, size=pages, replace=False)
        scattered = mem.alloc_at(np.sort(picked), owner=2, kind=FrameKind.DATA)
        vms = []
        for owner, layout, frames in ((1, "contiguous", contiguous), (2, "scattered", scattered)):
            tables = mem.alloc(tables_per_vm, owner=0, kind=FrameKind.EPT)
            for t, table in enumerate(tables):
                chunk = frames[t * ENTRIES_PER_TABLE:(t + 1) * ENTRIES_PER_TABLE]
                base = int(table) << PAGE_SHIFT
                if layout == "contiguous":
                    mem.write_run(base, len(chunk), (int(chunk[0]) << PAGE_SHIFT) | leaf_bits, page)
                else:
                    for i, pfn in enumerate(chunk.tolist()):
                        mem.write(base + 8 * i, (pfn << PAGE_SHIFT) | leaf_bits)
            vms.append({"owner": owner, "layout": layout, "memory": vm_memory, "data_frames": len(frames),
                        "table_frames": len(tables), "entries_written": len(frames),
                        "frames_owned": mem.frames_owned(owner)})
    except MemoryExhausted as exc:
        raise UserError(str(exc)) from None
    # Read VM 2's last guest page back through its table, as a walker would.
    guest_page = pages - 1
    table = int(tables[guest_page // ENTRIES_PER_TABLE])
    entry = mem.read((table << PAGE_SHIFT) + 8 * (guest_page % ENTRIES_PER_TABLE))
    host_frame = (entry & ADDR_MASK) >> PAGE_SHIFT
    if host_frame != int(scattered[guest_page]):
        raise RuntimeError(f"demo: entry {entry:#x} does not map guest page {guest_page:#x} "
                           f"to host frame {int(scattered[guest_page]):#x}")
    return {
        "host_memory": mem.size,
        "host_frames": mem.nframes,
        "free_frames": mem.free_frames,
        "table_frames": mem.table_frames,
        "table_bytes": mem.table_bytes,
        "vms": vms,
        "check": {"owner": 2, "guest_page": guest_page, "host_frame": host_frame, "entry": entry},
        "seconds": time.perf_counter() - started,
    }


# -- the command table -----------------------------------------------------------

# Sub-commands in the order --help lists them.  Still to come, each as an _add_<name> /
# _run_<name> pair: compare (the main job), run, explain, trace, sweep, config.
COMMANDS: list[Callable[[Any], None]] = [_add_info, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    from fastmmu._backend import _version

    parser = _Parser(
        prog="fastmmu",
        description="fastmmu: a fast simulator of x86-64 memory virtualization "
                    "(native, brute-force trap-and-emulate, shadow paging, nested paging/EPT).",
        epilog="examples:\n  fastmmu info\n  fastmmu demo --memory 1TiB\n\n"
               "Run 'fastmmu COMMAND --help' for a command's options and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastmmu {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastmmu`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"fastmmu: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastmmu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `fastmmu info | head -1`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
