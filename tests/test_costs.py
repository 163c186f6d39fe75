"""The cost model (fastmmu.hypervisor.costs) and what a run returns (fastmmu.hypervisor.result)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from fastmmu.hypervisor import EXIT_REASONS, CostModel, Machine, RunResult
from fastmmu.settings import ConfigError
from fastmmu.workloads import uniform

FIELDS = [f.name for f in dataclasses.fields(CostModel)]


def hand_made_stats():
    """Every counter the estimate reads, each a different number."""
    exits = {reason: 10 + i for i, reason in enumerate(EXIT_REASONS)}
    exits["total"] = sum(exits.values())
    return {
        "accesses": 1000,
        "tlb": {"l1_hits": 900, "l2_hits": 60, "walks": 40, "walk_references": 130},
        "guest": {"page_faults": 3, "pt_reads": 11, "pt_writes": 7, "context_switches": 2},
        "vm_exits": exits,
        "hypervisor": {"shadow_tables_built": 4},
    }


def events_charged(stats):
    """How many events each cost field is charged for (the model's documented sum)."""
    exits = {r: n for r, n in stats["vm_exits"].items() if r != "total"}
    tlb, guest = stats["tlb"], stats["guest"]
    charged = {
        "access": stats["accesses"],
        "tlb_l1_hit": tlb["l1_hits"],
        "tlb_l2_hit": tlb["l2_hits"],
        "walk_start": tlb["walks"],
        "walk_reference": tlb["walk_references"],
        "guest_page_fault": guest["page_faults"],
        "guest_pt_access": guest["pt_reads"] + guest["pt_writes"],
        "context_switch": guest["context_switches"],
        "vm_exit": sum(exits.values()),
        "shadow_table_build": stats["hypervisor"]["shadow_tables_built"],
    }
    charged.update(exits)
    return charged


def test_every_cost_field_is_charged_for_some_count_and_every_exit_reason_has_a_handler_cost():
    assert set(events_charged(hand_made_stats())) == set(FIELDS)
    assert set(EXIT_REASONS) <= set(FIELDS)


def test_the_estimate_of_hand_made_counts_with_the_default_costs():
    stats = hand_made_stats()
    breakdown = CostModel().estimate(stats)
    exits = stats["vm_exits"]
    handlers = {"cr3_load": 400, "invlpg": 300, "pt_read": 200, "pt_write": 400, "hidden_fault": 1500,
                "fault_injection": 600, "ept_violation": 1500, "vm_switch": 2000, "unprotect": 300, "termination": 0}
    expected = {
        "accesses": 1000 * 1.0,
        "tlb": 900 * 1.0 + 60 * 9.0,
        "walks": 40 * 5.0 + 130 * 25.0,
        "guest_page_faults": 3 * 2000.0,
        "guest_pt_accesses": (11 + 7) * 2.0,
        "context_switches": 2 * 500.0,
        "vm_exits": sum(exits[r] * (1200.0 + handlers[r]) for r in EXIT_REASONS),
        "shadow_tables": 4 * 300.0,
    }
    expected["total"] = sum(expected.values())
    assert breakdown == expected
    assert breakdown["total"] == 1000 + 1440 + 3450 + 6000 + 36 + 1000 + expected["vm_exits"] + 1200


@pytest.mark.parametrize("name", FIELDS)
def test_each_cost_moves_the_estimate_by_exactly_its_count(name):
    stats = hand_made_stats()
    base = CostModel().estimate(stats)["total"]
    changed = CostModel(**{name: getattr(CostModel(), name) + 1000.0}).estimate(stats)["total"]
    assert changed - base == 1000.0 * events_charged(stats)[name]


def test_the_exit_total_is_not_charged_as_an_exit_reason():
    stats = hand_made_stats()
    stats["vm_exits"]["total"] = 10**9
    assert CostModel().estimate(stats) == CostModel().estimate(hand_made_stats())


@pytest.mark.parametrize("name", FIELDS)
def test_every_cost_is_a_setting_of_the_machine(name):
    machine = Machine("64MiB", hypervisor={"memory": "4MiB"}, costs={name: 12345.5})
    assert getattr(machine.costs, name) == 12345.5
    others = [f for f in FIELDS if f != name]
    assert all(getattr(machine.costs, f) == getattr(CostModel(), f) for f in others)


def test_the_documented_defaults():
    defaults = CostModel()
    assert (defaults.access, defaults.tlb_l1_hit, defaults.tlb_l2_hit) == (1.0, 1.0, 9.0)
    assert (defaults.walk_reference, defaults.walk_start) == (25.0, 5.0)
    assert (defaults.guest_page_fault, defaults.vm_exit, defaults.termination) == (2000.0, 1200.0, 0.0)
    assert all(isinstance(getattr(defaults, f), float) for f in FIELDS)


@pytest.mark.parametrize("value", [-1, -0.5, float("-inf"), float("nan"), "lots", "nan", None, [1]])
@pytest.mark.parametrize("name", ["vm_exit", "walk_reference", "termination"])
def test_a_bad_cost_is_rejected_naming_its_key(name, value):
    with pytest.raises(ConfigError, match=rf"^costs\.{name}: expected a number"):
        Machine("64MiB", hypervisor={"memory": "4MiB"}, costs={name: value})
    with pytest.raises(ConfigError, match=rf"^costs\.{name}:"):
        CostModel(**{name: value})


def test_a_boolean_cost_is_rejected_not_read_as_one_cycle():
    with pytest.raises(ConfigError, match=r"^costs\.vm_exit: expected a number"):
        CostModel(vm_exit=True)


def test_numbers_given_as_text_or_ints_become_floats():
    costs = CostModel(vm_exit="1500", pt_read=7)
    assert costs.vm_exit == 1500.0 and costs.pt_read == 7.0 and isinstance(costs.pt_read, float)
    assert CostModel(termination=0).termination == 0.0


def test_an_unknown_cost_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r'^costs\.vm_exits: unknown setting \(did you mean "vm_exit"\?\)'):
        Machine("64MiB", hypervisor={"memory": "4MiB"}, costs={"vm_exits": 1})


# -- RunResult ---------------------------------------------------------------------------


def result(cycles, **options):
    stats = hand_made_stats()
    stats["tlb"].update(miss_rate=0.04, references_per_walk=3.25)
    return RunResult(mode="shadow", stats=stats, cycles=cycles, **options)


def test_overhead_needs_a_positive_baseline():
    run = result(3000.0)
    assert run.overhead is None
    with_native = run.with_baseline(result(2000.0))
    assert with_native.overhead == pytest.approx(0.5)
    assert with_native.baseline_cycles == 2000.0
    assert run.baseline_cycles is None  # with_baseline makes a new result
    assert run.with_baseline(4000).overhead == pytest.approx(-0.25)
    assert run.with_baseline(0.0).overhead is None
    assert run.exits is run.stats["vm_exits"]


def test_summary_has_the_row_compare_prints():
    exits = {reason: 0 for reason in EXIT_REASONS}
    exits.update(pt_write=50, cr3_load=7, invlpg=30, pt_read=40, total=127)
    run = result(5000.0, partial=True).with_baseline(4000.0)
    run.stats["vm_exits"] = exits
    row = run.summary()
    assert row == {
        "mode": "shadow", "translations": 1000, "tlb_miss_rate": 0.04, "walks": 40, "refs_per_walk": 3.25,
        "guest_page_faults": 3, "vm_exits": 127, "top_exits": {"pt_write": 50, "pt_read": 40, "invlpg": 30},
        "cycles": 5000.0, "overhead": pytest.approx(0.25), "overhead_basis": "the cycles given", "partial": True,
        "stopped": 0,
    }
    assert list(row["top_exits"]) == ["pt_write", "pt_read", "invlpg"]  # the biggest first


def test_an_overhead_compares_the_same_work_or_is_left_out():
    native = result(2000.0)
    assert native.with_baseline(native).overhead_basis == "baseline"
    whole = result(3000.0).with_baseline(native)
    assert whole.overhead == pytest.approx(0.5) and whole.overhead_basis == "whole run"
    killed = [{"vm": "vm0", "process": "p", "pid": 1, "reason": "segfault at 0x0", "accesses": 1000}]
    both = result(3000.0, partial=True, stopped=killed).with_baseline(result(2000.0, partial=True, stopped=killed))
    assert both.overhead == pytest.approx(0.5) and both.overhead_basis == "over the common prefix of 1,000 accesses"
    fewer = result(1500.0, partial=True)
    fewer.stats["accesses"] = 400
    cut = fewer.with_baseline(native)        # a partial row against a whole native run: no negative overhead
    assert cut.overhead is None and cut.baseline_cycles is None
    assert cut.overhead_basis == "left out: shadow did 400 accesses, shadow 1,000"
    elsewhere = result(3000.0, partial=True, stopped=[{**killed[0], "accesses": 600}])
    assert elsewhere.with_baseline(result(2000.0, partial=True, stopped=killed)).overhead is None
    assert cut.summary()["overhead"] is None and cut.summary()["overhead_basis"].startswith("left out")


def test_stopped_processes_are_notes_with_their_access():
    run = result(10.0, partial=True, stopped=[
        {"vm": "web", "process": "db", "pid": 3, "reason": "out of memory", "accesses": 41},
        {"vm": "batch", "process": None, "pid": None, "reason": "no progress", "accesses": None}])
    assert run.stop_notes() == ["web/db (pid 3) stopped at access 42 of its program (41 done): out of memory",
                                "VM batch stopped: no progress"]
    assert run.to_dict()["stopped"] == run.stopped and run.summary()["stopped"] == 2


def test_summary_of_a_run_without_exits_has_no_top_exits():
    run = result(10.0)
    run.stats["vm_exits"] = {**{reason: 0 for reason in EXIT_REASONS}, "total": 0}
    assert run.summary()["top_exits"] == {} and run.summary()["vm_exits"] == 0


# -- real runs ---------------------------------------------------------------------------


def run(mode, costs=None, n=4000):
    machine = Machine("64MiB", hypervisor={"memory": "8MiB"}, costs=costs)
    vm = machine.create_vm("3MiB", mode, guest={"reserved": "1MiB", "quantum": 700})
    vm.spawn(uniform(pages=700, n=n, seed=1))  # more pages than the VM: the clock runs
    vm.spawn(uniform(pages=40, n=n // 2, seed=2, base=0x2000_0000))
    return machine, machine.run()


@pytest.mark.parametrize("mode", ["native", "brute_force", "shadow", "nested"])
def test_a_run_costs_what_its_counts_cost(mode):
    machine, res = run(mode)
    assert res.mode == mode and not res.partial
    assert res.breakdown == machine.costs.estimate(res.stats)
    assert res.cycles == res.breakdown["total"] == CostModel().estimate(res.stats)["total"]
    exits = res.stats["vm_exits"]
    assert exits["total"] == sum(n for r, n in exits.items() if r != "total")
    assert (exits["total"] == 0) == (mode == "native")
    assert res.stats["accesses"] == 4000 + 2000
    assert res.stats["guest"]["evictions"] > 0


def test_the_vm_exit_cost_moves_brute_force_cycles_by_exactly_exits_times_the_change():
    _, base = run("brute_force")
    _, dearer = run("brute_force", costs={"vm_exit": 1200.0 + 37.0})
    assert dearer.stats == base.stats  # the same work, only priced differently
    exits = base.stats["vm_exits"]["total"]
    assert exits > 1000
    assert dearer.cycles - base.cycles == exits * 37.0
    _, cheaper_writes = run("brute_force", costs={"pt_write": 0.0})
    assert base.cycles - cheaper_writes.cycles == base.stats["vm_exits"]["pt_write"] * 400.0


def test_a_run_result_round_trips_through_json():
    _, res = run("shadow", n=1500)
    res = res.with_baseline(run("native", n=1500)[1])
    loaded = json.loads(res.to_json())
    assert loaded["mode"] == "shadow" and loaded["partial"] is False
    assert loaded["cycles"] == res.cycles and loaded["baseline_cycles"] == res.baseline_cycles
    assert loaded["overhead"] == res.overhead and res.overhead > 0
    assert loaded["breakdown"] == res.breakdown
    assert loaded["stats"] == res.stats
    assert loaded["seconds"] == res.seconds >= 0
    assert json.loads(res.to_json(indent=None)) == loaded
    assert not math.isnan(loaded["cycles"])
