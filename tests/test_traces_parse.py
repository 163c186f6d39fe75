"""The compiled text parsers (fastmmu._core.traceparse): exact records, where they stop, and argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from fastmmu._core.traceparse import BUILD_DEBUG, Parsed, parse_din, parse_lackey

READ, WRITE, FETCH = 0, 1, 2


def run(parse, text: bytes, capacity: int = 64, **kw):
    addresses = np.zeros(capacity, dtype=np.uint64)
    kinds = np.full(capacity, 255, dtype=np.uint8)
    parsed = parse(text, addresses, kinds, **kw)
    return parsed, addresses[: parsed.records].tolist(), kinds[: parsed.records].tolist()


def test_lackey_lines_become_exact_records():
    text = (b"==4242== Lackey, an example Valgrind tool\n"
            b"I  0401ab70,3\n"
            b" L 1ffefffe80,8\n"
            b" S 00000010,4\n"
            b" M 7fff0000ABCD,16\n"
            b"\n"
            b"--4242-- a warning\n"
            b"I  ffffffffffffffff,1\r\n")
    parsed, addresses, kinds = run(parse_lackey, text)
    assert parsed == Parsed(consumed=len(text), records=5, lines=8, skipped=3, bad=0, error=-1)
    assert addresses == [0x0401AB70, 0x1FFEFFFE80, 0x10, 0x7FFF0000ABCD, 0xFFFFFFFFFFFFFFFF]
    assert kinds == [FETCH, READ, WRITE, WRITE, FETCH]


def test_only_complete_lines_are_parsed():
    parsed, addresses, _ = run(parse_lackey, b"I  10,1\nI  20,1\n L 3")
    assert (parsed.consumed, parsed.records, parsed.lines) == (16, 2, 2)
    assert addresses == [0x10, 0x20]
    assert run(parse_lackey, b"I  10,1")[0] == Parsed(0, 0, 0, 0, 0, -1)


def test_a_full_output_stops_the_parse_at_a_line_boundary():
    text = b"".join(b"I  %x,4\n" % i for i in range(10))
    parsed, addresses, _ = run(parse_lackey, text, capacity=4)
    assert parsed.records == 4 and addresses == [0, 1, 2, 3]
    assert parsed.consumed == text.index(b"I  4,")
    rest, more, _ = run(parse_lackey, text[parsed.consumed:], capacity=100)
    assert more == list(range(4, 10))


@pytest.mark.parametrize("line", [
    b"I  04zz1234,3",           # bad hex
    b"X  04001234,3",           # unknown kind
    b" Q 1000,8",               # unknown kind
    b"I  04001234",             # no comma, no size
    b"I  04001234,",            # no size
    b"I  04001234,3x",          # junk after the size
    b"I  ,3",                   # no address
    b"I04001234,3",             # no blank after the kind
    b"I  10000000000000000,4",  # 65 bits
    b"0 1000",                  # a din line
])
def test_bad_lackey_lines_stop_at_their_offset_or_are_counted(line):
    text = b"I  10,1\n" + line + b"\nI  20,1\n"
    parsed, addresses, _ = run(parse_lackey, text)
    assert parsed == Parsed(consumed=8, records=1, lines=1, skipped=0, bad=0, error=8)
    parsed, addresses, _ = run(parse_lackey, text, skip_bad=True)
    assert parsed == Parsed(consumed=len(text), records=2, lines=3, skipped=0, bad=1, error=-1)
    assert addresses == [0x10, 0x20]


def test_din_lines_become_exact_records():
    text = (b"0 1000\n"
            b"1 0x70f60888 a comment\n"
            b"2\t2CB5\n"
            b"3 0\n"
            b"4 0\n"
            b"\n"
            b"  2 0X7fffffffffff\n")
    parsed, addresses, kinds = run(parse_din, text)
    assert parsed == Parsed(consumed=len(text), records=4, lines=7, skipped=3, bad=0, error=-1)
    assert addresses == [0x1000, 0x70F60888, 0x2CB5, 0x7FFFFFFFFFFF]
    assert kinds == [READ, WRITE, FETCH, FETCH]


@pytest.mark.parametrize("line", [b"5 1000", b"0 xyz", b"0", b"01 1000", b"0 0x", b"I  1000,4", b"0 1000,4"])
def test_bad_din_lines(line):
    text = b"0 10\n" + line + b"\n1 20\n"
    assert run(parse_din, text)[0].error == 5
    parsed, addresses, kinds = run(parse_din, text, skip_bad=True)
    assert (parsed.bad, addresses, kinds) == (1, [0x10, 0x20], [READ, WRITE])


@pytest.mark.parametrize("block", [b"I  10,1\n", bytearray(b"I  10,1\n"), memoryview(b"I  10,1\n"),
                                   np.frombuffer(b"I  10,1\n", dtype=np.uint8)])
def test_any_contiguous_bytes_block(block):
    assert run(parse_lackey, block)[1] == [0x10]


def test_arguments_are_checked_before_the_loop():
    a, k = np.zeros(4, np.uint64), np.zeros(4, np.uint8)
    with pytest.raises(TypeError, match="addresses: expected a 1-D numpy uint64 array, got a 1-D int64 array"):
        parse_lackey(b"", np.zeros(4, np.int64), k)
    with pytest.raises(TypeError, match="kinds: expected a 1-D numpy uint8 array, got list"):
        parse_lackey(b"", a, [0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"differ in length \(4 != 3\)"):
        parse_din(b"", a, k[:3])
    with pytest.raises(ValueError, match="contiguous"):
        parse_lackey(b"", np.zeros(8, np.uint64)[::2], k)
    readonly = a.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        parse_lackey(b"", readonly, k)
    with pytest.raises(TypeError, match="block: expected contiguous bytes"):
        parse_lackey(np.zeros(4, np.uint16), a, k)
    with pytest.raises(TypeError):
        parse_lackey("I  10,1\n", a, k)
    assert parse_lackey(b"I  10,1\n", a[:0], k[:0]) == Parsed(0, 0, 0, 0, 0, -1)


def test_the_build_says_whether_it_checks_bounds():
    assert BUILD_DEBUG in (True, False)
