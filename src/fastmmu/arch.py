"""Architectural constants of x86-64 paging and EPT, for Python code.

The same values live in ``fastmmu/_core/types.pxd`` for the compiled core; a
test checks that the two agree.  Names follow the Intel SDM.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
ENTRIES_PER_TABLE = 512
ADDR_MASK = 0x000F_FFFF_FFFF_F000
PAGE_SIZES = {4096: 1, 2 << 20: 2, 1 << 30: 3}  # page size -> level of its leaf


class PTE(IntFlag):
    """Bits of an x86-64 paging-structure entry (SDM Vol. 3A, 4.5)."""

    P = 1 << 0
    RW = 1 << 1
    US = 1 << 2
    PWT = 1 << 3
    PCD = 1 << 4
    A = 1 << 5
    D = 1 << 6
    PS = 1 << 7  # in a PDPTE or PDE: maps a 1 GiB / 2 MiB page (PAT in a PTE)
    G = 1 << 8
    PAT_LARGE = 1 << 12
    NX = 1 << 63


PTE_PKEY_SHIFT = 59
PTE_PKEY_MASK = 0xF << PTE_PKEY_SHIFT


class EPT(IntFlag):
    """Bits of an EPT paging-structure entry (SDM Vol. 3C, 29.3.2)."""

    R = 1 << 0
    W = 1 << 1
    X = 1 << 2
    RWX = 7
    IGNORE_PAT = 1 << 6
    PS = 1 << 7
    A = 1 << 8
    D = 1 << 9
    XU = 1 << 10
    SVE = 1 << 63


EPT_MEMTYPE_SHIFT = 3
EPT_MEMTYPE_MASK = 7 << EPT_MEMTYPE_SHIFT
EPTP_WALK_SHIFT = 3
EPTP_AD = 1 << 6


class MemType(IntEnum):
    """Memory types valid in an EPT leaf (2, 3 and 7 are reserved)."""

    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6


CR3_PCID_MASK = 0xFFF
CR3_NOFLUSH = 1 << 63


class Access(IntFlag):
    """One byte per access in a batch: what kind of access it is."""

    READ = 0
    WRITE = 1
    FETCH = 2
    USER = 4
    IMPLICIT = 8  # implicit supervisor access: supervisor even at CPL 3; SMAP ignores AC


ACCESS_VALID_MASK = 15


class FrameKind(IntEnum):
    """What a host frame holds, recorded by the frame allocator."""

    FREE = 0
    DATA = 1
    GUEST_PT = 2
    SHADOW = 3
    EPT = 4
    HYPERVISOR = 5


class Status(IntEnum):
    """Outcome of one translation (the batch run loop stops at anything but OK)."""

    OK = 0
    PAGE_FAULT = 1
    GP = 2  # non-canonical address: #GP, not a page fault
    EPT_VIOLATION = 3
    EPT_MISCONFIG = 4
    TRAP = 5  # the caller asked accesses to this host frame to stop the run


class PFErr(IntFlag):
    """Page-fault error code bits (SDM Vol. 3A, 4.7)."""

    P = 1 << 0
    W = 1 << 1
    U = 1 << 2
    RSVD = 1 << 3
    ID = 1 << 4
    PK = 1 << 5


class ExitQual(IntFlag):
    """EPT-violation exit qualification bits (SDM Vol. 3C, Table 28-7)."""

    READ = 1 << 0
    WRITE = 1 << 1
    FETCH = 1 << 2
    READABLE = 1 << 3
    WRITABLE = 1 << 4
    EXECUTABLE = 1 << 5
    USER_EXECUTABLE = 1 << 6
    GLA_VALID = 1 << 7
    FINAL_TRANSLATION = 1 << 8  # 1: the final GPA; 0: a guest paging-structure entry
    GLA_USER = 1 << 9
    GLA_WRITABLE = 1 << 10
    GLA_XD = 1 << 11


class Attr(IntFlag):
    """Rights cached with a translation (TLB ``attrs``; see docs/core-semantics.md)."""

    W = 1 << 0
    U = 1 << 1
    XD = 1 << 2
    D = 1 << 3
    G = 1 << 4
    EPT_R = 1 << 16
    EPT_W = 1 << 17
    EPT_X = 1 << 18
    EPT_D = 1 << 19
    FRACTURED = 1 << 23  # a piece of a larger guest page (smaller EPT page): INVLPG of the page removes it


ATTR_PKEY_SHIFT = 8


def is_canonical(va: int, levels: int) -> bool:
    """Whether ``va`` is canonical for 4-level (48-bit) or 5-level (57-bit) paging."""
    top = 47 if levels == 4 else 56
    high = va >> top
    return high == 0 or high == (1 << (64 - top)) - 1


def level_shift(level: int) -> int:
    """Address shift of a paging level (1 = PT ... 5 = PML5)."""
    return PAGE_SHIFT + 9 * (level - 1)
