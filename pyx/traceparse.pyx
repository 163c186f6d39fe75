"""Compiled parsers for text traces (valgrind lackey, Dinero din): a block of bytes in, arrays out.

Python reads a trace in large blocks and hands each one here; the loop runs
without the GIL, writes into the caller's arrays, and handles complete lines
only (up to the block's last newline), so that Python can carry the partial
last line over to the next block.  The loop never raises: a bad line comes
back as its byte offset in the block, and Python builds the ``TraceError``
(file, line number, text).  Every argument is checked before the loop.
"""

from libc.stdint cimport int8_t, uint8_t, uint64_t

from collections import namedtuple

import numpy as np

cdef enum:
    # fastmmu.Access values (fastmmu/arch.py)
    KIND_READ = 0
    KIND_WRITE = 1
    KIND_FETCH = 2
    # the characters the grammars name
    NEWLINE = 10         # '\n'
    CARRIAGE = 13        # '\r'
    SPACE = 32           # ' '
    TAB = 9              # '\t'
    EQUALS = 61          # '=': valgrind's own "==pid==" lines
    DASH = 45            # '-': valgrind's "--pid--" lines
    COMMA = 44
    DIGIT_0 = 48
    DIGIT_9 = 57
    LOWER_X = 120
    UPPER_X = 88

Parsed = namedtuple("Parsed", "consumed records lines skipped bad error")
Parsed.__doc__ = """What one call handled: ``consumed`` bytes (whole lines), ``records`` written,
``lines`` handled (records, skipped and bad ones), ``skipped`` lines by design, ``bad`` lines
skipped under ``skip_bad``, and ``error``: the byte offset of the bad line that stopped it, or -1."""

cdef struct parse_t:
    size_t consumed
    size_t records
    size_t lines
    size_t skipped
    size_t bad
    Py_ssize_t error

# The value of a hex digit, or -1: one lookup per character and no case analysis in the loop.
cdef int8_t HEX_VALUE[256]
# The access kind of a lackey letter (I, L, S, M), or -1.
cdef int8_t LACKEY_KIND[256]


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        HEX_VALUE[c] = -1
        LACKEY_KIND[c] = -1
    for c in range(10):
        HEX_VALUE[ord("0") + c] = <int8_t>c
    for c in range(6):
        HEX_VALUE[ord("a") + c] = <int8_t>(10 + c)
        HEX_VALUE[ord("A") + c] = <int8_t>(10 + c)
    LACKEY_KIND[ord("I")] = KIND_FETCH
    LACKEY_KIND[ord("L")] = KIND_READ
    LACKEY_KIND[ord("S")] = KIND_WRITE
    LACKEY_KIND[ord("M")] = KIND_WRITE   # a read-modify-write is one WRITE (traces/base.py)


_init_tables()


cdef inline size_t _complete(const uint8_t *text, size_t length) noexcept nogil:
    """The length of the block's complete lines: up to and including its last newline (0: none)."""
    while length > 0 and text[length - 1] != NEWLINE:
        length -= 1
    return length


cdef inline const uint8_t *_line_end(const uint8_t *p) noexcept nogil:
    """The newline that ends the line at ``p`` (the caller guarantees there is one)."""
    while p[0] != NEWLINE:
        p += 1
    return p


cdef inline const uint8_t *_hex(const uint8_t *p, uint64_t *value) noexcept nogil:
    """Read a hex number at ``p``: the byte after it, or NULL (no digit, or more than 64 bits)."""
    cdef uint64_t v = 0
    cdef int8_t digit = HEX_VALUE[p[0]]
    if digit < 0:
        return NULL
    while digit >= 0:
        if v >> 60:
            return NULL
        v = v << 4 | <uint64_t>digit
        p += 1
        digit = HEX_VALUE[p[0]]
    value[0] = v
    return p


cdef inline bint _at_end(const uint8_t *p) noexcept nogil:
    """Only trailing blanks (spaces, tabs, a CR) are left on the line."""
    while p[0] == SPACE or p[0] == TAB or p[0] == CARRIAGE:
        p += 1
    return p[0] == NEWLINE


cdef inline bint _blank(const uint8_t *p) noexcept nogil:
    return _at_end(p)


cdef parse_t _lackey(const uint8_t *text, size_t length, uint64_t *addresses, uint8_t *kinds,
                     size_t capacity, bint skip_bad) noexcept nogil:
    """``I  addr,size`` / `` L|S|M addr,size`` lines; valgrind's ``==pid==`` (and ``--pid--``)
    lines and blank lines are skipped."""
    cdef parse_t r
    cdef const uint8_t *p = text
    cdef const uint8_t *line = text
    cdef const uint8_t *end = text + _complete(text, length)
    cdef int8_t kind
    cdef uint64_t address
    r.consumed = r.records = r.lines = r.skipped = r.bad = 0
    r.error = -1
    while p < end and r.records < capacity:
        line = p
        if p[0] == EQUALS or (p[0] == DASH and p[1] == DASH) or _blank(p):
            r.skipped += 1
            p = _line_end(p) + 1
            r.lines += 1
            continue
        while p[0] == SPACE:
            p += 1
        kind = LACKEY_KIND[p[0]]
        if kind >= 0 and p[1] == SPACE:
            p += 2
            while p[0] == SPACE:
                p += 1
            p = _hex(p, &address)
            if p != NULL and p[0] == COMMA:
                p += 1
                if DIGIT_0 <= p[0] <= DIGIT_9:                                 # a decimal size
                    while DIGIT_0 <= p[0] <= DIGIT_9:
                        p += 1
                    if _at_end(p):
                        addresses[r.records] = address
                        kinds[r.records] = <uint8_t>kind
                        r.records += 1
                        p = _line_end(p) + 1
                        r.lines += 1
                        continue
        # a bad line
        if not skip_bad:
            r.error = line - text
            break
        r.bad += 1
        r.lines += 1
        p = _line_end(line) + 1
    r.consumed = (line if r.error >= 0 else p) - text
    return r


cdef parse_t _din(const uint8_t *text, size_t length, uint64_t *addresses, uint8_t *kinds,
                  size_t capacity, bint skip_bad) noexcept nogil:
    """``LABEL ADDRESS [ignored]`` lines: 0 read, 1 write, 2 fetch; 3 (escape, "unknown access
    type") and 4 (escape, cache flush) are not accesses and are skipped; blank lines too."""
    cdef parse_t r
    cdef const uint8_t *p = text
    cdef const uint8_t *line = text
    cdef const uint8_t *end = text + _complete(text, length)
    cdef uint8_t label
    cdef uint64_t address
    r.consumed = r.records = r.lines = r.skipped = r.bad = 0
    r.error = -1
    while p < end and r.records < capacity:
        line = p
        while p[0] == SPACE or p[0] == TAB:
            p += 1
        label = p[0]
        if _blank(p) or ((label == DIGIT_0 + 3 or label == DIGIT_0 + 4) and (p[1] == SPACE or p[1] == TAB)):
            r.skipped += 1
            p = _line_end(p) + 1
            r.lines += 1
            continue
        if DIGIT_0 <= label <= DIGIT_0 + 2 and (p[1] == SPACE or p[1] == TAB):
            p += 2
            while p[0] == SPACE or p[0] == TAB:
                p += 1
            if p[0] == DIGIT_0 and (p[1] == LOWER_X or p[1] == UPPER_X):
                p += 2
            p = _hex(p, &address)
            if p != NULL and (p[0] == SPACE or p[0] == TAB or _at_end(p)):
                addresses[r.records] = address
                kinds[r.records] = label - DIGIT_0     # din 0/1/2 are fastmmu READ/WRITE/FETCH
                r.records += 1
                p = _line_end(p) + 1
                r.lines += 1
                continue
        if not skip_bad:
            r.error = line - text
            break
        r.bad += 1
        r.lines += 1
        p = _line_end(line) + 1
    r.consumed = (line if r.error >= 0 else p) - text
    return r


ctypedef parse_t (*parser_t)(const uint8_t *, size_t, uint64_t *, uint8_t *, size_t, bint) noexcept nogil


cdef object _run(parser_t parser, block, addresses, kinds, bint skip_bad):
    """Check the arguments with the GIL held, then parse without it."""
    if not isinstance(addresses, np.ndarray) or addresses.dtype != np.uint64 or addresses.ndim != 1:
        raise TypeError(f"addresses: expected a 1-D numpy uint64 array, got {_describe(addresses)}")
    if not isinstance(kinds, np.ndarray) or kinds.dtype != np.uint8 or kinds.ndim != 1:
        raise TypeError(f"kinds: expected a 1-D numpy uint8 array, got {_describe(kinds)}")
    if len(addresses) != len(kinds):
        raise ValueError(f"addresses and kinds differ in length ({len(addresses)} != {len(kinds)})")
    if not addresses.flags.c_contiguous or not kinds.flags.c_contiguous:
        raise ValueError("addresses and kinds must be contiguous")
    if not addresses.flags.writeable or not kinds.flags.writeable:
        raise ValueError("addresses and kinds must be writeable")
    view = memoryview(block)
    if view.ndim != 1 or view.itemsize != 1 or view.format not in ("B", "b", "c") or not view.c_contiguous:
        raise TypeError(f"block: expected contiguous bytes (bytes, bytearray, uint8 array), got {_describe(block)}")
    cdef const uint8_t[::1] text = view.cast("B") if view.format != "B" else view
    cdef uint64_t[::1] out_addresses = addresses
    cdef uint8_t[::1] out_kinds = kinds
    cdef size_t length = text.shape[0]
    cdef size_t capacity = out_addresses.shape[0]
    cdef parse_t r
    if length == 0 or capacity == 0:
        return Parsed(0, 0, 0, 0, 0, -1)
    with nogil:
        r = parser(&text[0], length, &out_addresses[0], &out_kinds[0], capacity, skip_bad)
    return Parsed(r.consumed, r.records, r.lines, r.skipped, r.bad, r.error)


cdef str _describe(value):
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-D {value.dtype} array"
    return type(value).__name__


def parse_lackey(block, addresses, kinds, *, bint skip_bad=False):
    """Parse the complete lines of a valgrind lackey (``--trace-mem=yes``) block.

    Writes at most ``len(addresses)`` records into ``addresses`` (uint64) and
    ``kinds`` (uint8: READ 0, WRITE 1, FETCH 2; ``M`` is one WRITE) and
    returns a ``Parsed``.  It stops at the block's last newline, when the
    arrays are full, or at a bad line (``error``: its offset; with
    ``skip_bad`` it is counted in ``bad`` and skipped instead).
    """
    return _run(_lackey, block, addresses, kinds, skip_bad)


def parse_din(block, addresses, kinds, *, bint skip_bad=False):
    """Parse the complete lines of a Dinero ``din`` block (as ``parse_lackey``).

    Labels 0, 1, 2 are READ, WRITE, FETCH; 3 and 4 (escape records:
    unknown access type, cache flush) are not accesses and count as skipped.
    Addresses are hex, with or without ``0x``; the rest of a line is ignored.
    """
    return _run(_din, block, addresses, kinds, skip_bad)


__all__ = ["BUILD_DEBUG", "Parsed", "parse_lackey", "parse_din"]

BUILD_DEBUG = FASTMMU_DEBUG   # built with FASTMMU_CYTHON_DEBUG=1 (bounds checks on): `fastmmu info` says so
