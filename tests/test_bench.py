"""The benchmark harness runs and its traces are the C yardstick's, bit for bit (a smoke test, not a timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
LIMIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "limit")


def test_the_benchmark_runs_every_row_and_reports_exact_counts():
    done = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "-n", "20000", "-r", "1",
                           "--python-n", "2000"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert len(rows) == 14
    by_name = {(r["structure"], r["workload"]): r for r in rows}
    assert by_name[("L1 TLB 64e/4w", "sequential 8 B, 1 GiB")]["stats"]["hits"] == [19960]
    assert by_name[("native 4-level walk", "uniform, 1 GiB")]["stats"] == {"walks": 20000, "refs_per_walk": 4.0}
    assert by_name[("2D walk (EPT)", "Zipf 0.99, 16 GiB")]["stats"]["refs_per_walk"] == 24.0
    assert all(r["ns"] > 0 for r in rows) and all(r["speedup_vs_python"] > 1 for r in rows if r["part"] == "a")


@pytest.mark.skipif(not os.path.isfile(os.path.join(LIMIT, "traces.py")), reason="../shared/limit is not beside us")
def test_our_traces_are_the_yardsticks_traces():
    sys.path.insert(0, BENCH)
    try:
        import traces as ours
    finally:
        sys.path.remove(BENCH)
    import importlib.util

    spec = importlib.util.spec_from_file_location("limit_traces", os.path.join(LIMIT, "traces.py"))
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    for name, generate in ours.WORKLOADS.items():
        assert ours.checksum(generate(50_000)) == theirs.checksum(theirs.WORKLOADS[name](50_000)), name
