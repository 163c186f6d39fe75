"""The native trace format: round trips, every bad input with its exact message, skip_bad, and a
file written from the specification alone (the README's native trace format) by a tiny independent writer."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from fastmmu.traces import native
from fastmmu.traces.base import (
    NATIVE_MAGIC,
    Invlpg,
    MapRegion,
    ReadOptions,
    SwitchCr3,
    SwitchProcess,
    SwitchVM,
    TraceError,
    UnmapRegion,
)
from fastmmu.traces.native import NativeWriter, read, sniff

EVENTS = [SwitchVM(2), SwitchProcess(7), SwitchCr3(0x8000_0000_0012_3000), MapRegion(0x7F00_0000_0000, 1 << 21,
          writable=False, executable=True, huge=True), UnmapRegion(0x7F00_0000_0000, 4096),
          Invlpg(0xFFFF_8000_DEAD_B000)]


def written(steps: list, metadata: dict | None = None) -> bytes:
    """A trace of ``steps``: (addresses, kinds) pairs and events, in order."""
    out = io.BytesIO()
    with NativeWriter(out, metadata) as writer:
        for step in steps:
            if isinstance(step, tuple):
                writer.write_accesses(*step)
            else:
                writer.write_event(step)
    return out.getvalue()


def read_all(data: bytes, chunk_records: int = 1 << 20, block_words: int = native.BLOCK_WORDS,
             skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray, list, ReadOptions]:
    """Everything read back: addresses, kinds, events at their index in the whole trace."""
    options = ReadOptions("t.fmt", skip_bad=skip_bad, chunk_records=chunk_records)
    addresses, kinds, events, total = [], [], [], 0
    for chunk in read(io.BytesIO(data), options, block_words=block_words):
        assert len(chunk) <= chunk_records
        assert chunk.addresses.dtype == np.uint64 and chunk.kinds.dtype == np.uint8
        assert all(0 <= index <= len(chunk) for index, _ in chunk.events)
        addresses.append(chunk.addresses)
        kinds.append(chunk.kinds)
        events += [(total + index, event) for index, event in chunk.events]
        total += len(chunk)
    return joined(addresses, np.uint64), joined(kinds, np.uint8), events, options


def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def expected(steps: list) -> tuple[np.ndarray, np.ndarray, list]:
    addresses, kinds, events, total = [], [], [], 0
    for step in steps:
        if isinstance(step, tuple):
            addresses.append(np.asarray(step[0]).astype(np.uint64))
            kinds.append(np.broadcast_to(np.asarray(step[1], dtype=np.uint8), (len(step[0]),)))
            total += len(step[0])
        else:
            events.append((total, step))
    return joined(addresses, np.uint64), joined(kinds, np.uint8), events


def random_steps(rng: np.random.Generator, groups: int) -> list:
    steps: list = []
    for _ in range(groups):
        count = int(rng.integers(0, 40))
        addresses = rng.integers(0, 1 << 56, count, dtype=np.uint64)
        upper = rng.random(count) < 0.2  # upper-half (sign-extended) addresses round-trip too
        addresses[upper] |= np.uint64(0xFF00_0000_0000_0000)
        steps.append((addresses, rng.integers(0, 3, count, dtype=np.uint8)))
        steps += [EVENTS[int(i)] for i in rng.integers(0, len(EVENTS), int(rng.integers(0, 3)))]
    return steps


# -- round trips -----------------------------------------------------------------------

@pytest.mark.parametrize("chunk_records", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("block_words", [4, 5, 13, 1 << 20])
def test_round_trip_across_chunk_and_block_boundaries(chunk_records: int, block_words: int) -> None:
    rng = np.random.default_rng(20240611)
    steps = random_steps(rng, 30)
    data = written(steps, {"source": "test"})
    addresses, kinds, events, options = read_all(data, chunk_records, block_words)
    want_addresses, want_kinds, want_events = expected(steps)
    np.testing.assert_array_equal(addresses, want_addresses)
    np.testing.assert_array_equal(kinds, want_kinds)
    assert events == want_events
    assert options.stats.records == len(want_addresses)
    assert options.stats.events == len(want_events)
    assert options.stats.bytes_read == len(data)
    assert options.stats.bad_records == 0


def test_chunks_are_full_and_events_sit_at_their_index() -> None:
    data = written([SwitchVM(1), (np.arange(5, dtype=np.uint64), 0), SwitchProcess(3),
                    (np.arange(5, 10, dtype=np.uint64), 1), Invlpg(0x1000)])
    chunks = list(read(io.BytesIO(data), ReadOptions("t", chunk_records=5)))
    assert [len(c) for c in chunks] == [5, 5, 0]
    assert chunks[0].events == [(0, SwitchVM(1))]
    assert chunks[1].events == [(0, SwitchProcess(3))]  # after a full chunk: before the next one's first access
    assert chunks[2].events == [(0, Invlpg(0x1000))]    # trailing events: a last, empty chunk


def test_only_a_header_reads_as_no_chunks_and_only_events_as_one_empty_chunk() -> None:
    assert list(read(io.BytesIO(written([])), ReadOptions("t"))) == []
    (chunk,) = read(io.BytesIO(written([SwitchCr3(0x1000)])), ReadOptions("t"))
    assert len(chunk) == 0 and chunk.events == [(0, SwitchCr3(0x1000))]


def test_header_metadata_and_sniff() -> None:
    data = written([], {"command": "fastmmu trace record -- ls", "source_format": "lackey"})
    assert sniff(data[:16]) and not sniff(b"FMMUTRC2") and not sniff(b"")
    header = native.read_header(io.BytesIO(data))
    assert header.version == 2 and header.size == len(data) - END_SIZE and header.size % 8 == 0
    assert header.metadata["command"] == "fastmmu trace record -- ls"
    assert header.metadata["source_format"] == "lackey"
    assert header.metadata["producer"].startswith("fastmmu ")


def test_upper_half_and_la57_addresses_round_trip() -> None:
    addresses = np.array([0, 0x00FF_FFFF_FFFF_FFFF, 0xFF00_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF,
                          0x0000_7FFF_FFFF_F000], dtype=np.uint64)
    got, kinds, _, _ = read_all(written([(addresses, 2)]))
    np.testing.assert_array_equal(got, addresses)
    assert kinds.tolist() == [2] * 5


def test_compressed_files_by_suffix(tmp_path) -> None:
    import gzip
    import lzma

    zstandard = pytest.importorskip("zstandard")
    steps = random_steps(np.random.default_rng(5), 5)
    plain = written(steps, {"x": 1})
    for suffix, decompress in ((".gz", gzip.decompress), (".xz", lzma.decompress),
                               (".zst", lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b))):
        path = tmp_path / f"t.fmt{suffix}"
        with NativeWriter(path, {"x": 1}) as writer:
            for step in steps:
                writer.write_accesses(*step) if isinstance(step, tuple) else writer.write_event(step)
        assert decompress(path.read_bytes()) == plain


@seed(7)
@settings(max_examples=60, derandomize=True)
@given(st.lists(st.one_of(
    st.tuples(st.lists(st.integers(0, (1 << 56) - 1), max_size=20), st.integers(0, 2)),
    st.sampled_from(EVENTS),
    st.builds(SwitchProcess, st.integers(0, (1 << 54) - 1)),
    st.builds(MapRegion, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), st.booleans(),
              st.booleans(), st.booleans())), max_size=12),
    st.integers(1, 9), st.integers(4, 12))
def test_round_trip_property(steps: list, chunk_records: int, block_words: int) -> None:
    steps = [(np.array(s[0], dtype=np.uint64), s[1]) if isinstance(s, tuple) else s for s in steps]
    addresses, kinds, events, _ = read_all(written(steps), chunk_records, block_words)
    want_addresses, want_kinds, want_events = expected(steps)
    np.testing.assert_array_equal(addresses, want_addresses)
    np.testing.assert_array_equal(kinds, want_kinds)
    assert events == want_events


# -- the specification is enough: a writer that knows only the README's native trace format ---------

def spec_writer(records: list[tuple], metadata: dict) -> bytes:
    """Follows the README's native trace format literally; shares no code with fastmmu."""
    meta = json.dumps(metadata).encode("utf-8")
    out = bytearray(b"FMMUTRC1" + struct.pack("<II", 1, len(meta)) + meta)
    out += b"\0" * (-len(out) % 8)
    for record in records:
        if record[0] == "access":  # ("access", address, kind)
            out += struct.pack("<Q", (record[1] & ((1 << 57) - 1)) | record[2] << 57)
        else:                      # ("event", type, inline argument, operand words...)
            _, kind, argument, *operands = record
            out += struct.pack("<Q", 1 << 63 | kind << 56 | len(operands) << 54 | argument)
            out += struct.pack(f"<{len(operands)}Q", *operands)
    return bytes(out)


def test_a_file_written_from_the_specification_reads_back() -> None:
    data = spec_writer([("event", 3, 1), ("event", 1, 42), ("event", 2, 0, 0x1234_5000),
                        ("event", 4, 0b101, 0x7F00_0000_0000, 0x20_0000), ("access", 0x7F00_0000_0010, 1),
                        ("access", 0xFFFF_FFFF_8000_0000, 2), ("event", 6, 0, 0x7F00_0000_0000),
                        ("event", 5, 0, 0x7F00_0000_0000, 0x20_0000), ("access", 0x1000, 0)],
                       {"producer": "spec test"})
    addresses, kinds, events, _ = read_all(data)
    assert [hex(a) for a in addresses] == ["0x7f0000000010", "0xffffffff80000000", "0x1000"]
    assert kinds.tolist() == [1, 2, 0]
    assert events == [(0, SwitchVM(1)), (0, SwitchProcess(42)), (0, SwitchCr3(0x1234_5000)),
                      (0, MapRegion(0x7F00_0000_0000, 0x20_0000, writable=True, executable=False, huge=True)),
                      (2, Invlpg(0x7F00_0000_0000)), (2, UnmapRegion(0x7F00_0000_0000, 0x20_0000))]
    assert native.read_header(io.BytesIO(data)).metadata == {"producer": "spec test"}


def test_the_documented_hex_example_is_what_the_writer_writes() -> None:
    """the README's native trace format shows these bytes; keep the two in step."""
    data = written([SwitchProcess(1), (np.array([0x7F00_0000_1000], dtype=np.uint64), 1)], {"producer": "doc"})
    assert data.hex(" ", 8) == ("464d4d5554524331 0200000012000000 7b2270726f647563 6572223a22646f63 "
                                "227d000000000000 0100000000000081 00100000007f0002 0000000000008087 "
                                "0100000000000000 0100000000000000")


# -- bad input: the file, the byte offset, the offending word ---------------------------

END_SIZE = 24        # the end record: its word and two operands
HEADER = written([])[:-END_SIZE]  # 16 fixed bytes, the producer's metadata, zero padding to a multiple of 8
FIRST = len(HEADER)


def word(value: int) -> bytes:
    return struct.pack("<Q", value)


def access(address: int, kind: int = 0) -> bytes:
    return word(address | kind << 57)


def event(kind: int, operands: int, argument: int = 0) -> bytes:
    return word(1 << 63 | kind << 56 | operands << 54 | argument)


def end(accesses: int, events: int, flags: int = 0) -> bytes:
    return event(7, 2, flags) + word(accesses) + word(events)


def read_until_error(data: bytes, **options: object) -> tuple[list[int], TraceError]:
    """The addresses delivered before the reader raised, and its error."""
    delivered: list[int] = []
    opts = ReadOptions("t.fmt", **options)  # type: ignore[arg-type]
    with pytest.raises(TraceError) as info:
        for chunk in read(io.BytesIO(data), opts, block_words=4):
            delivered += chunk.addresses.tolist()
    return delivered, info.value


def failure(data: bytes, **options: object) -> str:
    with pytest.raises(TraceError) as info:
        read_all(data, **options)  # type: ignore[arg-type]
    return str(info.value)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "t.fmt: byte 0: empty file: not a native trace"),
    (b"FMMUTRC2" + bytes(8), "t.fmt: byte 0: not a native trace: expected magic b'FMMUTRC1': 'FMMUTRC2'"),
    (b"ustar\0\0\0", "t.fmt: byte 0: not a native trace: expected magic b'FMMUTRC1': 'ustar\\x00\\x00\\x00'"),
    (b"FMMU", "t.fmt: byte 4: truncated header: 4 of 16 bytes"),
    (NATIVE_MAGIC + struct.pack("<I", 1), "t.fmt: byte 12: truncated header: 12 of 16 bytes"),
    (NATIVE_MAGIC + struct.pack("<II", 3, 0), "t.fmt: byte 8: unsupported version 3 (this fastmmu reads versions "
                                              "1 and 2): '03000000'"),
    (NATIVE_MAGIC + struct.pack("<II", 1, 10) + b"{}", "t.fmt: byte 18: truncated header: metadata of 10 bytes "
                                                        "(+6 padding) ends at byte 32, the file at 18"),
    (NATIVE_MAGIC + struct.pack("<II", 1, 1 << 30), "t.fmt: byte 12: metadata length 1073741824 is implausible "
                                                    "(at most 16777216): corrupt header: '00000040'"),
    (NATIVE_MAGIC + struct.pack("<II", 1, 2) + b"[]" + bytes(6), "t.fmt: byte 16: metadata must be a JSON object: "
                                                                 "'[]'"),
    (NATIVE_MAGIC + struct.pack("<II", 1, 2) + b"{}" + b"\0\0\0\0\0\1", "t.fmt: byte 18: header padding must be "
                                                                       "zero bytes: '000000000001'"),
])
def test_bad_headers_are_fatal_even_with_skip_bad(data: bytes, message: str) -> None:
    assert failure(data) == message
    assert failure(data, skip_bad=True) == message


def test_metadata_that_is_not_json() -> None:
    data = NATIVE_MAGIC + struct.pack("<II", 1, 3) + b"{x}" + bytes(5)
    assert failure(data).startswith("t.fmt: byte 16: metadata is not UTF-8 JSON (Expecting property name")


BAD_RECORDS = [
    # (the bad record, the words skipped with it, the message)
    (access(0x1000, 3), f"byte {FIRST + 8}: reserved access kind 3 (READ 0, WRITE 1, FETCH 2): "
                        "'0x0600000000001000'"),
    (word(1 << 59 | 0x1000), f"byte {FIRST + 8}: reserved bits 59-62 set in an access record: '0x0800000000001000'"),
    (word(1 << 62 | 2 << 57), f"byte {FIRST + 8}: reserved bits 59-62 set in an access record: '0x4400000000000000'"),
    (event(0, 0), f"byte {FIRST + 8}: unknown event type 0: '0x8000000000000000'"),
    (event(9, 2) + word(1) + word(2), f"byte {FIRST + 8}: unknown event type 9: '0x8980000000000000'"),
    (event(127, 3) + word(1 << 63) + word(2) + word(3), f"byte {FIRST + 8}: unknown event type 127: "
                                                        "'0xffc0000000000000'"),
    (event(1, 1, 5) + word(0), f"byte {FIRST + 8}: event type 1 takes 0 operand words, the record says 1: "
                               "'0x8140000000000005'"),
    (event(4, 2, 8) + word(0) + word(4096), f"byte {FIRST + 8}: reserved flag bits set in a map event (1 W, 2 X, "
                                            "4 huge): '0x8480000000000008'"),
    (event(6, 1, 1) + word(0x1000), f"byte {FIRST + 8}: reserved argument bits set in an event of type 6 "
                                    "(must be 0): '0x8640000000000001'"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_RECORDS)
def test_bad_records_are_fatal_with_offset_and_word(bad: bytes, message: str) -> None:
    data = HEADER + access(0x10) + bad + access(0x20) + end(2, 0)
    assert failure(data) == f"t.fmt: {message}"
    delivered, error = read_until_error(data)
    assert delivered == [0x10] and str(error) == f"t.fmt: {message}"   # the record before it is kept


@pytest.mark.parametrize(("bad", "message"), BAD_RECORDS)
@pytest.mark.parametrize("block_words", [4, 1 << 20])
def test_skip_bad_counts_and_resynchronises(bad: bytes, message: str, block_words: int) -> None:
    data = HEADER + access(0x10) + bad + event(1, 0, 9) + access(0x20, 1) + end(3, 2)
    addresses, kinds, events, options = read_all(data, skip_bad=True, block_words=block_words)
    assert addresses.tolist() == [0x10, 0x20] and kinds.tolist() == [0, 1]
    assert events == [(1, SwitchProcess(9))]
    assert options.stats.bad_records == 1
    assert options.stats.records == 2 and options.stats.events == 1


def test_operand_words_with_bit_63_are_not_events() -> None:
    data = HEADER + event(2, 1) + word(0xFFFF_FFFF_FFFF_FFFF) + access(0x30) + end(1, 1)
    _, _, events, _ = read_all(data, block_words=4)
    assert events == [(0, SwitchCr3(0xFFFF_FFFF_FFFF_FFFF))]


@pytest.mark.parametrize(("tail", "message"), [
    (b"\x01\x02\x03", f"byte {FIRST + 8}: truncated record: the file ends inside a 64-bit word: '010203'"),
    (event(4, 2, 1) + word(0x1000), f"byte {FIRST + 8}: truncated record: the file ends inside an event's operand "
                                    "words: '01000000000080840010000000000000'"),
    (event(6, 1), f"byte {FIRST + 8}: truncated record: the file ends inside an event's operand words: "
                  "'0000000000004086'"),
])
@pytest.mark.parametrize("block_words", [4, 1 << 20])
def test_truncated_records(tail: bytes, message: str, block_words: int) -> None:
    data = HEADER + access(0x10) + tail
    assert failure(data, block_words=block_words) == f"t.fmt: {message}"
    addresses, _, events, options = read_all(data, skip_bad=True, block_words=block_words)
    assert addresses.tolist() == [0x10] and events == [] and options.stats.bad_records == 1


# -- the end record: a whole file says so --------------------------------------------------

def test_a_file_without_its_end_record_is_truncated_after_every_record_is_delivered() -> None:
    data = HEADER + access(0x10) + event(1, 0, 4) + access(0x20)
    message = (f"t.fmt: byte {FIRST + 24}: truncated: the file ends after 2 accesses and 1 events without its end "
               "record (was its writer stopped?)")
    delivered, error = read_until_error(data)
    assert delivered == [0x10, 0x20] and str(error) == message
    addresses, _, events, options = read_all(data, skip_bad=True)
    assert addresses.tolist() == [0x10, 0x20] and options.stats.bad_records == 1 and not options.stats.ended


@pytest.mark.parametrize(("tail", "message"), [
    (end(2, 0), "the end record counts 2 accesses and 0 events, the file holds 1 and 0 (records lost or added)"),
    (end(1, 1), "the end record counts 1 accesses and 1 events, the file holds 1 and 0 (records lost or added)"),
    (end(1, 0, 2), "reserved flag bits set in the end record (1 partial)"),
])
def test_an_end_record_that_does_not_match(tail: bytes, message: str) -> None:
    data = HEADER + access(0x10) + tail
    delivered, error = read_until_error(data)
    assert delivered == [0x10] and str(error).startswith(f"t.fmt: byte {FIRST + 8}: {message}: '0x87")
    assert read_all(data, skip_bad=True)[3].stats.bad_records == 1


@pytest.mark.parametrize("after", [access(0x20), b"\0", end(1, 0)])
def test_data_after_the_end_record_is_fatal(after: bytes) -> None:
    data = HEADER + access(0x10) + end(1, 0) + after
    message = f"t.fmt: byte {FIRST + 32}: data after the end record (two traces joined, or a corrupt file)"
    assert failure(data) == message and failure(data, skip_bad=True) == message


def test_the_partial_flag_and_a_clean_end_are_reported() -> None:
    whole = read_all(HEADER + access(0x10) + end(1, 0))[3].stats
    assert whole.ended and not whole.writer_partial
    partial = read_all(HEADER + access(0x10) + end(1, 0, 1))[3].stats
    assert partial.ended and partial.writer_partial
    out = io.BytesIO()
    with NativeWriter(out) as writer:
        writer.write_accesses(np.array([0x1000], dtype=np.uint64), 0)
        writer.close(partial=True)
    assert out.getvalue().endswith(end(1, 0, 1))


def test_a_version_1_file_needs_no_end_record() -> None:
    data = spec_writer([("access", 0x1000, 0), ("event", 1, 3)], {"producer": "old"})
    addresses, _, events, options = read_all(data)
    assert addresses.tolist() == [0x1000] and events == [(1, SwitchProcess(3))] and not options.stats.ended
    type7 = spec_writer([("event", 7, 0, 1, 0)], {})   # type 7 is not the end record in version 1
    assert failure(type7) == f"t.fmt: byte {len(type7) - 24}: unknown event type 7: '0x8780000000000000'"


def test_a_writer_to_a_path_leaves_nothing_unless_it_finishes(tmp_path: Path) -> None:
    path = tmp_path / "t.fmt.gz"
    with pytest.raises(RuntimeError):
        with NativeWriter(path) as writer:
            writer.write_accesses(np.arange(10, dtype=np.uint64), 0)
            raise RuntimeError("the producer failed")
    assert list(tmp_path.iterdir()) == []
    writer = NativeWriter(path)
    writer.write_accesses(np.arange(10, dtype=np.uint64), 0)
    (temporary,) = tmp_path.iterdir()                      # written under a temporary name until closed
    assert temporary.name.startswith(".t.fmt.gz.") and temporary.name.endswith(".partial")
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with NativeWriter(path) as writer:
        writer.write_accesses(np.arange(10, dtype=np.uint64), 0)
    assert [p.name for p in tmp_path.iterdir()] == ["t.fmt.gz"]
    import gzip

    assert read_all(gzip.decompress(path.read_bytes()))[0].tolist() == list(range(10))


def test_many_bad_records_are_all_counted() -> None:
    bad = access(0, 3)
    data = HEADER + (access(0x10) + bad) * 1000 + end(2000, 0)
    addresses, _, _, options = read_all(data, skip_bad=True, chunk_records=64, block_words=100)
    assert len(addresses) == 1000 and options.stats.bad_records == 1000


# -- the writer checks its input --------------------------------------------------------

def test_writer_rejects_bad_input_without_writing() -> None:
    out = io.BytesIO()
    writer = NativeWriter(out)
    size = len(out.getvalue())
    with pytest.raises(ValueError, match=r"^addresses: 0x100000000000000 at index 1 does not fit in 57 bits"):
        writer.write_accesses(np.array([0, 1 << 56], dtype=np.uint64), 0)
    with pytest.raises(ValueError, match=r"^kinds: expected READ \(0\), WRITE \(1\) or FETCH \(2\), got 3 at index 1"):
        writer.write_accesses(np.array([0, 8], dtype=np.uint64), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"^kinds: expected 2 access kinds \(one per address\), got 1"):
        writer.write_accesses(np.array([0, 8], dtype=np.uint64), np.array([0]))
    with pytest.raises(ValueError, match=r"^kinds: expected READ \(0\), WRITE \(1\) or FETCH \(2\), got 4$"):
        writer.write_accesses(np.array([0], dtype=np.uint64), 4)
    with pytest.raises(ValueError, match=r"^addresses: expected integers, got dtype float64"):
        writer.write_accesses(np.array([1.5]), 0)
    with pytest.raises(ValueError, match=r"^event.pid: expected an integer in \[0, 2\*\*54\), got -1"):
        writer.write_event(SwitchProcess(-1))
    with pytest.raises(ValueError, match=r"^event.vm: expected an integer in \[0, 2\*\*54\)"):
        writer.write_event(SwitchVM(1 << 54))
    with pytest.raises(ValueError, match=r"^event.length: expected an integer in \[0, 2\*\*64\)"):
        writer.write_event(UnmapRegion(0, 1 << 64))
    with pytest.raises(ValueError, match=r"^event: expected one of the fastmmu.traces.base events"):
        writer.write_event("switch")  # type: ignore[arg-type]
    assert len(out.getvalue()) == size and writer.records == 0 and writer.events == 0
    writer.close()
    with pytest.raises(ValueError, match="closed NativeWriter"):
        writer.write_event(SwitchVM(0))
    assert not out.closed  # a stream the caller gave is flushed, not closed


def test_writer_takes_signed_addresses_as_sign_extended() -> None:
    addresses, _, _, _ = read_all(written([(np.array([-4096, 4096], dtype=np.int64), 0)]))
    assert addresses.tolist() == [0xFFFF_FFFF_FFFF_F000, 0x1000]


def test_zst_without_zstandard_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_zstandard(name: str, *args: object, **kwargs: object) -> object:
        if name == "zstandard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_zstandard)
    with pytest.raises(ValueError, match=r"t.fmt.zst: writing a .zst file needs the optional 'zstandard' package"):
        NativeWriter(tmp_path / "t.fmt.zst")
    assert not (tmp_path / "t.fmt.zst").exists()


def test_the_writer_in_the_documentation_works(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parent.parent / "README.md"
    if not doc.exists():
        pytest.skip("README.md is not next to the tests (an installed wheel)")
    code = next(block.split("```", 1)[0] for block in doc.read_text().split("```python\n")[1:]
                if "def write_trace" in block)
    assert len(code.strip().splitlines()) <= 16
    namespace: dict = {}
    exec(code, namespace)
    path = tmp_path / "t.fmt"
    namespace["write_trace"](path, [("event", 1, 1), ("access", 0x7F00_0000_1000, 1),
                                    ("event", 4, 1, 0x1000, 0x2000), ("access", -8, 0)], {"producer": "doc"})
    addresses, kinds, events, options = read_all(path.read_bytes())
    assert addresses.tolist() == [0x7F00_0000_1000, 0xFFFF_FFFF_FFFF_FFF8] and kinds.tolist() == [1, 0]
    assert events == [(0, SwitchProcess(1)), (1, MapRegion(0x1000, 0x2000, writable=True))]
    assert options.stats.ended and native.read_header(io.BytesIO(path.read_bytes())).version == 2
    assert not list(tmp_path.glob(".*"))   # written under a temporary name, renamed at the end
