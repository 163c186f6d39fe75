"""The Intel SDM's rules, as tables: one row per rule, each with its outcome written out.

Vol. 3A 4.5 (reserved bits), 4.6 (access rights, protection keys), 4.7
(page-fault error code), 4.8 (accessed and dirty flags); Vol. 3C 29.3.3
(EPT misconfigurations and violations), Table 28-7 (the exit qualification),
29.3.5 (EPT accessed and dirty flags).  Every test runs on both backends:
the reference model and the compiled core.
"""

from __future__ import annotations

import importlib
import itertools
import re
from types import SimpleNamespace

import pytest

from fastmmu.arch import EPT, PTE, Access, Attr, MemType, PFErr, Status
from fastmmu.cpu import CpuState, EptConfig, VMEntryFailure
from fastmmu.tables import EptTable, PageTable

R, W, X = int(EPT.R), int(EPT.W), int(EPT.X)
P, RW, US, A, D, PS, G, NX = (int(PTE.P), int(PTE.RW), int(PTE.US), int(PTE.A), int(PTE.D), int(PTE.PS),
                              int(PTE.G), 1 << 63)
URW = P | RW | US
WB = int(MemType.WB) << 3
USER, WRITE, FETCH, IMPLICIT = int(Access.USER), int(Access.WRITE), int(Access.FETCH), int(Access.IMPLICIT)
MiB, GiB = 1 << 20, 1 << 30

VA = 0x0000_7F80_0000_0000  # 1 GiB aligned, canonical with 4 and 5 levels
PA = 0x4000_0000  # 1 GiB aligned (the data itself is never read)
OFFSET = 0x12_3458  # inside any page size once reduced, never page aligned


@pytest.fixture(params=["reference", "compiled"])
def backend(request) -> SimpleNamespace:
    """The walkers and memory of one backend."""
    if request.param == "reference":
        from fastmmu.reference import paging
        from fastmmu.reference.memory import HostMemory
        from fastmmu.reference.mmu import MMU
    else:
        paging = importlib.import_module("fastmmu._core.paging")
        HostMemory = importlib.import_module("fastmmu._core.memory").HostMemory
        MMU = importlib.import_module("fastmmu._core.mmu").MMU
    return SimpleNamespace(name=request.param, walk=paging.walk, walk_ept=paging.walk_ept,
                           walk_nested=paging.walk_nested, check_access=getattr(paging, "check_access", None),
                           HostMemory=HostMemory, MMU=MMU)


def native(b, leaf_flags=URW, *, levels=4, maxphyaddr=46, table_flags=URW, page_size=4096):
    """Host memory with one page mapped at VA -> PA."""
    mem = b.HostMemory("1MiB", maxphyaddr=maxphyaddr)
    pt = PageTable(mem, levels)
    pt.map(VA, PA, leaf_flags, page_size=page_size, table_flags=table_flags)
    return mem, pt


def frames(mem) -> list:
    """Every allocated frame's content (the memories here are small)."""
    return [mem.read_frame(pfn).tolist() for pfn in range(mem.nframes) if mem.kind_of(pfn)]


def path(pt, va=VA) -> list:
    """The entries on the way to ``va`` (what a native walk may change)."""
    return [pt.read_entry(va, level) for level in range(1, pt.levels + 1)]


def error_code(*, present=True, rsvd=False, pk=False, access=0, smep=False, nxe=True) -> int:
    """The error code 4.7 prescribes for a fault on ``access``."""
    code = (PFErr.P if present else 0) | (PFErr.RSVD if rsvd else 0) | (PFErr.PK if pk else 0)
    code |= PFErr.W if access & WRITE else 0
    code |= PFErr.U if access & USER and not access & IMPLICIT else 0
    code |= PFErr.ID if access & FETCH and (smep or nxe) else 0
    return int(code)


# -- 4.6: the permission matrix ----------------------------------------------------------------

OK, DENY, RSVD = "ok", "deny", "rsvd"

# First matching row wins; a missing key matches anything.  who: "user" (CPL 3), "supervisor"
# (CPL < 3), "implicit" (an implicit supervisor-mode access, at any CPL); us / rw: U/S and R/W are 1
# in every paging-structure entry; xd: XD=1 in some entry.
PERMISSION_RULES = [
    ("4.5: XD (bit 63) is a reserved bit when IA32_EFER.NXE = 0", dict(xd=1, nxe=0), RSVD),
    ("4.6.1: a user-mode access needs a user-mode address", dict(who="user", us=0), DENY),
    ("4.6.1: user-mode data reads: any user-mode address", dict(who="user", op="read"), OK),
    ("4.6.1: user-mode writes need R/W = 1 at every level", dict(who="user", op="write", rw=0), DENY),
    ("4.6.1: user-mode writes to a writable user-mode address", dict(who="user", op="write"), OK),
    ("4.6.1: user-mode fetches with NXE = 1 need XD = 0", dict(who="user", op="fetch", xd=1), DENY),
    ("4.6.1: user-mode fetches from a user-mode address", dict(who="user", op="fetch"), OK),
    ("4.6.1: SMEP: no supervisor fetch from a user-mode address", dict(who="supervisor", op="fetch", us=1, smep=1),
     DENY),
    ("4.6.1: supervisor fetches with NXE = 1 need XD = 0", dict(who="supervisor", op="fetch", xd=1), DENY),
    ("4.6.1: supervisor fetches: anything else", dict(who="supervisor", op="fetch"), OK),
    ("4.6.1: SMAP: explicit supervisor data access to a user-mode address needs EFLAGS.AC = 1",
     dict(who="supervisor", us=1, smap=1, ac=0), DENY),
    ("4.6.1: CR0.WP = 1: supervisor writes need R/W = 1", dict(who="supervisor", op="write", wp=1, rw=0), DENY),
    ("4.6.1: supervisor data access: anything else", dict(who="supervisor"), OK),
    ("4.6.1: SMAP: implicit supervisor data access to a user-mode address, whatever AC",
     dict(who="implicit", us=1, smap=1), DENY),
    ("4.6.1: CR0.WP = 1: implicit supervisor writes need R/W = 1", dict(who="implicit", op="write", wp=1, rw=0),
     DENY),
    ("4.6.1: implicit supervisor data access: anything else", dict(who="implicit"), OK),
]

WHO = {"user": [USER], "supervisor": [0], "implicit": [IMPLICIT, IMPLICIT | USER]}
OP = {"read": 0, "write": WRITE, "fetch": FETCH}
FLAGS = ("us", "rw", "xd", "wp", "nxe", "smep", "smap", "ac")


def expected_permission(case: dict) -> tuple[str, str]:
    for rule, condition, outcome in PERMISSION_RULES:
        if all(case[key] == value for key, value in condition.items()):
            return outcome, rule
    raise AssertionError(f"no rule covers {case}")  # pragma: no cover


def permission_cases():
    for who, op in itertools.product(WHO, OP):
        if who == "implicit" and op == "fetch":
            continue  # implicit accesses are data accesses (descriptor tables, ...)
        for bits in itertools.product((0, 1), repeat=len(FLAGS)):
            yield dict(who=who, op=op, **dict(zip(FLAGS, bits, strict=True)))


@pytest.mark.parametrize("restricted_level", [1, 3], ids=["in-the-PTE", "in-the-PDPTE"])
def test_permission_matrix(backend, restricted_level):
    """Every combination of access, U/S, R/W, XD, CR0.WP, NXE, SMEP, SMAP and AC, against the table."""
    tables = {}
    for us, rw, xd in itertools.product((0, 1), repeat=3):
        restricted = P | (RW if rw else 0) | (US if us else 0) | (NX if xd else 0)
        if restricted_level == 1:
            tables[us, rw, xd] = native(backend, restricted | A | D)
        else:
            mem, pt = native(backend, URW | A | D)
            pt.write_entry(VA, 3, (pt.read_entry(VA, 3) & ~(RW | US)) | restricted | A)
            tables[us, rw, xd] = (mem, pt)
    wrong = []
    checked = 0
    for case in permission_cases():
        mem, pt = tables[case["us"], case["rw"], case["xd"]]
        cpu = CpuState(cr3=pt.root, cr0_wp=bool(case["wp"]), efer_nxe=bool(case["nxe"]),
                       cr4_smep=bool(case["smep"]), cr4_smap=bool(case["smap"]), eflags_ac=bool(case["ac"]))
        outcome, rule = expected_permission(case)
        for who_bits in WHO[case["who"]]:
            access = who_bits | OP[case["op"]]
            before = path(pt)
            walk = backend.walk(mem, cpu, VA + 0x123, access)
            after = path(pt)
            if outcome == OK:
                want = (Status.OK, 0, PA + 0x123)
                got = (walk.status, walk.error_code, walk.host_address)
            else:
                code = error_code(rsvd=outcome == RSVD, access=access, smep=case["smep"], nxe=case["nxe"])
                want = (Status.PAGE_FAULT, code, VA + 0x123, before)
                got = (walk.status, walk.error_code, walk.fault_address, after)
            checked += 1
            if got != want:
                wrong.append(f"{case} access={access:#x}: {rule} -> want {want[:3]}, got {got[:3]}")
    # 256 flag combinations x (3 user + 3 supervisor + 2 x 2 implicit) accesses
    assert checked == 256 * 10 and not wrong, "\n".join(wrong[:20])


def test_check_access_is_the_permission_table(backend):
    """check_access(attrs, access, cpu): the same rules on cached rights (ATTR_XD already includes NXE)."""
    if backend.check_access is None:
        pytest.skip("this backend has no Python-level check_access yet")
    wrong = []
    for case in permission_cases():
        if case["xd"] and not case["nxe"]:
            continue  # such a translation never exists: the walk faults with RSVD
        attrs = (Attr.U if case["us"] else 0) | (Attr.W if case["rw"] else 0) | (Attr.XD if case["xd"] else 0)
        cpu = CpuState(cr0_wp=bool(case["wp"]), efer_nxe=bool(case["nxe"]), cr4_smep=bool(case["smep"]),
                       cr4_smap=bool(case["smap"]), eflags_ac=bool(case["ac"]))
        outcome, rule = expected_permission(case)
        for who_bits in WHO[case["who"]]:
            access = who_bits | OP[case["op"]]
            want = 0 if outcome == OK else error_code(access=access, smep=case["smep"], nxe=case["nxe"])
            got = backend.check_access(int(attrs), access, cpu)
            if got != want:
                wrong.append(f"{case} access={access:#x}: {rule}: want {want:#x}, got {got:#x}")
    assert not wrong, "\n".join(wrong[:20])


# -- 4.6.2: protection keys --------------------------------------------------------------------

PK = "pk"
KEY_RULES = [
    ("4.6.1: a user-mode access to a supervisor-mode address (no key involved)", dict(who="user", us=0), DENY),
    ("4.6.2: keys apply only with CR4.PKE = 1", dict(pke=0), OK),
    ("4.6.2: keys never apply to instruction fetches", dict(op="fetch"), OK),
    ("4.6.2: keys apply only to user-mode addresses", dict(us=0), OK),
    ("4.6.2: AD = 1: no data access at all, supervisor-mode ones included", dict(ad=1), PK),
    ("4.6.2: WD = 1: no user-mode write", dict(who="user", op="write", wd=1), PK),
    ("4.6.2: WD = 1: no supervisor-mode write when CR0.WP = 1", dict(who="supervisor", op="write", wd=1, wp=1), PK),
    ("4.6.2: otherwise the key allows the access", dict(), OK),
]
KEY = 6


def pkru_for(ad: int, wd: int) -> int:
    """PKRU with key KEY's bits as given and every other key's bits the opposite (a wrong index shows)."""
    value = 0
    for key in range(16):
        key_ad, key_wd = (ad, wd) if key == KEY else (1 - ad, 1 - wd)
        value |= key_ad << (2 * key) | key_wd << (2 * key + 1)
    return value


def test_protection_keys(backend):
    tables = {us: native(backend, P | RW | (US if us else 0) | A | D | KEY << 59) for us in (0, 1)}
    wrong = []
    for pke, who, op, us, ad, wd, wp in itertools.product((0, 1), ("user", "supervisor"), OP, (0, 1), (0, 1),
                                                          (0, 1), (0, 1)):
        case = dict(pke=pke, who=who, op=op, us=us, ad=ad, wd=wd, wp=wp)
        mem, pt = tables[us]
        cpu = CpuState(cr3=pt.root, cr0_wp=bool(wp), cr4_pke=bool(pke), pkru=pkru_for(ad, wd))
        access = WHO[who][0] | OP[op]
        outcome = next(outcome for _, condition, outcome in KEY_RULES
                       if all(case[key] == value for key, value in condition.items()))
        walk = backend.walk(mem, cpu, VA, access)
        want = 0 if outcome == OK else error_code(pk=outcome == PK, access=access)
        got = walk.error_code if walk.status == Status.PAGE_FAULT else 0
        if got != want or (outcome == OK) != walk.ok:
            wrong.append(f"{case}: want {want:#x}, got {walk.status.name} {got:#x}")
        if walk.ok:
            assert walk.pkey == KEY and (walk.attrs >> 8) & 0xF == KEY
    assert not wrong, "\n".join(wrong[:20])


# Keys together with other rules: PK is reported whenever the key denies (4.7), with the other bits.
KEY_AND_OTHER_RULES = [
    # leaf flags, CpuState fields, access, error code
    ("read-only user page, AD=1, user write", P | US, dict(pkru=1 << 2 * KEY), USER | WRITE, 0x27),
    ("read-only user page, key allows, user write", P | US, dict(pkru=0), USER | WRITE, 0x07),
    ("read-only user page, WD=1, user write", P | US, dict(pkru=2 << 2 * KEY), USER | WRITE, 0x27),
    ("read-only user page, WD=1, supervisor write, WP=0: allowed", P | US, dict(pkru=2 << 2 * KEY, cr0_wp=False),
     WRITE, 0),
    ("user page, AD=1, supervisor read with SMAP: both deny", URW, dict(pkru=1 << 2 * KEY, cr4_smap=True), 0, 0x21),
    ("user page, AD=1, implicit read at CPL 3", URW, dict(pkru=1 << 2 * KEY), IMPLICIT | USER, 0x21),
    ("XD user page, AD=1, user fetch: XD denies, keys exempt", URW | NX, dict(pkru=1 << 2 * KEY), USER | FETCH, 0x15),
    ("user page, AD=1 for key 6 only, user read with key 6", URW, dict(pkru=1 << 2 * KEY), USER, 0x25),
    ("user page, AD=1 for key 7 only, user read with key 6", URW, dict(pkru=1 << 2 * (KEY + 1)), USER, 0),
]


@pytest.mark.parametrize(("leaf", "cpu_fields", "access", "code"), [row[1:] for row in KEY_AND_OTHER_RULES],
                         ids=[row[0] for row in KEY_AND_OTHER_RULES])
def test_protection_keys_with_other_rules(backend, leaf, cpu_fields, access, code):
    mem, pt = native(backend, leaf | A | D | KEY << 59)
    walk = backend.walk(mem, CpuState(cr3=pt.root, cr4_pke=True, **cpu_fields), VA, access)
    assert (walk.status, walk.error_code) == ((Status.PAGE_FAULT, code) if code else (Status.OK, 0))


# -- 4.7: the page-fault error code -----------------------------------------------------------------

NOT_PRESENT = dict(leaf=URW & ~P)
RESERVED_BIT = dict(raw=1 << 51)  # OR-ed into the PTE as it is
ERROR_CODES = [
    # (what, how the fault is made, access, CpuState fields, error code)
    ("not present, supervisor read", NOT_PRESENT, 0, {}, 0x00),
    ("not present, supervisor write", NOT_PRESENT, WRITE, {}, 0x02),
    ("not present, user read", NOT_PRESENT, USER, {}, 0x04),
    ("not present, user write", NOT_PRESENT, USER | WRITE, {}, 0x06),
    ("not present, user fetch, NXE=1: I/D", NOT_PRESENT, USER | FETCH, dict(efer_nxe=True), 0x14),
    ("not present, user fetch, NXE=0 SMEP=0: no I/D", NOT_PRESENT, USER | FETCH, dict(efer_nxe=False), 0x04),
    ("not present, supervisor fetch, NXE=0 SMEP=1: I/D", NOT_PRESENT, FETCH,
     dict(efer_nxe=False, cr4_smep=True), 0x10),
    ("not present, implicit read at CPL 3: U=0", NOT_PRESENT, IMPLICIT | USER, {}, 0x00),
    ("not present, implicit write at CPL 3: U=0", NOT_PRESENT, IMPLICIT | USER | WRITE, {}, 0x02),
    ("not present PML4E, user write", dict(pml4e=0), USER | WRITE, {}, 0x06),
    ("reserved bit, supervisor read: P and RSVD", RESERVED_BIT, 0, {}, 0x09),
    ("reserved bit, user read", RESERVED_BIT, USER, {}, 0x0D),
    ("reserved bit, supervisor write", RESERVED_BIT, WRITE, {}, 0x0B),
    ("reserved bit, user fetch, NXE=1", RESERVED_BIT, USER | FETCH, {}, 0x1D),
    ("reserved bit in the PDE, user write", dict(pde_bits=1 << 50), USER | WRITE, {}, 0x0F),
    ("reserved bit in a not-present entry: only P=0", dict(leaf=URW & ~P, raw=1 << 51 | NX), USER, {}, 0x04),
    ("user read of a supervisor page", dict(leaf=P | RW), USER, {}, 0x05),
    ("user write of a read-only page", dict(leaf=P | US), USER | WRITE, {}, 0x07),
    ("supervisor write of a read-only page, WP=1", dict(leaf=P | US), WRITE, {}, 0x03),
    ("user fetch of an XD page", dict(leaf=URW | NX), USER | FETCH, {}, 0x15),
    ("supervisor fetch of a user page, SMEP", dict(leaf=URW), FETCH, dict(cr4_smep=True), 0x11),
    ("supervisor fetch of a user page, SMEP, NXE=0", dict(leaf=URW), FETCH, dict(cr4_smep=True, efer_nxe=False),
     0x11),
    ("supervisor read of a user page, SMAP, AC=0", dict(leaf=URW), 0, dict(cr4_smap=True), 0x01),
    ("implicit read of a user page, SMAP, AC=1", dict(leaf=URW), IMPLICIT, dict(cr4_smap=True, eflags_ac=True), 0x01),
    ("protection key AD, user read", dict(leaf=URW | KEY << 59), USER,
     dict(cr4_pke=True, pkru=1 << 2 * KEY), 0x25),
]


@pytest.mark.parametrize(("fault", "access", "cpu_fields", "code"), [row[1:] for row in ERROR_CODES],
                         ids=[row[0] for row in ERROR_CODES])
def test_error_codes(backend, fault, access, cpu_fields, code):
    mem, pt = native(backend, fault.get("leaf", URW))
    if "pml4e" in fault:
        pt.write_entry(VA, 4, fault["pml4e"])
    if "pde_bits" in fault:
        pt.write_entry(VA, 2, pt.read_entry(VA, 2) | fault["pde_bits"])
    if "raw" in fault:
        pt.write_entry(VA, 1, pt.read_entry(VA, 1) | fault["raw"])
    before = frames(mem)
    walk = backend.walk(mem, CpuState(cr3=pt.root, **cpu_fields), VA + OFFSET % 4096, access)
    # CR2 is the linear address itself, not the page (4.7).
    assert (walk.status, walk.error_code, walk.fault_address) == (Status.PAGE_FAULT, code, VA + OFFSET % 4096)
    assert walk.guest_linear_address == VA + OFFSET % 4096 and frames(mem) == before
    assert (walk.host_address, walk.page_size, walk.attrs, walk.exit_qualification) == (0, 0, 0, 0)


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("address", [1 << 47, 0xFFFF_0000_0000_0000, 1 << 56, 0x8000_0000_0000_0000])
def test_non_canonical_is_gp_before_any_reference(backend, levels, address):
    mem, pt = native(backend, levels=levels)
    canonical = (address >> (56 if levels == 5 else 47)) in (0, (1 << (8 if levels == 5 else 17)) - 1)
    walk = backend.walk(mem, CpuState(cr3=pt.root, levels=levels), address, USER)
    if canonical:
        assert walk.status == Status.PAGE_FAULT and walk.references > 0
    else:
        assert (walk.status, walk.error_code, walk.fault_address, walk.references) == (Status.GP, 0, address, 0)


# -- 4.5: reserved bits, per level, per MAXPHYADDR -----------------------------------------------

NP = "not-present"
RESERVED_ROWS = [
    # (what, paging levels, page size, level changed, bits OR-ed in, MAXPHYADDR, NXE, outcome)
    ("PS in a PML4E", 4, "4K", 4, PS, 46, 1, RSVD),
    ("PS in a PML5E", 5, "4K", 5, PS, 46, 1, RSVD),
    ("1 GiB page: bit 13", 4, "1G", 3, 1 << 13, 46, 1, RSVD),
    ("1 GiB page: bit 29", 4, "1G", 3, 1 << 29, 46, 1, RSVD),
    ("1 GiB page: bit 12 is PAT", 4, "1G", 3, 1 << 12, 46, 1, OK),
    ("2 MiB page: bit 13", 4, "2M", 2, 1 << 13, 46, 1, RSVD),
    ("2 MiB page: bit 20", 4, "2M", 2, 1 << 20, 46, 1, RSVD),
    ("2 MiB page: bit 12 is PAT", 4, "2M", 2, 1 << 12, 46, 1, OK),
    ("2 MiB page: bit 21 is an address bit", 4, "2M", 2, 1 << 21, 46, 1, OK),
    ("PTE: bit 7 is PAT", 4, "4K", 1, 1 << 7, 46, 1, OK),
    *[(f"level {level}: XD with NXE=0", 4, "4K", level, NX, 46, 0, RSVD) for level in (1, 2, 3, 4)],
    *[(f"level {level}: XD with NXE=1", 4, "4K", level, NX, 46, 1, OK) for level in (1, 2, 3, 4)],
    ("PML5E: XD with NXE=0", 5, "4K", 5, NX, 46, 0, RSVD),
    *[(f"level {level}: bits 58:52 ignored", 4, "4K", level, 0x7F << 52, 46, 1, OK) for level in (1, 2, 3, 4)],
    *[(f"level {level}: bits 11:9 ignored", 4, "4K", level, 0x7 << 9, 46, 1, OK) for level in (1, 2, 3, 4)],
    *[(f"level {level}: bits 62:59 (keys, PKE=0)", 4, "4K", level, 0xF << 59, 46, 1, OK) for level in (1, 2, 3, 4)],
    *[(f"level {level}: bit 51, MAXPHYADDR={m}", 4, "4K", level, 1 << 51, m, 1, RSVD)
      for level in (1, 2, 3, 4) for m in (36, 46)],
    *[(f"level {level}: bit {m}, MAXPHYADDR={m}", 4, "4K", level, 1 << m, m, 1, RSVD)
      for level in (1, 2, 3, 4) for m in (36, 39, 46)],
    *[(f"PML5E: bit {m}, MAXPHYADDR={m}", 5, "4K", 5, 1 << m, m, 1, RSVD) for m in (36, 46)],
    *[(f"2 MiB page: bit {m}, MAXPHYADDR={m}", 4, "2M", 2, 1 << m, m, 1, RSVD) for m in (36, 46)],
    *[(f"1 GiB page: bit {m}, MAXPHYADDR={m}", 4, "1G", 3, 1 << m, m, 1, RSVD) for m in (36, 46)],
    # Below MAXPHYADDR a bit is an address bit: the leaf maps elsewhere, a table pointer points past
    # memory (which reads as zeros: the next entry is not present).
    *[(f"PTE: bit {m - 1}, MAXPHYADDR={m}", 4, "4K", 1, 1 << (m - 1), m, 1, OK) for m in (36, 46, 52)],
    *[(f"level {level}: bit {m - 1}, MAXPHYADDR={m}", 4, "4K", level, 1 << (m - 1), m, 1, NP)
      for level in (2, 3, 4) for m in (36, 46, 52)],
]


@pytest.mark.parametrize(("levels", "size", "level", "bits", "maxphyaddr", "nxe", "outcome"),
                         [row[1:] for row in RESERVED_ROWS], ids=[row[0] for row in RESERVED_ROWS])
def test_reserved_bits(backend, levels, size, level, bits, maxphyaddr, nxe, outcome):
    mem, pt = native(backend, URW, levels=levels, maxphyaddr=maxphyaddr, page_size=size)
    pt.write_entry(VA, level, pt.read_entry(VA, level) | bits)
    offset = OFFSET & ({"4K": 4095, "2M": 2 * MiB - 1, "1G": GiB - 1}[size])
    before = frames(mem)
    walk = backend.walk(mem, CpuState(cr3=pt.root, levels=levels, efer_nxe=bool(nxe)), VA + offset, USER)
    if outcome == OK:
        assert walk.status == Status.OK and walk.error_code == 0
    elif outcome == RSVD:
        assert (walk.status, walk.error_code) == (Status.PAGE_FAULT, 0x0D)  # P | U | RSVD
        # The walk stops at the entry with the reserved bit.
        assert walk.guest_refs[: level - 1] == (0,) * (level - 1) and walk.guest_refs[level - 1] == 1
        assert frames(mem) == before
    else:
        assert (walk.status, walk.error_code) == (Status.PAGE_FAULT, 0x04)  # P=0 | U


# -- 4.8: accessed and dirty flags -------------------------------------------------------------------


@pytest.mark.parametrize("size", ["4K", "2M", "1G"])
@pytest.mark.parametrize(("access", "dirty"), [(0, False), (WRITE, True), (FETCH, False), (USER | WRITE, True)])
def test_accessed_and_dirty_flags(backend, size, access, dirty):
    mem, pt = native(backend, URW, levels=5, page_size=size)
    leaf = {"4K": 1, "2M": 2, "1G": 3}[size]
    before = {level: pt.read_entry(VA, level) for level in range(leaf, 6)}
    walk = backend.walk(mem, CpuState(cr3=pt.root, levels=5), VA, access)
    assert walk.ok and bool(walk.attrs & Attr.D) == dirty
    for level, value in before.items():
        want = value | A | (D if dirty and level == leaf else 0)
        assert pt.read_entry(VA, level) == want, f"level {level}"
    # Already set flags are left as they are; a read never clears D.
    backend.walk(mem, CpuState(cr3=pt.root, levels=5), VA, 0)
    assert pt.read_entry(VA, leaf) == before[leaf] | A | (D if dirty else 0)


def test_a_faulting_walk_sets_no_flag(backend):
    mem, pt = native(backend, P | US)  # read-only
    before = frames(mem)
    assert backend.walk(mem, CpuState(cr3=pt.root), VA, USER | WRITE).status == Status.PAGE_FAULT
    assert frames(mem) == before


# -- 29.3.3: EPT misconfigurations and violations (an access with no linear address) ---------------

GPA = 0x4000_0000 + 0x5000  # inside a 1 GiB-aligned region the tests map with every page size
HPA = 0x80_0000
MIS, VIO = "misconfig", "violation"

EPT_ROWS = [
    # (what, EPT page size, level changed, (new bits 2:0 or None to keep them, bits OR-ed in), execute_only,
    #  access, outcome, exit qualification)
    ("leaf W without R", "4K", 1, (W, 0), True, 0, MIS, 0),
    ("leaf WX without R", "4K", 1, (W | X, 0), True, 0, MIS, 0),
    ("PML4E W without R", "4K", 4, (W, 0), True, 0, MIS, 0),
    ("PDE WX without R", "4K", 2, (W | X, 0), True, WRITE, MIS, 0),
    ("leaf X only, execute-only supported: fetch", "4K", 1, (X, 0), True, FETCH, OK, 0),
    ("leaf X only, execute-only supported: read", "4K", 1, (X, 0), True, 0, VIO, 0x21),
    ("leaf X only, execute-only not supported", "4K", 1, (X, 0), False, FETCH, MIS, 0),
    ("PDPTE X only, execute-only not supported", "4K", 3, (X, 0), False, 0, MIS, 0),
    ("leaf R only: write", "4K", 1, (R, 0), True, WRITE, VIO, 0x0A),
    ("leaf R only: fetch", "4K", 1, (R, 0), True, FETCH, VIO, 0x0C),
    ("leaf RW: fetch", "4K", 1, (R | W, 0), True, FETCH, VIO, 0x1C),
    ("leaf RX: write", "4K", 1, (R | X, 0), True, WRITE, VIO, 0x2A),
    ("PDPTE R only, leaf RWX: write (rights are the AND)", "4K", 3, (R, 0), True, WRITE, VIO, 0x0A),
    ("PML4E RX, leaf RWX: write", "4K", 4, (R | X, 0), True, WRITE, VIO, 0x2A),
    ("leaf not present: read", "4K", 1, (0, 0), True, 0, VIO, 0x01),
    ("leaf not present: write", "4K", 1, (0, 0), True, WRITE, VIO, 0x02),
    ("leaf not present: fetch", "4K", 1, (0, 0), True, FETCH, VIO, 0x04),
    ("PDPTE not present: read", "4K", 3, (0, 0), True, 0, VIO, 0x01),
    ("not present with garbage in 63:3: a violation, not a misconfiguration", "4K", 2, (0, 0xFFF8 | 1 << 51),
     True, 0, VIO, 0x01),
    *[(f"leaf memory type {t}", "4K", 1, ("memtype", t), True, 0, MIS if t in (2, 3, 7) else OK, 0)
      for t in range(8)],
    ("2 MiB leaf memory type 7", "2M", 2, ("memtype", 7), True, 0, MIS, 0),
    ("1 GiB leaf memory type 3", "1G", 3, ("memtype", 3), True, 0, MIS, 0),
    ("non-leaf PDE: bits 5:3 are reserved, not a memory type", "4K", 2, (None, 6 << 3), True, 0, MIS, 0),
    *[(f"PML4E bit {bit}", "4K", 4, (None, 1 << bit), True, 0, MIS, 0) for bit in (3, 4, 5, 6, 7)],
    *[(f"non-leaf PDPTE bit {bit}", "4K", 3, (None, 1 << bit), True, 0, MIS, 0) for bit in (3, 6)],
    *[(f"non-leaf PDE bit {bit}", "4K", 2, (None, 1 << bit), True, 0, MIS, 0) for bit in (4, 5)],
    ("1 GiB leaf bit 12", "1G", 3, (None, 1 << 12), True, 0, MIS, 0),
    ("1 GiB leaf bit 29", "1G", 3, (None, 1 << 29), True, 0, MIS, 0),
    ("2 MiB leaf bit 12", "2M", 2, (None, 1 << 12), True, 0, MIS, 0),
    ("2 MiB leaf bit 20", "2M", 2, (None, 1 << 20), True, 0, MIS, 0),
    *[(f"level {level}: bit 46 (MAXPHYADDR)", "4K", level, (None, 1 << 46), True, 0, MIS, 0) for level in (1, 2, 3, 4)],
    *[(f"level {level}: bit 51", "4K", level, (None, 1 << 51), True, 0, MIS, 0) for level in (1, 2, 3, 4)],
    *[(f"level {level}: bits 62:52 ignored", "4K", level, (None, 0x7FF << 52), True, 0, OK, 0)
      for level in (1, 2, 3, 4)],
    *[(f"level {level}: bit 63 (suppress #VE) ignored", "4K", level, (None, 1 << 63), True, 0, OK, 0)
      for level in (1, 2, 3, 4)],
    ("PTE bit 7 ignored", "4K", 1, (None, 1 << 7), True, 0, OK, 0),
    ("leaf bit 6 (ignore PAT)", "4K", 1, (None, 1 << 6), True, 0, OK, 0),
    ("leaf bits 8, 9 (A, D) with A/D off", "4K", 1, (None, 3 << 8), True, 0, OK, 0),
    ("leaf bit 10 (user execute) with MBEC off", "4K", 1, (None, 1 << 10), True, 0, OK, 0),
    ("PML4E bit 10 with MBEC off", "4K", 4, (None, 1 << 10), True, 0, OK, 0),
]


def ept_world(b, *, levels=4, size="4K", execute_only=True, ad=False, advanced=True, maxphyaddr=46):
    mem = b.HostMemory("1MiB", maxphyaddr=maxphyaddr)
    ept = EptTable(mem, levels, ad=ad, execute_only=execute_only, advanced_exit_info=advanced)
    base = {"4K": GPA, "2M": GPA & ~(2 * MiB - 1), "1G": GPA & ~(GiB - 1)}[size]
    ept.map(base, {"4K": HPA, "2M": HPA * 4, "1G": GiB}[size], page_size=size)
    return mem, ept


@pytest.mark.parametrize(("size", "level", "change", "execute_only", "access", "outcome", "qualification"),
                         [row[1:] for row in EPT_ROWS], ids=[row[0] for row in EPT_ROWS])
def test_ept_misconfigurations_and_violations(backend, size, level, change, execute_only, access, outcome,
                                             qualification):
    mem, ept = ept_world(backend, size=size, execute_only=execute_only)
    low, extra = change
    entry = ept.read_entry(GPA, level)
    if low == "memtype":
        entry, extra = entry & ~0x38, extra << 3
    elif low is not None:
        entry = (entry & ~7) | low
    ept.write_entry(GPA, level, entry | extra)
    before = frames(mem)
    walk = backend.walk_ept(mem, ept.config, GPA + 0x9A8, access)
    if outcome == OK:
        assert walk.status == Status.OK
        return
    status = Status.EPT_MISCONFIG if outcome == MIS else Status.EPT_VIOLATION
    # The exact guest-physical address; no linear address (bit 7 = 0, so bits 8..11 = 0 too).
    assert (walk.status, walk.fault_address, walk.exit_qualification) == (status, GPA + 0x9A8, qualification)
    assert (walk.guest_linear_address, walk.host_address, walk.attrs) == (0, 0, 0)
    if outcome == MIS or low == 0:  # the walk stops at that entry; a rights violation reads them all
        assert walk.ept_refs[level - 1] == 1 and walk.ept_refs[: level - 1] == (0,) * (level - 1)
    else:
        assert walk.ept_refs == (1, 1, 1, 1, 0)
    assert frames(mem) == before


@pytest.mark.parametrize(("levels", "gpa", "outcome"), [
    (4, 1 << 48, VIO), (4, (1 << 48) - 4096, OK), (5, 1 << 48, OK), (5, 1 << 57, VIO), (4, 1 << 63, VIO),
])
def test_ept_guest_physical_width(backend, levels, gpa, outcome):
    """A GPA with a bit at or above 12 + 9 * levels: a violation before any reference (rights 0)."""
    mem = backend.HostMemory("1MiB", maxphyaddr=52)
    ept = EptTable(mem, levels)
    if outcome == OK:
        ept.map(gpa, 0x5000)
    walk = backend.walk_ept(mem, ept.config, gpa + 8, WRITE)
    if outcome == OK:
        assert walk.host_address == 0x5008
    else:
        assert (walk.status, walk.fault_address, walk.exit_qualification, walk.references) == (
            Status.EPT_VIOLATION, gpa + 8, 0x02, 0)


# -- the 2D walk: which access faults, and the exit qualification (Table 28-7) --------------------------

GVA = 0x0000_7F00_0020_0000 + 0x345  # any canonical address
GDATA = 0x30_0000  # the guest page it maps (guest-physical)


def nested_world(b, *, leaf=URW, ad=False, advanced=True, maxphyaddr=46, guest_levels=4, ept_levels=4):
    """Guest RAM of 4 MiB (GPA 0 .. 4 MiB) backed by contiguous host frames; guest tables from GPA 1 MiB."""
    mem = b.HostMemory("8MiB", maxphyaddr=maxphyaddr)
    ept = EptTable(mem, ept_levels, ad=ad, advanced_exit_info=advanced)
    ram = mem.alloc(1024, contiguous=True)
    ept.map_range(0, int(ram[0]) << 12, 4 * MiB)
    pages = iter(range(MiB, 4 * MiB, 4096))
    pt = PageTable(mem, guest_levels, ept=ept, alloc_gpa=lambda: next(pages))
    pt.map(GVA & ~0xFFF, GDATA, leaf)
    cpu = CpuState(cr3=pt.root, levels=guest_levels)
    return SimpleNamespace(mem=mem, ept=ept, pt=pt, cpu=cpu, ram=int(ram[0]) << 12)


def set_ept_rights(world, gpa, rights):
    entry = world.ept.read_entry(gpa, 1)
    world.ept.write_entry(gpa, 1, (entry & ~7) | rights)


def guest_entry_gpa(world, level):
    return world.pt.entry_address(GVA, level)


NESTED_ROWS = [
    # (what, world options, setup, access, status, fault address, exit qualification)
    ("guest PML4 page not in the EPT: read, bit 8 = 0", {}, ("ept", "table4", 0), USER,
     Status.EPT_VIOLATION, "entry4", 0x81),
    ("guest PT page not in the EPT, EPT A/D on: read and write bits", dict(ad=True), ("ept", "table1", 0), USER,
     Status.EPT_VIOLATION, "entry1", 0x83),
    ("guest PDPT page EPT read-only, EPT A/D on (PT accesses are writes)", dict(ad=True), ("ept", "table3", R), USER,
     Status.EPT_VIOLATION, "entry3", 0x8B),
    ("guest PD page EPT read-only, A/D off, A clear: the A update faults (a read and a write)", {},
     ("ept", "table2", R), USER, Status.EPT_VIOLATION, "entry2", 0x8B),
    ("guest PD page EPT read-only, A/D off, A already set: fine", {}, ("ept+A", "table2", R), USER, Status.OK, None, 0),
    ("guest PT page EPT read-only, A set, write with D clear: the D update faults (a read and a write)", {},
     ("ept+A", "table1", R), USER | WRITE, Status.EPT_VIOLATION, "entry1", 0x8B),
    ("guest PT page EPT read-only, A and D set, write: fine", {}, ("ept+AD", "table1", R), USER | WRITE,
     Status.OK, None, 0),
    ("guest PT page EPT execute-only: read of the PTE", {}, ("ept", "table1", X), USER,
     Status.EPT_VIOLATION, "entry1", 0xA1),
    ("final GPA not in the EPT: user read of a writable user page", {}, ("ept", "data", 0), USER,
     Status.EPT_VIOLATION, "data", 0x781),
    ("final GPA not in the EPT, no advanced information", dict(advanced=False), ("ept", "data", 0), USER,
     Status.EPT_VIOLATION, "data", 0x181),
    ("final GPA not in the EPT: supervisor read of a read-only XD supervisor page", dict(leaf=P | NX),
     ("ept", "data", 0), 0, Status.EPT_VIOLATION, "data", 0x981),
    ("final GPA EPT read-only: write", {}, ("ept", "data", R), USER | WRITE, Status.EPT_VIOLATION, "data", 0x78A),
    ("final GPA EPT read/write: fetch", {}, ("ept", "data", R | W), USER | FETCH,
     Status.EPT_VIOLATION, "data", 0x79C),
    ("final GPA EPT execute-only: fetch", {}, ("ept", "data", X), USER | FETCH, Status.OK, None, 0),
    ("final GPA EPT write-only: a misconfiguration", {}, ("ept", "data", W), USER, Status.EPT_MISCONFIG, "data", 0),
    ("guest PDPT page EPT write-only: a misconfiguration on the PDPTE's GPA", {}, ("ept", "table3", W), USER,
     Status.EPT_MISCONFIG, "entry3", 0),
    ("guest PTE not present beats a missing final GPA", {}, ("guest-np+ept", "data", 0), USER,
     Status.PAGE_FAULT, "gva", 0),
    ("guest protection fault beats a missing final GPA", dict(leaf=P | US), ("ept", "data", 0), USER | WRITE,
     Status.PAGE_FAULT, "gva", 0),
]


@pytest.mark.parametrize(("options", "setup", "access", "status", "where", "qualification"),
                         [row[1:] for row in NESTED_ROWS], ids=[row[0] for row in NESTED_ROWS])
def test_nested_faults_and_exit_qualification(backend, options, setup, access, status, where, qualification):
    world = nested_world(backend, **options)
    kind, target, rights = setup
    if kind in ("ept+A", "ept+AD"):  # set the guest flags first, so no write is needed
        for level in (4, 3, 2, 1):
            extra = A | (D if kind == "ept+AD" and level == 1 else 0)
            world.pt.write_entry(GVA, level, world.pt.read_entry(GVA, level) | extra)
    if kind == "guest-np+ept":
        world.pt.write_entry(GVA, 1, world.pt.read_entry(GVA, 1) & ~P)
    gpa = GDATA if target == "data" else guest_entry_gpa(world, int(target[-1]))
    set_ept_rights(world, gpa, rights)
    before = frames(world.mem)
    walk = backend.walk_nested(world.mem, world.cpu, world.ept.config, GVA, access)
    expected_address = {None: 0, "gva": GVA, "data": GDATA + (GVA & 0xFFF)}.get(where)
    if where is not None and where.startswith("entry"):
        expected_address = guest_entry_gpa(world, int(where[-1]))  # exact: the entry, not its page
    assert walk.status == status
    if status == Status.OK:
        return
    assert (walk.fault_address, walk.exit_qualification) == (expected_address, qualification)
    assert walk.guest_linear_address == GVA and frames(world.mem) == before


def test_ept_failure_on_a_guest_entry_comes_before_reading_it(backend):
    world = nested_world(backend)
    set_ept_rights(world, guest_entry_gpa(world, 2), 0)
    walk = backend.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER)
    assert walk.status == Status.EPT_VIOLATION
    assert walk.guest_refs == (0, 0, 1, 1, 0) and walk.ept_refs == (3, 3, 3, 3, 0)


def test_guest_reserved_bits_use_maxphyaddr(backend):
    world = nested_world(backend, maxphyaddr=39)
    world.pt.write_entry(GVA, 2, world.pt.read_entry(GVA, 2) | 1 << 39)
    walk = backend.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER | WRITE)
    assert (walk.status, walk.error_code, walk.fault_address) == (Status.PAGE_FAULT, 0x0F, GVA)


def test_guest_table_beyond_the_ept_width(backend):
    """MAXPHYADDR 52 with a 4-level EPT: a guest PDE may point past the 48 bits the EPT maps."""
    world = nested_world(backend, maxphyaddr=52)
    world.pt.write_entry(GVA, 2, (1 << 48) | URW)
    walk = backend.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER)
    pte_gpa = (1 << 48) + 8 * ((GVA >> 12) & 511)
    assert (walk.status, walk.fault_address, walk.exit_qualification) == (Status.EPT_VIOLATION, pte_gpa, 0x81)
    assert walk.ept_refs == (3, 3, 3, 3, 0)  # three translations, none for the PTE


# -- every EPT-rights case of a 2D walk, against the rules written out (Table 28-7; kvm-unit-tests'
# vmx_tests.c "EPT access" tests state the same expectations for the cases they cover) -------------------


def expected_2d_outcome(levels, ad, execute_only, target, perms, guest_flags, access):
    """(status, where, qualification) of a user access to GVA when only the EPT leaf of page ``target``
    (a guest table level 1..levels, or "data") has the rights ``perms``; the guest tables hold URW
    entries with A clear ("none"), A set ("A") or A set and D set in the leaf ("AD")."""
    misconfigured = (perms & W and not perms & R) or (perms == X and not execute_only)

    def translation_fails(need, access_bits, where, final):
        if misconfigured:
            return Status.EPT_MISCONFIG, where, 0
        if not perms & need:
            advanced = 0x200 | 0x400 if final else 0  # the guest's rights: user, writable, not XD
            return Status.EPT_VIOLATION, where, access_bits | perms << 3 | 0x80 | (0x100 if final else 0) | advanced
        return None

    # 1. The guest entries, root first: a read of each (a write for EPT when A/D is on).
    for level in range(levels, 0, -1):
        if target == level:
            failed = translation_fails(W if ad else R, 0x3 if ad else 0x1, f"entry{level}", False)
            if failed:
                return failed
    # 2. The final guest-physical address, for the access itself.
    need, bit = (W, 0x2) if access & WRITE else (X, 0x4) if access & FETCH else (R, 0x1)
    if target == "data":
        failed = translation_fails(need, bit, "data", True)
        if failed:
            return failed
    # 3. The guest A/D updates, root first: each reads and writes its entry (bits 0 and 1), needs EPT W.
    for level in range(levels, 0, -1):
        update = guest_flags == "none" or (level == 1 and access & WRITE and guest_flags != "AD")
        if target == level and update and not perms & W:
            return Status.EPT_VIOLATION, f"entry{level}", 0x3 | perms << 3 | 0x80
    return Status.OK, None, 0


@pytest.mark.parametrize("ad", [False, True], ids=["ept-ad-off", "ept-ad-on"])
@pytest.mark.parametrize("levels", [4, 5], ids=["4-level", "5-level"])
def test_every_ept_rights_case_of_a_2d_walk(backend, levels, ad):
    """Every EPT R/W/X on every guest table page and the data page, for reads, writes and fetches,
    with the guest's A/D flags clear or set, execute-only on or off: status, exact GPA and exit
    qualification (A/D-update violations report bits 0 and 1 both, as hardware and KVM do)."""
    world = nested_world(backend, ad=ad, guest_levels=levels, ept_levels=levels)
    flags_by_case = {"none": (0, 0), "A": (A, 0), "AD": (A, D)}
    pages = {level: guest_entry_gpa(world, level) for level in range(1, levels + 1)} | {"data": GDATA}
    original = {target: world.ept.read_entry(gpa, 1) for target, gpa in pages.items()}
    entries = {level: world.pt.read_entry(GVA, level) & ~(A | D) for level in range(1, levels + 1)}
    cases = mismatches = 0
    report = []
    for target, perms, guest_flags, access, execute_only in itertools.product(
            pages, range(8), flags_by_case, (USER, USER | WRITE, USER | FETCH), (True, False)):
        world.ept.config.execute_only = execute_only
        a_bit, d_bit = flags_by_case[guest_flags]
        for level, value in entries.items():  # (through the EPT as it was: before its rights change)
            world.pt.write_entry(GVA, level, value | a_bit | (d_bit if level == 1 else 0))
        world.ept.write_entry(pages[target], 1, (original[target] & ~7) | perms)
        walk = backend.walk_nested(world.mem, world.cpu, world.ept.config, GVA, access)
        world.ept.write_entry(pages[target], 1, original[target])
        status, where, qualification = expected_2d_outcome(levels, ad, execute_only, target, perms, guest_flags,
                                                           access)
        address = {None: 0, "data": GDATA + (GVA & 0xFFF)}.get(where)
        if where is not None and where.startswith("entry"):
            address = pages[int(where[5:])]
        got = (walk.status, walk.fault_address if status else 0, walk.exit_qualification)
        cases += 1
        if got != (status, address, qualification):
            mismatches += 1
            report.append(f"target={target} perms={perms} flags={guest_flags} access={access:#x} "
                          f"xo={execute_only}: got {got}, expected {(status, address, qualification)}")
    assert cases == (levels + 1) * 8 * 3 * 3 * 2
    assert mismatches == 0, "\n".join(report[:20])


# -- 29.3.5: accessed and dirty flags for EPT ------------------------------------------------------------


@pytest.mark.parametrize("ad", [False, True])
@pytest.mark.parametrize("access", [USER, USER | WRITE])
def test_ept_accessed_and_dirty_flags(backend, ad, access):
    world = nested_world(backend, ad=ad)
    tables = {level: guest_entry_gpa(world, level) & ~0xFFF for level in (4, 3, 2, 1)}
    pages = [*tables.values(), GDATA]
    before = {gpa: [world.ept.read_entry(gpa, level) for level in (4, 3, 2, 1)] for gpa in pages}
    walk = backend.walk_nested(world.mem, world.cpu, world.ept.config, GVA, access)
    assert walk.ok
    for gpa in pages:
        for level, old in zip((4, 3, 2, 1), before[gpa], strict=True):
            want = old
            if ad:
                want |= EPT.A
                # Guest paging-structure accesses count as writes; the final GPA's only for a write.
                if level == 1 and (gpa != GDATA or access & WRITE):
                    want |= EPT.D
            assert world.ept.read_entry(gpa, level) == want, f"gpa {gpa:#x} level {level}"
    # ATTR_EPT_D: the EPT leaf's D is set after this access, or EPT A/D is off.
    assert bool(walk.attrs & Attr.EPT_D) == (not ad or bool(access & WRITE))
    # The guest's own flags (4.8), through the EPT: A everywhere, D in the leaf on a write.
    for level in (4, 3, 2, 1):
        value = world.pt.read_entry(GVA, level)
        assert value & A and bool(value & D) == (level == 1 and bool(access & WRITE))


@pytest.mark.parametrize(("access", "flags"), [(0, EPT.A), (WRITE, EPT.A | EPT.D), (FETCH, EPT.A)])
def test_ept_flags_of_a_guest_physical_access(backend, access, flags):
    mem, ept = ept_world(backend, ad=True)
    walk = backend.walk_ept(mem, ept.config, GPA, access)
    assert walk.ok and [ept.read_entry(GPA, level) & (EPT.A | EPT.D) for level in (4, 3, 2, 1)] == [
        EPT.A, EPT.A, EPT.A, flags]


def test_ept_flags_unchanged_when_the_walk_fails(backend):
    world = nested_world(backend, ad=True)
    set_ept_rights(world, GDATA, R)
    before = frames(world.mem)
    walk = backend.walk_nested(world.mem, world.cpu, world.ept.config, GVA, USER | WRITE)
    assert walk.status == Status.EPT_VIOLATION and frames(world.mem) == before


# -- 27.2.1.1: the VM-entry checks of the EPTP (VM-entry failure: invalid control field) ------------------

FAIL = "VM entry failed (invalid control field): EPTP "
EPTP = 0x5000 | 3 << 3 | 6  # root 0x5000, 4 levels, WB

BAD_EPTP_VALUES = [
    # (what, EPTP value, the processor's features, message after FAIL)
    *[(f"reserved bit {bit}", EPTP | 1 << bit, {}, f"reserved bits 11:8 set: {1 << bit:#x} in {EPTP | 1 << bit:#x}")
      for bit in (8, 9, 10, 11)],
    ("bit 7 (shadow-stack control)", EPTP | 1 << 7, {},
     f"bit 7 (supervisor shadow-stack control) set in {EPTP | 1 << 7:#x}, which this processor does not support"),
    *[(f"reserved bit {bit}", EPTP | 1 << bit, {}, f"reserved bits 63:52 set: {1 << bit:#x} in {EPTP | 1 << bit:#x}")
      for bit in (52, 63)],
    *[(f"memory type {memtype}", EPTP & ~7 | memtype, {},
       f"memory type (bits 2:0): {memtype}; expected UC (0) or WB (6)") for memtype in (1, 2, 3, 4, 5, 7)],
    *[(f"walk length {length}", EPTP & ~0x38 | (length - 1) << 3, {},
       f"page-walk length (bits 5:3 + 1): {length} levels; expected 4 or 5") for length in (1, 2, 3, 6, 7, 8)],
    ("5 levels where not supported", EPTP & ~0x38 | 4 << 3, {"five_level_supported": False},
     "page-walk length (bits 5:3 + 1): 5 levels, which this processor does not support (five_level_supported=False); "
     "expected 4"),
    ("A/D where not supported", EPTP | 1 << 6, {"ad_supported": False},
     "bit 6 (accessed and dirty flags) set, which this processor does not support (ad_supported=False)"),
]


@pytest.mark.parametrize(("eptp", "features", "message"), [row[1:] for row in BAD_EPTP_VALUES],
                         ids=[row[0] for row in BAD_EPTP_VALUES])
def test_an_eptp_that_vm_entry_refuses_is_a_vm_entry_failure(eptp, features, message):
    with pytest.raises(VMEntryFailure, match="^" + re.escape(FAIL + message) + "$"):
        EptConfig.from_eptp(eptp, **features)


def test_a_valid_eptp_decodes_field_by_field():
    config = EptConfig.from_eptp(EPTP | 1 << 6 | 1 << 51, execute_only=False)   # bit 51: checked at entry
    assert (config.root, config.levels, config.ad, config.memtype, config.execute_only) == (
        0x5000 | 1 << 51, 4, True, 6, False)
    assert config.eptp == EPTP | 1 << 6 | 1 << 51
    assert EptConfig.from_eptp(0x5000 | 4 << 3).levels == 5 and issubclass(VMEntryFailure, ValueError)


# The same classes, reaching the core through a configuration changed after it was made (its fields
# are mutable), and the root beyond MAXPHYADDR (46 here), which only the memory in use can tell.
BAD_CONFIGS = [
    ("walk length 6", {"levels": 6}, "page-walk length (bits 5:3 + 1): 6 levels; expected 4 or 5"),
    ("walk length 5 where not supported", {"levels": 5, "five_level_supported": False},
     "page-walk length (bits 5:3 + 1): 5 levels, which this processor does not support (five_level_supported=False); "
     "expected 4"),
    ("memory type 4", {"memtype": 4}, "memory type (bits 2:0): 4; expected UC (0) or WB (6)"),
    ("A/D where not supported", {"ad": True, "ad_supported": False},
     "bit 6 (accessed and dirty flags) set, which this processor does not support (ad_supported=False)"),
    ("root not aligned", {"root": 0x5800},
     "address (root): 0x5800 is not 4 KiB aligned (EPTP bits 11:0 are its fields)"),
    ("root bit 63", {"root": 0x5000 | 1 << 63}, "reserved bits 63:52 set: 0x8000000000000000"),
    ("root beyond MAXPHYADDR", {"root": 0x5000 | 1 << 46},
     "address (root): 0x400000005000 sets reserved bits 51:46 (beyond MAXPHYADDR=46)"),
]
ENTRY_POINTS = ["MMU()", "MMU.set_context", "walk_nested", "walk_ept"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("change", "message"), [row[1:] for row in BAD_CONFIGS], ids=[row[0] for row in BAD_CONFIGS])
def test_every_api_that_takes_an_ept_into_the_core_refuses_a_bad_eptp(backend, entry, change, message):
    mem = backend.HostMemory("1MiB", maxphyaddr=46)
    good = EptTable(mem).config
    bad = EptConfig(root=good.root)
    for name, value in change.items():
        setattr(bad, name, value)
    cpu = CpuState(cr3=0x1000)
    mmu = backend.MMU(mem, cpu=cpu, ept=good, vpid=1)
    calls = {
        "MMU()": lambda: backend.MMU(mem, cpu=cpu, ept=bad),
        "MMU.set_context": lambda: mmu.set_context(CpuState(cr3=0x2000), ept=bad, vpid=2),
        "walk_nested": lambda: backend.walk_nested(mem, cpu, bad, 0x1000),
        "walk_ept": lambda: backend.walk_ept(mem, bad, 0x1000),
    }
    with pytest.raises(VMEntryFailure, match="^" + re.escape(FAIL + message) + "$"):
        calls[entry]()
    # A failed VM entry changes nothing: the MMU keeps the context it had.
    assert (mmu.cpu.cr3, mmu.ept_config, mmu.vpid) == (0x1000, good, 1)
