"""Fuzz every trace reader: only a TraceError may come out of one, whatever the file holds.

    python bench/fuzz_traces.py --examples 100000            # JSON on stdout: examples run, failures
    python bench/fuzz_traces.py --minutes 15 --seed 7

Each example is a valid trace of one format (lackey, din, ChampSim, ChampSim-cloudsuite, native
versions 1 and 2), mutated (truncated, bytes flipped, inserted or deleted, a range repeated,
replaced by random bytes) before or after it is compressed (none, gzip, xz, zstd), then read
through ``fastmmu.traces.open`` as detected and as forced, with and without ``skip_bad``.  A
failure is any other exception, a chunk that breaks the readers' contract (dtypes, kinds,
event indexes), compressed data cut short that reads as a whole trace, or an example that runs
past its time limit (a hang).  Examples are drawn from
one seeded generator, so ``--seed`` and the example's index replay it (``--replay INDEX``).

``tests/test_traces_fuzz.py`` drives the same builders with Hypothesis, a few thousand examples in
CI; this script is the long run.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import lzma
import os
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from fastmmu.traces import TraceError
from fastmmu.traces import open as open_trace
from fastmmu.traces.base import Invlpg, MapRegion, SwitchCr3, SwitchProcess, SwitchVM, UnmapRegion
from fastmmu.traces.champsim import CLOUDSUITE, STANDARD
from fastmmu.traces.native import NativeWriter
from fastmmu.traces.source import compression_of

FORMATS = ("lackey", "din", "champsim", "champsim-cloudsuite", "native", "native-v1")
COMPRESSIONS = ("none", "gzip", "xz", "zstd")
MUTATIONS = ("none", "truncate", "flip", "insert", "delete", "repeat", "random")
TIME_LIMIT = 10.0   # seconds an example may take: far beyond any real one (a few ms); past it, a hang


# -- valid traces ------------------------------------------------------------------------------


def valid_trace(fmt: str, rng: np.random.Generator) -> bytes:
    """A small valid trace of ``fmt``, its content drawn from ``rng``."""
    count = int(rng.integers(0, 60))
    addresses = _addresses(rng, count)
    if fmt == "lackey":
        lines = []
        for address in addresses:
            if rng.random() < 0.1:
                lines.append(["==1234== a valgrind line", "--1234-- another", "", "  "][int(rng.integers(0, 4))])
            letter = "ILSM"[int(rng.integers(0, 4))]
            lines.append(f"{'I ' if letter == 'I' else ' ' + letter} {address:x},{int(rng.integers(1, 64))}")
        return ("\n".join(lines) + ("\n" if rng.random() < 0.8 else "")).encode()
    if fmt == "din":
        lines = []
        for address in addresses:
            label = int(rng.integers(0, 5))
            text = f"{address:#x}" if rng.random() < 0.5 else f"{address:x}"
            lines.append(f"{label} {text}" + (" a comment" if rng.random() < 0.2 else ""))
        return ("\n".join(lines) + "\n").encode()
    if fmt in ("champsim", "champsim-cloudsuite"):
        layout = STANDARD if fmt == "champsim" else CLOUDSUITE
        records = np.zeros(count, dtype=layout)
        records["ip"] = addresses | np.uint64(1)
        records["is_branch"] = rng.integers(0, 2, count)
        records["branch_taken"] = rng.integers(0, 2, count)
        for field in ("source_memory", "destination_memory"):
            shape = records[field].shape
            values = _addresses(rng, int(np.prod(shape))).reshape(shape)
            values[rng.random(shape) < 0.5] = 0
            records[field] = values
        return records.tobytes()
    if fmt == "native":
        out = io.BytesIO()
        with NativeWriter(out, {"fuzz": int(rng.integers(0, 1000))}) as writer:
            for address in addresses:
                if rng.random() < 0.15:
                    writer.write_event(_event(rng))
                writer.write_accesses(np.array([_canonical(address)], dtype=np.uint64), int(rng.integers(0, 3)))
        return out.getvalue()
    if fmt == "native-v1":   # a version-1 file, as the README's format was before the end record
        meta = json.dumps({"producer": "old"}).encode()
        header = b"FMMUTRC1" + struct.pack("<II", 1, len(meta)) + meta
        words = [(_canonical(a) & ((1 << 57) - 1)) | int(rng.integers(0, 3)) << 57 for a in addresses]
        return header + bytes(-len(header) % 8) + struct.pack(f"<{len(words)}Q", *words)
    raise ValueError(f"unknown format {fmt!r}")


def _addresses(rng: np.random.Generator, count: int) -> np.ndarray:
    """Addresses as traces hold them: mostly user space, some kernel, some at the edges of 64 bits."""
    values = rng.integers(0, 1 << 47, count, dtype=np.uint64)
    pick = rng.random(count)
    values[pick < 0.1] |= np.uint64(0xFFFF_8000_0000_0000)
    values[(pick >= 0.1) & (pick < 0.13)] = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    values[(pick >= 0.13) & (pick < 0.15)] = np.uint64(0)
    return values


def _canonical(address: int) -> int:
    return int(address) if int(address) >> 56 in (0, 0xFF) else int(address) & ((1 << 47) - 1)


def _event(rng: np.random.Generator) -> Any:
    value = int(rng.integers(0, 1 << 62))
    return [SwitchProcess(value & ((1 << 54) - 1)), SwitchVM(value & 0xFF), SwitchCr3(value),
            MapRegion(value & ~0xFFF, 4096 * int(rng.integers(1, 9)), bool(value & 1), bool(value & 2),
                      bool(value & 4)), UnmapRegion(value & ~0xFFF, 4096), Invlpg(value)][int(rng.integers(0, 6))]


# -- mutations and compression ----------------------------------------------------------------


def mutate(data: bytes, mutation: str, rng: np.random.Generator) -> bytes:
    """``data`` changed by ``mutation`` at places drawn from ``rng``."""
    size = len(data)
    at = int(rng.integers(0, size + 1))
    if mutation == "none":
        return data
    if mutation == "truncate":
        return data[:at]
    if mutation == "flip":
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            if out:
                out[int(rng.integers(0, len(out)))] ^= int(rng.integers(1, 256))
        return bytes(out)
    if mutation == "insert":
        return data[:at] + rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8).tobytes() + data[at:]
    if mutation == "delete":
        return data[:at] + data[at + int(rng.integers(1, 65)):]
    if mutation == "repeat":
        end = min(size, at + int(rng.integers(1, 200)))
        return data[:end] + data[at:end] + data[end:]
    if mutation == "random":
        return rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
    raise ValueError(f"unknown mutation {mutation!r}")


def compress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "xz":
        return lzma.compress(data)
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def compressions() -> tuple[str, ...]:
    """The compressions this interpreter can write (zstd needs the zstandard package)."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return COMPRESSIONS[:-1]
    return COMPRESSIONS


def build(fmt: str, compression: str, mutation: str, after: bool, rng: np.random.Generator) -> tuple[bytes, bool]:
    """One example: a valid trace, mutated before or ``after`` it is compressed; and whether it
    must fail to read (compressed data cut short: never a whole, shorter trace)."""
    data = valid_trace(fmt, rng)
    if after:
        packed = compress(data, compression)
        mutated = mutate(packed, mutation, rng)
        cut = mutation == "truncate" and len(mutated) < len(packed)
        return mutated, cut and compression_of(mutated[:8]) == compression   # (still recognisably compressed)
    return compress(mutate(data, mutation, rng), compression), False


# -- the check ---------------------------------------------------------------------------------


class Hang(Exception):
    """An example ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"the example ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


OUTCOMES: Counter[str] = Counter()   # how the reads of a run ended: "whole" or "TraceError"


def read_everything(path: str, fmt: str | None, skip_bad: bool, chunk_records: int = 1 << 20) -> int:
    """Read the trace through as the readers' users do, checking every chunk; the records read.
    A TraceError is the documented outcome and is left to the caller."""
    trace = open_trace(path, fmt, skip_bad=skip_bad, chunk_records=chunk_records)
    records = 0
    for chunk in trace.chunks():
        assert chunk.addresses.dtype == np.uint64 and chunk.kinds.dtype == np.uint8, "chunk dtypes"
        assert chunk.addresses.shape == chunk.kinds.shape and chunk.addresses.ndim == 1, "chunk shapes"
        assert len(chunk) <= trace.chunk_records, "chunk longer than chunk_records"
        assert not len(chunk) or int(chunk.kinds.max()) <= 2, "an access kind other than READ, WRITE, FETCH"
        assert all(0 <= index <= len(chunk) for index, _ in chunk.events), "an event outside its chunk"
        records += len(chunk)
    assert records == trace.stats.records, "stats.records is not what was delivered"
    trace.metadata()
    return records


def check(data: bytes, fmt: str, path: str, must_fail: bool = False) -> str | None:
    """Read ``data`` (written to ``path``) every way; None if only TraceErrors came out (and, if
    ``must_fail``, every read ended in one), else what went wrong."""
    with open(path, "wb") as f:
        f.write(data)
    forced = "native" if fmt == "native-v1" else fmt
    chunk_records = (1, 3, 64, 1 << 20)[len(data) % 4]   # chunk boundaries everywhere, across examples
    for name, skip_bad in ((None, False), (forced, False), (forced, True)):
        try:
            with time_limit(TIME_LIMIT):
                records = read_everything(path, name, skip_bad, chunk_records)
            OUTCOMES["whole"] += 1
            if must_fail:
                return f"cut compressed data read as a whole trace of {records} records (format={name})"
        except TraceError as error:
            OUTCOMES["TraceError"] += 1
            if not str(error).startswith(path):
                return f"a TraceError that does not name the file: {error}"
        except Exception as error:  # noqa: BLE001 - anything but a TraceError is the finding
            return (f"{type(error).__name__}: {error} (format={name}, skip_bad={skip_bad})\n"
                    + "".join(traceback.format_exception(error)[-3:]))
    return None


def example(seed: int, index: int) -> tuple[str, str, str, bool, tuple[bytes, bool]]:
    """Example ``index`` of the run seeded ``seed``: (format, compression, mutation, after, (bytes,
    must it fail))."""
    rng = np.random.default_rng([seed, index])
    fmt = FORMATS[int(rng.integers(0, len(FORMATS)))]
    available = compressions()
    compression = available[int(rng.integers(0, len(available)))]
    mutation = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
    after = compression != "none" and bool(rng.random() < 0.5)
    return fmt, compression, mutation, after, build(fmt, compression, mutation, after, rng)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="how many examples (default 10000)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long instead")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replay", type=int, default=None, metavar="INDEX", help="run one example and show it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastmmu-fuzz-") as tmp:
        path = os.path.join(tmp, "trace")
        if args.replay is not None:
            fmt, compression, mutation, after, (data, must_fail) = example(args.seed, args.replay)
            print(f"{fmt}, {compression}, {mutation} {'after' if after else 'before'} compression, {len(data)} "
                  f"bytes: {data[:64].hex(' ')}", file=sys.stderr)
            print(check(data, fmt, path, must_fail) or "ok")
            return 0
        started = time.perf_counter()
        stop = started + args.minutes * 60 if args.minutes else None
        ran, failures, by_kind = 0, [], {}
        while (stop is None and ran < args.examples) or (stop is not None and time.perf_counter() < stop):
            fmt, compression, mutation, after, (data, must_fail) = example(args.seed, ran)
            problem = check(data, fmt, path, must_fail)
            kind = f"{fmt}/{compression}/{mutation}"
            by_kind[kind] = by_kind.get(kind, 0) + 1
            if problem is not None:
                failures.append({"index": ran, "format": fmt, "compression": compression, "mutation": mutation,
                                 "after_compression": after, "problem": problem})
            ran += 1
    print(json.dumps({"examples": ran, "failures": len(failures), "seed": args.seed,
                      "seconds": round(time.perf_counter() - started, 1), "kinds": len(by_kind),
                      "reads": dict(OUTCOMES), "first_failures": failures[:10]}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
