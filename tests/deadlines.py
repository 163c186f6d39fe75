"""A guard against hangs for the hypervisor tests: a block that runs too long fails its test.

``FASTMMU_TEST_DEADLINE`` (seconds, default 120) sets it; a debug build on a loaded machine may
need more.  It is a guard, not a timing: a run that reaches it is a loop without progress.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEADLINE = float(os.environ.get("FASTMMU_TEST_DEADLINE", 120))


@contextmanager
def deadline(seconds: float = DEADLINE) -> Iterator[None]:
    """Raise TimeoutError in the test if the block runs longer than ``seconds`` (where SIGALRM exists)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the run did not finish in {seconds} s (a loop without progress in the simulator?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
