"""Benchmark fastmmu's compiled core, optionally against the hand-written C yardstick.

    python bench/run.py                               # fastmmu alone, JSON on stdout
    python bench/run.py --reference ../shared/limit   # + C, back to back, with ratios
    python bench/run.py -n 2000000 -r 3 --rows a      # shorter; only the TLB rows

Every row runs the same seeded trace (``bench/traces.py`` reproduces the C
program's traces bit for bit; the checksums are compared) and reports
ns/access, the median of ``-r`` repetitions, and the minimum.  With a
reference, ``ratio`` is C ns / fastmmu ns: 1.0 is C's speed, the target is at
least 0.8.  The TLB rows also time the pure-Python reference model on a
prefix of the trace (``--python-n``) and report fastmmu's speed-up over it.
The machine is shared and noisy: compare ratios, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traces  # noqa: E402

import fastmmu  # noqa: E402
from fastmmu.arch import EPT, PTE, FrameKind  # noqa: E402
from fastmmu.cpu import CpuState  # noqa: E402
from fastmmu.tables import EptTable, PageTable  # noqa: E402
from fastmmu.tlbconfig import CacheGeometry, TLBConfig  # noqa: E402

GIB = 1 << 30
NATIVE_DATA_PA = 0x200000 << 12     # native data pages: 8 GiB up (as limit.c)
GUEST_PT_GPFN = 0x100               # guest page tables: 1 MiB up
GUEST_DATA_GPA = 0x100000 << 12     # guest data pages: 4 GiB up
HOST_DATA_PA = 0x1000000 << 12      # host frames behind guest data: 64 GiB up

L1 = CacheGeometry(64, 4)
L2 = CacheGeometry(1536, 12)

# (part, structure, workload) in the C program's order and spelling.
ROWS = [
    ("a", "L1 TLB 64e/4w", "sequential 8 B, 1 GiB"),
    ("a", "L1 TLB 64e/4w", "uniform, 1 GiB"),
    ("a", "L1 TLB 64e/4w", "Zipf 0.99, 16 GiB"),
    ("a", "L2 TLB 1536e/12w", "sequential 8 B, 1 GiB"),
    ("a", "L2 TLB 1536e/12w", "uniform, 1 GiB"),
    ("a", "L2 TLB 1536e/12w", "Zipf 0.99, 16 GiB"),
    ("a", "L1+L2 TLB", "sequential 8 B, 1 GiB"),
    ("a", "L1+L2 TLB", "uniform, 1 GiB"),
    ("a", "L1+L2 TLB", "Zipf 0.99, 16 GiB"),
    ("b", "native 4-level walk", "uniform, 1 GiB"),
    ("c", "2D walk (EPT)", "uniform, 1 GiB"),
    ("c", "2D walk (EPT)", "Zipf 0.99, 16 GiB"),
    ("d", "L1+L2 TLB + 2D walk", "uniform, 1 GiB"),
    ("d", "L1+L2 TLB + 2D walk", "Zipf 0.99, 16 GiB"),
]


# -- the C yardstick ----------------------------------------------------------------

def run_reference(path: str, n: int, reps: int) -> tuple[dict[tuple[str, str], dict[str, float]], dict[str, int]]:
    """Build the C program in a scratch copy of ``path``, run it, parse its table."""
    if not os.path.isfile(os.path.join(path, "limit.c")):
        raise SystemExit(f"bench: --reference {path}: no limit.c there")
    work = tempfile.mkdtemp(prefix="fastmmu-limit-")
    try:
        for name in ("limit.c", "Makefile"):
            shutil.copy(os.path.join(path, name), work)
        subprocess.run(["make", "-s", "limit"], cwd=work, check=True, stdout=subprocess.DEVNULL)
        text = subprocess.run([os.path.join(work, "limit"), "-n", str(n), "-r", str(reps)],
                              cwd=work, check=True, capture_output=True, text=True).stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sums = {k: int(v, 16) for k, v in re.findall(r"(seq|rand|zipf)=([0-9a-f]{16})", text)}
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0] in "abcd" and cells[0]:
            rows[(cells[1], cells[2])] = {"ns": float(cells[3]), "ns_min": float(cells[4])}
    return rows, sums


# -- fastmmu rows ---------------------------------------------------------------------

def timed(run: Callable[[], Any], reps: int) -> tuple[list[float], Any]:
    """Run ``run`` reps times; seconds per repetition and the last result."""
    seconds, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - t0)
    return seconds, result


def tlb_row(structure: str, trace: np.ndarray, reps: int, backend: Any) -> tuple[list[float], dict[str, Any]]:
    def levels() -> list[Any]:
        l1 = backend.TLB(L1.entries, L1.ways)
        l2 = backend.TLB(L2.entries, L2.ways)
        return {"L1 TLB 64e/4w": [l1], "L2 TLB 1536e/12w": [l2], "L1+L2 TLB": [l1, l2]}[structure]

    seconds: list[float] = []
    result: dict[str, Any] = {}
    for _ in range(reps):
        structures = levels()   # fresh (empty) TLBs each repetition, as the C program flushes
        t0 = time.perf_counter()
        result = backend.simulate(trace, structures)
        seconds.append(time.perf_counter() - t0)
    return seconds, result


class World:
    """The tables of the C program: native 1 GiB; a guest with 16 GiB behind a 4-level EPT."""

    def __init__(self) -> None:
        self.mem = fastmmu.HostMemory("128GiB")
        native = PageTable(self.mem, levels=4, kind=FrameKind.HYPERVISOR)
        native.map_range(traces.VA_BASE, NATIVE_DATA_PA, GIB, flags=PTE.P | PTE.RW | PTE.US)
        self.native_cpu = CpuState(cr3=native.root)
        self.ept = EptTable(self.mem, levels=4)
        next_gpfn = [GUEST_PT_GPFN]

        def alloc_gpa() -> int:
            gpa = next_gpfn[0] << 12
            next_gpfn[0] += 1
            self.ept.map(gpa, self.mem.alloc_frame(kind=FrameKind.GUEST_PT) << 12, EPT.RWX)
            return gpa

        guest = PageTable(self.mem, levels=4, ept=self.ept, alloc_gpa=alloc_gpa)
        guest.map_range(traces.VA_BASE, GUEST_DATA_GPA, 16 * GIB, flags=PTE.P | PTE.RW | PTE.US)
        self.ept.map_range(GUEST_DATA_GPA, HOST_DATA_PA + GUEST_DATA_GPA, 16 * GIB, EPT.RWX)
        self.guest_cpu = CpuState(cr3=guest.root)


def mmu_row(part: str, trace: np.ndarray, reps: int, world: World) -> tuple[list[float], dict[str, Any]]:
    from fastmmu._core.mmu import MMU

    addresses = np.ascontiguousarray(trace & np.uint64(traces.VA_MASK))
    kinds = np.zeros(len(addresses), dtype=np.uint8)
    out = np.empty(len(addresses), dtype=np.uint64)
    status = np.empty(len(addresses), dtype=np.uint8)
    tlb = TLBConfig(l1d=L1, l2=L2) if part == "d" else TLBConfig.none()
    if part == "b":
        mmu = MMU(world.mem, tlb=tlb, cpu=world.native_cpu, vpid=1)
    else:
        mmu = MMU(world.mem, tlb=tlb, cpu=world.guest_cpu, ept=world.ept.config, vpid=1)
    # An untimed pass over the whole trace first: it sets the accessed flags of every page the trace
    # touches (the tables are built without them), so every timed repetition measures the same steady
    # state, as the C program's repetitions do.
    mmu.translate(addresses, kinds, out=out, status=status)

    def run() -> Any:
        mmu.flush()
        mmu.reset_counters()
        return mmu.translate(addresses, kinds, out=out, status=status)

    seconds, result = timed(run, reps)
    if not result.complete:
        raise SystemExit(f"bench: unexpected {result.status.name} at access {result.stopped}")
    counters = mmu.counters()
    walks = counters["walks"]
    refs = counters["walk_references"]
    return seconds, {"walks": walks, "refs_per_walk": refs / walks if walks else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10_000_000, help="accesses per trace (default 10 M)")
    parser.add_argument("-r", "--reps", type=int, default=5, help="repetitions per row (default 5)")
    parser.add_argument("--reference", metavar="DIR", help="the C yardstick's folder (e.g. ../shared/limit)")
    parser.add_argument("--rows", default="abcd", help="which parts to run (default abcd)")
    parser.add_argument("--python-n", type=int, default=200_000,
                        help="accesses for the pure-Python TLB timing (0: skip)")
    args = parser.parse_args(argv)
    if args.n < 1 or not 1 <= args.reps <= 31:
        parser.error("need -n >= 1 and 1 <= -r <= 31")

    report: dict[str, Any] = {
        "n": args.n, "reps": args.reps,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "cpus": os.cpu_count()},
        "rows": [],
    }
    c_rows: dict[tuple[str, str], dict[str, float]] = {}
    if args.reference:
        c_rows, c_sums = run_reference(args.reference, args.n, args.reps)
    print(f"bench: generating traces of {args.n} accesses", file=sys.stderr)
    workloads = {name: gen(args.n) for name, gen in traces.WORKLOADS.items()}
    if args.reference:
        ours = dict(zip(("seq", "rand", "zipf"), (traces.checksum(t) for t in workloads.values()), strict=True))
        if ours != c_sums:
            raise SystemExit(f"bench: trace checksums differ from C's: {ours} vs {c_sums}")
        report["checksums_match_reference"] = True

    from fastmmu._core import tlb as compiled_tlb
    from fastmmu.reference import tlb as reference_tlb

    world = World() if set(args.rows) & set("bcd") else None
    for part, structure, workload in ROWS:
        if part not in args.rows:
            continue
        print(f"bench: {part} {structure} / {workload}", file=sys.stderr)
        trace = workloads[workload]
        if part == "a":
            seconds, stats = tlb_row(structure, trace, args.reps, compiled_tlb)
        else:
            assert world is not None
            seconds, stats = mmu_row(part, trace, args.reps, world)
        ns = [s * 1e9 / args.n for s in seconds]
        row: dict[str, Any] = {"part": part, "structure": structure, "workload": workload,
                               "ns": statistics.median(ns), "ns_min": min(ns), "stats": stats}
        if (structure, workload) in c_rows:
            c = c_rows[(structure, workload)]
            row["c_ns"], row["c_ns_min"] = c["ns"], c["ns_min"]
            row["ratio"] = c["ns"] / row["ns"]
            row["ratio_min"] = c["ns_min"] / row["ns_min"]
        if part == "a" and args.python_n:
            prefix = np.ascontiguousarray(trace[: args.python_n])
            py_seconds, _ = tlb_row(structure, prefix, 1, reference_tlb)
            row["python_ns"] = py_seconds[0] * 1e9 / len(prefix)
            row["speedup_vs_python"] = row["python_ns"] / row["ns"]
        report["rows"].append(row)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
