"""Fixtures shared by every test file.  Keep this small: a fixture one file uses lives there.

Random tests take an explicit seed (the ``seed`` fixture) and print it, so a
failure shows the seed and ``FASTMMU_TEST_SEED=<seed> pytest ...`` replays it.
Hypothesis prints its own reproduction blob on failure (``print_blob``).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import settings

# No deadlines: the debug build (FASTMMU_CYTHON_DEBUG=1) and a loaded CI machine are slow.
settings.register_profile("dev", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which fastmmu the tests run against: the installed build, never src/ by accident."""
    try:
        import fastmmu
        from fastmmu._backend import backend_report
    except ImportError as exc:
        return [f"fastmmu: cannot be imported: {exc}"]
    report = backend_report()
    return [f"fastmmu {report['version']} from {os.path.dirname(fastmmu.__file__)}",
            f"fastmmu backend: {report['backend']}, build: {report['build']}"]


@pytest.fixture
def seed() -> int:
    """A seed for one random test: FASTMMU_TEST_SEED if set, else a fresh one; printed."""
    value = int(os.environ.get("FASTMMU_TEST_SEED", random.randrange(2**32)))
    print(f"seed = {value}  (replay: FASTMMU_TEST_SEED={value})")
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    """A numpy generator seeded by the ``seed`` fixture."""
    return np.random.default_rng(seed)
