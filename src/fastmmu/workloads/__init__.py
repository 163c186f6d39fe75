"""Workloads: programs of guest processes (accesses, mmap, munmap) and scenarios of VMs."""

from fastmmu.workloads.generators import Churn, Phases, Sequential, Uniform, Zipf, churn, sequential, uniform, zipf
from fastmmu.workloads.program import Accesses, Mmap, Munmap, Program, StepList
from fastmmu.workloads.scenario import ProcessSpec, Scenario, VMSpec, default_scenario

__all__ = ["Accesses", "Churn", "Mmap", "Munmap", "Phases", "ProcessSpec", "Program", "Scenario", "Sequential",
           "StepList", "Uniform", "VMSpec", "Zipf", "churn", "default_scenario", "sequential", "uniform", "zipf"]
