"""``fastmmu trace record | convert | info``: make, convert and inspect memory traces.

``record`` runs a program under valgrind's lackey tool and streams its
output, through a named pipe, straight into a compact native trace: the
text trace (about 14 bytes an access) never touches the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from fastmmu.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UserError, add_command

KIND_NAMES = ("reads", "writes", "fetches")


def add_trace(subparsers: Any) -> None:
    p = add_command(
        subparsers, "trace",
        "Make, convert and inspect memory traces: record a program under valgrind lackey into a "
        "compact trace, convert any supported trace to the native format, show what a trace holds.",
        "fastmmu trace record -o sort.fmt.zst -- sort -n numbers.txt",
    )
    sub = p.add_subparsers(dest="trace_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    r = add_command(sub, "record", "Run CMD under valgrind --tool=lackey --trace-mem=yes and write its "
                    "accesses as a native trace (compressed by the file's suffix: .gz, .xz, .zst).",
                    "fastmmu trace record -o ls.fmt.gz -- ls -l /")
    r.add_argument("-o", "--output", required=True, metavar="FILE", help="the native trace to write")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the program to trace")
    r.set_defaults(handler=_run_record)

    c = add_command(sub, "convert", "Convert a trace (lackey, din, ChampSim, native; gz/xz/zstd) to the native "
                    "format (compressed by OUTPUT's suffix).",
                    "fastmmu trace convert sort.lackey.gz sort.fmt.zst")
    c.add_argument("input", metavar="INPUT")
    c.add_argument("output", metavar="OUTPUT")
    c.add_argument("--format", default=None, metavar="NAME", help="INPUT's format, instead of detecting it")
    c.add_argument("--skip-bad", action="store_true", help="count and skip malformed records")
    c.add_argument("--limit", type=int, default=None, metavar="N", help="convert at most N accesses")
    c.set_defaults(handler=_run_convert)

    i = add_command(sub, "info", "Show a trace's format, compression, records by kind, streams, address "
                    "range and pages touched (reads it through once).",
                    "fastmmu trace info sort.lackey.gz --json")
    i.add_argument("input", metavar="INPUT")
    i.add_argument("--format", default=None, metavar="NAME", help="its format, instead of detecting it")
    i.add_argument("--skip-bad", action="store_true", help="count and skip malformed records")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(handler=_run_info)


# -- info ------------------------------------------------------------------------------


def trace_info(path: str, format: str | None = None, *, skip_bad: bool = False) -> dict[str, Any]:
    """What ``fastmmu trace info`` reports, as data."""
    from fastmmu.traces import open as open_trace
    from fastmmu.workloads.replay import Streams

    started = time.perf_counter()
    trace = open_trace(path, format, skip_bad=skip_bad)
    kinds = np.zeros(3, dtype=np.int64)
    pages = np.zeros(0, dtype=np.uint64)
    low, high = None, None
    streams: dict[str, int] = {}
    demux = Streams(None)
    for chunk in trace.chunks():
        if len(chunk):
            kinds += np.bincount(chunk.kinds, minlength=3)[:3]
            pages = np.union1d(pages, np.unique(chunk.addresses >> np.uint64(12)))
            lo, hi = int(chunk.addresses.min()), int(chunk.addresses.max())
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
        for label, start, stop in demux.segments(chunk):
            streams[label] = streams.get(label, 0) + stop - start
    stats = trace.stats
    info: dict[str, Any] = {
        "path": path, "format": trace.format, "compression": trace.compression, "bytes": stats.bytes_total,
        "records": stats.records, **{name: int(n) for name, n in zip(KIND_NAMES, kinds, strict=True)},
        "events": stats.events, "skipped_lines": stats.skipped_lines, "bad_records": stats.bad_records,
        "streams": streams, "pages_touched": len(pages),
        "lowest_address": low, "highest_address": high,
        "metadata": trace.metadata(),
        "seconds": time.perf_counter() - started,
    }
    return info


def _run_info(args: argparse.Namespace) -> int:
    from fastmmu.traces.base import TraceError
    from fastmmu.units import approx_size

    try:
        info = trace_info(args.input, args.format, skip_bad=args.skip_bad)
    except TraceError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    rate = info["records"] / info["seconds"] / 1e6 if info["seconds"] > 0 else 0.0
    print(f"{info['path']}: {info['format']} trace" + (f", {info['compression']}" if info["compression"] else "")
          + (f", {approx_size(info['bytes'])}" if info["bytes"] else ""))
    print(f"  records      {info['records']:,}: {info['reads']:,} reads, {info['writes']:,} writes, "
          f"{info['fetches']:,} fetches")
    if info["events"]:
        print(f"  events       {info['events']:,}")
    if info["skipped_lines"] or info["bad_records"]:
        print(f"  skipped      {info['skipped_lines']:,} lines by design (e.g. valgrind's ==pid== lines), "
              f"{info['bad_records']:,} bad records")
    if len(info["streams"]) > 1 or info["events"]:
        for label, n in sorted(info["streams"].items()):
            print(f"  stream       {label}: {n:,} records")
    print(f"  pages        {info['pages_touched']:,} distinct 4 KiB pages "
          f"({approx_size(info['pages_touched'] << 12)})")
    if info["lowest_address"] is not None:
        print(f"  addresses    {info['lowest_address']:#x} .. {info['highest_address']:#x}")
    for key, value in info["metadata"].items():
        print(f"  {key + ':':<13}{' '.join(value) if isinstance(value, list) else value}")
    print(f"  read in {info['seconds']:.2f} s ({rate:.1f} M records/s)")
    return EXIT_OK


# -- convert ---------------------------------------------------------------------------


def _run_convert(args: argparse.Namespace) -> int:
    from fastmmu.traces import open as open_trace
    from fastmmu.traces.base import TraceError
    from fastmmu.traces.native import NativeWriter

    if args.limit is not None and args.limit < 0:
        raise UserError(f"--limit: expected a non-negative number, got {args.limit}")
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise UserError(f"{args.output}: the output would overwrite the input")
    try:
        trace = open_trace(args.input, args.format, skip_bad=args.skip_bad)
    except TraceError as exc:
        raise UserError(str(exc)) from None
    metadata = {"source": os.path.basename(args.input), "source_format": trace.format}
    partial = _partial_name(args.output)
    written, interrupted = 0, False
    try:
        with NativeWriter(partial, metadata) as writer:
            for chunk in trace.chunks():
                at = 0
                for index, event in chunk.events:
                    written += _write_upto(writer, chunk, at, index, args.limit, written)
                    at = max(at, index)
                    writer.write_event(event)
                written += _write_upto(writer, chunk, at, len(chunk), args.limit, written)
                if args.limit is not None and written >= args.limit:
                    break
    except TraceError as exc:
        os.unlink(partial)
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        interrupted = True
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write it: {exc.strerror}") from None
    os.replace(partial, args.output)
    stats = trace.stats
    print(f"{args.output}: {written:,} accesses, {stats.events:,} events"
          + (f" ({stats.bad_records:,} bad records skipped)" if stats.bad_records else "")
          + (" (interrupted: partial)" if interrupted else ""))
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def _partial_name(path: str) -> str:
    """Where a trace is written until it is complete: beside it, with the same suffix (which says
    how to compress it), renamed into place at the end."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".partial-{tail}")


def _write_upto(writer: Any, chunk: Any, start: int, stop: int, limit: int | None, written: int) -> int:
    if limit is not None:
        stop = min(stop, start + max(0, limit - written))
    if stop > start:
        writer.write_accesses(chunk.addresses[start:stop], chunk.kinds[start:stop])
    return max(0, stop - start)


# -- record ----------------------------------------------------------------------------


def _run_record(args: argparse.Namespace) -> int:
    from fastmmu.traces import lackey
    from fastmmu.traces.base import ReadOptions, TraceError
    from fastmmu.traces.native import NativeWriter

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UserError("trace record: give the program to run after --, e.g. fastmmu trace record -o t.fmt -- ls")
    valgrind = shutil.which("valgrind")
    if not hasattr(os, "mkfifo"):
        raise UserError("trace record streams valgrind's output through a named pipe: it needs Linux or macOS")
    if valgrind is None:
        raise UserError("trace record needs valgrind on the PATH (e.g. apt install valgrind)")
    if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
        raise UserError(f"trace record: {cmd[0]}: no such program")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fastmmu-record-") as tmp:
        fifo = os.path.join(tmp, "lackey.fifo")
        os.mkfifo(fifo)
        process = subprocess.Popen([valgrind, "--tool=lackey", "--trace-mem=yes", f"--log-file={fifo}", *cmd])
        metadata = {"source": "valgrind lackey", "command": cmd, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
        options = ReadOptions(f"{cmd[0]} (valgrind lackey output)")
        partial = _partial_name(args.output)
        interrupted = False
        try:
            with open(fifo, "rb") as stream, NativeWriter(partial, metadata) as writer:
                for chunk in lackey.read(stream, options):
                    writer.write_accesses(chunk.addresses, chunk.kinds)
        except TraceError as exc:
            process.kill()
            os.unlink(partial)
            raise UserError(str(exc)) from None
        except KeyboardInterrupt:
            interrupted = True
            process.terminate()
        status = process.wait()  # valgrind exits with the program's status
        os.replace(partial, args.output)
    stats = options.stats
    print(f"{args.output}: {stats.records:,} accesses of {' '.join(cmd)} in {time.perf_counter() - started:.1f} s"
          + (" (interrupted: partial)" if interrupted else ""), file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    if status != 0:
        print(f"fastmmu: the traced program exited with status {status}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
