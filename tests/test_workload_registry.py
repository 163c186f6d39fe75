"""Workloads by name and scenarios as data: the generators' behaviour, specs, mixes and their errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fastmmu.comparison import compare
from fastmmu.settings import ConfigError
from fastmmu.workloads import (
    GENERATORS,
    Accesses,
    Mmap,
    Strided,
    WorkingSets,
    mix,
    program_from_spec,
    program_to_spec,
    scenario_from_dict,
    strided,
    zipf,
)
from fastmmu.workloads.registry import expected_accesses, parse_workload


def accesses(program) -> np.ndarray:
    return np.concatenate([s.addresses for s in program.steps() if isinstance(s, Accesses)])


def test_working_sets_move_from_phase_to_phase_keeping_what_they_are_told():
    for keep, shared in ((0.0, 0), (0.5, 32), (1.0, 64)):
        program = WorkingSets(pages=4096, n=4 * 2000, phases=4, set_pages=64, keep=keep, seed=5, chunk=500)
        pages = accesses(program) >> np.uint64(12)
        phases = [set(p.tolist()) for p in np.split(pages, 4)]
        assert all(len(p) == 64 for p in phases)          # 2000 draws from 64 pages touch every one
        for before, after in zip(phases, phases[1:], strict=False):
            assert len(before & after) == shared, keep
    again = WorkingSets(pages=4096, n=8000, phases=4, set_pages=64, keep=0.5, seed=5)
    assert np.array_equal(accesses(again), accesses(WorkingSets(pages=4096, n=8000, phases=4, set_pages=64,
                                                                keep=0.5, seed=5)))
    with pytest.raises(ValueError, match="room for each phase's new pages"):
        WorkingSets(pages=100, n=10, set_pages=60)                     # 60 + 60 new pages > 100
    assert len(list(WorkingSets(pages=100, n=10, set_pages=60, keep=0.5).steps())) > 1   # 60 + 30 fit


def test_strided_touches_a_new_page_every_access_until_it_wraps():
    pages = accesses(strided(pages=100, n=250)) >> np.uint64(12)
    assert len(np.unique(pages[:100])) == 100 and np.array_equal(pages[:100], pages[100:200])
    steps = list(Strided(pages=1024, n=4, stride=1 << 20).steps())
    assert isinstance(steps[0], Mmap) and len(np.unique(accesses(Strided(pages=1024, n=4, stride=1 << 20)))) == 4
    with pytest.raises(ValueError, match="^strided: stride: expected a multiple of 8 from 8 to the region's 32768 "
                                         "bytes, got 2097152$"):   # would touch one address over and over
        Strided(pages=8, n=8, stride=2 << 20)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_round_trips_through_its_spec(name):
    extra = {"set_pages": 16} if name == "working_sets" else {}
    program = program_from_spec({"generator": name, "pages": 64, "n": 500, "seed": 3, **extra})
    spec = program_to_spec(program)
    assert spec["generator"] == name and program_from_spec(spec) == program
    assert expected_accesses(program) == sum(len(s) for s in program.steps() if isinstance(s, Accesses))


def test_values_on_the_command_line():
    spec = parse_workload("zipf:pages=4k,n=1.5M,alpha=1.2,base=0x7f0000000000,writes=0")
    program = program_from_spec(spec)
    assert (program.pages, program.n, program.alpha, program.base, program.writes) == \
        (4000, 1_500_000, 1.2, 0x7F00_0000_0000, 0.0)
    assert program_from_spec(parse_workload("uniform:pages=1e3,n=2_000")).n == 2000
    with pytest.raises(ConfigError, match=r"--workload\.n: expected int, got '1.5'"):
        program_from_spec(parse_workload("zipf:pages=4,n=1.5"), "--workload")


@pytest.mark.parametrize("text, message", [
    ("zipf:pages=0,n=10k", "zipf: pages: expected an integer in [1, 2**26], got 0"),
    ("strided:pages=100,n=1k,stride=0", "strided: stride: expected a multiple of 8 from 8 to the region's "
                                        "409600 bytes, got 0"),
    ("zipf:pages=100,n=1k,writes=2", "zipf: writes: expected a number in [0, 1], got 2.0"),
    ("zipf:pages=100,n=1k,alpha=-1", "zipf: alpha: expected a number > 0, got -1.0"),
    ("churn:pages=8,n=10,rounds=0", "churn: rounds: expected an integer >= 1, got 0"),
])
def test_a_spec_gets_the_constructors_message_after_its_key(text, message):
    with pytest.raises(ConfigError) as caught:
        program_from_spec(parse_workload(text), "--workload")
    assert str(caught.value) == f"--workload: {message}"


def test_a_mix_is_one_vm_with_a_process_per_program():
    scenario = mix({"db": zipf(pages=256, n=3000, seed=1), "scan": strided(pages=64, n=1000)}, memory="32MiB")
    assert [(p.name, type(p.program).__name__) for p in scenario.vms[0].processes] == [("db", "Zipf"),
                                                                                      ("scan", "Strided")]
    result = compare(scenario, modes="nested").results["nested"]
    assert result.stats["accesses"] == 4000
    touched = sum(len(np.unique(accesses(p.program) >> np.uint64(12))) for p in scenario.vms[0].processes)
    assert result.stats["guest"]["page_faults"] == touched        # each process's pages, once


def test_scenario_files_are_checked_key_by_key():
    good = {"vms": [{"name": "a", "memory": "32MiB", "processes": [
        {"name": "z", "generator": "zipf", "pages": 64, "n": 100}]}]}
    assert scenario_from_dict(good).to_dict()["vms"][0]["processes"][0]["n"] == 100
    for data, message in (
        ({"vm": []}, 'workload.vm: unknown key (did you mean "vms"?)'),
        ({"vms": []}, "workload.vms: expected a non-empty list"),
        ({"vms": [{"name": "a", "processes": []}]}, r"workload.vms\[0\].processes: expected a non-empty list"),
        ({"vms": [{"name": "a", "memroy": "1GiB", "processes": [{"generator": "zipf"}]}]}, 'did you mean "memory"'),
        ({"vms": [{"processes": [{"generator": "zipf", "pages": 4}]}]}, r"processes\[0\]: zipf needs n"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message) if "(" in message else message):
            scenario_from_dict(data)


def test_two_vms_with_one_name_are_rejected():
    from fastmmu.hypervisor.machine import Machine

    machine = Machine("1GiB")
    machine.create_vm("32MiB", "shadow", name="web")
    with pytest.raises(ConfigError, match=r"^vm.name: this machine already has a VM named 'web' "):
        machine.create_vm("32MiB", "shadow", name="web")
    machine.create_vm("32MiB", "nested")                     # vm2: the default name of the second VM
    with pytest.raises(ConfigError, match=r"^vm.name: this machine already has a VM named 'vm2' "):
        machine.create_vm("32MiB", "nested", name="vm2")
    assert [vm.name for vm in machine.vms.values()] == ["web", "vm2"]
    zipf_spec = {"generator": "zipf", "pages": 8, "n": 10}
    with pytest.raises(ConfigError, match=re.escape("workload.vms[2].name: 'a' is already the name of "
                                                    "workload.vms[0]; VM names must be unique")):
        scenario_from_dict({"vms": [{"name": "a", "processes": [zipf_spec]}, {"name": "b", "processes": [zipf_spec]},
                                    {"name": "a", "processes": [zipf_spec]}]})
