"""A progress line on stderr for long runs: accesses done, rate and ETA, only on a terminal.

It is an ``on_batch`` hook: redrawn at most every ``interval`` seconds, so it
costs nothing per access.  ``total`` is the expected accesses of one mode
(an estimate for traces, from their size), or None when unknown (no ETA).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from fastmmu.units import approx_count


class ProgressBar:
    def __init__(self, modes: list[str], total: int | None, *, stream: TextIO | None = None,
                 interval: float = 0.25, force: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.modes, self.total, self.interval = modes, total, interval
        self.mode, self.index = "", 0
        self.done = 0
        self.started = self.last = time.perf_counter()
        self.width = 0

    def start_mode(self, mode: str, index: int) -> None:
        self.mode, self.index, self.done = mode, index, 0
        self.started = time.perf_counter()
        self.last = 0.0
        self.draw()

    def on_batch(self, vm: Any, process: Any, addresses: Any, kinds: Any, out: Any, start: int, stop: int) -> None:
        self.done += stop - start
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self.draw(now)

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.mode} [{self.index + 1}/{len(self.modes)}] {approx_count(self.done)}"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * 20)
            settled = elapsed >= 0.5 and self.done * 100 >= self.total   # a rate worth an estimate
            eta = _clock((self.total - self.done) / rate) if settled and self.done < self.total else \
                ("0:00:00" if self.done >= self.total else "-:--:--")
            text = (f"{self.mode} [{self.index + 1}/{len(self.modes)}] [{'#' * filled}{'.' * (20 - filled)}] "
                    f"{approx_count(self.done)}/~{approx_count(self.total)} accesses  {approx_count(rate)}/s  "
                    f"ETA {eta}")
        else:
            text += f" accesses  {approx_count(rate)}/s"
        return text

    def draw(self, now: float | None = None) -> None:
        if not self.enabled:
            return
        text = self.line(now)
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
