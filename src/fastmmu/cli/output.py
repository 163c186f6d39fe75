"""Where results go: a table on stdout, ``--json``, and ``-o DIR`` (results.json, results.csv, config.json,
and with ``--plot`` the charts).

``config.json`` is the run's fully resolved configuration (every setting,
defaults included, and the workload): ``--config DIR/config.json`` runs it
again.  Files are written whole or not at all (a temporary file renamed),
so an interrupted write never leaves half a result.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from fastmmu.cli.common import UserError


def add_output_options(p: argparse.ArgumentParser) -> None:
    from fastmmu.traces.writers import FORMATS as HOST_TRACE_FORMATS

    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the full results as JSON instead of a table")
    g.add_argument("-o", "--output", metavar="DIR",
                   help="write results.json, results.csv and the resolved config.json into DIR")
    g.add_argument("--plot", action="store_true",
                   help="with -o: also write PNG charts (needs the plot extra: pip install 'fastmmu[plot]')")
    g.add_argument("--host-trace", choices=HOST_TRACE_FORMATS, default=None,
                   help="with -o: also write each mode's host-physical address trace (host-<mode>.fmt, "
                        ".ramulator.txt or .dramsim3.txt) for DRAM and cache simulators")
    g.add_argument("--pte-trace", choices=HOST_TRACE_FORMATS, default=None,
                   help="with -o: also write each mode's PTE-access trace (pte-<mode>...): the host-physical "
                        "address of every page-table entry its walks read")
    g.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def check_output_options(args: argparse.Namespace) -> None:
    """Before running: the directory can be written, and --plot can plot."""
    if args.plot and not args.output:
        raise UserError("--plot: give a directory for the charts with -o DIR")
    for option, value in (("--host-trace", args.host_trace), ("--pte-trace", args.pte_trace)):
        if value and not args.output:
            raise UserError(f"{option}: give a directory for the traces with -o DIR")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--plot needs matplotlib: pip install 'fastmmu[plot]'") from None
    if args.output:
        path = Path(args.output)
        if path.exists() and not path.is_dir():
            raise UserError(f"-o {args.output}: exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"-o {args.output}: cannot create it: {exc.strerror}") from None
        if not os.access(path, os.W_OK):
            raise UserError(f"-o {args.output}: cannot write into it")


def resolved_config(config: Any, scenario: Any) -> dict[str, Any]:
    """Every setting with its value, and the workload: what ``--config`` reads back."""
    return {**config.to_dict(), "workload": scenario.to_dict()}


def write_results(directory: str, results: dict[str, Any], csv_text: str, config: dict[str, Any],
                  comparison: Any = None, plot: bool = False) -> list[Path]:
    """results.json, results.csv, config.json (and the charts); the paths written."""
    out = Path(directory)
    written = [_write(out / "results.json", json.dumps(results, indent=2) + "\n"),
               _write(out / "results.csv", csv_text),
               _write(out / "config.json", json.dumps(config, indent=2) + "\n")]
    if plot and comparison is not None:
        from fastmmu.plots import plot_comparison

        written += plot_comparison(comparison, out)
    return written


def _write(path: Path, text: str) -> Path:
    from fastmmu.traces.output import open_output

    with open_output(path) as out:   # whole or not at all: a temporary name, renamed when written
        out.write(text.encode("utf-8"))
    return path


class ModeTraces:
    """One trace file per mode (``--host-trace``: ``host-<mode>``, ``--pte-trace``: ``pte-<mode>``):
    an ``on_batch`` hook that starts a new file as each mode starts (``start_mode``)."""

    def __init__(self, directory: str, format: str, content: str) -> None:
        self.directory, self.format, self.content = Path(directory), format, content
        self.writer: Any = None
        self.paths: list[Path] = []

    def start_mode(self, mode: str, index: int) -> None:
        from fastmmu.traces.output import OutputError
        from fastmmu.traces.writers import FORMATS, HostTraceWriter, PteTraceWriter

        self.close(partial=False)   # the mode before ran to its end (compare stops after a cut-short one)
        path = self.directory / f"{self.content}-{mode}{FORMATS[self.format]}"
        writer = PteTraceWriter if self.content == "pte" else HostTraceWriter
        try:
            self.writer = writer(path, self.format, metadata={"mode": mode})
        except OutputError as exc:
            raise UserError(str(exc)) from None
        self.paths.append(path)

    def on_machine(self, machine: Any) -> None:
        if hasattr(self.writer, "attach"):
            self.writer.attach(machine)

    def on_batch(self, *args: Any) -> None:
        if self.writer is not None:
            self.writer.on_batch(*args)

    def close(self, *, partial: bool) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close(partial=partial)
