"""``fastmmu compare`` (every mode on one workload: the main job) and ``fastmmu run`` (one mode)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from fastmmu.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    UserError,
    add_command,
    add_config_options,
    load_settings,
)
from fastmmu.cli.output import (
    ModeTraces,
    add_output_options,
    check_output_options,
    resolved_config,
    write_results,
)
from fastmmu.cli.workload import add_workload_options, load_scenario

TIMELINE_POINTS = 200  # samples of the counters per mode, for the TLB-miss-rate chart


def add_compare(subparsers: Any) -> None:
    p = add_command(
        subparsers, "compare",
        "Run one workload under every way of virtualizing memory (native, brute force, shadow "
        "paging, nested paging) and print what each costs: TLB misses, walks, guest page faults, "
        "VM exits by reason, estimated cycles and the overhead versus native.  With no workload "
        "given it runs the built-in one: two VMs, six processes, a mix of locality, memory "
        "pressure and page-table churn.",
        "fastmmu compare --trace sort.lackey.gz -o results --plot",
    )
    p.add_argument("--modes", default="all", metavar="LIST",
                   help="comma-separated modes to run (native always runs, as the baseline; default: all)")
    _add_run_options(p)
    p.set_defaults(handler=_run_compare)


def add_run(subparsers: Any) -> None:
    p = add_command(
        subparsers, "run",
        "Run one workload under one mode and print everything it cost: TLB and walk counts, "
        "guest page faults, VM exits by reason, hypervisor memory and the estimated cycles by cause.",
        "fastmmu run --mode shadow --workload zipf:pages=4096,n=1M --json",
    )
    p.add_argument("--mode", required=True, metavar="MODE",
                   help="native, brute_force, shadow or nested")
    _add_run_options(p)
    p.set_defaults(handler=_run_one)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    add_workload_options(p)
    add_config_options(p)
    p.add_argument("--max-accesses", type=int, default=None, metavar="N",
                   help="stop each mode after N accesses (the results are marked partial)")
    add_output_options(p)


def _prepare(args: argparse.Namespace, modes: list[str] | str) -> tuple[Any, Any, list[str]]:
    """Config, scenario and modes, every mistake found before anything runs."""
    from fastmmu.comparison import build, parse_modes
    from fastmmu.settings import ConfigError

    config, workload = load_settings(args)
    if args.max_accesses is not None and args.max_accesses < 1:
        raise UserError(f"--max-accesses: expected a positive number, got {args.max_accesses}")
    check_output_options(args)
    scenario = load_scenario(args, workload)
    try:
        chosen = parse_modes(modes)
        build(scenario, "native", config)  # the machine and its VMs fit: errors before any output
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    return config, scenario, chosen


class _Watch:
    """What watches the runs as they go: the progress line and, with --host-trace, the writers."""

    def __init__(self, args: argparse.Namespace, scenario: Any, modes: list[str]) -> None:
        from fastmmu.cli.progress import ProgressBar
        from fastmmu.observers import chain
        from fastmmu.workloads.registry import expected_accesses

        counts = [expected_accesses(p.program) for vm in scenario.vms for p in vm.processes]
        total = None if None in counts else sum(c or 0 for c in counts)
        if total is not None and args.max_accesses is not None:
            total = min(total, args.max_accesses)
        self.bar = ProgressBar(modes, total)
        if args.no_progress or args.json and not self.bar.enabled:
            self.bar.enabled = False
        self.traces = [ModeTraces(args.output, format, content)
                       for format, content in ((args.host_trace, "host"), (args.pte_trace, "pte")) if format]
        self.on_batch = chain(self.bar.on_batch, *(t.on_batch for t in self.traces))
        self.timeline_every = max(10_000, (total or 10_000_000) // TIMELINE_POINTS)

    def start_mode(self, mode: str, index: int) -> None:
        self.bar.start_mode(mode, index)
        for traces in self.traces:
            traces.start_mode(mode, index)

    def on_machine(self, machine: Any) -> None:
        for traces in self.traces:
            traces.on_machine(machine)

    def close(self, *, partial: bool) -> list[Any]:
        """Finish every trace file (the last one's end record flagged ``partial`` if its run was cut
        short); the paths written."""
        self.bar.close()
        for traces in self.traces:
            traces.close(partial=partial)
        return [path for traces in self.traces for path in traces.paths]


def _simulate(args: argparse.Namespace, modes: list[str] | str,
              run: Callable[[Any, list[str], Any, _Watch], Any]) -> tuple[Any, Any, Any, float, list[Any]]:
    """Check everything, then ``run(scenario, modes, config, watch)``: (config, scenario, its outcome,
    when it started, the trace files written)."""
    from fastmmu.settings import ConfigError
    from fastmmu.traces.base import TraceError

    config, scenario, chosen = _prepare(args, modes)
    watch = _Watch(args, scenario, chosen)
    if not args.json:
        print(f"workload: {scenario.description}", flush=True)
    started = time.perf_counter()
    cut_short = True   # until the run returns: an exception leaves the trace files flagged partial
    try:
        outcome = run(scenario, chosen, config, watch)
        cut_short = bool(outcome.interrupted or outcome.error)
    except (ConfigError, TraceError) as exc:
        raise UserError(str(exc)) from None
    finally:
        traces = watch.close(partial=cut_short)
    return config, scenario, outcome, started, traces


def _run_compare(args: argparse.Namespace) -> int:
    from fastmmu.comparison import compare

    def run(scenario: Any, modes: list[str], config: Any, watch: _Watch) -> Any:
        return compare(scenario, modes, config, max_accesses=args.max_accesses, on_batch=watch.on_batch,
                       on_mode=watch.start_mode, timeline_every=watch.timeline_every, on_machine=watch.on_machine)

    config, scenario, comparison, started, traces = _simulate(args, args.modes, run)
    written = []
    if args.output:
        written = write_results(args.output, comparison.to_dict(), comparison.to_csv(),
                                resolved_config(config, scenario), comparison, args.plot) + traces
    if args.json:
        print(comparison.to_json())
    else:
        print()
        print(comparison.table())
        _report_end(comparison.partial, comparison.interrupted, written, started)
    return _status(comparison.interrupted, comparison.error, comparison.stopped)


def _run_one(args: argparse.Namespace) -> int:
    from fastmmu.comparison import results_csv, run_mode

    mode = args.mode

    def run(scenario: Any, modes: list[str], config: Any, watch: _Watch) -> Any:
        watch.start_mode(mode, 0)
        return run_mode(scenario, mode, config, max_accesses=args.max_accesses, on_batch=watch.on_batch,
                        timeline_every=watch.timeline_every, on_machine=watch.on_machine)

    config, scenario, result, started, traces = _simulate(args, mode, run)
    data = {"partial": result.partial, "interrupted": result.interrupted, "error": result.error,
            "stopped": result.stopped, "scenario": scenario.to_dict(), "config": config.to_dict(),
            "result": result.to_dict()}
    written = []
    if args.output:
        written = write_results(args.output, data, results_csv([result]), resolved_config(config, scenario)) + traces
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print()
        print(run_report(result))
        for note in result.stop_notes():
            print(f"stopped: {note}")
        _report_end(result.partial, result.interrupted, written, started)
    return _status(result.interrupted, result.error, bool(result.stopped))


def run_report(result: Any) -> str:
    """Everything one run cost, readable: the summary, then counts, exits and cycles by cause."""
    s, tlb, guest, hv = result.stats, result.stats["tlb"], result.stats["guest"], result.stats["hypervisor"]
    lines = [f"mode {result.mode}: {s['accesses']:,} accesses in {result.seconds:.1f} s",
             f"  TLB        L1 hits {tlb['l1_hits']:,}, STLB hits {tlb['l2_hits']:,}, walks {tlb['walks']:,} "
             f"(miss rate {tlb['miss_rate']:.2%}, {tlb['references_per_walk']:.1f} references per walk)",
             f"  guest      page faults {guest['page_faults']:,}, page-table reads {guest['pt_reads']:,}, "
             f"writes {guest['pt_writes']:,}, context switches {guest['context_switches']:,}"]
    exits = {r: n for r, n in s["vm_exits"].items() if r != "total" and n}
    lines.append(f"  VM exits   {s['vm_exits']['total']:,}" + (": " + ", ".join(
        f"{r} {n:,}" for r, n in sorted(exits.items(), key=lambda kv: -kv[1])) if exits else ""))
    lines.append(f"  memory     shadow {hv['shadow_bytes']:,} B, EPT {hv['ept_bytes']:,} B, "
                 f"hypervisor tables {hv['hypervisor_bytes']:,} B (peak {hv['hypervisor_bytes_peak']:,} B)")
    total = result.cycles or 1.0
    lines.append(f"  cycles     {result.cycles:,.0f} (estimated; costs.*)")
    for cause, cycles in result.breakdown.items():
        if cause != "total" and cycles:
            lines.append(f"    {cause:<20} {cycles:>16,.0f}  {cycles / total:6.1%}")
    return "\n".join(lines)


def _report_end(partial: bool, interrupted: bool, written: list[Any], started: float) -> None:
    if partial:
        print("partial: not every process ran to its end" + (" (interrupted)" if interrupted else ""))
    if written:
        folders = sorted({os.path.dirname(os.path.abspath(p)) for p in written})
        print(f"results written to {', '.join(f + os.sep for f in folders)} "
              f"({', '.join(os.path.basename(p) for p in written)})")
    print(f"cycles are estimates from the cost model (costs.*); took {time.perf_counter() - started:.1f} s",
          file=sys.stdout)


def _status(interrupted: bool, error: str | None, stopped: bool) -> int:
    """The exit status of a run that produced results (common.py lists them all): 130 after Ctrl-C;
    2, with the error on stderr, when a program's input stopped the run; 3 when processes were
    stopped before their program ended (the run finished, part of its input never ran); else 0.
    The results so far are printed and written, marked partial, in every case."""
    if interrupted:
        return EXIT_INTERRUPTED
    if error:
        print(f"fastmmu: error: {error} (the results above stop there, marked partial)", file=sys.stderr)
        return EXIT_USAGE
    if stopped:
        print("fastmmu: partial: processes were stopped before their program ended (see 'stopped:' above)",
              file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK
