"""Watching a run as it goes: ``on_batch`` hooks that ``Machine.run`` and ``compare`` call.

A hook sees every completed run of accesses (see ``BatchHook``); these are
the ones fastmmu itself uses: ``Timeline`` samples the counters every so
many accesses (the TLB miss rate over time of ``--plot``), ``chain`` calls
several hooks in turn.  They cost one Python call per batch, never per access.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Hook = Callable[..., None]


def chain(*hooks: Hook | None) -> Hook | None:
    """One hook calling each of ``hooks`` (None ones left out); None when there are none."""
    chosen = [h for h in hooks if h is not None]
    if not chosen:
        return None
    if len(chosen) == 1:
        return chosen[0]

    def call_all(*args: Any) -> None:
        for hook in chosen:
            hook(*args)

    return call_all


class Timeline:
    """Counters sampled every ``every`` accesses: ``samples`` of (accesses, lookups, walks, exits)
    since the start, from which ``rows()`` gives the TLB miss rate and exits per interval."""

    def __init__(self, every: int = 100_000) -> None:
        if every <= 0:
            raise ValueError(f"every: expected a positive number of accesses, got {every}")
        self.every = every
        self.done = 0
        self.next = every
        self.samples: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)]

    def on_batch(self, vm: Any, process: Any, addresses: Any, kinds: Any, out: Any, start: int, stop: int) -> None:
        self.done += stop - start
        if self.done >= self.next:
            self.sample(vm.machine)
            self.next = self.done + self.every

    def sample(self, machine: Any) -> None:
        counters = machine.mmu.counters()
        exits = sum(sum(vm.exits.values()) for vm in machine.vms.values())
        if self.samples[-1][0] != self.done:
            self.samples.append((self.done, counters["accesses"], counters["walks"], exits))

    def rows(self) -> list[dict[str, float]]:
        """One row per interval: where it ends (accesses), its TLB miss rate and VM exits."""
        out = []
        for (_, l0, w0, e0), (a1, l1, w1, e1) in zip(self.samples, self.samples[1:], strict=False):
            lookups = l1 - l0
            out.append({"accesses": a1, "tlb_miss_rate": (w1 - w0) / lookups if lookups > 0 else 0.0,
                        "vm_exits": e1 - e0})
        return out
