"""``fastmmu demo``: the core at work, without the hypervisor."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from fastmmu.cli.common import EXIT_OK, UserError, add_command, size_arg

# -- demo ----------------------------------------------------------------------


def add_demo(subparsers: Any) -> None:
    p = add_command(
        subparsers, "demo",
        "Show the core at work: configure a large host memory, give two VMs their guest "
        "memory (one contiguous, one scattered), write the tables that map it and compare "
        "what they cost with the configured size; then translate one trace natively and "
        "under nested paging (EPT) through Skylake TLBs.",
        "fastmmu demo --memory 1TiB --vm-memory 2GiB --seed 1",
    )
    p.add_argument("--memory", type=size_arg, default="1TiB", metavar="SIZE",
                   help="configured host memory (default: 1TiB)")
    p.add_argument("--vm-memory", type=size_arg, default="2GiB", metavar="SIZE",
                   help="guest memory of each of the two VMs (default: 2GiB)")
    p.add_argument("--seed", type=int, default=1, help="seed of the scattered layout and the trace (default: 1)")
    p.add_argument("--accesses", type=int, default=2_000_000, metavar="N",
                   help="accesses of the trace translated natively and under nested paging (default: 2000000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from fastmmu.units import format_size

    if args.accesses < 1:
        raise UserError(f"--accesses: expected a positive number, got {args.accesses}")
    result = demo(args.memory, args.vm_memory, seed=args.seed, accesses=args.accesses)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"host memory: {format_size(result['host_memory'])} configured "
          f"({result['host_frames']} frames of 4 KiB)")
    print()
    print(f"{'owner':<8} {'layout':<11} {'guest memory':>12} {'data frames':>12} "
          f"{'leaf tables':>12} {'entries':>9}")
    for vm in result["vms"]:
        print(f"{'VM ' + str(vm['owner']):<8} {vm['layout']:<11} {format_size(vm['memory']):>12} "
              f"{vm['data_frames']:>12} {vm['table_frames']:>12} {vm['entries_written']:>9}")
    print()
    ratio = result["host_memory"] / max(1, result["table_bytes"])   # flat layout: 0 before any table
    print(f"table content held in RAM: {format_size(result['table_bytes'])} "
          f"({result['table_frames']} table frames) for {format_size(result['host_memory'])} "
          f"configured: 1/{ratio:,.0f} of it")
    check = result["check"]
    print(f"read back: VM {check['owner']} guest page {check['guest_page']:#x} -> host frame "
          f"{check['host_frame']:#x} (entry {check['entry']:#x})")
    run = result["translation"]
    print()
    print(f"one trace of {run['accesses']:,} Zipf-distributed accesses over {format_size(run['working_set'])} "
          f"of VM 1's memory, Skylake TLBs:")
    print(f"{'mode':<8} {'L1 hit':>8} {'STLB hit':>8} {'walks':>10} {'refs/walk':>10} {'M accesses/s':>13}")
    for mode in run["modes"]:
        print(f"{mode['mode']:<8} {mode['l1_hit']:>8.2%} {mode['stlb_hit']:>8.2%} {mode['walks']:>10,} "
              f"{mode['refs_per_walk']:>10.2f} {mode['maccesses_per_s']:>13.1f}")
    print("both modes reached the same host address for every access")
    print(f"took {result['seconds']:.2f} s")
    return EXIT_OK


def demo(host_memory: int, vm_memory: int, *, seed: int = 1, accesses: int = 2_000_000) -> dict[str, Any]:
    """What ``fastmmu demo`` does, returned as data (the tests call this).

    Owner 1 gets its guest memory as one contiguous run of host frames,
    owner 2 as frames scattered above it (seeded).  For
    each VM the hypervisor (owner 0) then allocates leaf tables of kind EPT,
    one entry per guest page, pointing at the host frame that backs it.
    """
    import numpy as np

    from fastmmu import HostMemory, MemoryExhausted
    from fastmmu.arch import (
        ADDR_MASK,
        ENTRIES_PER_TABLE,
        EPT,
        EPT_MEMTYPE_SHIFT,
        PAGE_SHIFT,
        FrameKind,
        MemType,
    )
    from fastmmu.units import format_size

    page = 1 << PAGE_SHIFT
    if vm_memory == 0 or vm_memory % page:
        raise UserError(f"--vm-memory: expected a positive multiple of 4 KiB, got {vm_memory} bytes")
    started = time.perf_counter()
    try:
        mem = HostMemory(host_memory)
    except ValueError as exc:
        raise UserError(f"--memory: {exc}") from None
    pages = vm_memory >> PAGE_SHIFT
    tables_per_vm = -(-pages // ENTRIES_PER_TABLE)
    needed = 2 * (pages + tables_per_vm)
    if needed > mem.nframes:
        raise UserError(f"--vm-memory: two VMs of {format_size(vm_memory)} and their tables need "
                        f"{needed} frames; host memory has {mem.nframes} ({format_size(mem.size)})")
    leaf_bits = int(EPT.R | EPT.W | EPT.X) | (MemType.WB << EPT_MEMTYPE_SHIFT)  # int: IntFlag | is slow
    try:
        contiguous = mem.alloc(pages, owner=1, kind=FrameKind.DATA, contiguous=True)
        # VM 2's frames are picked among the frames above VM 1's run (all free on a fresh
        # memory), in a window 8 times its size: the per-frame records (9 bytes per frame)
        # become resident where frames are used, so scattering over all of 1 TiB would
        # make most of them resident.
        rng = np.random.default_rng(seed)
        window = min(mem.nframes - pages, 8 * pages)
        picked = pages + rng.choice(window, size=pages, replace=False)
        scattered = mem.alloc_at(np.sort(picked), owner=2, kind=FrameKind.DATA)
        vms = []
        for owner, layout, frames in ((1, "contiguous", contiguous), (2, "scattered", scattered)):
            tables = mem.alloc(tables_per_vm, owner=0, kind=FrameKind.EPT)
            for t, table in enumerate(tables):
                chunk = frames[t * ENTRIES_PER_TABLE:(t + 1) * ENTRIES_PER_TABLE]
                base = int(table) << PAGE_SHIFT
                if layout == "contiguous":
                    mem.write_run(base, len(chunk), (int(chunk[0]) << PAGE_SHIFT) | leaf_bits, page)
                else:
                    for i, pfn in enumerate(chunk.tolist()):
                        mem.write(base + 8 * i, (pfn << PAGE_SHIFT) | leaf_bits)
            vms.append({"owner": owner, "layout": layout, "memory": vm_memory, "data_frames": len(frames),
                        "table_frames": len(tables), "entries_written": len(frames),
                        "frames_owned": mem.frames_owned(owner)})
    except MemoryExhausted as exc:
        raise UserError(str(exc)) from None
    # Read VM 2's last guest page back through its table, as a walker would.
    guest_page = pages - 1
    table = int(tables[guest_page // ENTRIES_PER_TABLE])
    entry = mem.read((table << PAGE_SHIFT) + 8 * (guest_page % ENTRIES_PER_TABLE))
    host_frame = (entry & ADDR_MASK) >> PAGE_SHIFT
    if host_frame != int(scattered[guest_page]):
        raise RuntimeError(f"demo: entry {entry:#x} does not map guest page {guest_page:#x} "
                           f"to host frame {int(scattered[guest_page]):#x}")
    result = {
        "host_memory": mem.size,
        "host_frames": mem.nframes,
        "free_frames": mem.free_frames,
        "table_frames": mem.table_frames,
        "table_bytes": mem.table_bytes,
        "vms": vms,
        "check": {"owner": 2, "guest_page": guest_page, "host_frame": host_frame, "entry": entry},
    }
    result["translation"] = translation_demo(mem, contiguous, accesses=accesses, seed=seed)
    result["seconds"] = time.perf_counter() - started
    return result


def translation_demo(mem: Any, guest_frames: Any, *, accesses: int, seed: int) -> dict[str, Any]:
    """Translate one seeded trace natively and under nested paging, through Skylake TLBs.

    The guest-physical memory of VM 1 is ``guest_frames`` (contiguous).  Natively
    a page table maps the working set straight to those host frames; nested,
    the guest's table maps it to guest-physical pages that the EPT backs with
    the same frames, so both modes must reach the same host address for every
    access (checked).  The guest keeps its tables at the top of its memory (4 MiB at most).
    """
    import numpy as np

    from fastmmu import MMU, CpuState, EptTable, PageTable, TLBConfig
    from fastmmu.arch import EPT, PAGE_SHIFT, PTE, FrameKind

    va_base = 0x0000_7F00_0000_0000
    guest_bytes = len(guest_frames) << PAGE_SHIFT
    host_base = int(guest_frames[0]) << PAGE_SHIFT
    table_area = min(4 << 20, guest_bytes // 8) & ~0xFFF     # the guest's own tables live here
    if guest_bytes < 1 << 20:
        raise UserError("--vm-memory: the translation demo needs at least 1MiB of guest memory")
    working_set = min(1 << 30, guest_bytes - table_area)
    flags = PTE.P | PTE.RW | PTE.US
    native = PageTable(mem, kind=FrameKind.HYPERVISOR)
    native.map_range(va_base, host_base, working_set, flags)
    ept = EptTable(mem)
    ept.map_range(0, host_base, guest_bytes, EPT.RWX)
    table_pages = iter(range(guest_bytes - table_area, guest_bytes, 1 << PAGE_SHIFT))
    guest = PageTable(mem, ept=ept, alloc_gpa=lambda: next(table_pages))
    guest.map_range(va_base, 0, working_set, flags)

    rng = np.random.default_rng(seed)
    pages = working_set >> PAGE_SHIFT
    ranks = (rng.zipf(1.2, accesses) - 1) % pages                       # hot pages first ...
    page = (ranks.astype(np.uint64) * np.uint64(0x9E3779B1)) % np.uint64(pages)   # ... scattered
    addresses = np.uint64(va_base) + (page << np.uint64(PAGE_SHIFT)) + rng.integers(0, 512, accesses,
                                                                                   dtype=np.uint64) * 8
    kinds = (rng.random(accesses) < 0.3).astype(np.uint8)                # 30% writes
    outputs, modes = [], []
    for name, cpu, ept_config in (("native", CpuState(cr3=native.root), None),
                                  ("nested", CpuState(cr3=guest.root), ept.config)):
        mmu = MMU(mem, tlb=TLBConfig.skylake(), cpu=cpu, ept=ept_config, vpid=1)
        out = np.zeros(accesses, np.uint64)
        started = time.perf_counter()
        result = mmu.translate(addresses, kinds, out=out)
        seconds = time.perf_counter() - started
        if not result.complete:
            raise RuntimeError(f"demo: {name} translation stopped at access {result.stopped}: {result.fault}")
        c = mmu.counters()
        l1, l2 = c["l1d"], c["l2"]
        modes.append({
            "mode": name,
            "l1_hit": l1["hits"] / accesses,
            "stlb_hit": l2["hits"] / max(1, l2["hits"] + l2["misses"]),
            "walks": c["walks"],
            "refs_per_walk": c["walk_references"] / max(1, c["walks"]),
            "maccesses_per_s": accesses / seconds / 1e6,
        })
        outputs.append(out)
    if not np.array_equal(outputs[0], outputs[1]):
        raise RuntimeError("demo: native and nested translations reached different host addresses")
    return {"accesses": accesses, "working_set": working_set, "modes": modes}
