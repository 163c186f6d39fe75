"""The format readers: each sample parses exactly (against a plain Python reading of the same file),
chunk and block boundaries change nothing, memory stays bounded, and a real valgrind trace reads whole."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import tracemalloc

import numpy as np
import pytest

import fastmmu.traces as traces
from fastmmu._core.traceparse import parse_din, parse_lackey
from fastmmu.traces import champsim, lackey
from fastmmu.traces.base import ReadOptions, TraceError
from fastmmu.traces.text import read_lines

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "traces")
READ, WRITE, FETCH = 0, 1, 2


def sample(name: str) -> str:
    return os.path.join(DATA, name)


def concatenated(chunks) -> tuple[list[int], list[int]]:
    chunks = list(chunks)
    if not chunks:
        return [], []
    return (np.concatenate([c.addresses for c in chunks]).tolist(),
            np.concatenate([c.kinds for c in chunks]).tolist())


# -- plain Python readings of the formats, written from their documentation --------------

def lackey_by_hand(path: str) -> tuple[list[int], list[int], int]:
    addresses, kinds, skipped = [], [], 0
    with open(path) as f:
        for line in f:
            if line.startswith("==") or not line.strip():
                skipped += 1
                continue
            kind, rest = line.split()
            addresses.append(int(rest.split(",")[0], 16))
            kinds.append({"I": FETCH, "L": READ, "S": WRITE, "M": WRITE}[kind])
    return addresses, kinds, skipped


def din_by_hand(path: str) -> tuple[list[int], list[int], int]:
    addresses, kinds, skipped = [], [], 0
    with open(path) as f:
        for line in f:
            fields = line.split()
            if not fields or fields[0] in ("3", "4"):
                skipped += 1
                continue
            addresses.append(int(fields[1], 16))   # int(, 16) takes a 0x prefix too
            kinds.append(int(fields[0]))
    return addresses, kinds, skipped


def champsim_by_hand(path: str, layout: str, size: int, sources_at: int, destinations_at: int,
                     destinations: int) -> tuple[list[int], list[int]]:
    data = open(path, "rb").read()
    addresses, kinds = [], []
    for offset in range(0, len(data), size):
        (ip,) = struct.unpack_from("<Q", data, offset)
        addresses.append(ip)
        kinds.append(FETCH)
        for a in struct.unpack_from("<4Q", data, offset + sources_at):
            if a:
                addresses.append(a)
                kinds.append(READ)
        for a in struct.unpack_from(f"<{destinations}Q", data, offset + destinations_at):
            if a:
                addresses.append(a)
                kinds.append(WRITE)
    return addresses, kinds


# -- each format, exactly -----------------------------------------------------------------

def test_lackey_sample_parses_exactly():
    trace = traces.open(sample("sample.lackey"))
    addresses, kinds, skipped = lackey_by_hand(sample("sample.lackey"))
    assert trace.format == "lackey" and trace.compression is None
    assert concatenated(trace.chunks()) == (addresses, kinds)
    assert (trace.stats.records, trace.stats.skipped_lines, trace.stats.bad_records) == (114, 11, 0)
    assert skipped == 11 and len(addresses) == 114
    assert trace.stats.bytes_read == trace.stats.bytes_total == os.path.getsize(sample("sample.lackey"))


def test_din_sample_parses_exactly():
    trace = traces.open(sample("sample.din"))
    addresses, kinds, skipped = din_by_hand(sample("sample.din"))
    assert trace.format == "din"
    assert concatenated(trace.chunks()) == (addresses, kinds)
    assert (trace.stats.records, trace.stats.skipped_lines) == (len(addresses), skipped) == (95, 56)


def test_champsim_standard_sample_parses_exactly():
    trace = traces.open(sample("sample.champsim"))
    assert trace.format == "champsim"
    expected = champsim_by_hand(sample("sample.champsim"), "standard", 64, 32, 16, 2)
    assert concatenated(trace.chunks()) == expected
    assert trace.stats.records == len(expected[0]) == 111


def test_champsim_cloudsuite_sample_parses_exactly():
    trace = traces.open(sample("sample.cloudsuite.champsim"))
    assert trace.format == "champsim-cloudsuite"
    expected = champsim_by_hand(sample("sample.cloudsuite.champsim"), "cloudsuite", 96, 56, 24, 4)
    assert concatenated(trace.chunks()) == expected
    assert trace.stats.records == len(expected[0]) == 112


def test_champsim_record_order_is_fetch_then_reads_then_writes():
    record = struct.pack("<QBB6s2Q4Q", 0x401000, 0, 0, bytes(6), 0xD1, 0, 0, 0x51, 0, 0x53)
    options = ReadOptions("mem")
    (chunk,) = champsim.read(io.BytesIO(record * 2), options)
    assert chunk.addresses.tolist() == [0x401000, 0x51, 0x53, 0xD1] * 2
    assert chunk.kinds.tolist() == [FETCH, READ, READ, WRITE] * 2


def test_the_layouts_are_the_c_structs():
    assert champsim.STANDARD.itemsize == 64 and champsim.CLOUDSUITE.itemsize == 96
    assert champsim.STANDARD.fields["source_memory"][1] == 32
    assert champsim.CLOUDSUITE.fields["destination_memory"][1] == 24
    assert champsim.CLOUDSUITE.fields["asid"][1] == 88


def test_a_trace_replays_identically_and_stats_restart():
    trace = traces.open(sample("sample.lackey"))
    first = concatenated(trace.chunks())
    assert concatenated(trace.chunks()) == first
    assert trace.stats.records == 114


# -- chunk and block boundaries ------------------------------------------------------------

def long_lackey(lines: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    print(f"seed {seed}")
    body = []
    for i in range(lines):
        address = int(rng.integers(0, 1 << int(rng.integers(1, 64))))
        if i % 97 == 0:
            body.append(f"=={seed}== a valgrind line")
        kind = "ILSM"[int(rng.integers(0, 4))]
        body.append(f"I  {address:08x},{i % 16}" if kind == "I" else f" {kind} {address:08x},8")
    return ("\n".join(body) + "\n").encode()


@pytest.mark.parametrize("chunk_records", [1, 7, 1000, 5000])
@pytest.mark.parametrize("block_bytes", [40, 41, 333, 1 << 16])
def test_chunks_and_blocks_do_not_change_the_records(chunk_records, block_bytes):
    text = long_lackey(3000, seed=11)
    whole = np.empty(4000, np.uint64), np.empty(4000, np.uint8)
    parsed = parse_lackey(text, *whole)
    expected = whole[0][: parsed.records].tolist(), whole[1][: parsed.records].tolist()
    options = ReadOptions("mem", chunk_records=chunk_records)
    chunks = list(read_lines(io.BytesIO(text), options, parse_lackey, "x", block_bytes=block_bytes))
    assert all(1 <= len(c) <= chunk_records for c in chunks)
    assert all(len(c) == chunk_records for c in chunks[:-1])
    assert concatenated(chunks) == expected
    assert (options.stats.records, options.stats.skipped_lines) == (3000, parsed.skipped)


@pytest.mark.parametrize("block_bytes", [30, 64, 1 << 16])
def test_error_line_numbers_count_across_blocks(block_bytes):
    lines = [b"0 %x" % i for i in range(500)]
    lines[376] = b"9 bad"
    options = ReadOptions("t.din", chunk_records=64)
    with pytest.raises(TraceError) as caught:
        list(read_lines(io.BytesIO(b"\n".join(lines)), options, parse_din, "din", block_bytes=block_bytes))
    assert str(caught.value) == "t.din:377: not a valid record (expected din): '9 bad'"
    assert caught.value.line == 377


def test_a_last_line_without_newline_and_crlf_endings():
    options = ReadOptions("mem")
    chunks = lackey.read(io.BytesIO(b"I  10,1\r\n L 20,8\r\n S 30,8"), options)
    assert concatenated(chunks) == ([0x10, 0x20, 0x30], [FETCH, READ, WRITE])


def test_a_line_longer_than_a_block_is_an_error_not_a_hang():
    options = ReadOptions("x.lackey")
    with pytest.raises(TraceError, match="x.lackey:2: a line longer than 64 bytes"):
        list(read_lines(io.BytesIO(b"I  10,1\n" + b"9" * 200 + b"\n"), options, parse_lackey, "x", block_bytes=64))


# -- bounded memory ----------------------------------------------------------------------

def test_a_trace_larger_than_a_block_streams_in_bounded_memory(tmp_path):
    """40 MB of lackey text, 16 MiB blocks: peak memory is a block and a chunk or two, not the file."""
    unit = long_lackey(20_000, seed=5)
    path = tmp_path / "big.lackey"
    with open(path, "wb") as f:
        for _ in range(-(-40_000_000 // len(unit))):
            f.write(unit)
    size = os.path.getsize(path)
    trace = traces.open(path, chunk_records=50_000)
    tracemalloc.start()
    try:
        records, longest = 0, 0
        for chunk in trace.chunks():
            records += len(chunk)
            longest = max(longest, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert records == trace.stats.records == 20_000 * -(-40_000_000 // len(unit))
    assert longest == 50_000
    chunk_bytes = 50_000 * 9
    assert peak < (1 << 24) + 3 * chunk_bytes + (1 << 20) < size / 2, (peak, size)


def test_champsim_streams_in_chunks(tmp_path):
    record = struct.pack("<QBB6s2Q4Q", 0x401000, 0, 0, bytes(6), 0xD1, 0, 0x51, 0, 0, 0)
    path = tmp_path / "t.champsim"
    path.write_bytes(record * 10_000)
    trace = traces.open(path, chunk_records=999)
    sizes = [len(c) for c in trace.chunks()]
    assert sum(sizes) == 30_000 and max(sizes) <= 999


# -- skip_bad ----------------------------------------------------------------------------

def test_skip_bad_counts_and_skips_bad_lines(tmp_path):
    path = tmp_path / "t.lackey"
    path.write_bytes(b"I  10,1\nI  zz,1\n L 20,8\nhello\n S 30,8\n")
    with pytest.raises(TraceError, match="t.lackey:2: not a valid record"):
        list(traces.open(path, "lackey").chunks())
    trace = traces.open(path, "lackey", skip_bad=True)
    assert concatenated(trace.chunks()) == ([0x10, 0x20, 0x30], [FETCH, READ, WRITE])
    assert (trace.stats.records, trace.stats.bad_records) == (3, 2)


def test_skip_bad_counts_a_truncated_champsim_record(tmp_path):
    path = tmp_path / "t.champsim"
    path.write_bytes(open(sample("sample.champsim"), "rb").read() + b"\x01" * 10)
    trace = traces.open(path, "champsim", skip_bad=True)
    assert len(concatenated(trace.chunks())[0]) == 111
    assert trace.stats.bad_records == 1


# -- a real valgrind trace ---------------------------------------------------------------

@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_a_real_valgrind_lackey_trace(tmp_path):
    log = tmp_path / "true.lackey"
    done = subprocess.run(["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={log}", "/bin/true"],
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    counts = {"I": 0, "L": 0, "S": 0, "M": 0}
    other = 0
    with open(log) as f:
        for line in f:
            if line.startswith("I  "):
                counts["I"] += 1
            elif line[:1] == " " and line[1:2] in "LSM" and line[2:3] == " ":
                counts[line[1]] += 1
            else:
                other += 1
    trace = traces.open(log)
    assert trace.format == "lackey"
    kinds = np.concatenate([c.kinds for c in trace.chunks()])
    assert trace.stats.records == sum(counts.values()) > 10_000
    assert trace.stats.skipped_lines == other and trace.stats.bad_records == 0
    assert np.count_nonzero(kinds == FETCH) == counts["I"]
    assert np.count_nonzero(kinds == READ) == counts["L"]
    assert np.count_nonzero(kinds == WRITE) == counts["S"] + counts["M"]


# -- addresses that do not fit (address_bits: a conversion to the native format's 57 bits) -------

WIDE = 0x1FFF_FFFF_FFFF_FFF0


@pytest.mark.parametrize("fmt, text, line", [
    ("lackey", "==1== x\n L 1000,8\n\n S 2000,4\n L 1ffffffffffffff0,8\n L 3000,8\n", 5),
    ("din", "0 1000\n3 0\n1 2000\n0 0x1ffffffffffffff0 a comment\n2 3000\n", 4),
])
def test_a_text_record_too_wide_for_address_bits_names_its_line(tmp_path, fmt, text, line):
    path = tmp_path / f"t.{fmt}"
    path.write_text(text)
    trace = traces.open(path, fmt, address_bits=57)
    delivered = []
    with pytest.raises(TraceError) as info:
        for chunk in trace.chunks():
            delivered += chunk.addresses.tolist()
    shown = text.splitlines()[line - 1]
    assert str(info.value) == (f"{path}:{line}: address {WIDE:#x} does not fit in 57 bits (the native format holds "
                               f"canonical addresses of 5-level paging): {shown!r}")
    assert delivered == [0x1000, 0x2000]                     # the records before it are delivered
    skipping = traces.open(path, fmt, skip_bad=True, address_bits=57)
    assert concatenated(skipping.chunks())[0] == [0x1000, 0x2000, 0x3000] and skipping.stats.bad_records == 1
    assert WIDE in concatenated(traces.open(path, fmt).chunks())[0]   # without address_bits: any 64-bit address


def test_a_champsim_operand_too_wide_names_its_record(tmp_path):
    records = np.zeros(3, dtype=champsim.STANDARD)
    records["ip"] = [0x400000, 0x400004, 0x400008]
    records["source_memory"][1, 2] = WIDE
    path = tmp_path / "t.champsim"
    path.write_bytes(records.tobytes())
    with pytest.raises(TraceError, match=re.escape(f"{path}: byte 64: address {WIDE:#x} does not fit in 57 bits")):
        list(traces.open(path, "champsim", address_bits=57).chunks())
    skipping = traces.open(path, "champsim", skip_bad=True, address_bits=57)
    assert concatenated(skipping.chunks())[0] == [0x400000, 0x400004, 0x400008] and skipping.stats.bad_records == 1
