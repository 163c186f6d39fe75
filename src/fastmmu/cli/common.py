"""What every sub-command shares: the parser class, errors and exit codes, config options."""

from __future__ import annotations

import argparse
import json
from typing import Any, NoReturn

# Exit statuses (the README's "Errors and exit statuses" lists them too; keep the two in step).
EXIT_OK = 0
EXIT_FAILURE = 1  # the run itself failed (the compiled core does not load; a traced program failed)
EXIT_USAGE = 2  # the user's input was wrong: one line on stderr; part way through a run, what ran is kept
EXIT_PARTIAL = 3  # the run finished but part of its input did not run (a process killed, a VM stopped):
                  # the results are printed and written, marked partial
EXIT_INTERRUPTED = 130  # Ctrl-C: what was done is written, marked partial


class UserError(Exception):
    """A mistake in the user's input: reported as ``fastmmu: error: ...``, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``fastmmu: error: ...``, in every sub-command
    (the usage is one ``--help`` away, and the line says so)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"fastmmu: error: {message} (see '{self.prog} --help')\n")


def size_arg(text: str) -> int:
    """argparse type for sizes such as 1TiB or 4096."""
    from fastmmu.units import parse_size

    try:
        return parse_size(text, "size")
    except (TypeError, ValueError) as exc:
        # argparse already names the option: drop parse_size's own "size: " prefix.
        raise argparse.ArgumentTypeError(str(exc).removeprefix("size: ")) from None


def add_command(subparsers: Any, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def check_output_file(path: str, option: str) -> None:
    """Before any work: ``path`` (given as ``option``) can be written as a file."""
    from fastmmu.traces.output import OutputError, check_output_path

    try:
        check_output_path(path, option)
    except OutputError as exc:
        raise UserError(str(exc)) from None


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="settings from a TOML or JSON file (see the README)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set hypervisor.ept=eager (repeatable)")


def load_config(args: argparse.Namespace) -> Any:
    """The run's Config from --config and --set; a mistake is a UserError naming the setting."""
    return load_settings(args)[0]


def load_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """(Config, the file's ``[workload]`` table or None) from --config and --set.

    A config file holds the settings' sections and, optionally, a ``workload``
    (a scenario, as ``results/config.json`` records it): a run's resolved
    configuration can be given back to ``--config`` to run it again.
    """
    from fastmmu.config import Config
    from fastmmu.settings import ConfigError

    data: dict[str, Any] = {}
    if args.config:
        data = read_config_file(args.config)
    workload = data.pop("workload", None)
    try:
        return Config.from_dict(data).with_overrides(args.overrides), workload
    except (ConfigError, TypeError) as exc:
        where = f"{args.config}: " if args.config else ""
        raise UserError(f"{where}{exc}") from None


def read_config_file(path: str) -> dict[str, Any]:
    import os
    import tomllib

    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a TOML or JSON file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError and TOMLDecodeError say where
        raise UserError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a table of settings at the top level")
    return data
