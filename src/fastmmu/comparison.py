"""Run one scenario under every mode and compare: what ``fastmmu compare`` prints.

Each mode runs on a fresh machine built from the same configuration, with
the same VMs and the same programs, so the guests do exactly the same work;
only what it costs differs.  Native always runs, as the baseline of the
overheads.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from fastmmu.config import Config
from fastmmu.hypervisor.config import check_mode, mode_names
from fastmmu.hypervisor.machine import BatchHook, Machine
from fastmmu.hypervisor.result import RunResult
from fastmmu.observers import Timeline, chain
from fastmmu.units import approx_count
from fastmmu.workloads.replay import TraceProgram
from fastmmu.workloads.scenario import ProcessSpec, Scenario, default_scenario
from fastmmu.workloads.spool import SpooledProgram


def build(scenario: Scenario, mode: str, config: Config | None = None, *, record_faults: bool = False) -> Machine:
    """A machine with the scenario's VMs (all in ``mode``) and their processes spawned."""
    config = config or Config()
    machine = Machine(config.machine.host_memory, tlb=config.machine.tlb, hypervisor=config.hypervisor,
                      costs=config.costs, guest=config.guest, maxphyaddr=config.machine.maxphyaddr,
                      record_faults=record_faults)
    for spec in scenario.vms:
        vm = machine.create_vm(spec.memory, mode, backing=spec.backing, allocation=spec.allocation,
                               seed=spec.seed, name=spec.name)
        for process in spec.processes:
            vm.spawn(process.program, name=process.name)
    return machine


def run_mode(scenario: Scenario, mode: str, config: Config | None = None, *, max_accesses: int | None = None,
             on_batch: BatchHook | None = None, timeline_every: int | None = None,
             on_machine: Callable[[Machine], None] | None = None) -> RunResult:
    """One mode on a fresh machine; with ``timeline_every``, the counters sampled that often.
    ``on_machine`` sees the machine before it runs (e.g. to turn the MMU's reference log on)."""
    machine = build(scenario, check_mode(mode), config)
    if on_machine is not None:
        on_machine(machine)
    timeline = Timeline(timeline_every) if timeline_every else None
    result = machine.run(max_accesses=max_accesses,
                         on_batch=chain(on_batch, timeline.on_batch if timeline else None))
    if timeline is None:
        return result
    timeline.done = result.stats["accesses"]
    timeline.sample(machine)
    return replace(result, timeline=timeline.rows())


def parse_modes(modes: str | Iterable[str]) -> list[str]:
    registered = mode_names()
    names = list(registered) if modes == "all" else (modes.split(",") if isinstance(modes, str) else list(modes))
    chosen = [check_mode(name.strip(), "modes") for name in names]
    return ["native"] + [m for m in registered if m in chosen and m != "native"]


@dataclass
class Comparison:
    """One RunResult per mode, each with native as its baseline."""

    results: dict[str, RunResult]
    scenario: Scenario
    config: Config

    @property
    def partial(self) -> bool:
        return any(r.partial for r in self.results.values())

    @property
    def interrupted(self) -> bool:
        return any(r.interrupted for r in self.results.values())

    @property
    def error(self) -> str | None:
        """Why a program stopped the comparison early (a malformed trace, say), or None."""
        return next((r.error for r in self.results.values() if r.error), None)

    @property
    def stopped(self) -> bool:
        """Whether a mode stopped a process before its program ended (killed, or its VM stopped)."""
        return any(r.stopped for r in self.results.values())

    def notes(self) -> list[str]:
        """The lines under the table: every process a mode stopped (where, why, at which access of
        its program), and each overhead that is not over the whole run (``*``: over the common
        prefix of the input; ``-``: left out).  Modes with the same note share its line."""
        grouped: dict[str, list[str]] = {}
        for mode, r in self.results.items():
            for note in r.stop_notes():
                grouped.setdefault(f"stopped: {{}}: {note}", []).append(mode)
            if mode != "native" and r.overhead_basis not in ("whole run", "baseline"):
                mark = "-" if r.overhead is None else "*"
                grouped.setdefault(f"{mark} {{}}: vs native {r.overhead_basis.replace(mode, 'this mode')}",
                                   []).append(mode)
        return [line.format(", ".join(modes)) for line, modes in grouped.items()]

    def rows(self) -> list[dict[str, Any]]:
        return [r.summary() for r in self.results.values()]

    def table(self) -> str:
        header = ("mode", "translations", "TLB miss", "walks", "refs/walk", "guest #PF", "VM exits",
                  "top exits", "cycles", "vs native")
        lines = [header]
        for row in self.rows():
            top = ", ".join(f"{reason} {approx_count(n)}" for reason, n in row["top_exits"].items()) or "-"
            overhead = row["overhead"]
            lines.append((row["mode"], approx_count(row["translations"]), f"{row['tlb_miss_rate']:.2%}",
                          approx_count(row["walks"]), f"{row['refs_per_walk']:.1f}",
                          approx_count(row["guest_page_faults"]),
                          approx_count(row["vm_exits"]), top, approx_count(round(row["cycles"])),
                          "baseline" if row["mode"] == "native" else
                          ("-" if overhead is None else f"{overhead + 1:.2f}x"
                           + ("*" if row["overhead_basis"] != "whole run" else ""))))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = []
        for k, line in enumerate(lines):
            cells = [cell.ljust(widths[i]) if i in (0, 7) else cell.rjust(widths[i]) for i, cell in enumerate(line)]
            text.append("  ".join(cells).rstrip())
            if k == 0:
                text.append("  ".join("-" * w for w in widths))
        return "\n".join(text + self.notes())

    def to_dict(self) -> dict[str, Any]:
        return {"partial": self.partial, "interrupted": self.interrupted, "error": self.error,
                "stopped": [{"mode": mode, **entry} for mode, r in self.results.items() for entry in r.stopped],
                "scenario": self.scenario.to_dict(), "config": self.config.to_dict(),
                "rows": self.rows(), "results": {m: r.to_dict() for m, r in self.results.items()}}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """One row per mode: the summary, the cycles by cause and the exits by reason (pandas reads it)."""
        return results_csv(list(self.results.values()))


def results_csv(results: list[RunResult]) -> str:
    """CSV of runs: one row each, flat columns (``cycles.<cause>``, ``exits.<reason>``)."""
    rows = []
    for r in results:
        row = {k: v for k, v in r.summary().items() if k != "top_exits"}
        row["seconds"] = round(r.seconds, 3)
        row.update({f"cycles.{cause}": value for cause, value in r.breakdown.items()})
        row.update({f"exits.{reason}": n for reason, n in r.exits.items()})
        rows.append(row)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def compare(scenario: Scenario | None = None, modes: str | Iterable[str] = "all", config: Config | None = None,
            *, max_accesses: int | None = None, on_batch: BatchHook | None = None,
            on_mode: Callable[[str, int], None] | None = None, timeline_every: int | None = None,
            on_machine: Callable[[Machine], None] | None = None) -> Comparison:
    """Run ``scenario`` (default: the built-in one) under each mode; native is the baseline.

    ``on_batch`` watches every mode's run (``observers``); ``on_mode(mode, index)`` is called as
    each mode starts, ``on_machine(machine)`` once its machine is built; ``timeline_every``
    samples the counters every so many accesses.
    """
    scenario = scenario or default_scenario()
    config = config or Config()
    results: dict[str, RunResult] = {}
    with ExitStack() as spools:
        shared = _read_once(scenario, spools)
        for index, mode in enumerate(parse_modes(modes)):
            if on_mode is not None:
                on_mode(mode, index)
            results[mode] = run_mode(shared, mode, config, max_accesses=max_accesses, on_batch=on_batch,
                                     timeline_every=timeline_every, on_machine=on_machine)
            if results[mode].interrupted or results[mode].error:  # keep what is done, run nothing more
                break
    native = results["native"]
    return Comparison({m: r.with_baseline(native) for m, r in results.items()}, scenario, config)


def _read_once(scenario: Scenario, spools: ExitStack) -> Scenario:
    """The scenario with each trace-reading program spooled (``workloads.spool``): every mode replays
    the same steps, and the trace is read and parsed once for all of them."""
    vms = []
    for vm in scenario.vms:
        processes = [ProcessSpec(p.name, spools.enter_context(SpooledProgram(p.program)))
                     if isinstance(p.program, TraceProgram) else p for p in vm.processes]
        vms.append(replace(vm, processes=processes))
    return replace(scenario, vms=vms)
