"""The benchmark harness runs and its traces are the C yardstick's, bit for bit (a smoke test, not a timing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
LIMIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "limit")


def test_the_benchmark_runs_every_row_and_reports_exact_counts():
    done = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "-n", "20000", "-r", "1",
                           "--python-n", "2000", "--rows", "abcd"], capture_output=True, text=True, timeout=600)
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


@pytest.mark.skipif(not (shutil.which("make") and shutil.which("gcc")), reason="rows e, f and i build C programs")
def test_the_new_rows_run_and_count_what_the_c_programs_count(tmp_path):
    """Rows e-i, tiny: the JSON's shape, and fastmmu's hits and walks equal to the C loops' (same traces,
    same TLB geometry and LRU), and compare's translations equal to the records the C floor parsed."""
    n = 20000
    rows = "efgh" + ("i" if shutil.which("valgrind") and shutil.which("sort") else "")
    done = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "-n", str(n), "-r", "1", "--rows", rows,
                           "--pages", "2048", "--sort-numbers", "50", "--cache", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    by_part: dict[str, list[dict]] = {}
    for row in report["rows"]:
        by_part.setdefault(row["part"], []).append(row)
    assert len(by_part["e"]) == 9 and len(by_part["f"]) == 2
    for row in by_part["e"] + by_part["f"]:
        mine, theirs = row["stats"], row["c_stats"]
        assert (mine["l1_hits"], mine["l2_hits"], mine["walks"]) == (theirs["l1_hits"], theirs["l2_hits"],
                                                                     theirs["walks"]), row
        assert row["ns"] > 0 and row["c_ns"] > 0 and row["ratio"] == pytest.approx(row["c_ns"] / row["ns"])
        assert row["target"] == (0.8 if row["part"] == "e" else 1.0)
        assert row["meets_target"] == (row["ratio"] >= row["target"])
        if "none()" in row["structure"]:
            assert mine["walks"] == n and mine["refs_per_walk"] == theirs["refs_per_walk"] == 4.0
        if "L1 DTLB" in row["structure"]:
            assert mine["l2_hits"] == 0 and mine["refs_per_walk"] == 4.0   # no PSC: a full walk per miss
    assert theirs["refs_per_walk"] == 24.0          # row f's comparator is C's row d
    modes = ["native", "brute_force", "shadow", "nested"]
    assert [r["mode"] for r in by_part["g"]] == modes and [r["mode"] for r in by_part["h"]] == modes
    for row in by_part["g"]:
        assert row["faults"] == 2048 and row["faults_per_s"] > 0
        assert row["target"] == (50_000 if row["mode"] == "shadow" else 100_000)
        assert row["meets_target"] == (row["faults_per_s"] >= row["target"])
    for row in by_part["h"]:
        assert row["target"] == 128 and row["meets_target"] == (row["bytes_per_page"] <= 128)
    if "i" in rows:
        (row,) = by_part["i"]
        assert row["trace"]["cached"] is False and row["trace"]["lines"] > 100_000
        assert set(row["stats"]["translations"].values()) == {row["c_stats"]["records"]}
        assert row["x_of_c"] == pytest.approx(row["seconds"] / row["c_seconds"])
        assert row["ratio"] == pytest.approx(1 / row["x_of_c"]) and row["target"] == 3.0
    assert {s["part"] for s in report["summary"]} == set(rows)
