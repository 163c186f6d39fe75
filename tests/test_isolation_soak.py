"""The isolation soak (bench/soak_isolation.py) at CI size, and proof that it can see an escape.

The bench runs 10^6 hostile writes per mode; here about 10^4 per mode keep it under a minute.  A
soak that reports nothing proves little unless it reports something when there is something: two
escapes are planted on purpose (an index the port no longer checks, as repro f2_index had; host
frames taken as one aligned run when they are not) and the soak must catch each, in every mode it
runs: as an escape, or as an exception where a guard of the simulator stops it first.
"""

from __future__ import annotations

import os
import sys

import pytest

from fastmmu.hypervisor.layout import VMMemory

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
try:
    import soak_isolation
finally:
    sys.path.remove(BENCH)

WRITES = int(os.environ.get("FASTMMU_SOAK_WRITES", 10_000))  # per mode
SEED = 20_251_207


def test_hostile_kernels_in_every_mode_never_escape_and_never_raise() -> None:
    result = soak_isolation.soak(list(soak_isolation.MODES), WRITES, SEED)
    problems = {mode: report["problems"] for mode, report in result["modes"].items() if report["problems"]}
    assert (result["escapes"], result["exceptions"]) == (0, 0), problems
    for mode, report in result["modes"].items():
        assert report["writes"] >= WRITES, mode
        assert report["victim_mismatches"] == 0 and report["rounds"] >= 2, mode
        # every kind of documented port error came up, and attackers were stopped and replaced
        assert set(report["port_errors"]) == {"ValueError", "GuestMemoryError", "VMTerminated"}, mode
        stopped = {kind for kind in report["attacker_outcomes"] if kind.startswith("terminated: ")}
        gp_cr3 = "terminated: MOV to CRN N sets reserved bits (#GP in the guest kernel)"
        assert {"terminated: INVPCID", gp_cr3} <= stopped, mode
        assert any("beyond the VM's memory" in kind for kind in stopped), mode
        assert report["accesses"] > WRITES, mode


def test_the_soak_sees_a_port_that_stops_checking_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repro f2_index's escape back: entry 512 and up of a table reach later host frames."""
    from fastmmu.guest import port
    from fastmmu.hypervisor.modes import base

    def unchecked(gfn: object, index: object, frames: int, what: str) -> tuple[int, int]:
        checked, _ = port.check_slot(gfn, 0, frames, what)
        return checked, int(index)  # type: ignore[call-overload]

    monkeypatch.setattr(base, "check_slot", unchecked)
    result = soak_isolation.soak(["native", "nested"], 4_000, SEED)
    assert all(report["escapes"] + report["exceptions"] > 0 for report in result["modes"].values()), result["modes"]
    assert result["escapes"] > 0  # another VM's table written


def test_the_soak_sees_large_pages_over_frames_that_are_not_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout that calls any aligned host frame the start of a run: large pages (real, shadow, EPT)
    then cover other VMs' frames."""
    original = VMMemory.large_run

    def any_run(self: VMMemory, gfn: int, count: int, *, commit: bool = True) -> int | None:
        run = original(self, gfn, count, commit=commit)
        if run is not None or gfn % count or gfn + count > self.frames or self.base is None:
            return run
        return (self.planned(gfn) & -count) + 7 * count  # seven runs on: past a small VM's partition

    monkeypatch.setattr(VMMemory, "large_run", any_run)
    result = soak_isolation.soak(["native", "shadow", "nested"], 12_000, SEED)
    # an access or a cached translation out of the VM, a victim that no longer runs as it does alone, or
    # (in the direct modes, first) the simulator's own guard: a real entry whose frame is not the VM's
    assert all(report["escapes"] + report["exceptions"] > 0 for report in result["modes"].values()), result["modes"]
    assert result["escapes"] > 0
