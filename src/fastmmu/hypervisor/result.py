"""What a run returns: every counter, the estimated cycles and the overhead versus native."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run of a machine.

    ``stats`` holds the counts (``accesses``, ``tlb``, ``guest``,
    ``vm_exits`` by reason, ``hypervisor``, per-``vms`` details);
    ``breakdown`` the estimated cycles per cause; ``cycles`` their total.
    ``overhead`` is ``cycles / native cycles - 1`` once a native baseline
    is attached (``compare`` does it), and only when both runs did the same
    work: ``overhead_basis`` says over what ("whole run", or "common prefix"
    when both stopped at the same point) or why it is left out (None).

    ``partial`` marks a result that covers only part of its input: the run
    stopped early (``max_accesses``, Ctrl-C: ``interrupted``, a malformed
    trace: ``error``), or processes were stopped before their program ended
    (``stopped``: killed by their guest kernel, or in a VM the hypervisor
    stopped).
    """

    mode: str
    stats: dict[str, Any]
    cycles: float
    breakdown: dict[str, float] = field(default_factory=dict)
    baseline_cycles: float | None = None
    partial: bool = False
    interrupted: bool = False  # stopped by Ctrl-C (partial too)
    seconds: float = 0.0
    error: str | None = None  # why a program stopped the run (e.g. a malformed trace); partial too
    timeline: list[dict[str, float]] = field(default_factory=list)  # per interval (observers.Timeline)
    # processes stopped before their program ended (killed by the guest kernel, or in a VM that was
    # stopped): vm, process, pid, reason, accesses done; the run is partial when there are any
    stopped: list[dict[str, Any]] = field(default_factory=list)
    overhead_basis: str = ""  # what ``overhead`` compares (with_baseline), or why it is None

    @property
    def overhead(self) -> float | None:
        if self.baseline_cycles is None or self.baseline_cycles <= 0:
            return None
        return self.cycles / self.baseline_cycles - 1.0

    @property
    def exits(self) -> dict[str, int]:
        return self.stats["vm_exits"]

    def with_baseline(self, baseline: RunResult | float) -> RunResult:
        """This result with its overhead against ``baseline`` (native on the same input, or its
        cycles).  Against a RunResult the overhead is kept only for the same work: the same
        accesses done, and the same processes stopped at the same access; else it is None and
        ``overhead_basis`` says why (a partial row is never compared with a whole native run)."""
        if not isinstance(baseline, RunResult):
            return replace(self, baseline_cycles=float(baseline), overhead_basis="the cycles given")
        if baseline is self:
            return replace(self, baseline_cycles=baseline.cycles, overhead_basis="baseline")
        mine, theirs = self.stats["accesses"], baseline.stats["accesses"]
        if mine != theirs or _stop_points(self) != _stop_points(baseline):
            why = (f"left out: {self.mode} did {mine:,} accesses, {baseline.mode} {theirs:,}" if mine != theirs else
                   f"left out: processes stopped at other points in {self.mode} than in {baseline.mode}")
            return replace(self, baseline_cycles=None, overhead_basis=why)
        basis = f"over the common prefix of {mine:,} accesses" if self.partial or baseline.partial else "whole run"
        return replace(self, baseline_cycles=baseline.cycles, overhead_basis=basis)

    def summary(self) -> dict[str, Any]:
        """The row ``fastmmu compare`` prints for this run."""
        tlb, exits = self.stats["tlb"], self.stats["vm_exits"]
        top = sorted(((n, r) for r, n in exits.items() if r != "total" and n), reverse=True)[:3]
        return {
            "mode": self.mode,
            "translations": self.stats["accesses"],
            "tlb_miss_rate": tlb["miss_rate"],
            "walks": tlb["walks"],
            "refs_per_walk": tlb["references_per_walk"],
            "guest_page_faults": self.stats["guest"]["page_faults"],
            "vm_exits": exits["total"],
            "top_exits": {reason: n for n, reason in top},
            "cycles": self.cycles,
            "overhead": self.overhead,
            "overhead_basis": self.overhead_basis,
            "partial": self.partial,
            "stopped": len(self.stopped),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "partial": self.partial, "interrupted": self.interrupted, "error": self.error,
                "stopped": self.stopped, "seconds": self.seconds, "cycles": self.cycles,
                "baseline_cycles": self.baseline_cycles, "overhead": self.overhead,
                "overhead_basis": self.overhead_basis, "breakdown": self.breakdown, "stats": self.stats,
                "timeline": self.timeline}

    def stop_notes(self) -> list[str]:
        """One line per stopped process (or VM): where, why, and at which access of its program."""
        notes = []
        for entry in self.stopped:
            if entry["process"] is None:
                notes.append(f"VM {entry['vm']} stopped: {entry['reason']}")
            else:
                notes.append(f"{entry['vm']}/{entry['process']} (pid {entry['pid']}) stopped at access "
                             f"{entry['accesses'] + 1:,} of its program ({entry['accesses']:,} done): "
                             f"{entry['reason']}")
        return notes

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _stop_points(result: RunResult) -> list[tuple[Any, ...]]:
    return sorted((e["vm"], -1 if e["pid"] is None else e["pid"], -1 if e["accesses"] is None else e["accesses"])
                  for e in result.stopped)
