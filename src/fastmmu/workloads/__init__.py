"""Workloads: programs of guest processes (accesses, mmap, munmap), generators, trace replay, scenarios."""

from fastmmu.workloads.generators import (
    Churn,
    Phases,
    Sequential,
    Strided,
    Uniform,
    WorkingSets,
    Zipf,
    churn,
    sequential,
    strided,
    uniform,
    working_sets,
    zipf,
)
from fastmmu.workloads.program import Accesses, Invlpg, Mmap, Munmap, Program, StepList
from fastmmu.workloads.registry import GENERATORS, describe_generators, program_from_spec, program_to_spec
from fastmmu.workloads.replay import TraceProgram, trace_streams
from fastmmu.workloads.scenario import ProcessSpec, Scenario, VMSpec, default_scenario, mix, scenario_from_dict

__all__ = ["GENERATORS", "Accesses", "Churn", "Invlpg", "Mmap", "Munmap", "Phases", "ProcessSpec", "Program",
           "Scenario", "Sequential", "StepList", "Strided", "TraceProgram", "Uniform", "VMSpec", "WorkingSets",
           "Zipf", "churn", "default_scenario", "describe_generators", "mix", "program_from_spec", "program_to_spec",
           "scenario_from_dict", "sequential", "strided", "trace_streams", "uniform", "working_sets", "zipf"]
