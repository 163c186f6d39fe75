"""Rows g and h of the benchmark: guest page faults per second, and simulator bytes per resident page.

    python bench/faults.py                        # every mode, 2**18 pages, JSON on stdout
    python bench/faults.py --pages 1M --modes shadow,nested

One VM, one process that touches ``--pages`` distinct pages once each (``strided``:
one access per page, 4 KiB apart), in a VM large enough that nothing is evicted:
every access is a guest page fault that the guest kernel handles by demand paging,
and, per mode, what the hypervisor does about it (brute force's traps, shadow's
hidden faults, nested's EPT violations).

- **g**: faults per second of ``machine.run()`` (building the machine is not timed).
- **h**: the growth of peak resident memory (``VmHWM``) over the same run, divided by the
  pages touched: what the simulator keeps per resident guest page.

Each mode runs in its own fresh process, so that one mode's peak is not another's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

MODES = ("native", "brute_force", "shadow", "nested")
DEFAULT_PAGES = 1 << 18


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(mode: str, pages: int) -> dict[str, Any]:
    """One mode, in this process: faults/s and bytes per resident page."""
    import fastmmu
    from fastmmu.workloads.generators import strided

    # Guest memory: the pages, plus room for the guest's page tables and reserve, rounded up to GiB.
    vm_bytes = -(-((pages + pages // 256 + 8192) << 12) // (1 << 30)) << 30
    machine = fastmmu.Machine(host_memory=max(16 << 30, 2 * vm_bytes))
    vm = machine.create_vm(vm_bytes, mode)
    vm.spawn(strided(pages=pages, n=pages))
    rss_before = _status_kib("VmRSS")
    hwm_before = _status_kib("VmHWM")
    t0 = time.perf_counter()
    c0 = time.process_time()
    result = machine.run()
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = _status_kib("VmHWM")
    faults = int(result.stats["guest"]["page_faults"])
    if result.partial:
        raise SystemExit(f"bench: {mode}: the run stopped early: {result.stop_notes()}")
    if faults != pages:
        raise SystemExit(f"bench: {mode}: {faults} guest page faults for {pages} pages (expected one per page)")
    growth = max(peak, hwm_before) - rss_before
    return {"mode": mode, "pages": pages, "faults": faults, "seconds": seconds, "cpu_seconds": cpu,
            "faults_per_s": faults / seconds, "bytes_per_page": growth * 1024 / pages,
            "peak_rss_mib": peak / 1024}


def run_modes(modes: list[str], pages: int) -> list[dict[str, Any]]:
    """Each mode in a fresh interpreter (so peak RSS is its own)."""
    rows = []
    for mode in modes:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", mode, "--pages", str(pages)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out))
    return rows


def _count(text: str) -> int:
    scale = {"k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20}
    return int(text[:-1]) * scale[text[-1]] if text and text[-1] in scale else int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=_count, default=DEFAULT_PAGES, help="pages touched (default 2**18)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default: all four)")
    parser.add_argument("--one", metavar="MODE", help=argparse.SUPPRESS)   # a worker: one mode, JSON out
    args = parser.parse_args(argv)
    if args.one:
        json.dump(measure(args.one, args.pages), sys.stdout)
        return 0
    json.dump(run_modes(args.modes.split(","), args.pages), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
