"""A program read once and replayed from a spool (workloads.spool), and compare reading each trace once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastmmu.comparison import compare, run_mode
from fastmmu.workloads import Accesses, Mmap, ProcessSpec, Scenario, StepList, TraceProgram, VMSpec
from fastmmu.workloads.program import ProgramError
from fastmmu.workloads.spool import SpooledProgram

DATA = Path(__file__).parent / "data" / "traces"
LACKEY = DATA / "sample.lackey"


def batches(count: int, size: int = 100, seed: int = 7) -> list:
    rng = np.random.default_rng(seed)
    steps: list = [Mmap(0x10000000, 1 << 24)]
    for _ in range(count):
        steps.append(Accesses(0x10000000 + rng.integers(0, 1 << 24, size, dtype=np.uint64) // 8 * 8,
                              rng.integers(0, 3, size).astype(np.uint8)))
    return steps


def same(a, b) -> bool:
    if isinstance(a, Accesses):
        return (isinstance(b, Accesses) and np.array_equal(a.addresses, b.addresses)
                and np.array_equal(a.kinds, b.kinds) and a.addresses.dtype == b.addresses.dtype
                and a.kinds.dtype == b.kinds.dtype)
    return a == b


class Counting:
    """A program that counts how often it is read, and may fail after ``fail_after`` steps."""

    def __init__(self, steps: list, fail_after: int | None = None) -> None:
        self.items, self.fail_after, self.reads = steps, fail_after, 0

    def steps(self):
        self.reads += 1
        for index, step in enumerate(self.items):
            if index == self.fail_after:
                raise ProgramError(f"bad record after step {index}")
            yield step


@pytest.mark.parametrize("budget", [0, 1500, 1 << 30])   # all on disk, part, all in memory
def test_every_pass_gets_the_same_steps_and_the_program_is_read_once(budget):
    original = batches(12)
    program = Counting(original)
    with SpooledProgram(program, memory_budget=budget) as spooled:
        for _ in range(3):
            replayed = list(spooled.steps())
            assert len(replayed) == len(original)
            assert all(same(a, b) for a, b in zip(original, replayed, strict=True))
    assert program.reads == 1


def test_overlapping_and_early_stopping_passes_see_the_same_sequence():
    original = batches(10)
    program = Counting(original)
    spooled = SpooledProgram(program, memory_budget=0)
    first = spooled.steps()
    head = [next(first) for _ in range(4)]           # a pass that stops early (--max-accesses)
    second = list(spooled.steps())                   # replays 4, then reads on from the first's iterator
    rest = list(first)                               # the first pass goes on from the spool
    assert all(same(a, b) for a, b in zip(original, head + rest, strict=True))
    assert all(same(a, b) for a, b in zip(original, second, strict=True))
    assert program.reads == 1
    spooled.close()


def test_the_program_s_error_is_raised_at_the_same_step_of_every_pass():
    program = Counting(batches(6), fail_after=4)
    spooled = SpooledProgram(program, memory_budget=0)
    for _ in range(2):
        seen = []
        with pytest.raises(ProgramError, match="after step 4"):
            for step in spooled.steps():
                seen.append(step)
        assert len(seen) == 4
    assert program.reads == 1


def test_a_spool_that_cannot_be_written_is_dropped_and_the_program_read_afresh(monkeypatch):
    import fastmmu.workloads.spool as spool

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool.tempfile, "TemporaryFile", no_room)
    original = batches(5)
    program = Counting(original)
    spooled = SpooledProgram(program, memory_budget=2000)   # the first two batches fit in memory
    first = spooled.steps()
    head = [next(first) for _ in range(2)]
    assert all(same(a, b) for a, b in zip(original, list(spooled.steps()), strict=True))   # drops the spool
    assert all(same(a, b) for a, b in zip(original, head + list(first), strict=True))
    assert all(same(a, b) for a, b in zip(original, list(spooled.steps()), strict=True))
    assert program.reads == 4 and spooled._file is None   # the first read, then one per pass after the drop


def test_compare_reads_a_trace_once_with_the_results_of_reading_it_per_mode(monkeypatch):
    reads = []
    real_open = TraceProgram.open

    def counting_open(self):
        reads.append(self.path)
        return real_open(self)

    scenario = Scenario([VMSpec("vm0", memory="64MiB", processes=[
        ProcessSpec("trace", TraceProgram(str(LACKEY))),
        ProcessSpec("generated", StepList(batches(3)))])])
    alone = {mode: run_mode(scenario, mode).to_dict() for mode in ("native", "shadow", "nested")}
    monkeypatch.setattr(TraceProgram, "open", counting_open)
    comparison = compare(scenario, "shadow,nested")
    assert reads == [str(LACKEY)]                     # one read for the three modes
    for mode, result in comparison.results.items():
        together = result.to_dict()
        for key in ("stats", "cycles", "breakdown", "stopped", "error"):
            assert together[key] == alone[mode][key], (mode, key)
