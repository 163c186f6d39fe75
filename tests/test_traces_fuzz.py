"""Fuzzing every trace reader: whatever a file holds, only a TraceError may come out.

Hypothesis draws the examples of ``bench/fuzz_traces.py`` (valid lackey, din, ChampSim,
ChampSim-cloudsuite and native traces, mutated before or after gzip, xz or zstd compression) and
plain random bytes, and reads each one as detected and as each format forced, with and without
``skip_bad``.  A hang fails the example (a time limit inside, a Hypothesis deadline outside).  The
"ci" profile runs a few thousand examples; ``python bench/fuzz_traces.py --minutes 15`` is the
long run.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
try:
    import fuzz_traces as fuzz
finally:
    sys.path.remove(BENCH)

FUZZ = settings(deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("fuzz") / "trace")


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
@FUZZ
@given(compression=st.sampled_from(fuzz.compressions()), mutation=st.sampled_from(fuzz.MUTATIONS),
       after=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_mutated_traces_raise_only_trace_errors(path: str, fmt: str, compression: str, mutation: str, after: bool,
                                                seed: int) -> None:
    data, must_fail = fuzz.build(fmt, compression, mutation, after and compression != "none",
                                 np.random.default_rng(seed))
    assert fuzz.check(data, fmt, path, must_fail) is None


@pytest.mark.parametrize("fmt", fuzz.FORMATS[:-1])
@FUZZ
@given(data=st.binary(max_size=600), compression=st.sampled_from(fuzz.compressions()))
def test_random_bytes_raise_only_trace_errors(path: str, fmt: str, data: bytes, compression: str) -> None:
    assert fuzz.check(fuzz.compress(data, compression), fmt, path) is None


def test_the_valid_traces_read_whole(path: str) -> None:
    """The fuzzer's starting points are valid: it mutates traces, not noise."""
    for fmt in fuzz.FORMATS:
        for seed in range(20):
            data = fuzz.valid_trace(fmt, np.random.default_rng(seed))
            with open(path, "wb") as f:
                f.write(data)
            records = fuzz.read_everything(path, "native" if fmt == "native-v1" else fmt, skip_bad=False)
            assert records >= 0


def test_a_hang_is_a_failure(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The time limit turns a reader that never returns into a reported failure."""
    import time

    monkeypatch.setattr(fuzz, "TIME_LIMIT", 0.2)
    monkeypatch.setattr(fuzz, "read_everything", lambda *args: time.sleep(5))
    assert fuzz.check(b"x", "lackey", path).startswith("Hang: the example ran past 0.2 s")


def test_a_foreign_exception_is_a_failure(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> int:
        raise IndexError("index 9 is out of bounds")

    monkeypatch.setattr(fuzz, "read_everything", broken)
    assert fuzz.check(b"x", "lackey", path).startswith("IndexError: index 9 is out of bounds (format=None")
