"""Throughput of the trace I/O: the native reader and writer, and the host-trace text formatting.

    python bench/trace_io.py              # 16 M records, JSON on stdout
    python bench/trace_io.py -n 4000000 -r 5

Everything runs in memory (io.BytesIO), so the numbers are the format's cost,
not the disk's.  ``events_per_million`` mixes in guest-OS events (the
reader's slow path, one Python step per event).  Reports M records/s, the
best of ``-r`` repetitions; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable

import numpy as np

from fastmmu.traces.base import ReadOptions, SwitchProcess
from fastmmu.traces.native import NativeWriter, read
from fastmmu.traces.writers import format_lines


def best(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def trace(addresses: np.ndarray, kinds: np.ndarray, events_per_million: int) -> bytes:
    out = io.BytesIO()
    with NativeWriter(out) as writer:
        pieces = max(1, len(addresses) * events_per_million // 1_000_000)
        for k, part in enumerate(np.array_split(np.arange(len(addresses)), pieces)):
            if events_per_million:
                writer.write_event(SwitchProcess(k % 8))
            writer.write_accesses(addresses[part[0]:part[-1] + 1], kinds[part[0]:part[-1] + 1])
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=16_000_000, help="records")
    parser.add_argument("-r", type=int, default=3, help="repetitions (the best is kept)")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    addresses = rng.integers(0, 1 << 47, args.n, dtype=np.uint64)
    kinds = rng.integers(0, 3, args.n, dtype=np.uint8)
    millions = args.n / 1e6
    rows: dict[str, float] = {}

    def write() -> None:
        with NativeWriter(io.BytesIO()) as writer:
            writer.write_accesses(addresses, kinds)

    rows["native_write"] = millions / best(args.r, write)
    for events in (0, 1_000):
        data = trace(addresses, kinds, events)

        def read_all(data: bytes = data) -> None:
            for _ in read(io.BytesIO(data), ReadOptions("bench")):
                pass

        rows[f"native_read_{events}_events_per_M"] = millions / best(args.r, read_all)
    writes = (kinds & 1) != 0
    block = 1 << 16
    for style in ("ramulator", "dramsim3"):
        def text(style: str = style) -> None:
            for start in range(0, args.n, block):
                format_lines(addresses[start:start + block], writes[start:start + block], style, start)

        rows[f"text_{style}"] = millions / best(args.r, text)
    json.dump({"records": args.n, "unit": "M records/s", "rows": {k: round(v, 1) for k, v in rows.items()}},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
