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
import threading
import time
from typing import Any

import numpy as np

from fastmmu.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UserError, add_command, check_output_file

KIND_NAMES = ("reads", "writes", "fetches")


def add_trace(subparsers: Any) -> None:
    from fastmmu.traces.source import formats_help

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
    c.add_argument("--format", default=None, metavar="NAME", help=f"INPUT's format, instead of detecting it: "
                                                                  f"{formats_help()}")
    c.add_argument("--skip-bad", action="store_true", help="count and skip malformed records")
    c.add_argument("--limit", type=int, default=None, metavar="N", help="convert at most N accesses")
    c.set_defaults(handler=_run_convert)

    i = add_command(sub, "info", "Show a trace's format, compression, records by kind, streams, address "
                    "range and pages touched (reads it through once).",
                    "fastmmu trace info sort.lackey.gz --json")
    i.add_argument("input", metavar="INPUT")
    i.add_argument("--format", default=None, metavar="NAME", help=f"its format, instead of detecting it: "
                                                                  f"{formats_help()}")
    i.add_argument("--skip-bad", action="store_true", help="count and skip malformed records")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(handler=_run_info)


# -- info ------------------------------------------------------------------------------


def trace_info(path: str, format: str | None = None, *, skip_bad: bool = False) -> dict[str, Any]:
    """What ``fastmmu trace info`` reports, as data."""
    from fastmmu.traces import FORMATS
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
        "path": os.path.abspath(path), "format": trace.format, "compression": trace.compression,
        "bytes": stats.bytes_total, "records": stats.records,
        **{name: int(n) for name, n in zip(KIND_NAMES, kinds, strict=True)},
        "events": stats.events, "skipped_lines": stats.skipped_lines, "skipped_what": FORMATS[trace.format].skipped,
        "bad_records": stats.bad_records, "streams": streams, "pages_touched": len(pages),
        "lowest_address": low, "highest_address": high,
        "metadata": trace.metadata(),
        "seconds": time.perf_counter() - started,
    }
    if trace.format == "native":
        info["end_record"] = stats.ended          # False: a version-1 file (or one read with --skip-bad)
        info["writer_partial"] = stats.writer_partial
    return info


def _plural(count: int, noun: str, plural: str = "") -> str:
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def _run_info(args: argparse.Namespace) -> int:
    from fastmmu.traces.base import TraceError
    from fastmmu.units import approx_count, approx_size

    try:
        info = trace_info(args.input, args.format, skip_bad=args.skip_bad)
    except TraceError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    rows: list[tuple[str, str]] = [
        ("records", f"{info['records']:,}: {_plural(info['reads'], 'read')}, {_plural(info['writes'], 'write')}, "
                    f"{_plural(info['fetches'], 'fetch', 'fetches')}")]
    if info["events"]:
        rows.append(("events", f"{info['events']:,}"))
    if info["skipped_lines"] or info["bad_records"]:
        what = f" ({info['skipped_what']})" if info["skipped_what"] and info["skipped_lines"] else ""
        rows.append(("skipped", f"{_plural(info['skipped_lines'], 'line')} by design{what}, "
                                f"{_plural(info['bad_records'], 'bad record')}"))
    if len(info["streams"]) > 1 or info["events"]:
        rows += [("stream", f"{label}: {_plural(n, 'record')}") for label, n in sorted(info["streams"].items())]
    rows.append(("pages", f"{_plural(info['pages_touched'], 'distinct 4 KiB page')} "
                          f"({approx_size(info['pages_touched'] << 12)})"))
    if info["lowest_address"] is not None:
        rows.append(("addresses", f"{info['lowest_address']:#x} .. {info['highest_address']:#x}"))
    if info.get("writer_partial"):
        rows.append(("partial", "its writer stopped before the end of its input (the end record says so)"))
    elif info["format"] == "native" and not info["end_record"] and not info["bad_records"]:
        rows.append(("end record", "none: a version-1 file (a truncated one cannot be told from a whole one)"))
    rows += [(key, " ".join(map(str, value)) if isinstance(value, list) else str(value))
             for key, value in info["metadata"].items()]
    width = max(len(label) for label, _ in rows) + 2
    print(f"{info['path']}: {info['format']} trace" + (f", {info['compression']}" if info["compression"] else "")
          + (f", {approx_size(info['bytes'])}" if info["bytes"] else ""))
    for label, text in rows:
        print(f"  {label:<{width}}{text}")
    rate = info["records"] / info["seconds"] if info["seconds"] > 0 else 0.0
    print(f"  read in {info['seconds']:.2f} s ({approx_count(rate, ' ')} records/s)")
    return EXIT_OK


# -- convert ---------------------------------------------------------------------------


def _run_convert(args: argparse.Namespace) -> int:
    from fastmmu.traces.base import TraceError
    from fastmmu.traces.native import ADDRESS_BITS, NativeWriter

    if args.limit is not None and args.limit < 0:
        raise UserError(f"--limit: expected a non-negative number, got {args.limit}")
    check_output_file(args.output, "OUTPUT")
    if os.path.exists(args.output) and os.path.exists(args.input) and os.path.samefile(args.input, args.output):
        raise UserError(f"{args.output}: the output would overwrite the input")
    trace = open_trace_arg(args.input, args.format, skip_bad=args.skip_bad, address_bits=ADDRESS_BITS)
    metadata = {"source": os.path.basename(args.input), "source_format": trace.format}
    writer = writer_for(NativeWriter, args.output, metadata)
    written, interrupted = 0, False
    try:
        for chunk in trace.chunks():
            at = 0
            for index, event in chunk.events:
                written += _write_upto(writer, chunk, at, index, args.limit, written)
                at = max(at, index)
                writer.write_event(event)
            written += _write_upto(writer, chunk, at, len(chunk), args.limit, written)
            if args.limit is not None and written >= args.limit:
                break
    except KeyboardInterrupt:   # what is converted is kept, its end record marked partial
        interrupted = True
    except TraceError as exc:   # no output: a conversion is whole or absent
        writer.abort()
        raise UserError(f"{exc} (nothing written to {args.output})") from None
    except OSError as exc:
        writer.abort()
        raise UserError(f"{args.output}: cannot write it: {exc.strerror or exc}") from None
    except BaseException:
        writer.abort()
        raise
    finish(writer, args.output, partial=interrupted)
    stats = trace.stats
    print(f"{os.path.abspath(args.output)}: {written:,} accesses, {stats.events:,} events"
          + (f" ({stats.bad_records:,} bad records skipped)" if stats.bad_records else "")
          + (" (interrupted: partial, and its end record says so)" if interrupted else ""))
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def open_trace_arg(path: str, format: str | None, **options: Any) -> Any:
    """``fastmmu.traces.open`` for a command's INPUT: a TraceError is the user's."""
    from fastmmu.traces import open as open_trace
    from fastmmu.traces.base import TraceError

    try:
        return open_trace(path, format, **options)
    except TraceError as exc:
        raise UserError(str(exc)) from None


def writer_for(kind: Any, path: str, *args: Any) -> Any:
    """``kind(path, *args)`` (a trace writer), an unwritable path being the user's mistake."""
    from fastmmu.traces.output import OutputError

    try:
        return kind(path, *args)
    except OutputError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot write it: {exc.strerror or exc}") from None


def finish(writer: Any, path: str, *, partial: bool) -> None:
    """Close a trace writer: its end record, then the rename into place."""
    try:
        writer.close(partial=partial)
    except OSError as exc:
        raise UserError(f"{path}: cannot write it: {exc.strerror or exc}") from None


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
    from fastmmu.traces.native import ADDRESS_BITS, NativeWriter

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UserError("trace record: give the program to run after --, e.g. fastmmu trace record -o t.fmt -- ls")
    check_output_file(args.output, "-o")
    valgrind = shutil.which("valgrind")
    if not hasattr(os, "mkfifo"):
        raise UserError("trace record streams valgrind's output through a named pipe: it needs Linux or macOS")
    if valgrind is None:
        raise UserError("trace record needs valgrind on the PATH (e.g. apt install valgrind)")
    program = shutil.which(cmd[0])
    if program is None:
        if not os.path.exists(cmd[0]):
            raise UserError(f"trace record: {cmd[0]}: no such program")
        raise UserError(f"trace record: {cmd[0]}: not an executable program")
    started = time.perf_counter()
    metadata = {"source": "valgrind lackey", "command": cmd, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
    options = ReadOptions(f"{cmd[0]} (valgrind lackey output)", address_bits=ADDRESS_BITS)
    writer = writer_for(NativeWriter, args.output, metadata)
    with tempfile.TemporaryDirectory(prefix="fastmmu-record-") as tmp:
        fifo = os.path.join(tmp, "lackey.fifo")
        os.mkfifo(fifo)
        # Our own write end keeps the pipe open until valgrind has exited, so that reading it never
        # waits forever for a valgrind that could not start (a program it cannot run, say).
        read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(read_end, True)
        keep_open = os.open(fifo, os.O_WRONLY)
        try:
            process = subprocess.Popen([valgrind, "--tool=lackey", "--trace-mem=yes", f"--log-file={fifo}", *cmd])
        except OSError as exc:
            os.close(keep_open)
            os.close(read_end)
            writer.abort()
            raise UserError(f"trace record: cannot start valgrind: {exc.strerror or exc}") from None
        watcher = threading.Thread(target=_close_when_done, args=(process, keep_open), daemon=True)
        watcher.start()
        interrupted = False
        try:
            with os.fdopen(read_end, "rb") as stream:
                for chunk in lackey.read(stream, options):
                    writer.write_accesses(chunk.addresses, chunk.kinds)
        except KeyboardInterrupt:
            interrupted = True
            process.terminate()
        except TraceError as exc:
            process.kill()
            writer.abort()
            raise UserError(f"{exc} (nothing written to {args.output})") from None
        except BaseException:
            process.kill()
            writer.abort()
            raise
        finally:
            status = process.wait()  # valgrind exits with the program's status
            watcher.join()
        if status != 0 and options.stats.records == 0 and not interrupted:
            writer.abort()
            raise UserError(f"trace record: valgrind ran nothing of {' '.join(cmd)} (exit status {status}; see "
                            "its message above); nothing written")
        finish(writer, args.output, partial=interrupted)
    stats = options.stats
    print(f"{os.path.abspath(args.output)}: {stats.records:,} accesses of {' '.join(cmd)} in "
          f"{time.perf_counter() - started:.1f} s" + (" (interrupted: partial)" if interrupted else ""),
          file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    if status != 0:
        print(f"fastmmu: the traced program exited with status {status} (its trace is written)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _close_when_done(process: subprocess.Popen[bytes], fd: int) -> None:
    process.wait()
    os.close(fd)
