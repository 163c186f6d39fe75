"""The compiled walkers (fastmmu._core.paging): results, A/D bits, faults, caches, arguments, hostile tables.

Reference counts per level are in tests/test_walk_counts.py; the SDM rule
tables (tests/test_sdm_rules.py) and the differential test against the
reference model (tests/test_paging_differential.py) cover the permission
matrix and random tables on both backends.  This file pins down the rest of
the contract of docs/core-semantics.md on the compiled core itself.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmmu.arch import (
    ATTR_PKEY_SHIFT,
    EPT,
    PTE,
    Access,
    Attr,
    ExitQual,
    FrameKind,
    MemType,
    PFErr,
    Status,
)
from fastmmu.cpu import CpuState, EptConfig, VMEntryFailure
from fastmmu.tables import EptTable, PageTable
from fastmmu.translation import Reference

paging = pytest.importorskip("fastmmu._core.paging")
HostMemory = pytest.importorskip("fastmmu._core.memory").HostMemory
TLB = pytest.importorskip("fastmmu._core.tlb").TLB

URW = PTE.P | PTE.RW | PTE.US
A, D = int(PTE.A), int(PTE.D)
READ, WRITE, FETCH, USER, IMPLICIT = 0, int(Access.WRITE), int(Access.FETCH), int(Access.USER), int(Access.IMPLICIT)
KiB4, MiB2, GiB = 4096, 2 << 20, 1 << 30
VA = 0x0000_7F80_0012_3678  # user half, 4 levels
PA = 0x4000_0000  # 1 GiB aligned: any page size
RAM = 1 << 32  # host-physical base of a guest's RAM
DATA_GPA = 0x8000_0000  # where the guest maps VA's page
GLA = ExitQual.GLA_VALID
FINAL = ExitQual.FINAL_TRANSLATION
AD_BITS = A | D | int(EPT.A) | int(EPT.D)  # all a successful walk may set


# -- worlds -------------------------------------------------------------------------------------


def native(leaf=URW, *, levels=4, table_flags=URW, page_size=KiB4, maxphyaddr=46, **cpu):
    """64 MiB of host memory with VA's page mapped at PA."""
    mem = HostMemory("64MiB", maxphyaddr=maxphyaddr)
    pt = PageTable(mem, levels)
    pt.map(VA & ~(page_size - 1), PA, leaf, page_size=page_size, table_flags=table_flags)
    return SimpleNamespace(mem=mem, pt=pt, cpu=CpuState(cr3=pt.root, levels=levels, **cpu))


def nested(
    leaf=URW,
    *,
    ad=False,
    table_perms=EPT.RWX,
    data_perms=EPT.RWX,
    memtype=MemType.WB,
    guest_levels=4,
    ept_levels=4,
    advanced_exit_info=True,
    execute_only=True,
    **cpu,
):
    """A guest: its tables at GPA 1 MiB.. (EPT rights ``table_perms``), VA mapped to DATA_GPA (``data_perms``)."""
    mem = HostMemory("8GiB")
    ept = EptTable(mem, ept_levels, ad=ad, advanced_exit_info=advanced_exit_info, execute_only=execute_only)
    ept.map_range(1 << 20, RAM + (1 << 20), 3 << 20, table_perms)
    ept.map(DATA_GPA, RAM + DATA_GPA, data_perms, memtype=memtype)
    pages = iter(range(1 << 20, 4 << 20, KiB4))
    tables = []

    def alloc_gpa() -> int:
        gpa = next(pages)
        mem.alloc_at([(RAM + gpa) >> 12], kind=FrameKind.GUEST_PT)
        tables.append(gpa)
        return gpa

    pt = PageTable(mem, guest_levels, ept=ept, alloc_gpa=alloc_gpa)
    pt.map(VA & ~0xFFF, DATA_GPA, leaf)
    return SimpleNamespace(
        mem=mem, pt=pt, ept=ept, config=ept.config, tables=tables, cpu=CpuState(cr3=pt.root, levels=guest_levels, **cpu)
    )


def snapshot(mem) -> np.ndarray:
    """Every word with content (rows: frames with content, ascending; either memory layout)."""
    frames = mem.content_frames()
    return np.stack([mem.read_frame(int(pfn)) for pfn in frames]) if len(frames) else np.zeros((0, 512), np.uint64)


def guest_entries(w, levels=4) -> dict:
    return {level: w.pt.read_entry(VA, level) for level in range(1, levels + 1)}


def ept_entries(w, gpa, levels=4) -> dict:
    return {level: w.ept.read_entry(gpa, level) for level in range(1, levels + 1)}


def entry_gpa(w, level) -> int:
    """Guest-physical address of VA's guest entry at ``level``."""
    return w.pt.entry_address(VA, level)


# -- constants ----------------------------------------------------------------------------------


def test_c_constants_match_fastmmu_arch():
    c = paging._c_constants()
    assert {name: c[f"WALK_{name}"] for name in Status.__members__} == {
        n: int(s) for n, s in Status.__members__.items()
    }
    for name in ("W", "U", "XD", "D", "G", "EPT_R", "EPT_W", "EPT_X", "EPT_D", "FRACTURED"):
        assert c[f"ATTR_{name}"] == Attr[name], name
    assert c["ATTR_PKEY_SHIFT"] == ATTR_PKEY_SHIFT
    for name in PFErr.__members__:
        assert c[f"PFERR_{name}"] == PFErr[name], name
    qual = {
        "READ": "READ",
        "WRITE": "WRITE",
        "FETCH": "FETCH",
        "GLA_VALID": "GLA_VALID",
        "FINAL": "FINAL_TRANSLATION",
        "GLA_USER": "GLA_USER",
        "GLA_WRITABLE": "GLA_WRITABLE",
        "GLA_XD": "GLA_XD",
    }
    for cname, pyname in qual.items():
        assert c[f"EQ_{cname}"] == ExitQual[pyname], cname
    assert 1 << c["EQ_RIGHTS_SHIFT"] == ExitQual.READABLE


# -- results ------------------------------------------------------------------------------------


def test_native_result_fields():
    w = native(URW | PTE.G | (5 << 59), cr4_pge=True)
    walk = paging.walk(w.mem, w.cpu, VA, USER | WRITE)
    assert walk == paging.walk(w.mem, w.cpu, VA, USER | WRITE)  # the second walk: the same (D now set)
    assert walk.status == Status.OK and walk.ok and walk.fault is None
    assert walk.host_address == PA | (VA & 0xFFF)
    assert walk.guest_physical_address == 0 and walk.memtype == 0  # no guest-physical space natively
    assert walk.page_size == KiB4 and walk.is_global and walk.pkey == 5
    assert walk.attrs == (
        Attr.W | Attr.U | Attr.D | Attr.G | 5 << ATTR_PKEY_SHIFT | Attr.EPT_R | Attr.EPT_W | Attr.EPT_X | Attr.EPT_D
    )
    assert walk.guest_linear_address == VA
    assert (walk.error_code, walk.fault_address, walk.exit_qualification) == (0, 0, 0)


@pytest.mark.parametrize(("size", "shift"), [(MiB2, 21), (GiB, 30)])
def test_large_pages_keep_the_offset(size, shift):
    w = native(page_size=size)
    walk = paging.walk(w.mem, w.cpu, VA)
    assert walk.host_address == PA | (VA & (size - 1)) and walk.page_size == 1 << shift


def test_the_pat_bit_of_a_large_page_is_not_an_address_bit():
    w = native(URW | PTE.PAT_LARGE, page_size=MiB2)
    assert paging.walk(w.mem, w.cpu, VA).host_address == PA | (VA & (MiB2 - 1))


def test_global_needs_pge():
    w = native(URW | PTE.G, cr4_pge=False)
    walk = paging.walk(w.mem, w.cpu, VA)
    assert not walk.is_global and not walk.attrs & Attr.G


def test_nested_result_fields():
    w = nested(URW | PTE.NX, data_perms=EPT.R | EPT.W, memtype=MemType.WT)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, USER)
    assert walk.status == Status.OK
    assert walk.guest_physical_address == DATA_GPA | (VA & 0xFFF)
    assert walk.host_address == RAM + DATA_GPA + (VA & 0xFFF)
    assert walk.memtype == MemType.WT
    assert walk.attrs == (Attr.W | Attr.U | Attr.XD | Attr.EPT_R | Attr.EPT_W | Attr.EPT_D | MemType.WT << 20)


def test_walk_ept_result_fields():
    w = nested(data_perms=EPT.R | EPT.X, memtype=MemType.UC)
    walk = paging.walk_ept(w.mem, w.config, DATA_GPA + 0x10)
    assert walk.status == Status.OK and walk.host_address == RAM + DATA_GPA + 0x10
    assert walk.guest_physical_address == DATA_GPA + 0x10 and walk.guest_linear_address == 0
    assert walk.attrs == Attr.EPT_R | Attr.EPT_X | Attr.EPT_D and walk.memtype == MemType.UC
    assert walk.page_size == KiB4 and walk.guest_refs == (0,) * 5


def test_trace_lists_every_reference_in_order_with_values_as_read():
    w = nested()
    gpas = [entry_gpa(w, level) for level in (4, 3, 2, 1)] + [DATA_GPA | (VA & 0xFFF)]
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, trace=True)
    assert len(walk.trace) == 24
    expected = []
    for i, gpa in enumerate(gpas):
        table = w.ept.root
        for level in (4, 3, 2, 1):
            address = table + 8 * ((gpa >> (12 + 9 * (level - 1))) & 511)
            value = w.mem.read(address)
            expected.append(Reference("ept", level, address, value))
            table = value & 0x000F_FFFF_FFFF_F000
        if i < 4:
            host = w.ept.translate(gpa)
            expected.append(Reference("guest", 4 - i, host, w.mem.read(host) & ~A))  # A set by the walk
    assert list(walk.trace) == expected
    assert paging.walk_nested(w.mem, w.cpu, w.config, VA).trace == ()  # only on request


# -- canonical addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "va", "status"),
    [
        (4, 0x0000_8000_0000_0000, Status.GP),
        (4, 0xFFFF_7FFF_FFFF_FFFF, Status.GP),
        (4, 0x8000_0000_0000_0000, Status.GP),
        (4, 0xFFFF_8000_0000_0000, Status.PAGE_FAULT),
        (4, 0x0000_7FFF_FFFF_FFFF, Status.PAGE_FAULT),
        (5, 0x0100_0000_0000_0000, Status.GP),
        (5, 0xFEFF_FFFF_FFFF_FFFF, Status.GP),
        (5, 0x0000_8000_0000_0000, Status.PAGE_FAULT),
        (5, 0xFF00_0000_0000_0000, Status.PAGE_FAULT),
    ],
)
def test_canonical_check(levels, va, status):
    w = native(levels=levels)
    walk = paging.walk(w.mem, w.cpu, va, USER)
    assert walk.status == status
    if status == Status.GP:
        assert walk.references == 0 and walk.fault_address == va and walk.error_code == 0
    nw = nested(guest_levels=levels)
    before = snapshot(nw.mem)
    walk = paging.walk_nested(nw.mem, nw.cpu, nw.config, va, USER)
    assert walk.status == status
    if status == Status.GP:
        assert walk.references == 0 and walk.fault_address == va
    assert np.array_equal(snapshot(nw.mem), before)


# -- page faults: error codes and CR2 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("access", "cpu", "code"),
    [
        (READ, {}, 0),
        (WRITE, {}, PFErr.W),
        (USER, {}, PFErr.U),
        (USER | WRITE, {}, PFErr.W | PFErr.U),
        (USER | IMPLICIT, {}, 0),  # implicit supervisor access
        (FETCH, {}, PFErr.ID),  # NXE on
        (FETCH, {"efer_nxe": False}, 0),
        (FETCH, {"efer_nxe": False, "cr4_smep": True}, PFErr.ID),
        (USER | FETCH, {}, PFErr.U | PFErr.ID),
    ],
)
@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_not_present_error_codes(access, cpu, code, level):
    w = native(**cpu)
    w.pt.write_entry(VA, level, w.pt.read_entry(VA, level) & ~PTE.P)
    walk = paging.walk(w.mem, w.cpu, VA, access)
    assert walk.status == Status.PAGE_FAULT
    assert walk.error_code == code and walk.fault_address == VA
    assert walk.guest_refs == tuple(1 if level <= n <= 4 else 0 for n in range(1, 6))


@pytest.mark.parametrize(
    ("level", "bits", "cpu", "page_size"),
    [
        (4, 1 << 51, {}, KiB4),  # beyond MAXPHYADDR=46
        (3, 1 << 46, {}, KiB4),
        (2, 1 << 50, {}, KiB4),
        (1, 1 << 47, {}, KiB4),
        (4, PTE.PS, {}, KiB4),  # PS in a PML4E
        (1, PTE.NX, {"efer_nxe": False}, KiB4),  # XD without NXE
        (4, PTE.NX, {"efer_nxe": False}, KiB4),
        (2, 1 << 13, {}, MiB2),  # bits 20:13 of a 2 MiB page
        (2, 1 << 20, {}, MiB2),
        (3, 1 << 13, {}, GiB),  # bits 29:13 of a 1 GiB page
        (3, 1 << 29, {}, GiB),
    ],
)
def test_reserved_bits(level, bits, cpu, page_size):
    w = native(page_size=page_size, **cpu)
    w.pt.write_entry(VA, level, w.pt.read_entry(VA, level) | bits)
    before = snapshot(w.mem)
    walk = paging.walk(w.mem, w.cpu, VA, USER | WRITE)
    assert walk.status == Status.PAGE_FAULT
    assert walk.error_code == PFErr.P | PFErr.RSVD | PFErr.W | PFErr.U
    assert np.array_equal(snapshot(w.mem), before)


def test_ps_in_a_pml5e_is_reserved():
    w = native(levels=5)
    w.pt.write_entry(VA, 5, w.pt.read_entry(VA, 5) | PTE.PS)
    walk = paging.walk(w.mem, w.cpu, VA)
    assert walk.status == Status.PAGE_FAULT and walk.error_code == PFErr.P | PFErr.RSVD
    assert walk.guest_refs == (0, 0, 0, 0, 1)


def test_reserved_bits_depend_on_maxphyaddr():
    w = native(maxphyaddr=52)
    w.pt.write_entry(VA, 1, w.pt.read_entry(VA, 1) | 1 << 51)
    walk = paging.walk(w.mem, w.cpu, VA)
    assert walk.status == Status.OK and walk.host_address == (1 << 51) | PA | (VA & 0xFFF)


def test_protection_key_fault():
    w = native(URW | 3 << 59, cr4_pke=True, pkru=1 << (2 * 3))  # key 3: access disabled
    walk = paging.walk(w.mem, w.cpu, VA, USER)
    assert walk.status == Status.PAGE_FAULT and walk.error_code == PFErr.P | PFErr.U | PFErr.PK
    assert paging.walk(w.mem, w.cpu, VA, USER | FETCH).status == Status.OK  # fetches are exempt


def test_permission_fault_is_reported_after_the_whole_walk():
    w = native(PTE.P | PTE.US, table_flags=URW)  # read-only page
    walk = paging.walk(w.mem, w.cpu, VA, USER | WRITE)
    assert walk.status == Status.PAGE_FAULT and walk.error_code == PFErr.P | PFErr.W | PFErr.U
    assert walk.guest_refs == (1, 1, 1, 1, 0)


@pytest.mark.parametrize(
    ("attrs", "access", "cpu", "code"),
    [
        (Attr.W | Attr.U, USER | WRITE, {}, 0),
        (Attr.U, USER | WRITE, {}, PFErr.P | PFErr.W | PFErr.U),
        (Attr.U, WRITE, {"cr0_wp": False}, 0),
        (Attr.U | Attr.W, READ, {"cr4_smap": True}, PFErr.P),
        (Attr.U | Attr.W, READ, {"cr4_smap": True, "eflags_ac": True}, 0),
        (Attr.U | Attr.W, USER | IMPLICIT, {"cr4_smap": True, "eflags_ac": True}, PFErr.P),
        (Attr.U | Attr.W, FETCH, {"cr4_smep": True}, PFErr.P | PFErr.ID),
        (Attr.W | Attr.U | Attr.XD, USER | FETCH, {}, PFErr.P | PFErr.U | PFErr.ID),
        (
            Attr.W | Attr.U | 7 << 8,
            USER | WRITE,
            {"cr4_pke": True, "pkru": 2 << 14},
            PFErr.P | PFErr.W | PFErr.U | PFErr.PK,
        ),
    ],
)
def test_check_access(attrs, access, cpu, code):
    assert paging.check_access(int(attrs), access, CpuState(**cpu)) == code


# -- accessed and dirty flags ---------------------------------------------------------------------


def test_native_accessed_and_dirty_flags():
    w = native()
    before = guest_entries(w)
    assert paging.walk(w.mem, w.cpu, VA, USER).ok
    after = guest_entries(w)
    assert after == {level: before[level] | A for level in before}  # A everywhere, no D on a read
    assert paging.walk(w.mem, w.cpu, VA, USER | WRITE).ok
    assert guest_entries(w) == {**after, 1: after[1] | D}  # D in the leaf only
    words = snapshot(w.mem)
    assert paging.walk(w.mem, w.cpu, VA, USER | WRITE).ok
    assert np.array_equal(snapshot(w.mem), words)  # nothing left to set


def test_large_page_leaf_gets_dirty():
    w = native(page_size=MiB2)
    assert paging.walk(w.mem, w.cpu, VA, WRITE).ok
    assert w.pt.read_entry(VA, 2) & (A | D) == A | D and w.pt.read_entry(VA, 3) & (A | D) == A


def test_nested_flags_without_ept_ad():
    w = nested()
    ept_before = snapshot(w.mem)
    guest_before = guest_entries(w)
    assert paging.walk_nested(w.mem, w.cpu, w.config, VA, USER | WRITE).ok
    assert guest_entries(w) == {level: guest_before[level] | A | (D if level == 1 else 0) for level in guest_before}
    # Only the four guest entries changed: the EPT has no A/D flags without ad.
    assert int((snapshot(w.mem) != ept_before).sum()) == 4


def test_nested_flags_with_ept_ad():
    """EPT A in every entry used, D in the leaves of the guest tables' pages (their accesses are writes)."""
    w = nested(ad=True)
    before = snapshot(w.mem)
    assert paging.walk_nested(w.mem, w.cpu, w.config, VA, USER).ok
    for gpa in w.tables:
        entries = ept_entries(w, gpa)
        assert all(entries[level] & EPT.A for level in entries), hex(gpa)
        assert entries[1] & EPT.D, hex(gpa)
        assert not any(entries[level] & EPT.D for level in (2, 3, 4))
    data = ept_entries(w, DATA_GPA)
    assert all(data[level] & EPT.A for level in data) and not data[1] & EPT.D  # a read: no D
    after = snapshot(w.mem)
    assert not ((before ^ after) & ~np.uint64(AD_BITS)).any() and not (before & ~after).any()  # flags only set
    assert paging.walk_nested(w.mem, w.cpu, w.config, VA, USER | WRITE).ok
    assert ept_entries(w, DATA_GPA)[1] & EPT.D and w.pt.read_entry(VA, 1) & D


def test_guest_table_accesses_need_ept_write_with_ad():
    w = nested(ad=True, table_perms=EPT.R | EPT.X)
    before = snapshot(w.mem)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, USER)
    assert walk.status == Status.EPT_VIOLATION
    assert walk.fault_address == entry_gpa(w, 4)  # the PML4E's exact GPA
    assert walk.exit_qualification == ExitQual.READ | ExitQual.WRITE | ExitQual.READABLE | ExitQual.EXECUTABLE | GLA
    assert walk.guest_refs == (0,) * 5 and walk.ept_refs == (1, 1, 1, 1, 0)
    assert np.array_equal(snapshot(w.mem), before)


def test_setting_a_guest_flag_needs_ept_write():
    """Without ad, reads of guest tables only need R, but setting their A bits is a write."""
    w = nested(table_perms=EPT.R | EPT.X)
    before = snapshot(w.mem)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, USER)
    assert walk.status == Status.EPT_VIOLATION and walk.references == 24  # found after the whole walk
    assert walk.fault_address == entry_gpa(w, 4)  # the first entry to update, in walk order
    # The A update reads and writes the entry: bits 0 and 1 (as hardware and KVM report it).
    assert walk.exit_qualification == ExitQual.READ | ExitQual.WRITE | ExitQual.READABLE | ExitQual.EXECUTABLE | GLA
    assert np.array_equal(snapshot(w.mem), before)
    # With A already set above and A|D in the leaf, nothing needs writing: the walk succeeds.
    for level in (4, 3, 2, 1):
        w.pt.write_entry(VA, level, w.pt.read_entry(VA, level) | A | (D if level == 1 else 0))
    assert paging.walk_nested(w.mem, w.cpu, w.config, VA, USER | WRITE).ok
    # Only the leaf missing D: the leaf's GPA is reported.
    w.pt.write_entry(VA, 1, w.pt.read_entry(VA, 1) & ~D)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, USER | WRITE)
    assert walk.status == Status.EPT_VIOLATION and walk.fault_address == entry_gpa(w, 1)


# -- faults change nothing --------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "guest not present",
        "guest reserved",
        "guest permission",
        "final violation",
        "final misconfig",
        "table violation",
        "table misconfig",
    ],
)
@pytest.mark.parametrize("ad", [False, True])
def test_a_fault_changes_nothing(case, ad):
    w = nested(ad=ad)
    if case == "guest not present":
        w.pt.write_entry(VA, 1, 0)
    elif case == "guest reserved":
        w.pt.write_entry(VA, 2, w.pt.read_entry(VA, 2) | 1 << 50)
    elif case == "guest permission":
        w.pt.write_entry(VA, 1, w.pt.read_entry(VA, 1) & ~PTE.RW)
    elif case == "final violation":
        w.ept.write_entry(DATA_GPA, 1, w.ept.read_entry(DATA_GPA, 1) & ~EPT.W)
    elif case == "final misconfig":
        w.ept.write_entry(DATA_GPA, 1, w.ept.read_entry(DATA_GPA, 1) | 7 << 3)  # memory type 7
    elif case == "table violation":
        w.ept.write_entry(entry_gpa(w, 1), 1, 0)
    else:
        w.ept.write_entry(entry_gpa(w, 2), 2, w.ept.read_entry(entry_gpa(w, 2), 2) | 1 << 4)
    before = snapshot(w.mem)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, USER | WRITE)
    assert not walk.ok
    assert np.array_equal(snapshot(w.mem), before)


# -- EPT violations: exit qualification and GPA ---------------------------------------------------


@pytest.mark.parametrize(
    ("perms", "access", "leaf", "advanced", "qualification"),
    [
        (EPT.X, USER, URW, True, ExitQual.READ | ExitQual.EXECUTABLE | ExitQual.GLA_USER | ExitQual.GLA_WRITABLE),
        (EPT.X, USER, URW, False, ExitQual.READ | ExitQual.EXECUTABLE),
        (
            EPT.R,
            USER | WRITE,
            URW,
            True,
            ExitQual.WRITE | ExitQual.READABLE | ExitQual.GLA_USER | ExitQual.GLA_WRITABLE,
        ),
        (
            EPT.R | EPT.W,
            FETCH,
            PTE.P | PTE.RW,
            True,
            ExitQual.FETCH | ExitQual.READABLE | ExitQual.WRITABLE | ExitQual.GLA_WRITABLE,
        ),
        (EPT.R | EPT.W, READ, PTE.P | PTE.NX, True, 0),  # allowed: no violation
        (EPT.X, READ, PTE.P | PTE.NX, True, ExitQual.READ | ExitQual.EXECUTABLE | ExitQual.GLA_XD),
    ],
)
def test_final_translation_violation(perms, access, leaf, advanced, qualification):
    w = nested(leaf, data_perms=perms, advanced_exit_info=advanced)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, access)
    if not qualification:
        assert walk.ok
        return
    assert walk.status == Status.EPT_VIOLATION
    assert walk.exit_qualification == qualification | GLA | FINAL
    assert walk.fault_address == DATA_GPA | (VA & 0xFFF)  # exact, not page aligned
    assert walk.guest_linear_address == VA
    assert walk.references == 24


@pytest.mark.parametrize("ad", [False, True])
@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_guest_table_not_mapped_by_the_ept(ad, level):
    w = nested(ad=ad)
    gpa = entry_gpa(w, level)
    w.ept.write_entry(gpa, 1, 0)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA)
    assert walk.status == Status.EPT_VIOLATION and walk.fault_address == gpa
    assert walk.exit_qualification == (ExitQual.READ | (ExitQual.WRITE if ad else 0)) | GLA  # rights 0
    assert walk.guest_refs == tuple(1 if level < n <= 4 else 0 for n in range(1, 6))
    assert walk.ept_refs == tuple(5 - level if n <= 4 else 0 for n in range(1, 6))


def test_walk_ept_violations_have_no_linear_address():
    w = nested(data_perms=EPT.R)
    walk = paging.walk_ept(w.mem, w.config, DATA_GPA + 0x18, WRITE | USER)
    assert walk.status == Status.EPT_VIOLATION and walk.fault_address == DATA_GPA + 0x18
    assert walk.exit_qualification == ExitQual.WRITE | ExitQual.READABLE
    walk = paging.walk_ept(w.mem, w.config, 0x7000_0000, FETCH)  # its PDPTE is not present
    assert walk.exit_qualification == ExitQual.FETCH and walk.ept_refs == (0, 0, 1, 1, 0)


@pytest.mark.parametrize(
    ("levels", "gpa", "status", "refs"),
    [
        (4, 1 << 48, Status.EPT_VIOLATION, 0),  # beyond what a 4-level EPT translates: no reference
        (4, (1 << 64) - 1, Status.EPT_VIOLATION, 0),
        (5, 1 << 48, Status.EPT_VIOLATION, 1),  # a 5-level EPT walks it (its PML5E is not present)
        (5, 1 << 57, Status.EPT_VIOLATION, 0),
    ],
)
def test_guest_physical_address_width(levels, gpa, status, refs):
    w = nested(ept_levels=levels)
    walk = paging.walk_ept(w.mem, w.config, gpa)
    assert walk.status == status and walk.references == refs and walk.fault_address == gpa
    assert walk.exit_qualification == ExitQual.READ  # rights (bits 5:3) 0


def test_execute_only_translations():
    w = nested(data_perms=EPT.X)
    assert paging.walk_ept(w.mem, w.config, DATA_GPA, FETCH).ok
    w = nested(data_perms=EPT.X, execute_only=False)
    assert paging.walk_ept(w.mem, w.config, DATA_GPA, FETCH).status == Status.EPT_MISCONFIG


# -- EPT misconfigurations ------------------------------------------------------------------------


def ept_only(levels=4, maxphyaddr=46):
    mem = HostMemory("64MiB", maxphyaddr=maxphyaddr)
    ept = EptTable(mem, levels)
    return mem, ept


@pytest.mark.parametrize(
    ("level", "value", "page_size"),
    [
        (1, EPT.W, KiB4),  # write without read
        (1, EPT.W | EPT.X, KiB4),
        (4, EPT.RWX | 1 << 3, KiB4),  # bits 7:3 of a PML4E
        (4, EPT.RWX | EPT.PS, KiB4),
        (4, EPT.RWX | 1 << 50, KiB4),  # beyond MAXPHYADDR
        (3, EPT.RWX | 1 << 6, KiB4),  # bits 6:3 of a non-leaf PDPTE
        (2, EPT.RWX | 1 << 3, KiB4),  # ... of a non-leaf PDE
        (1, EPT.RWX | 2 << 3, KiB4),  # memory types 2, 3, 7
        (1, EPT.RWX | 3 << 3, KiB4),
        (1, EPT.RWX | 7 << 3, KiB4),
        (2, EPT.RWX | EPT.PS | 6 << 3 | 1 << 12, MiB2),  # bits 20:12 of a 2 MiB page
        (3, EPT.RWX | EPT.PS | 6 << 3 | 1 << 29, GiB),  # bits 29:12 of a 1 GiB page
        (3, EPT.RWX | EPT.PS | 2 << 3, GiB),
    ],
)
def test_misconfigurations(level, value, page_size):
    mem, ept = ept_only()
    gpa = 0x4000_0000 + 0x1238
    ept.map(gpa & ~(page_size - 1), 0x4000_0000, page_size=page_size)
    entry = ept.read_entry(gpa, level)
    keep = entry & 0x000F_FFFF_FFFF_F000 & ~(1 << 12 if page_size > KiB4 else 0)
    ept.write_entry(gpa, level, keep | int(value))
    before = snapshot(mem)
    walk = paging.walk_ept(mem, ept.config, gpa)
    assert walk.status == Status.EPT_MISCONFIG
    assert walk.fault_address == gpa and walk.exit_qualification == 0
    assert walk.ept_refs == tuple(1 if level <= n <= 4 else 0 for n in range(1, 6))
    assert np.array_equal(snapshot(mem), before)


@pytest.mark.parametrize("memtype", [0, 1, 4, 5, 6])
def test_valid_memory_types(memtype):
    mem, ept = ept_only()
    ept.map(0x5000, 0x9000, memtype=memtype)
    walk = paging.walk_ept(mem, ept.config, 0x5008)
    assert walk.ok and walk.memtype == memtype and walk.host_address == 0x9008


def test_misconfiguration_beats_a_violation():
    mem, ept = ept_only()
    ept.map(0x5000, 0x9000, EPT.X)
    ept.write_entry(0x5000, 1, ept.read_entry(0x5000, 1) | 1 << 51)
    assert paging.walk_ept(mem, ept.config, 0x5000).status == Status.EPT_MISCONFIG


def test_misconfiguration_on_a_guest_table_reports_its_gpa():
    w = nested()
    gpa = entry_gpa(w, 3)
    w.ept.write_entry(gpa, 1, w.ept.read_entry(gpa, 1) | 3 << 3)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA)
    assert walk.status == Status.EPT_MISCONFIG and walk.fault_address == gpa and walk.exit_qualification == 0


# -- translation caches ---------------------------------------------------------------------------


def psc(name: str, **kw) -> TLB:
    shift = {"pde": 21, "pdpte": 30, "pml4e": 39, "pml5e": 48}[name]
    return TLB(16, 4, sizes=("region",), region_shift=shift, name=name, **kw)


def ntlb(sizes=("4K", "2M", "1G")) -> TLB:
    return TLB(16, 4, sizes=sizes, kind="ntlb", name="nested")


def test_paging_structure_cache_entries():
    w = native(URW, table_flags=PTE.P | PTE.US)  # read-only at every level above the leaf
    w.pt.write_entry(VA, 3, w.pt.read_entry(VA, 3) | PTE.NX)
    caches = {name: psc(name) for name in ("pde", "pdpte", "pml4e")}
    assert paging.walk(w.mem, w.cpu, VA, USER, caches=caches).ok
    pd = w.pt.read_entry(VA, 3) & 0x000F_FFFF_FFFF_F000
    pt = w.pt.read_entry(VA, 2) & 0x000F_FFFF_FFFF_F000
    pdpt = w.pt.read_entry(VA, 4) & 0x000F_FFFF_FFFF_F000
    got = {
        name: [(row["vpn"], row["frame"], row["attrs"], row["pcid"], row["global"]) for row in c.contents()]
        for name, c in caches.items()
    }
    assert got == {
        "pml4e": [((VA >> 39) & ((1 << 48) - 1), pdpt >> 12, Attr.U, 0, False)],
        "pdpte": [((VA >> 30) & ((1 << 48) - 1), pd >> 12, Attr.U | Attr.XD, 0, False)],
        "pde": [((VA >> 21) & ((1 << 48) - 1), pt >> 12, Attr.U | Attr.XD, 0, False)],
    }
    # The cached rights still apply: a write through the read-only upper levels faults.
    walk = paging.walk(w.mem, w.cpu, VA, USER | WRITE, caches=caches)
    assert walk.status == Status.PAGE_FAULT and walk.guest_refs == (1, 0, 0, 0, 0)


def test_paging_structure_caches_are_tagged_with_pcid_vpid_and_ept_tag():
    w = native(cr4_pcide=True)
    w.cpu.cr3 |= 5
    caches = {"pde": psc("pde"), "vpid": 9}
    paging.walk(w.mem, w.cpu, VA, caches=caches)
    (row,) = caches["pde"].contents()
    assert (row["pcid"], row["vpid"], row["eptag"]) == (5, 9, 0)
    assert paging.walk(w.mem, w.cpu, VA, caches={**caches, "pcid": 6}).references == 4  # another PCID misses
    assert paging.walk(w.mem, w.cpu, VA, caches=caches).references == 1
    n = nested()
    caches = {"pde": psc("pde"), "nested": ntlb()}
    paging.walk_nested(n.mem, n.cpu, n.config, VA, caches=caches)
    assert {row["eptag"] for row in caches["pde"].contents()} == {n.config.eptag}
    assert {(row["eptag"], row["pcid"], row["vpid"]) for row in caches["nested"].contents()} == {(n.config.eptag, 0, 0)}


def test_nested_tlb_entries_and_dedup():
    w = nested(memtype=MemType.WT, data_perms=EPT.R | EPT.W)
    caches = {"nested": ntlb()}
    assert paging.walk_nested(w.mem, w.cpu, w.config, VA, caches=caches).ok
    rows = {row["vpn"]: (row["frame"], row["attrs"], row["size"]) for row in caches["nested"].contents()}
    assert rows[DATA_GPA >> 12] == (
        (RAM + DATA_GPA) >> 12,
        Attr.EPT_R | Attr.EPT_W | Attr.EPT_D | MemType.WT << 20,
        "4K",
    )
    assert {vpn << 12 for vpn in rows} == set(w.tables) | {DATA_GPA}  # five regions, one fill each
    assert caches["nested"].stats()["fills"] == 5


def test_nested_tlb_splinters_and_reports_the_size_that_hit():
    mem = HostMemory("8GiB")
    ept = EptTable(mem, 4)
    ept.map_range(0, RAM, 1 << 30, page_size=MiB2)  # 2 MiB EPT pages
    pages = iter(range(1 << 20, 4 << 20, KiB4))

    def alloc_gpa() -> int:
        gpa = next(pages)
        mem.alloc_at([(RAM + gpa) >> 12], kind=FrameKind.GUEST_PT)
        return gpa

    pt = PageTable(mem, 4, ept=ept, alloc_gpa=alloc_gpa)
    pt.map(VA & ~0xFFF, 0x10_0000 + 0x4000)
    cpu = CpuState(cr3=pt.root)
    caches = {"nested": ntlb(sizes=("4K",))}
    first = paging.walk_nested(mem, cpu, ept.config, VA, caches=caches)
    assert first.page_size == KiB4
    # The guest tables (GPA 1 MiB + 0..3 pages) and the data page share one 2 MiB EPT page: each 4 KiB
    # piece is its own region, so each is cached.
    assert sorted(row["vpn"] for row in caches["nested"].contents()) == [0x100, 0x101, 0x102, 0x103, 0x104]
    second = paging.walk_nested(mem, cpu, ept.config, VA, caches=caches)
    assert second.ept_refs == (0,) * 5 and second.host_address == first.host_address


def test_nested_tlb_entry_without_the_right_is_dropped_and_the_ept_walked():
    w = nested(ad=True)
    caches = {"nested": ntlb()}
    assert paging.walk_nested(w.mem, w.cpu, w.config, VA, USER, caches=caches).ok
    data = [row for row in caches["nested"].contents() if row["vpn"] == DATA_GPA >> 12]
    assert not data[0]["attrs"] & Attr.EPT_D  # read: EPT D still clear
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, USER | WRITE, caches=caches)
    assert walk.ok and walk.ept_refs == (1, 1, 1, 1, 0)  # only the final GPA is walked again
    data = [row for row in caches["nested"].contents() if row["vpn"] == DATA_GPA >> 12]
    assert len(data) == 1 and data[0]["attrs"] & Attr.EPT_D
    assert caches["nested"].stats()["invalidated"] == 1


def test_caches_fill_nothing_on_a_fault_and_clocks_advance_per_lookup_and_fill():
    w = nested()
    w.pt.write_entry(VA, 1, 0)
    caches = {"pde": psc("pde"), "nested": ntlb()}
    clocks = {name: caches[name].clock for name in caches}
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA, caches=caches)
    assert walk.status == Status.PAGE_FAULT
    assert caches["pde"].contents() == [] and caches["nested"].contents() == []
    assert caches["pde"].clock == clocks["pde"] + 1  # one lookup
    assert caches["nested"].clock == clocks["nested"] + 4  # four EPT translations looked up
    w.pt.map(VA & ~0xFFF, DATA_GPA)
    assert paging.walk_nested(w.mem, w.cpu, w.config, VA, caches=caches).ok
    assert caches["pde"].clock == clocks["pde"] + 3  # lookup, fill
    assert caches["nested"].clock == clocks["nested"] + 4 + 5 + 5  # five lookups, five fills


def test_unused_structures_are_checked_and_ignored():
    w = native()
    caches = {"pml5e": psc("pml5e"), "nested": ntlb()}
    assert paging.walk(w.mem, w.cpu, VA, caches=caches).references == 4
    assert caches["pml5e"].contents() == [] and caches["nested"].contents() == []
    n = nested()
    assert paging.walk_ept(n.mem, n.config, DATA_GPA, caches={"pde": psc("pde")}).ok


# -- arguments -----------------------------------------------------------------------------------


def raises(exc, message: str):
    return pytest.raises(exc, match=re.escape(message))


def test_argument_types():
    w = native()
    with raises(TypeError, "mem: expected a fastmmu.HostMemory, got dict"):
        paging.walk({}, w.cpu, VA)
    with raises(TypeError, "cpu: expected a fastmmu.cpu.CpuState, got int"):
        paging.walk(w.mem, 0x1000, VA)
    with raises(TypeError, "ept: expected a fastmmu.cpu.EptConfig, got dict"):
        paging.walk_ept(w.mem, {"root": 0}, 0)
    with raises(TypeError, "va: expected an integer, got str '0x1000'"):
        paging.walk(w.mem, w.cpu, "0x1000")
    with raises(TypeError, "gva: expected an integer, got float"):
        paging.walk_nested(w.mem, w.cpu, EptConfig(root=0x1000), 1.5)
    with raises(ValueError, "va: expected a non-negative integer, got -1"):
        paging.walk(w.mem, w.cpu, -1)
    with raises(ValueError, "gpa: expected 0 <= gpa < 0x10000000000000000, got 0x10000000000000000"):
        paging.walk_ept(w.mem, EptConfig(root=0x1000), 1 << 64)
    assert paging.walk(w.mem, w.cpu, np.uint64(VA)).ok  # numpy integers are integers


@pytest.mark.parametrize(
    ("access", "exc", "message"),
    [
        (0x10, ValueError, "access: bits 4..7 must be zero (WRITE=1, FETCH=2, USER=4, IMPLICIT=8), got 0x10"),
        (0x80, ValueError, "access: bits 4..7 must be zero"),
        (WRITE | FETCH, ValueError, "access: WRITE and FETCH together is not an access kind, got 0x3"),
        (WRITE | FETCH | USER, ValueError, "access: WRITE and FETCH together"),
        (256, ValueError, "access: expected 0 <= access < 0x100, got 0x100"),
        (-1, ValueError, "access: expected a non-negative integer, got -1"),
        (True, TypeError, "access: expected an integer, got bool True"),
        ("write", TypeError, "access: expected an integer, got str 'write'"),
        (None, TypeError, "access: expected an integer, got NoneType None"),
    ],
)
def test_invalid_access_bytes(access, exc, message):
    w = native()
    for call in (
        lambda: paging.walk(w.mem, w.cpu, VA, access),
        lambda: paging.walk_ept(w.mem, EptConfig(root=0x1000), 0, access),
        lambda: paging.walk_nested(w.mem, w.cpu, EptConfig(root=0x1000), VA, access),
        lambda: paging.check_access(0, access, w.cpu),
    ):
        with raises(exc, message):
            call()


def test_roots_and_levels():
    w = native()
    with raises(ValueError, "cpu.cr3: root table 0x4000000 is beyond host memory (64MiB)"):
        paging.walk(w.mem, CpuState(cr3=64 << 20), VA)
    with raises(ValueError, "cr3: 0x400000000000 sets bits beyond MAXPHYADDR=46"):
        paging.walk(w.mem, CpuState(cr3=1 << 46), VA)
    with raises(ValueError, "ept.root: root table 0x40000000 is beyond host memory (64MiB)"):
        paging.walk_ept(w.mem, EptConfig(root=1 << 30), 0)
    with raises(VMEntryFailure, "VM entry failed (invalid control field): EPTP address (root): 0x400000000000 "
                                "sets reserved bits 51:46 (beyond MAXPHYADDR=46)"):
        paging.walk_nested(w.mem, CpuState(cr3=1 << 30), EptConfig(root=1 << 46), VA)
    cpu = CpuState(cr3=w.pt.root)
    cpu.levels = 3
    with raises(ValueError, "cpu.levels: expected 4 or 5 paging levels, got 3"):
        paging.walk(w.mem, cpu, VA)
    ept = EptConfig(root=0x1000)
    ept.levels = 6
    with raises(VMEntryFailure, "EPTP page-walk length (bits 5:3 + 1): 6 levels; expected 4 or 5"):
        paging.walk_ept(w.mem, ept, 0)
    cpu = CpuState(cr3=w.pt.root)
    cpu.pkru = 1 << 32
    with raises(ValueError, "cpu.pkru: expected 0 <= cpu.pkru < 0x100000000, got 0x100000000"):
        paging.walk(w.mem, cpu, VA)
    # A guest's CR3 is guest-physical: only MAXPHYADDR limits it, not the size of host memory.
    n = nested()
    far = CpuState(cr3=1 << 45)
    assert paging.walk_nested(n.mem, far, n.config, VA).status == Status.EPT_VIOLATION


def test_cache_arguments():
    w = native()
    with raises(TypeError, "caches: expected a dict such as {'pde': TLB, 'nested': TLB} or None, got int"):
        paging.walk(w.mem, w.cpu, VA, caches=3)
    with raises(ValueError, "caches: unknown key 'pte'; expected some of pde, pdpte, pml4e, pml5e, nested, pcid, vpid"):
        paging.walk(w.mem, w.cpu, VA, caches={"pte": psc("pde")})
    with raises(TypeError, "caches['pde']: expected a fastmmu._core.tlb.TLB, got dict"):
        paging.walk(w.mem, w.cpu, VA, caches={"pde": {}})
    with raises(ValueError, "caches['pde']: expected a TLB of kind 'psc', got kind 'tlb'"):
        paging.walk(w.mem, w.cpu, VA, caches={"pde": TLB(16, 4)})
    with raises(ValueError, "caches['pde']: a PDE cache holds regions of 2MiB (region_shift=21), got region_shift=30"):
        paging.walk(w.mem, w.cpu, VA, caches={"pde": psc("pdpte")})
    with raises(ValueError, "caches['nested']: expected a TLB of kind 'ntlb', got kind 'tlb'"):
        paging.walk(w.mem, w.cpu, VA, caches={"nested": TLB(16, 4)})
    with raises(ValueError, "caches['pcid']: expected 0 <= caches['pcid'] < 0x1000, got 0x1000"):
        paging.walk(w.mem, w.cpu, VA, caches={"pcid": 4096})
    with raises(ValueError, "caches['vpid']: expected 0 <= caches['vpid'] < 0x10000, got 0x10000"):
        paging.walk(w.mem, w.cpu, VA, caches={"vpid": 1 << 16})
    reference_tlb = pytest.importorskip("fastmmu.reference.tlb").TLB
    with raises(TypeError, "caches['pde']: expected a fastmmu._core.tlb.TLB, got TLB"):
        paging.walk(w.mem, w.cpu, VA, caches={"pde": reference_tlb(16, 4, sizes=("region",), region_shift=21)})
    assert paging.walk(w.mem, w.cpu, VA, caches={"pde": None, "nested": None}).ok
    assert paging.walk(w.mem, w.cpu, VA, caches=SimpleNamespace(pde=psc("pde"))).ok  # attributes work too


# -- hostile tables -----------------------------------------------------------------------------


def test_self_referencing_table():
    """PML4[511] points at the PML4 itself: the top page of the address space maps the PML4 frame."""
    w = native()
    root = w.pt.root
    w.mem.write(root + 8 * 511, root | URW)
    va = 0xFFFF_FFFF_FFFF_F000 | 0x8
    walk = paging.walk(w.mem, w.cpu, va, USER | WRITE, trace=True)
    assert walk.ok and walk.host_address == root | 0x8
    assert {ref.address for ref in walk.trace} == {root + 8 * 511} and walk.references == 4
    assert w.mem.read(root + 8 * 511) == root | URW | A | D  # one word, set once (OR of the updates)


@pytest.mark.parametrize("target", [64 << 20, 1 << 40, (1 << 46) - 4096, 40 << 20])
def test_entries_pointing_outside_memory_or_at_free_frames_read_as_zeros(target):
    w = native()
    w.pt.write_entry(VA, 3, target | URW)
    walk = paging.walk(w.mem, w.cpu, VA, USER)
    assert walk.status == Status.PAGE_FAULT and walk.error_code == PFErr.U
    assert walk.guest_refs == (0, 1, 1, 1, 0)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_all_ones_entries(level):
    w = native()
    w.pt.write_entry(VA, level, (1 << 64) - 1)
    walk = paging.walk(w.mem, w.cpu, VA)
    assert walk.status == Status.PAGE_FAULT and walk.error_code == PFErr.P | PFErr.RSVD
    w = native(maxphyaddr=52)
    w.pt.write_entry(VA, 1, (1 << 64) - 1)  # no reserved bit left in a PTE: a valid (odd) leaf
    walk = paging.walk(w.mem, w.cpu, VA)
    assert walk.ok and walk.host_address == 0x000F_FFFF_FFFF_F000 | (VA & 0xFFF) and walk.pkey == 15


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_all_ones_ept_entries_are_misconfigurations(level):
    w = nested()
    w.ept.write_entry(DATA_GPA, level, (1 << 64) - 1)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA)
    # The EPT PML4E is shared with the guest tables' pages: the first translation meets it.
    gpa = entry_gpa(w, 4) if level == 4 else DATA_GPA | (VA & 0xFFF)
    assert walk.status == Status.EPT_MISCONFIG and walk.fault_address == gpa


def test_guest_table_aliasing_an_ept_table():
    """The EPT maps a guest table's page onto the EPT's own root: the guest reads EPT entries as its PML4."""
    w = nested()
    w.ept.write_entry(w.pt.root, 1, w.ept.root | EPT.RWX | 6 << 3)
    walk = paging.walk_nested(w.mem, w.cpu, w.config, VA)
    assert walk.status in (Status.PAGE_FAULT, Status.OK, Status.EPT_VIOLATION, Status.EPT_MISCONFIG)
    assert walk.guest_refs[3] == 1


FUZZ_FRAMES = 6
FUZZ = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
words = st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.builds(lambda frame, low: frame << 12 | low, st.integers(0, FUZZ_FRAMES + 3), st.integers(0, 0xFFF)),
    st.builds(
        lambda frame, low: frame << 12 | low,
        st.integers(0, FUZZ_FRAMES - 1),
        st.sampled_from([0x7, 0x27, 0x67, 0xE7, 0x37, 0xB7, 0x1, 0x4]),
    ),
)


@FUZZ
@given(
    image=st.lists(
        st.tuples(st.integers(0, FUZZ_FRAMES - 1), st.sampled_from([0, 1, 2, 255, 511]), words), max_size=40
    ),
    va=st.one_of(st.integers(0, (1 << 64) - 1), st.integers(0, 1 << 22)),
    access=st.sampled_from([0, 1, 2, 4, 5, 6, 8, 12, 13, 14]),
    levels=st.sampled_from([4, 5]),
    ept_levels=st.sampled_from([4, 5]),
    ad=st.booleans(),
    maxphyaddr=st.sampled_from([36, 46, 52]),
    nxe=st.booleans(),
    caches=st.booleans(),
)
def test_hostile_tables_never_crash_and_faults_change_nothing(
    image, va, access, levels, ept_levels, ad, maxphyaddr, nxe, caches
):
    """Random words in a few frames, pointing anywhere: every walk ends architecturally.

    A fault leaves memory as it was; a success only sets A/D bits; no walk
    makes more than 35 references.
    """
    mem = HostMemory((FUZZ_FRAMES + 2) << 12, maxphyaddr=maxphyaddr)
    mem.alloc_at(list(range(FUZZ_FRAMES)), kind=FrameKind.GUEST_PT)
    for frame, slot, value in image:
        mem.write((frame << 12) + 8 * slot, value)
    cpu = CpuState(cr3=0, levels=levels, efer_nxe=nxe, cr4_smep=True, cr4_smap=True, cr4_pke=True, pkru=0x5555_0000)
    ept = EptConfig(root=0x1000, levels=ept_levels, ad=ad)
    structures = {"pde": psc("pde"), "pdpte": psc("pdpte"), "nested": ntlb()} if caches else None
    for run in (
        lambda: paging.walk(mem, cpu, va, access, caches=structures),
        lambda: paging.walk_nested(mem, cpu, ept, va, access, caches=structures),
        lambda: paging.walk_ept(mem, ept, va, access, caches=structures),
    ):
        before = snapshot(mem)
        walk = run()
        after = snapshot(mem)
        assert walk.status in (Status.OK, Status.PAGE_FAULT, Status.GP, Status.EPT_VIOLATION, Status.EPT_MISCONFIG)
        assert walk.references <= 35
        if walk.ok:
            assert not ((before ^ after) & ~np.uint64(AD_BITS)).any() and not (before & ~after).any()
        else:
            assert np.array_equal(before, after)


# -- build and benchmark aid -------------------------------------------------------------------------


def test_time_walks_benchmark_aid():
    w = native()
    ns, refs, faults = paging._time_walks(w.mem, w.cpu, np.full(1000, VA, dtype=np.uint64))
    assert ns > 0 and refs == 4000 and faults == 0
    n = nested()
    ns, refs, faults = paging._time_walks(n.mem, n.cpu, [VA, VA - (1 << 39)], n.config)
    assert refs == 24 + 5 and faults == 1
    with raises(ValueError, "addresses: expected at least one address"):
        paging._time_walks(w.mem, w.cpu, [])


def test_build_flag_is_reported():
    assert isinstance(paging.BUILD_DEBUG, bool)
