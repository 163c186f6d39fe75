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
    is attached (``compare`` does it).  ``partial`` marks a run stopped early.
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

    @property
    def overhead(self) -> float | None:
        if self.baseline_cycles is None or self.baseline_cycles <= 0:
            return None
        return self.cycles / self.baseline_cycles - 1.0

    @property
    def exits(self) -> dict[str, int]:
        return self.stats["vm_exits"]

    def with_baseline(self, baseline: RunResult | float) -> RunResult:
        cycles = baseline.cycles if isinstance(baseline, RunResult) else float(baseline)
        return replace(self, baseline_cycles=cycles)

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
            "partial": self.partial,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "partial": self.partial, "interrupted": self.interrupted, "error": self.error,
                "seconds": self.seconds, "cycles": self.cycles,
                "baseline_cycles": self.baseline_cycles, "overhead": self.overhead,
                "breakdown": self.breakdown, "stats": self.stats, "timeline": self.timeline}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
