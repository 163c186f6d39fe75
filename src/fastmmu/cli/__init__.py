"""The ``fastmmu`` command line: one module per sub-command.

A sub-command module has ``add_<name>(subparsers)``, which declares its
arguments (with an example in its ``--help``) and sets ``handler`` to a
function ``(args) -> int`` returning the exit status.  To add one, write the
module and list its ``add_`` function in ``COMMANDS``.  Heavy imports happen
inside the handlers so that ``fastmmu --help`` and ``fastmmu info`` stay fast
and work even when parts of the core are missing.

Errors: a mistake in the user's input prints ``fastmmu: error: ...`` and
exits 2, never a traceback.  Handlers raise ``UserError`` for that.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fastmmu.cli.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Parser, UserError
from fastmmu.cli.compare import add_compare, add_run
from fastmmu.cli.demo import add_demo, demo
from fastmmu.cli.explain import add_explain
from fastmmu.cli.info import add_info
from fastmmu.cli.settings import add_config, add_workloads
from fastmmu.cli.trace import add_trace

# -- the command table -----------------------------------------------------------

# Sub-commands in the order --help lists them.
COMMANDS: list[Callable[[Any], None]] = [add_compare, add_run, add_explain, add_trace, add_workloads, add_config,
                                         add_info, add_demo]


def build_parser() -> argparse.ArgumentParser:
    from fastmmu._backend import _version

    parser = Parser(
        prog="fastmmu",
        description="fastmmu: a fast simulator of x86-64 memory virtualization "
                    "(native, brute-force trap-and-emulate, shadow paging, nested paging/EPT).",
        epilog="examples:\n  fastmmu compare\n  fastmmu compare --trace sort.lackey.gz -o results --plot\n"
               "  fastmmu run --mode nested --workload zipf:pages=4096,n=1M\n  fastmmu info\n\n"
               "Run 'fastmmu COMMAND --help' for a command's options and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastmmu {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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


__all__ = ["COMMANDS", "UserError", "build_parser", "demo", "main"]
