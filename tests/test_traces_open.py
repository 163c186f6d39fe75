"""fastmmu.traces.open: compression by magic, format detection, and a TraceError (never a traceback)
for every kind of bad input, naming the file, the line or byte, and the offending text."""

from __future__ import annotations

import builtins
import gzip
import importlib.util
import lzma
import os
import re
import sys

import numpy as np
import pytest

import fastmmu.traces as traces
from fastmmu.traces import source
from fastmmu.traces.base import NATIVE_MAGIC, TraceError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "traces")
SAMPLES = {"sample.lackey": "lackey", "sample.din": "din", "sample.champsim": "champsim",
           "sample.cloudsuite.champsim": "champsim-cloudsuite"}
HAVE_ZSTD = importlib.util.find_spec("zstandard") is not None
HAVE_NATIVE = importlib.util.find_spec("fastmmu.traces.native") is not None


def read_all(trace):
    chunks = list(trace.chunks())
    return (np.concatenate([c.addresses for c in chunks]).tolist(), np.concatenate([c.kinds for c in chunks]).tolist())


def raw(name: str) -> bytes:
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    import zstandard
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("compression", [
    "gzip", "xz", pytest.param("zstd", marks=pytest.mark.skipif(not HAVE_ZSTD, reason="zstandard is not installed"))])
def test_compressed_traces_read_as_the_plain_ones(tmp_path, name, compression):
    plain = traces.open(os.path.join(DATA, name))
    path = tmp_path / (name + ".z")
    path.write_bytes(compress(compression, raw(name)))
    trace = traces.open(path)
    assert (trace.format, trace.compression) == (SAMPLES[name], compression)
    assert read_all(trace) == read_all(plain)
    assert trace.stats.bytes_total == os.path.getsize(path) == trace.stats.bytes_read
    assert trace.stats.records == plain.stats.records


def test_zstd_without_zstandard_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "t.lackey.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(20))
    monkeypatch.setitem(sys.modules, "zstandard", None)   # import zstandard now raises ImportError
    with pytest.raises(TraceError, match=r"zstandard package \(pip install fastmmu\[zstd\]\)"):
        traces.open(path)


def test_a_forced_format_wins_over_detection():
    trace = traces.open(os.path.join(DATA, "sample.cloudsuite.champsim"), format="champsim")
    assert trace.format == "champsim"
    assert trace.stats.records == 0 and len(read_all(trace)[0]) == trace.stats.records


def test_native_magic_is_detected():
    assert source._detect("x", NATIVE_MAGIC + bytes(56)) == "native"


@pytest.mark.skipif(HAVE_NATIVE, reason="the native reader exists: its own tests cover it")
def test_a_native_trace_without_its_reader_is_a_clear_error(tmp_path):
    path = tmp_path / "t.fmmu"
    path.write_bytes(NATIVE_MAGIC + bytes(56))
    with pytest.raises(TraceError, match="the native reader is not available"):
        traces.open(path)


# -- bad input ------------------------------------------------------------------------------

def error_of(path, **kw) -> TraceError:
    with pytest.raises(TraceError) as caught:
        read_all(traces.open(path, **kw))
    return caught.value


def test_bad_hex_names_file_line_and_text(tmp_path):
    path = tmp_path / "t.lackey"
    path.write_bytes(b"==1== hi\nI  0401ab70,3\n L 1ffefffe80,8\n S 7fzz0,8\n")
    assert str(error_of(path)) == (f"{path}:4: not a valid record (expected 'I  hexaddr,size' or "
                                   f"' L|S|M hexaddr,size'): ' S 7fzz0,8'")


def test_an_over_long_address_is_bad(tmp_path):
    path = tmp_path / "t.lackey"
    path.write_bytes(b"I  0401ab70,3\nI  10401ab7000000000,3\n")
    error = error_of(path)
    assert (error.line, error.text) == (2, b"I  10401ab7000000000,3")


def test_an_unknown_din_label(tmp_path):
    path = tmp_path / "t.din"
    path.write_bytes(b"0 1000\n2 2cb5\n7 1000\n")
    error = error_of(path)
    assert str(error) == f"{path}:3: not a valid record (expected 'LABEL HEXADDRESS' with LABEL 0 read, " \
                         f"1 write, 2 fetch, 3 or 4 escape): '7 1000'"


def test_an_unknown_lackey_kind(tmp_path):
    path = tmp_path / "t.lackey"
    path.write_bytes(b"I  0401ab70,3\n X 1000,8\n")
    assert error_of(path, format="lackey").text == b" X 1000,8"


@pytest.mark.parametrize("name,size,fmt", [("sample.champsim", 64, "champsim"),
                                           ("sample.cloudsuite.champsim", 96, "champsim-cloudsuite")])
def test_a_truncated_champsim_record_names_its_offset(tmp_path, name, size, fmt):
    data = raw(name)
    path = tmp_path / "t.champsim"
    path.write_bytes(data + data[:40])
    error = error_of(path, format=fmt)
    assert error.offset == len(data)
    assert str(error).startswith(f"{path}: byte {len(data)}: truncated record: 40 of {size} bytes")


def test_wrong_magic_for_a_forced_native_trace(tmp_path):
    path = tmp_path / "t.fmmu"
    path.write_bytes(b"FMMUTRC9" + bytes(56))
    assert str(error_of(path, format="native")) == (
        f"{path}: byte 0: not a native fastmmu trace: wrong magic (expected b'FMMUTRC1'); it looks like a champsim "
        "trace (leave the format out to detect it): 'FMMUTRC9'")
    lackey = os.path.join(DATA, "sample.lackey")
    assert str(error_of(lackey, format="native")).startswith(
        f"{lackey}: byte 0: not a native fastmmu trace: wrong magic (expected b'FMMUTRC1'); it looks like a lackey "
        "trace (leave the format out to detect it): ")


def test_format_names_and_their_aliases():
    lackey = os.path.join(DATA, "sample.lackey")
    assert traces.open(lackey, "valgrind").format == "lackey" and traces.open(lackey, " LACKEY ").format == "lackey"
    assert traces.format_name("dinero") == "din" and traces.format_name("champsim_cloudsuite") == \
        "champsim-cloudsuite" and traces.format_name("pin") is None
    assert list(traces.FORMATS) == [f.name for f in traces.TRACE_FORMATS]


@pytest.mark.parametrize("compression", [None, "gzip", "xz"])
def test_an_empty_file(tmp_path, compression):
    path = tmp_path / "empty"
    path.write_bytes(compress(compression, b"") if compression else b"")
    inside = f" (nothing inside the {compression} data)" if compression else ""
    assert str(error_of(path)) == f"{path}: empty trace{inside}"


def test_a_directory(tmp_path):
    assert str(error_of(tmp_path)) == f"{tmp_path}: is a directory, not a trace file"


def test_a_missing_file(tmp_path):
    assert str(error_of(tmp_path / "nope.lackey")) == f"{tmp_path / 'nope.lackey'}: no such file"


def test_an_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.lackey"
    path.write_bytes(raw("sample.lackey"))
    path.chmod(0)
    if os.geteuid() == 0:      # root reads anything: make open() refuse as the kernel would for others
        real_open = builtins.open

        def refusing(file, *args, **kw):
            if os.fspath(file) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *args, **kw)
        monkeypatch.setattr(builtins, "open", refusing)
    assert str(error_of(path)) == f"{path}: cannot read it: permission denied"


def test_undetectable_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello world\nsecond line\n")
    assert str(error_of(path)) == (f"{path}:1: cannot tell the trace format (tried native, lackey, din, champsim, "
                                   "champsim-cloudsuite; name one with format= or --format); its first line is: "
                                   "'hello world'")


def test_undetectable_binary(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes() + bytes(8))
    error = error_of(path)
    assert error.offset == 0 and str(error) == (
        f"{path}: byte 0: cannot tell the trace format (tried native, lackey, din, champsim, champsim-cloudsuite; "
        f"name one with format= or --format): binary data starting {path.read_bytes()[:16].hex(' ')}")


def test_an_unknown_format_name_lists_the_known_ones():
    with pytest.raises(TraceError, match=re.escape("unknown trace format 'pin' (known: native (fmt, fastmmu), lackey "
                                                   "(valgrind), din (dinero), champsim, champsim-cloudsuite "
                                                   "(champsim_cloudsuite, cloudsuite))")):
        traces.open(os.path.join(DATA, "sample.lackey"), format="pin")


@pytest.mark.parametrize("compression", ["gzip", "xz"])
def test_corrupt_compressed_data(tmp_path, compression):
    data = compress(compression, raw("sample.lackey") * 50)
    path = tmp_path / "cut"
    path.write_bytes(data[: len(data) // 2])
    message = str(error_of(path))
    assert message.startswith(f"{path}: corrupt or truncated {compression} data")


def test_bad_chunk_records():
    with pytest.raises(ValueError, match="chunk_records must be a positive int"):
        traces.open(os.path.join(DATA, "sample.lackey"), chunk_records=0)


@pytest.mark.parametrize("compression", ["gzip", "xz"] + (["zstd"] if HAVE_ZSTD else []))
def test_data_that_fails_part_way_is_delivered_up_to_there(tmp_path, compression):
    """A stream cut after 3 MiB of decompressed text: every whole line before the cut is delivered
    (at most the last piece the reader asked for, _Checked.READ_BYTES bytes, is lost), then a TraceError
    naming the records read."""
    line = b" L 7f0000001000,8\n"
    data = compress(compression, line * (3 * (1 << 20) // len(line) + 500))
    cut = data[: len(data) * 3 // 4]
    path = tmp_path / "cut.lackey"
    path.write_bytes(cut)
    recoverable = len(_decompress_what_is_there(compression, cut)) // len(line)
    trace = traces.open(path)
    delivered = 0
    with pytest.raises(TraceError) as info:
        for chunk in trace.chunks():
            delivered += len(chunk)
    assert isinstance(info.value, traces.base.StreamError)
    assert delivered == trace.stats.records
    assert recoverable - source._Checked.READ_BYTES // len(line) - 1 <= delivered <= recoverable
    assert re.fullmatch(re.escape(f"{path}: corrupt or truncated {compression} data after {delivered:,} records (")
                        + r".+" + re.escape("); every record before it was read"), str(info.value))


def _decompress_what_is_there(compression: str, data: bytes) -> bytes:
    """What a decompressor can make of a cut stream, by the library's own incremental API."""
    if compression == "gzip":
        import zlib

        return zlib.decompressobj(wbits=31).decompress(data)
    if compression == "xz":
        return lzma.LZMADecompressor().decompress(data)
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def test_a_read_error_of_a_plain_file_is_a_trace_error(tmp_path, monkeypatch):
    path = tmp_path / "t.lackey"
    path.write_bytes(b" L 1000,8\n" * 10)
    trace = traces.open(path)
    real_open = builtins.open

    class Failing:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def readinto(self, view):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: Failing(real_open(file, *a, **k)))
    with pytest.raises(TraceError, match=re.escape(f"{path}: cannot read it after 0 records (Input/output error); "
                                                   "every record before it was read")):
        list(trace.chunks())
