"""Benchmark fastmmu's compiled core and command line, optionally against hand-written C.

    python bench/run.py --reference ../shared/limit --quick    # every row (a-i), under two minutes
    python bench/run.py --reference ../shared/limit            # every row, full size (4-5 minutes)
    python bench/run.py -n 2000000 -r 3 --rows a               # shorter; only the TLB rows; no C
    python bench/run.py --rows ef --no-c                       # rows e and f, fastmmu alone

Rows a-d time the core's TLB models and walkers on seeded traces
(``bench/traces.py`` reproduces the C program's traces bit for bit; the
checksums are compared) against ``../shared/limit/limit.c`` (``--reference``):
ns/access, the median of ``-r`` repetitions, and the minimum.  ``ratio`` is
C ns / fastmmu ns: 1.0 is C's speed, the target is at least 0.8.  The TLB
rows also time the pure-Python reference model on a prefix of the trace
(``--python-n``) and report fastmmu's speed-up over it.

Rows e-i are the paths users run (issue 12).  Their C comparators live in
``bench/limit/`` (``limit_user.c``: limit.c plus part e; ``lackey_tlb.c``),
are built with plain -O2 in a scratch folder and run whether or not
``--reference`` is given (``--no-c``: fastmmu alone):

- **e**: ``MMU.translate``, native 4-level tables mapping 16 GiB, user reads,
  warm (an untimed pass first), on the three traces, with
  ``TLBConfig.skylake()`` against C's L1+L2 lookup plus a native walk per
  miss; with a lone L1 DTLB (64e/4w) against C's L1 plus a walk per miss;
  with ``TLBConfig.none()`` against C's native walk per access.  Target:
  ratio >= 0.8.
- **f**: nested translation (the guest's tables behind the EPT) with
  ``TLBConfig.skylake()`` (its PSCs and nested TLB) on the uniform and Zipf
  traces, against C's row d (L1+L2, a full 24-reference 2D walk per miss).
  Target: ratio >= 1.0.
- **g**, **h** (``bench/faults.py``, each mode in its own process; no C):
  guest page faults per second per mode (target >= 100 k, >= 50 k for
  shadow) and simulator bytes per resident guest page per mode (target <=
  128), at ``--pages`` pages (2**18).  Fixed costs weigh on h at the few pages
  of ``--quick``.
- **i**: the CPU time (children's rusage, user + sys) of the whole
  ``fastmmu compare --trace FILE --json`` command on a valgrind lackey trace
  of ``sort -n`` over seeded numbers (5000: about 25 M lines), made once and
  cached under ``--cache`` (the row says where the trace came from), against
  ``lackey_tlb``: the file parsed once, an L1+L2 TLB lookup per access per
  mode (4).  ``x_of_c`` = fastmmu CPU / C CPU, target <= 3; ``ratio`` = its
  inverse, C / fastmmu, as in the other rows.

Rows e, f and i report the target and ``meets_target``; rows e and f also the
exact hit and walk counts of both (they must agree: same traces, geometry and
LRU).  ``summary`` lists rows e-i's ratios and flags.  ``--quick`` runs every
row in under two minutes on a 2-core shared machine: 1 M accesses, 5
repetitions, 2**16 pages for g and h, a 4 M-line trace for i (made with 1000
numbers); the full run (10 M accesses, 5 repetitions, 2**18 pages, a 25 M-line
trace) takes 4-5 minutes, plus about a minute for valgrind to make the
trace the first time.  The C programs run first, then fastmmu, in the same
run (row i alternates them).  The machine is shared and noisy: compare ratios
(``ratio_min``, min over min, is the steadier one), never absolute times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import faults  # noqa: E402
import traces  # noqa: E402

import fastmmu  # noqa: E402
from fastmmu.arch import EPT, PTE, Access, FrameKind  # noqa: E402
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
LIMIT = os.path.join(BENCH, "limit")   # the C comparators of rows e, f and i (bench/limit/)
ALL_PARTS = "abcdefghi"

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


# Row e: fastmmu's TLB configuration (its label, how to make it) and the C loop it is timed against.
E_CONFIGS: list[tuple[str, Callable[[], TLBConfig], str]] = [
    ("TLBConfig.skylake() + native walk", TLBConfig.skylake, "L1+L2 TLB + native walk"),
    ("L1 DTLB 64e/4w alone + native walk", lambda: TLBConfig(l1d=L1), "L1 TLB 64e/4w + native walk"),
    ("TLBConfig.none(): native walk", TLBConfig.none, "native walk, no TLB"),
]
F_STRUCTURE = "TLBConfig.skylake() + 2D walk"
F_C_STRUCTURE = "L1+L2 TLB + 2D walk"                   # the C program's row d
F_WORKLOADS = ("uniform, 1 GiB", "Zipf 0.99, 16 GiB")
# Targets of issue 12: e, f: C ns / fastmmu ns at least this; i: fastmmu CPU / C CPU at most this;
# g: guest page faults per second at least this; h: simulator bytes per resident guest page at most this.
TARGET_E, TARGET_F, TARGET_I = 0.8, 1.0, 3.0
TARGET_G = {"native": 100_000, "brute_force": 100_000, "shadow": 50_000, "nested": 100_000}
TARGET_H = 128

# The --quick run (every row in under two minutes on a 2-core shared machine) and the full one.
QUICK = {"n": 1_000_000, "reps": 5, "python_n": 20_000, "pages": 1 << 16, "sort_numbers": 1000,
         "min_lines": 1_000_000, "i_reps": 3}
FULL = {"n": 10_000_000, "reps": 5, "python_n": 200_000, "pages": faults.DEFAULT_PAGES, "sort_numbers": 5000,
        "min_lines": 20_000_000, "i_reps": 3}


# -- the C yardstick ----------------------------------------------------------------

def parse_table(text: str, parts: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The Markdown table limit.c (and bench/limit/limit_user.c) prints: (part, structure, workload) ->
    ns (median, min) and, from limit_user.c's extra columns, the exact counts."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0] in parts and cells[0]:
            row: dict[str, Any] = {"ns": float(cells[3]), "ns_min": float(cells[4])}
            if len(cells) >= 14:
                l1, l2, walks, refs = (int(c) for c in cells[10:14])
                row["stats"] = {"l1_hits": l1, "l2_hits": l2, "walks": walks,
                                "refs_per_walk": refs / walks if walks else 0.0}
            rows[(cells[0], cells[1], cells[2])] = row
    return rows


def parse_checksums(text: str) -> dict[str, int]:
    return {k: int(v, 16) for k, v in re.findall(r"(seq|rand|zipf)=([0-9a-f]{16})", text)}


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
    rows = {(structure, workload): row for (_, structure, workload), row in parse_table(text, "abcd").items()}
    return rows, parse_checksums(text)


def build_c() -> str:
    """bench/limit's C programs (limit_user, lackey_tlb), built with their Makefile in a scratch folder."""
    work = tempfile.mkdtemp(prefix="fastmmu-bench-c-")
    for name in ("limit_user.c", "lackey_tlb.c", "Makefile"):
        shutil.copy(os.path.join(LIMIT, name), work)
    subprocess.run(["make", "-s", "limit_user", "lackey_tlb"], cwd=work, check=True, stdout=subprocess.DEVNULL)
    return work


def run_limit_user(work: str, n: int, reps: int, parts: str) -> tuple[dict[tuple[str, str, str], dict[str, Any]],
                                                                       dict[str, int]]:
    """limit_user (limit.c plus part e): its rows of ``parts`` and its trace checksums."""
    text = subprocess.run([os.path.join(work, "limit_user"), "-n", str(n), "-r", str(reps), "-p", parts],
                          cwd=work, check=True, capture_output=True, text=True).stdout
    return parse_table(text, parts), parse_checksums(text)


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
    """The tables of the C programs: native 1 GiB; a guest with 16 GiB behind a 4-level EPT; native 16 GiB."""

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
        # Row e: native tables mapping 16 GiB (the Zipf trace's span), as bench/limit/limit_user.c's;
        # built last, so that the tables of rows b-d sit where they always did.
        native16 = PageTable(self.mem, levels=4, kind=FrameKind.HYPERVISOR)
        native16.map_range(traces.VA_BASE, NATIVE_DATA_PA, 16 * GIB, flags=PTE.P | PTE.RW | PTE.US)
        self.native16_cpu = CpuState(cr3=native16.root)


def mmu_row(part: str, trace: np.ndarray, reps: int, world: World) -> tuple[list[float], dict[str, Any]]:
    from fastmmu._core.mmu import MMU

    tlb = TLBConfig(l1d=L1, l2=L2) if part == "d" else TLBConfig.none()
    if part == "b":
        mmu = MMU(world.mem, tlb=tlb, cpu=world.native_cpu, vpid=1)
    else:
        mmu = MMU(world.mem, tlb=tlb, cpu=world.guest_cpu, ept=world.ept.config, vpid=1)
    seconds, counters = translate_warm(mmu, trace, 0, reps)
    walks = counters["walks"]
    refs = counters["walk_references"]
    return seconds, {"walks": walks, "refs_per_walk": refs / walks if walks else 0.0}


def config_row(tlb: TLBConfig, trace: np.ndarray, reps: int, world: World, *,
               nested: bool) -> tuple[list[float], dict[str, Any]]:
    """Rows e and f: user reads through an MMU with the caches of ``tlb``, native (the tables mapping
    16 GiB) or nested (the guest's tables behind the EPT)."""
    from fastmmu._core.mmu import MMU

    if nested:
        mmu = MMU(world.mem, tlb=tlb, cpu=world.guest_cpu, ept=world.ept.config, vpid=1)
    else:
        mmu = MMU(world.mem, tlb=tlb, cpu=world.native16_cpu, vpid=1)
    seconds, counters = translate_warm(mmu, trace, int(Access.USER), reps)
    walks = counters["walks"]
    refs = counters["walk_references"]
    return seconds, {"l1_hits": counters["l1d"]["hits"], "l2_hits": counters["l2"]["hits"], "walks": walks,
                     "refs_per_walk": refs / walks if walks else 0.0}


def translate_warm(mmu: Any, trace: np.ndarray, kind: int, reps: int) -> tuple[list[float], dict[str, Any]]:
    """Time ``mmu.translate`` over the trace, every access of kind ``kind``: seconds per repetition and
    the counters of the last (caches flushed before each)."""
    addresses = np.ascontiguousarray(trace & np.uint64(traces.VA_MASK))
    kinds = np.full(len(addresses), kind, dtype=np.uint8)
    out = np.empty(len(addresses), dtype=np.uint64)
    status = np.empty(len(addresses), dtype=np.uint8)
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
    counters: dict[str, Any] = mmu.counters()
    return seconds, counters


# -- rows g and h: bench/faults.py -------------------------------------------------------

def fault_rows(parts: str, pages: int) -> list[dict[str, Any]]:
    """Rows g (faults/s) and h (bytes per resident page), per mode, from one run of bench/faults.py's
    measurement per mode (each in its own process)."""
    rows = []
    measured = faults.run_modes(list(faults.MODES), pages)
    workload = f"strided, {pages} pages touched once each"
    for m in measured:
        if "g" in parts:
            rows.append({"part": "g", "structure": "guest page faults per second", "workload": workload,
                         "mode": m["mode"], "faults_per_s": m["faults_per_s"], "faults": m["faults"],
                         "seconds": m["seconds"], "cpu_seconds": m["cpu_seconds"],
                         "target": TARGET_G[m["mode"]], "meets_target": m["faults_per_s"] >= TARGET_G[m["mode"]]})
    for m in measured:
        if "h" in parts:
            rows.append({"part": "h", "structure": "simulator bytes per resident guest page", "workload": workload,
                         "mode": m["mode"], "bytes_per_page": m["bytes_per_page"], "peak_rss_mib": m["peak_rss_mib"],
                         "target": TARGET_H, "meets_target": m["bytes_per_page"] <= TARGET_H})
    return rows


# -- row i: fastmmu compare --trace on a real lackey trace --------------------------------

def lackey_trace(numbers: int, cache: str, min_lines: int, seed: int = 12) -> dict[str, Any]:
    """A valgrind lackey trace of ``sort -n`` over ``numbers`` seeded random integers, made once and
    cached under ``cache`` (keyed by the command, sort's path and valgrind's version); where it came from."""
    valgrind, sort = shutil.which("valgrind"), shutil.which("sort")
    if not valgrind or not sort:
        raise SystemExit("bench: row i needs valgrind and sort on PATH")
    version = subprocess.run([valgrind, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    command = (f"LC_ALL=C valgrind --tool=lackey --trace-mem=yes --log-file=TRACE {sort} -n NUMBERS "
               f"(NUMBERS: {numbers} lines, random.Random({seed}).randrange(10**9) each)")
    key = hashlib.sha256(f"{command}\n{version}".encode()).hexdigest()[:12]
    path = os.path.join(cache, f"sort-{numbers}-{key}.lackey")
    meta_path = path + ".json"
    if os.path.isfile(path) and os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta: dict[str, Any] = json.load(f)
        if meta.get("bytes") == os.path.getsize(path):
            if meta["lines"] < min_lines:
                raise SystemExit(f"bench: the lackey trace {path} has {meta['lines']} lines, fewer than {min_lines}")
            meta["cached"] = True
            return meta
    os.makedirs(cache, exist_ok=True)
    rng = random.Random(seed)
    numbers_path = os.path.join(cache, f"sort-{numbers}-{key}.numbers")
    with open(numbers_path, "w") as f:
        f.writelines(f"{rng.randrange(10**9)}\n" for _ in range(numbers))
    print(f"bench: i: making a lackey trace of sort -n over {numbers} numbers (valgrind, once)", file=sys.stderr)
    partial = path + ".partial"
    subprocess.run([valgrind, "--tool=lackey", "--trace-mem=yes", f"--log-file={partial}", sort, "-n", numbers_path],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})
    lines = 0
    with open(partial, "rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
    os.replace(partial, path)
    meta = {"path": path, "command": command, "valgrind": version, "lines": lines, "bytes": os.path.getsize(path),
            "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    meta["cached"] = False
    if lines < min_lines:
        raise SystemExit(f"bench: the lackey trace {path} has {lines} lines, fewer than {min_lines}")
    return meta


def child_cpu(command: list[str]) -> tuple[float, float, str]:
    """Run ``command``: its CPU time (user + sys, from the children's rusage), wall time and stdout.
    Python may write its bytecode caches, as an installed fastmmu has them: without them, every run
    would compile fastmmu's modules again (about 0.15 s), which no user pays."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.stdout


def compare_row(trace: dict[str, Any], work: str | None, reps: int) -> dict[str, Any]:
    """Row i: the CPU time of ``fastmmu compare --trace FILE --json`` (the whole command: interpreter,
    imports, four modes), against lackey_tlb (the file parsed once, an L1+L2 lookup per access per mode)."""
    path = trace["path"]
    ours_cmd = [sys.executable, "-m", "fastmmu", "compare", "--trace", path, "--format", "lackey",
                "--json", "--no-progress"]
    theirs_cmd = [os.path.join(work, "lackey_tlb"), path] if work else None
    if theirs_cmd:
        child_cpu(theirs_cmd)               # warm the page cache (untimed)
    child_cpu(ours_cmd)                     # and fastmmu's bytecode caches (untimed)
    ours, ours_wall, theirs = [], [], []
    c: dict[str, Any] = {}
    result: dict[str, Any] = {}
    for _ in range(reps):
        if theirs_cmd:
            cpu, _, out = child_cpu(theirs_cmd)
            theirs.append(cpu)
            c = json.loads(out)
        cpu, wall, out = child_cpu(ours_cmd)
        ours.append(cpu)
        ours_wall.append(wall)
        result = json.loads(out)
    translations = {r["mode"]: r["translations"] for r in result["rows"]}
    row: dict[str, Any] = {
        "part": "i", "structure": "fastmmu compare --trace FILE (4 modes), CPU seconds",
        "workload": f"valgrind lackey trace of sort -n, {trace['lines']} lines",
        "trace": trace, "reps": reps, "seconds": statistics.median(ours), "seconds_all": ours,
        "wall_seconds": statistics.median(ours_wall),
        "stats": {"translations": translations, "partial": result["partial"]},
    }
    if theirs:
        row["c_structure"] = "lackey_tlb: parse once + L1+L2 TLB lookup per access per mode (4), CPU seconds"
        row["c_seconds"] = statistics.median(theirs)
        row["c_seconds_all"] = theirs
        row["c_stats"] = {k: c[k] for k in ("records", "skipped", "l1_hits", "l2_hits", "modes")}
        row["x_of_c"] = row["seconds"] / row["c_seconds"]
        row["ratio"] = row["c_seconds"] / row["seconds"]
        row["target"] = TARGET_I
        row["meets_target"] = row["x_of_c"] <= TARGET_I
    return row


def timed_row(part: str, structure: str, workload: str, seconds: list[float], n: int, stats: dict[str, Any],
              c: dict[str, Any] | None, c_structure: str, target: float) -> dict[str, Any]:
    """Rows e and f: fastmmu's ns per access beside the C loop's, the ratio C / fastmmu and the target."""
    ns = [s * 1e9 / n for s in seconds]
    row: dict[str, Any] = {"part": part, "structure": structure, "workload": workload,
                           "ns": statistics.median(ns), "ns_min": min(ns), "stats": stats, "c_structure": c_structure}
    if c is not None:
        row["c_ns"], row["c_ns_min"] = c["ns"], c["ns_min"]
        row["c_stats"] = c["stats"]
        row["ratio"] = c["ns"] / row["ns"]
        row["ratio_min"] = c["ns_min"] / row["ns_min"]
        row["target"] = target
        row["meets_target"] = row["ratio"] >= target
    return row


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, help="accesses per trace (default 10 M; --quick 1 M)")
    parser.add_argument("-r", "--reps", type=int, help="repetitions per row (default 5, as --quick)")
    parser.add_argument("--reference", metavar="DIR", help="the C yardstick's folder (e.g. ../shared/limit)")
    parser.add_argument("--rows", default=ALL_PARTS, help=f"which parts to run (default {ALL_PARTS})")
    parser.add_argument("--python-n", type=int,
                        help="accesses for the pure-Python TLB timing (0: skip; default 200 k; --quick 20 k)")
    parser.add_argument("--quick", action="store_true",
                        help="every row in under two minutes: smaller n, fewer repetitions and pages, a shorter trace")
    parser.add_argument("--no-c", action="store_true",
                        help="rows e, f, i without their C comparators (bench/limit/, built with make and gcc)")
    parser.add_argument("--pages", type=faults._count,
                        help="rows g, h: guest pages touched (default 2**18; --quick 2**16)")
    parser.add_argument("--sort-numbers", type=int,
                        help="row i: numbers sorted under valgrind to make the trace (default 5000, about 23 M "
                             "lines; --quick 1000)")
    parser.add_argument("--min-lines", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "fastmmu-bench"),
                        help="row i: where the lackey traces are kept (default ~/.cache/fastmmu-bench)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    n = args.n if args.n is not None else preset["n"]
    reps = args.reps if args.reps is not None else preset["reps"]
    python_n = args.python_n if args.python_n is not None else preset["python_n"]
    pages = args.pages if args.pages is not None else preset["pages"]
    sort_numbers = args.sort_numbers if args.sort_numbers is not None else preset["sort_numbers"]
    min_lines = args.min_lines if args.min_lines is not None else (
        preset["min_lines"] if args.sort_numbers is None else 0)
    parts = "".join(p for p in ALL_PARTS if p in args.rows)
    if n < 1 or not 1 <= reps <= 31 or pages < 1 or sort_numbers < 1:
        parser.error("need -n >= 1, 1 <= -r <= 31, --pages >= 1 and --sort-numbers >= 1")
    if not parts or set(args.rows) - set(ALL_PARTS):
        parser.error(f"--rows: expected letters among {ALL_PARTS}, got {args.rows!r}")

    report: dict[str, Any] = {
        "n": n, "reps": reps, "quick": args.quick, "parts": parts,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "cpus": os.cpu_count()},
        "rows": [],
    }
    c_rows: dict[tuple[str, str], dict[str, float]] = {}
    c_sums: dict[str, int] = {}
    if args.reference and set(parts) & set("abcd"):
        c_rows, c_sums = run_reference(args.reference, n, reps)
    work = None if args.no_c or not set(parts) & set("efi") else build_c()
    try:
        user_rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        if work and set(parts) & set("ef"):
            # limit_user's part d is limit.c's, the comparator of row f.
            user_rows, user_sums = run_limit_user(work, n, reps, "".join(p for p in "de" if p in parts
                                                                       or (p == "d" and "f" in parts)))
            if c_sums and user_sums != c_sums:
                raise SystemExit(f"bench: limit_user's trace checksums differ from limit's: {user_sums} vs {c_sums}")
            c_sums = c_sums or user_sums
        if set(parts) & set("abcdef"):
            run_translation_rows(report, parts, n, reps, python_n, c_rows, c_sums, user_rows)
        if set(parts) & set("gh"):
            print(f"bench: g, h: {pages} guest page faults per mode", file=sys.stderr)
            report["rows"].extend(fault_rows(parts, pages))
        if "i" in parts:
            trace = lackey_trace(sort_numbers, args.cache, min_lines)
            print(f"bench: i: fastmmu compare --trace ({trace['lines']} lines)", file=sys.stderr)
            report["rows"].append(compare_row(trace, work, preset["i_reps"]))
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)
    report["summary"] = [
        {k: r[k] for k in ("part", "structure", "workload", "mode", "ratio", "x_of_c", "faults_per_s",
                           "bytes_per_page", "target", "meets_target") if k in r}
        for r in report["rows"] if r["part"] in "efghi"]
    report["elapsed_seconds"] = time.perf_counter() - started
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


def run_translation_rows(report: dict[str, Any], parts: str, n: int, reps: int, python_n: int,
                         c_rows: dict[tuple[str, str], dict[str, float]], c_sums: dict[str, int],
                         user_rows: dict[tuple[str, str, str], dict[str, Any]]) -> None:
    """Rows a-f: the seeded traces through the TLB models and the MMU, beside the C loops."""
    print(f"bench: generating traces of {n} accesses", file=sys.stderr)
    workloads = {name: gen(n) for name, gen in traces.WORKLOADS.items()}
    if c_sums:
        ours = dict(zip(("seq", "rand", "zipf"), (traces.checksum(t) for t in workloads.values()), strict=True))
        if ours != c_sums:
            raise SystemExit(f"bench: trace checksums differ from C's: {ours} vs {c_sums}")
        report["checksums_match_reference"] = True

    from fastmmu._core import tlb as compiled_tlb
    from fastmmu.reference import tlb as reference_tlb

    world = World() if set(parts) & set("bcdef") else None
    for part, structure, workload in ROWS:
        if part not in parts:
            continue
        print(f"bench: {part} {structure} / {workload}", file=sys.stderr)
        trace = workloads[workload]
        if part == "a":
            seconds, stats = tlb_row(structure, trace, reps, compiled_tlb)
        else:
            assert world is not None
            seconds, stats = mmu_row(part, trace, reps, world)
        ns = [s * 1e9 / n for s in seconds]
        row: dict[str, Any] = {"part": part, "structure": structure, "workload": workload,
                               "ns": statistics.median(ns), "ns_min": min(ns), "stats": stats}
        if (structure, workload) in c_rows:
            c = c_rows[(structure, workload)]
            row["c_ns"], row["c_ns_min"] = c["ns"], c["ns_min"]
            row["ratio"] = c["ns"] / row["ns"]
            row["ratio_min"] = c["ns_min"] / row["ns_min"]
        if part == "a" and python_n:
            prefix = np.ascontiguousarray(trace[: python_n])
            py_seconds, _ = tlb_row(structure, prefix, 1, reference_tlb)
            row["python_ns"] = py_seconds[0] * 1e9 / len(prefix)
            row["speedup_vs_python"] = row["python_ns"] / row["ns"]
        report["rows"].append(row)
    if "e" in parts:
        assert world is not None
        for label, make, c_structure in E_CONFIGS:
            for workload, trace in workloads.items():
                print(f"bench: e {label} / {workload}", file=sys.stderr)
                seconds, stats = config_row(make(), trace, reps, world, nested=False)
                report["rows"].append(timed_row("e", label, workload, seconds, n, stats,
                                                user_rows.get(("e", c_structure, workload)), c_structure, TARGET_E))
    if "f" in parts:
        assert world is not None
        for workload in F_WORKLOADS:
            print(f"bench: f {F_STRUCTURE} / {workload}", file=sys.stderr)
            seconds, stats = config_row(TLBConfig.skylake(), workloads[workload], reps, world, nested=True)
            report["rows"].append(timed_row("f", F_STRUCTURE, workload, seconds, n, stats,
                                            user_rows.get(("d", F_C_STRUCTURE, workload)), F_C_STRUCTURE, TARGET_F))


if __name__ == "__main__":
    raise SystemExit(main())
