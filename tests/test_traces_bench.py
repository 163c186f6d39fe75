"""bench/lackey.py runs, reads every generated line, and agrees with the C yardstick (a smoke test, not a timing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = os.path.join(ROOT, "..", "shared", "limit")


@pytest.mark.parametrize("reference", [False, True])
def test_the_lackey_benchmark_runs(reference):
    args = [sys.executable, os.path.join(ROOT, "bench", "lackey.py"), "-n", "30000", "-r", "1"]
    if reference:
        if not os.path.isfile(os.path.join(LIMIT, "lackey.c")) or shutil.which("make") is None:
            pytest.skip("../shared/limit/lackey.c (or make) is not here")
        args += ["--reference", LIMIT]
    # The fastmmu under test, whichever it is (installed, or src/ on PYTHONPATH in place).
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["records"], report["skipped_lines"]) == (30000, 2)
    assert report["lines_per_s"] > 0
    assert ("ratio" in report) == reference
