"""Benchmark reading a valgrind lackey trace, optionally against the C yardstick (lackey.c).

    python bench/lackey.py                               # fastmmu alone, on a generated 20 M-line trace
    python bench/lackey.py --reference ../shared/limit   # + lackey.c, back to back, with the ratio
    python bench/lackey.py --trace sort.lackey -r 7      # on a trace you have (uncompressed)

Both read the same uncompressed file, from the page cache (one untimed pass
each warms it), into (kind, address) pairs: lackey.c keeps a checksum,
fastmmu fills its chunks of arrays.  Lines/s counts every line (records and
valgrind's own).  ``ratio`` is fastmmu's lines/s over C's, the median of the
per-repetition ratios (each pair run back to back); the target is at least
0.5.  The machine is shared and noisy: compare ratios, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

import fastmmu.traces

KIND_PREFIX = {"I": b"I  ", "L": b" L ", "S": b" S ", "M": b" M "}
HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def generate(path: str, lines: int, seed: int = 1) -> None:
    """A lackey-shaped trace: 60% fetches (8 hex digits, as lackey prints code addresses), loads,
    stores and modifies (10 digits: stack and heap), and a valgrind header; vectorised, seeded."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(np.array([b"I", b"L", b"S", b"M"]), size=lines, p=[0.6, 0.25, 0.12, 0.03])
    fetch = kind == b"I"
    digits = np.where(fetch, 8, 10)
    address = np.where(fetch, rng.integers(0x0400_0000, 0x0500_0000, lines),
                       rng.integers(0x1F_FE00_0000, 0x1F_FF00_0000, lines)).astype(np.uint64)
    size = np.where(fetch, rng.integers(1, 10, lines), 8)
    length = 3 + digits + 3                            # prefix, address, ",<size>\n"
    ends = np.cumsum(length)
    starts = ends - length
    text = np.empty(int(ends[-1]), dtype=np.uint8)
    for k, prefix in KIND_PREFIX.items():
        rows = starts[kind == k.encode()]
        for j, byte in enumerate(prefix):
            text[rows + j] = byte
    for j in range(10):                                # hex digits, most significant first
        has = digits > j
        shift = (digits[has] - 1 - j) * 4
        text[starts[has] + 3 + j] = HEX_DIGITS[(address[has] >> shift.astype(np.uint64)) & np.uint64(15)]
    text[starts + 3 + digits] = ord(",")
    text[starts + 4 + digits] = ord("0") + size
    text[starts + 5 + digits] = ord("\n")
    with open(path, "wb") as f:
        f.write(b"==1== Lackey, an example Valgrind tool\n==1== Command: bench\n")
        text.tofile(f)


def build_reference(path: str, work: str) -> str:
    if not os.path.isfile(os.path.join(path, "lackey.c")):
        raise SystemExit(f"bench: --reference {path}: no lackey.c there")
    for name in ("lackey.c", "Makefile"):
        shutil.copy(os.path.join(path, name), work)
    subprocess.run(["make", "-s", "lackey"], cwd=work, check=True, stdout=subprocess.DEVNULL)
    return os.path.join(work, "lackey")


def run_c(program: str, trace: str) -> dict[str, Any]:
    out = subprocess.run([program, trace], check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def run_fastmmu(trace: str) -> tuple[float, fastmmu.traces.TraceStats]:
    t0 = time.perf_counter()
    opened = fastmmu.traces.open(trace, "lackey")
    for _chunk in opened.chunks():
        pass
    seconds = time.perf_counter() - t0
    return seconds, opened.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20_000_000, help="lines of the generated trace (default 20 M)")
    parser.add_argument("-r", "--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--trace", help="an uncompressed lackey trace to use instead of a generated one")
    parser.add_argument("--reference", metavar="DIR", help="the C yardstick's folder (e.g. ../shared/limit)")
    args = parser.parse_args(argv)
    if args.n < 1 or not 1 <= args.reps <= 31:
        parser.error("need -n >= 1 and 1 <= -r <= 31")

    work = tempfile.mkdtemp(prefix="fastmmu-lackey-")
    try:
        trace = args.trace
        if trace is None:
            trace = os.path.join(work, "bench.lackey")
            print(f"bench: generating a lackey trace of {args.n} lines", file=sys.stderr)
            generate(trace, args.n)
        program = build_reference(args.reference, work) if args.reference else None
        # Warm the page cache and check both read the same records.
        _, stats = run_fastmmu(trace)
        report: dict[str, Any] = {
            "trace": args.trace or "generated", "bytes": os.path.getsize(trace), "reps": args.reps,
            "records": stats.records, "skipped_lines": stats.skipped_lines,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "numpy": np.__version__, "cpus": os.cpu_count()},
        }
        if program:
            c = run_c(program, trace)
            if (c["records"], c["skipped"]) != (stats.records, stats.skipped_lines):
                raise SystemExit(f"bench: lackey.c read {c['records']} records and skipped {c['skipped']} lines, "
                                 f"fastmmu {stats.records} and {stats.skipped_lines}")
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.reps):
            if program:
                theirs.append(run_c(program, trace)["mlines_per_s"] * 1e6)
            seconds, stats = run_fastmmu(trace)
            ours.append((stats.records + stats.skipped_lines + stats.bad_records) / seconds)
        report["lines_per_s"] = statistics.median(ours)
        report["lines_per_s_max"] = max(ours)
        if program:
            report["c_lines_per_s"] = statistics.median(theirs)
            report["c_lines_per_s_max"] = max(theirs)
            report["ratio"] = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
            report["ratios"] = [round(o / t, 3) for o, t in zip(ours, theirs, strict=True)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
