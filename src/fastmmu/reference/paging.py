"""The reference walkers: x86-64 paging, EPT and the 2D walk, written to be read.

This is the model people read to learn the rules, and the oracle the
compiled walker (pyx/paging.pyx) is compared with, step by step.  Both follow
docs/core-semantics.md; section numbers below are the Intel SDM's (Vol. 3A
chapter 4 for paging, Vol. 3C chapter 29 for EPT).

- ``walk``        linear address -> physical address, natively (4.4, 4.5).
- ``walk_ept``    guest-physical address -> host-physical address (29.3).
- ``walk_nested`` guest linear address -> host-physical address: every guest
                  paging-structure reference is translated through the EPT,
                  and so is the final guest-physical address.
- ``check_access`` the permission rules of 4.6, for walks and for TLB hits.

A walk writes nothing while it runs: it reads every entry as it was, and only
when the whole translation succeeds does it OR the accessed/dirty flags into
memory and fill the translation caches.  A fault changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastmmu.arch import (
    ACCESS_VALID_MASK,
    ADDR_MASK,
    ATTR_PKEY_SHIFT,
    EPT,
    EPT_MEMTYPE_MASK,
    EPT_MEMTYPE_SHIFT,
    PTE,
    PTE_PKEY_SHIFT,
    Access,
    Attr,
    ExitQual,
    PFErr,
    Status,
    is_canonical,
    level_shift,
)
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.reference.tlb import TLB, Entry
from fastmmu.translation import Reference, Walk
from fastmmu.units import format_size

ATTR_EPT_RIGHTS_SHIFT = 16  # ATTR_EPT_R/W/X are EPT R/W/X (bits 0..2) shifted here
ATTR_MEMTYPE_SHIFT = 20  # bits 22:20: the EPT memory type of the final leaf (0 natively)
GUEST_RIGHTS = Attr.W | Attr.U | Attr.XD  # what a paging-structure cache entry accumulates

# Paging-structure caches: the dict key, and the level of the entry each one caches (4.10.3).
PSC_LEVEL = {"pde": 2, "pdpte": 3, "pml4e": 4, "pml5e": 5}
CACHE_KEYS = (*PSC_LEVEL, "nested", "pcid", "vpid")
PAGE_SIZE_NAMES_BY_CODE = ("4K", "2M", "1G", "region")
PAGE_SIZE_NAMES = {4096: "4K", 2 << 20: "2M", 1 << 30: "1G"}


# -- arguments (the same checks, in the same order and words, as pyx/paging.pyx) ---------------


def _integer(value: Any, what: str, limit: int) -> int:
    """``value`` as an int in [0, limit); TypeError/ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: expected an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{what}: expected a non-negative integer, got {value}")
    if value >= limit:
        raise ValueError(f"{what}: expected 0 <= {what} < {limit:#x}, got {value:#x}")
    return value


def check_access_byte(access: Any) -> int:
    """An access-kind byte (docs: "Access kinds"): bits 0..3 only, never WRITE and FETCH together."""
    value = _integer(access, "access", 256)
    if value & ~ACCESS_VALID_MASK:
        raise ValueError(f"access: bits 4..7 must be zero (WRITE=1, FETCH=2, USER=4, IMPLICIT=8), got {value:#x}")
    if value & Access.WRITE and value & Access.FETCH:
        raise ValueError(f"access: WRITE and FETCH together is not an access kind, got {value:#x}")
    return value


def _check_mem(mem: Any) -> Any:
    if not all(hasattr(mem, name) for name in ("read", "write", "nframes", "maxphyaddr")):
        raise TypeError(f"mem: expected a fastmmu.HostMemory, got {type(mem).__name__}")
    return mem


def _check_level_count(levels: Any, what: str) -> None:
    if isinstance(levels, bool) or levels not in (4, 5):
        raise ValueError(f"{what}: expected 4 or 5 paging levels, got {levels!r}")


def _check_cpu(cpu: Any, maxphyaddr: int) -> CpuState:
    """Check a CpuState again (its fields are mutable)."""
    if not isinstance(cpu, CpuState):
        raise TypeError(f"cpu: expected a fastmmu.cpu.CpuState, got {type(cpu).__name__}")
    _check_level_count(cpu.levels, "cpu.levels")
    _integer(cpu.cr3, "cpu.cr3", 1 << 64)
    _integer(cpu.pkru, "cpu.pkru", 1 << 32)
    cpu.validate(maxphyaddr)  # CR3 bits beyond MAXPHYADDR (or bit 63): ValueError
    return cpu


def _check_ept(ept: Any, maxphyaddr: int) -> EptConfig:
    """Check an EptConfig again (its fields are mutable)."""
    if not isinstance(ept, EptConfig):
        raise TypeError(f"ept: expected a fastmmu.cpu.EptConfig, got {type(ept).__name__}")
    ept.validate(maxphyaddr)  # the VM-entry checks of the EPTP: VMEntryFailure
    if _integer(ept.eptag, "ept.eptag", 1 << 32) == 0:
        raise ValueError("ept.eptag: expected 1..2^32-1, got 0")
    return ept


def _check_root_in_memory(mem: Any, root: int, what: str) -> None:
    if root >> 12 >= mem.nframes:
        raise ValueError(f"{what}: root table {root:#x} is beyond host memory ({format_size(mem.nframes << 12)})")


# -- the permission rules (4.6) and the error code (4.7) -------------------------------


def fault_bits(access: int, cpu: CpuState) -> int:
    """Error-code bits that describe the access itself (4.7): W, U and I/D."""
    bits = 0
    if access & Access.WRITE:
        bits |= PFErr.W
    if access & Access.USER and not access & Access.IMPLICIT:  # an implicit access is supervisor-mode
        bits |= PFErr.U
    # I/D: an instruction fetch, reported when SMEP is on or (with PAE/4-level paging) NXE is on.
    if access & Access.FETCH and (cpu.cr4_smep or cpu.efer_nxe):
        bits |= PFErr.ID
    return bits


def check_access(attrs: int, access: int, cpu: CpuState) -> int:
    """Whether ``access`` may use a translation with rights ``attrs``: 0, or the page-fault error code.

    ``attrs`` uses the TLB layout (ATTR_W, ATTR_U, ATTR_XD, key in bits 8..11);
    ``ATTR_XD`` already includes EFER.NXE.  The walker calls this for its final
    check and the run loop for every TLB hit, so the two can never disagree.
    """
    access = check_access_byte(access)
    write = bool(access & Access.WRITE)
    fetch = bool(access & Access.FETCH)
    implicit = bool(access & Access.IMPLICIT)
    user = bool(access & Access.USER) and not implicit  # 4.6: implicit accesses are supervisor-mode
    writable = bool(attrs & Attr.W)  # R/W=1 in every paging-structure entry
    user_page = bool(attrs & Attr.U)  # U/S=1 in every entry: a user-mode address
    execute_disable = bool(attrs & Attr.XD)

    denied = False
    if user:
        # 4.6.1, user-mode accesses: only user-mode addresses; writes need R/W; fetches need XD=0.
        denied = not user_page or (write and not writable) or (fetch and execute_disable)
    elif fetch:
        # Supervisor-mode instruction fetches: SMEP forbids user-mode addresses; XD forbids any.
        denied = (user_page and cpu.cr4_smep) or execute_disable
    else:
        # Supervisor-mode data accesses.  SMAP: no user-mode address, unless EFLAGS.AC=1 for an
        # explicit access (an implicit access is checked whatever AC says).
        if user_page and cpu.cr4_smap and (implicit or not cpu.eflags_ac):
            denied = True
        # With CR0.WP=1 supervisor writes need R/W=1 too; with WP=0 they may write anything.
        if write and cpu.cr0_wp and not writable:
            denied = True

    # 4.6.2, protection keys: user-mode addresses, data accesses only (fetches are exempt).
    key_denied = False
    if cpu.cr4_pke and user_page and not fetch:
        key = (attrs >> ATTR_PKEY_SHIFT) & 0xF
        access_disabled = (cpu.pkru >> (2 * key)) & 1
        write_disabled = (cpu.pkru >> (2 * key + 1)) & 1
        key_denied = bool(access_disabled or (write and write_disabled and (user or cpu.cr0_wp)))

    if not (denied or key_denied):
        return 0
    return PFErr.P | fault_bits(access, cpu) | (PFErr.PK if key_denied else 0)


# -- entry formats: what is reserved ----------------------------------------------------


def _bits(high: int, low: int) -> int:
    """A mask of bits high..low (empty when high < low)."""
    return ((1 << (high + 1)) - 1) & ~((1 << low) - 1) if high >= low else 0


def _is_leaf(entry: int, level: int) -> bool:
    """A PTE always maps a page; a PDPTE or PDE does when its PS bit (bit 7) is set."""
    return level == 1 or (level in (2, 3) and bool(entry & PTE.PS))


def x86_reserved_bits(level: int, leaf: bool, nxe: bool, maxphyaddr: int) -> int:
    """Reserved bits of a present x86-64 paging entry (4.5, Tables 4-15 .. 4-20)."""
    mask = _bits(51, maxphyaddr)  # address bits beyond MAXPHYADDR
    if not nxe:
        mask |= PTE.NX  # bit 63 is XD only when IA32_EFER.NXE = 1
    if level >= 4:
        mask |= PTE.PS  # a PML5E or PML4E never maps a page
    elif leaf and level == 3:
        mask |= _bits(29, 13)  # 1 GiB page: frame bits below bit 30 (bit 12 is PAT)
    elif leaf and level == 2:
        mask |= _bits(20, 13)  # 2 MiB page: frame bits below bit 21
    return int(mask)


def ept_misconfigured(entry: int, level: int, leaf: bool, ept: EptConfig, maxphyaddr: int) -> bool:
    """Whether a present EPT entry is an EPT misconfiguration (29.3.3.1)."""
    if entry & EPT.W and not entry & EPT.R:
        return True  # write-only or write/execute
    if entry & EPT.RWX == EPT.X and not ept.execute_only:
        return True  # execute-only, where the processor does not support it
    reserved = _bits(51, maxphyaddr)
    if level >= 4:
        reserved |= _bits(7, 3)  # EPT PML5E / PML4E: bits 7:3 reserved (bit 7 included)
    elif not leaf:
        reserved |= _bits(6, 3)  # EPT PDPTE / PDE referencing a table
    elif level == 3:
        reserved |= _bits(29, 12)  # EPT PDPTE mapping a 1 GiB page
    elif level == 2:
        reserved |= _bits(20, 12)  # EPT PDE mapping a 2 MiB page
    if entry & reserved:
        return True
    return leaf and ((entry & EPT_MEMTYPE_MASK) >> EPT_MEMTYPE_SHIFT) in (2, 3, 7)


def _index(address: int, level: int) -> int:
    """Which of the 512 entries of a level-``level`` table translates ``address``."""
    return (address >> level_shift(level)) & 511


# -- the translation caches a walk uses ----------------------------------------------------------

PSC_NAMES = {2: "PDE", 3: "PDPTE", 4: "PML4E", 5: "PML5E"}
SIZE_SHIFTS = {"4K": 12, "2M": 21, "1G": 30}


def _check_tlb(obj: Any, key: str, kind: str) -> TLB:
    if not isinstance(obj, TLB):
        raise TypeError(f"caches[{key!r}]: expected a fastmmu.reference.tlb.TLB, got {type(obj).__name__}")
    if obj.kind != kind:
        raise ValueError(f"caches[{key!r}]: expected a TLB of kind {kind!r}, got kind {obj.kind!r}")
    return obj


def _held_shift(tlb: TLB, name: str) -> int:
    return tlb.region_shift if name == "region" else SIZE_SHIFTS.get(name, -1)


def _held_size(tlb: TLB, page_size: int) -> str | None:
    """The size a structure caches a page of ``page_size`` as: the largest it holds that fits (tlb_code_for)."""
    fitting = [name for name in tlb.sizes if 1 << SIZE_SHIFTS[name] <= page_size]
    return max(fitting, key=SIZE_SHIFTS.__getitem__) if fitting else None


class _Caches:
    """The caches one walk uses (docs/core-semantics.md, "How a walk uses them").

    Every lookup and every fill takes its structure's own clock and advances
    it, as ``TLB.lookup`` and ``TLB.fill`` do.  Structures the walk has no use
    for (a PML5E cache in a 4-level walk, a nested TLB natively) are checked
    and ignored.  The reference TLB has no public way to reject the entry that
    just hit, so ``lookup`` returns the entry itself (``TLB._find``, as
    ``fastmmu.reference.tlb.simulate`` uses it) and ``drop`` rejects exactly it.
    """

    def __init__(self, caches: Any, levels: int, *, x86: bool, nested: bool, pcid: int, eptag: int) -> None:
        self.psc: dict[int, TLB] = {}
        self.nested: TLB | None = None
        self.ctx = (pcid, 0, eptag)
        self.nested_ctx = (0, 0, eptag)
        if caches is None:
            return
        if isinstance(caches, Mapping):
            for key in caches:
                if key not in CACHE_KEYS:
                    raise ValueError(f"caches: unknown key {key!r}; expected some of {', '.join(CACHE_KEYS)}")

            def get(key: str) -> Any:
                return caches.get(key)
        elif not any(hasattr(caches, key) for key in CACHE_KEYS):
            raise TypeError(f"caches: expected a dict such as {{'pde': TLB, 'nested': TLB}} or None, "
                            f"got {type(caches).__name__}")
        else:
            def get(key: str) -> Any:
                return getattr(caches, key, None)
        for key, level in PSC_LEVEL.items():
            obj = get(key)
            if obj is None:
                continue
            tlb = _check_tlb(obj, key, "psc")
            shift = level_shift(level)
            held = _held_shift(tlb, tlb.sizes[0])
            if len(tlb.sizes) != 1 or held != shift:
                raise ValueError(f"caches[{key!r}]: a {PSC_NAMES[level]} cache holds regions of "
                                 f"{format_size(1 << shift)} (region_shift={shift}), got region_shift={held}")
            if x86 and level <= levels:
                self.psc[level] = tlb
        obj = get("nested")
        if obj is not None:
            tlb = _check_tlb(obj, "nested", "ntlb")
            if any(size not in SIZE_SHIFTS for size in tlb.sizes):
                raise ValueError("caches['nested']: a nested TLB holds 4K, 2M or 1G pages")
            if nested:
                self.nested = tlb
        vpid = get("vpid")
        vpid = 0 if vpid is None else _integer(vpid, "caches['vpid']", 1 << 16)
        override = get("pcid")
        if override is not None:
            pcid = _integer(override, "caches['pcid']", 1 << 12)
        self.ctx = (pcid, vpid, eptag)

    @staticmethod
    def lookup(tlb: TLB, address: int, ctx: tuple[int, int, int]) -> Entry | None:
        return tlb._find(address, *ctx, tlb._tick())

    @staticmethod
    def drop(tlb: TLB, entry: Entry) -> None:
        """Remove exactly ``entry``, whose cached rights did not allow the access (the lookup: a miss)."""
        tlb._reject(entry)

    @staticmethod
    def fill(tlb: TLB, address: int, size: str, frame: int, attrs: int, ctx: tuple[int, int, int]) -> None:
        pcid, vpid, eptag = ctx
        tlb.fill(address, frame, size=size, attrs=attrs, pcid=pcid, vpid=vpid, eptag=eptag)


# -- one translation in progress ---------------------------------------------------------


@dataclass
class _EptResult:
    """Outcome of one guest-physical translation inside a walk."""

    status: Status
    hpa: int = 0
    rights: int = 0  # EPT R/W/X (bits 0..2): of the translation, or so far when it failed
    page_size: int = 0  # of the EPT page (whatever piece of it a nested-TLB entry holds)
    memtype: int = 0
    dirty: bool = True  # ATTR_EPT_D: the leaf's D after this access, or EPT A/D off


@dataclass
class _GuestEntry:
    """A guest (or native) paging-structure entry a walk read."""

    level: int
    address: int  # in the table's own space: guest-physical under EPT, else host-physical
    host_address: int
    value: int
    rights: int  # ATTR_W | ATTR_U | ATTR_XD accumulated from the root down to this entry
    ept_rights: int = EPT.RWX  # EPT rights of the page holding it (nested)


@dataclass
class _Translation:
    """References made so far, and what a successful translation will write and fill."""

    mem: Any
    caches: _Caches
    keep_trace: bool
    guest_refs: list[int] = field(default_factory=lambda: [0] * 5)
    ept_refs: list[int] = field(default_factory=lambda: [0] * 5)
    trace: list[Reference] = field(default_factory=list)
    flag_updates: list[tuple[int, int]] = field(default_factory=list)  # (host address, bits to OR in)
    nested_fills: list[tuple[int, int, int, int]] = field(default_factory=list)  # (gpa, frame, size, attrs)
    psc_fills: list[tuple[int, int, int]] = field(default_factory=list)  # (level, frame, attrs)

    def read(self, dimension: str, level: int, address: int) -> int:
        """One memory reference: the entry at host-physical ``address`` (zeros beyond memory)."""
        value = self.mem.read(address) if address >> 12 < self.mem.nframes else 0
        (self.guest_refs if dimension == "guest" else self.ept_refs)[level - 1] += 1
        if self.keep_trace:
            self.trace.append(Reference(dimension, level, address, value))
        return value

    def result(self, status: Status, **fields: Any) -> Walk:
        return Walk(status=status, guest_refs=tuple(self.guest_refs), ept_refs=tuple(self.ept_refs),
                    trace=tuple(self.trace), **fields)

    def commit(self, va: int) -> None:
        """The translation succeeded: set the A/D flags, then fill the caches (docs: fills)."""
        for address, bits in self.flag_updates:
            current = self.mem.read(address)  # OR into what is there now: tables may alias
            if current & bits != bits:
                self.mem.write(address, current | bits)
        caches = self.caches
        for level, frame, attrs in self.psc_fills:  # from the top level down
            caches.fill(caches.psc[level], va, "region", frame, attrs, caches.ctx)
        nested, regions = caches.nested, set()
        for gpa, frame, size, attrs in self.nested_fills:  # in walk order, once per region cached
            held = None if nested is None else _held_size(nested, size)
            if nested is not None and held is not None and (held, gpa >> SIZE_SHIFTS[held]) not in regions:
                regions.add((held, gpa >> SIZE_SHIFTS[held]))
                caches.fill(nested, gpa, PAGE_SIZE_NAMES[size], frame, attrs, caches.nested_ctx)


# -- EPT (29.3) -------------------------------------------------------------------------------


def _translate_gpa(t: _Translation, ept: EptConfig, gpa: int, need: int) -> _EptResult:
    """Translate ``gpa`` through the EPT for an access that needs EPT right ``need`` (R, W or X).

    On success the EPT A/D updates and the nested-TLB fill are queued on ``t``.
    """
    # A guest-physical address wider than the EPT can map has no translation (docs: EPT).
    if gpa >> (12 + 9 * ept.levels):
        return _EptResult(Status.EPT_VIOLATION)
    is_write = need == EPT.W

    nested = t.caches.nested
    if nested is not None:
        hit = t.caches.lookup(nested, gpa, t.caches.nested_ctx)
        if hit is not None:
            cached = int(hit.attrs >> ATTR_EPT_RIGHTS_SHIFT) & EPT.RWX
            if cached & need and (not is_write or hit.attrs & Attr.EPT_D):
                # The EPT page size is that of the entry that hit (a piece, if it was splintered).
                size = 1 << SIZE_SHIFTS[PAGE_SIZE_NAMES_BY_CODE[hit.code]]
                return _EptResult(Status.OK, hpa=(hit.frame << 12) | (gpa & (size - 1)), rights=int(cached),
                                  page_size=size, memtype=(hit.attrs >> ATTR_MEMTYPE_SHIFT) & 7,
                                  dirty=bool(hit.attrs & Attr.EPT_D))
            # The cached rights do not allow this access: forget the entry and walk the EPT.
            t.caches.drop(nested, hit)

    table = ept.root
    rights = int(EPT.RWX)
    used: list[int] = []
    for level in range(ept.levels, 0, -1):
        address = table + 8 * _index(gpa, level)
        entry = t.read("ept", level, address)
        if not entry & EPT.RWX:  # bits 2:0 all clear: not present (29.3.2)
            return _EptResult(Status.EPT_VIOLATION, rights=0)
        leaf = _is_leaf(entry, level)
        if ept_misconfigured(entry, level, leaf, ept, t.mem.maxphyaddr):
            return _EptResult(Status.EPT_MISCONFIG)
        rights &= entry & EPT.RWX  # rights are the AND over every entry used
        used.append(address)
        if leaf:
            break
        table = entry & ADDR_MASK

    if not rights & need:  # 29.3.3.2: a read needs R, a write W, a fetch X
        return _EptResult(Status.EPT_VIOLATION, rights=rights)
    size = 1 << level_shift(level)
    page = entry & ADDR_MASK & ~(size - 1)
    memtype = (entry & EPT_MEMTYPE_MASK) >> EPT_MEMTYPE_SHIFT
    if ept.ad:  # 29.3.5: A in every entry used, D in the leaf on a write
        t.flag_updates.extend((address, EPT.A) for address in used)
        if is_write:
            t.flag_updates.append((used[-1], EPT.D))
    dirty = not ept.ad or bool(entry & EPT.D) or is_write
    if nested is not None:
        t.nested_fills.append((gpa, page >> 12, size, _ept_attrs(rights, dirty, memtype)))
    return _EptResult(Status.OK, hpa=page | (gpa & (size - 1)), rights=rights, page_size=size,
                      memtype=memtype, dirty=dirty)


def _ept_attrs(rights: int, dirty: bool, memtype: int) -> int:
    """The EPT part of a translation's attrs (bits 22:16), also a nested-TLB entry's attrs."""
    return int(rights << ATTR_EPT_RIGHTS_SHIFT | (Attr.EPT_D if dirty else 0) | memtype << ATTR_MEMTYPE_SHIFT)


def _ept_exit(t: _Translation, result: _EptResult, gpa: int, access_bits: int, *, gla: int | None,
              ept: EptConfig, final: bool = False, guest_attrs: int = 0) -> Walk:
    """The EPT violation or misconfiguration a failed guest-physical translation causes."""
    linear = 0 if gla is None else gla
    if result.status == Status.EPT_MISCONFIG:
        return t.result(Status.EPT_MISCONFIG, fault_address=gpa, guest_linear_address=linear)
    # Exit qualification, Table 28-7: the access, then the rights of the translation (bits 3..5).
    qualification = access_bits | result.rights << 3
    if gla is not None:
        qualification |= ExitQual.GLA_VALID
        if final:
            qualification |= ExitQual.FINAL_TRANSLATION
            if ept.advanced_exit_info:  # the guest's own rights for the linear address
                qualification |= ((ExitQual.GLA_USER if guest_attrs & Attr.U else 0)
                                  | (ExitQual.GLA_WRITABLE if guest_attrs & Attr.W else 0)
                                  | (ExitQual.GLA_XD if guest_attrs & Attr.XD else 0))
    return t.result(Status.EPT_VIOLATION, fault_address=gpa, exit_qualification=int(qualification),
                    guest_linear_address=linear)


def _data_access(access: int) -> tuple[int, int]:
    """(the EPT right an access needs, its exit-qualification bit)."""
    if access & Access.WRITE:
        return EPT.W, ExitQual.WRITE
    if access & Access.FETCH:
        return EPT.X, ExitQual.FETCH
    return EPT.R, ExitQual.READ


def walk_ept(mem: Any, ept: EptConfig, gpa: int, access: int = 0, *, caches: Any = None,
             trace: bool = False) -> Walk:
    """Translate guest-physical ``gpa`` through the EPT alone (no linear address: exit-qual bit 7 = 0).

    ``caches`` may name a nested TLB only: ``{"nested": TLB}``.
    """
    mem = _check_mem(mem)
    ept = _check_ept(ept, mem.maxphyaddr)
    _check_root_in_memory(mem, ept.root, "ept.root")
    gpa = _integer(gpa, "gpa", 1 << 64)
    access = check_access_byte(access)
    t = _Translation(mem, _Caches(caches, ept.levels, x86=False, nested=True, pcid=0, eptag=ept.eptag),
                     bool(trace))
    need, access_bit = _data_access(access)
    result = _translate_gpa(t, ept, gpa, need)
    if result.status != Status.OK:
        return _ept_exit(t, result, gpa, access_bit, gla=None, ept=ept)
    t.commit(gpa)
    return t.result(Status.OK, host_address=result.hpa, guest_physical_address=gpa, page_size=result.page_size,
                    attrs=_ept_attrs(result.rights, result.dirty, result.memtype), memtype=result.memtype)


# -- the x86 walk, native or nested (4.4, 4.5) ------------------------------------------------------


def _walk_linear(mem: Any, cpu: CpuState, ept: EptConfig | None, va: int, access: int, caches: _Caches,
                 keep_trace: bool) -> Walk:
    t = _Translation(mem, caches, keep_trace)
    # 1. Canonical check (3.3.7.1): a #GP, before any reference.
    if not is_canonical(va, cpu.levels):
        return t.result(Status.GP, fault_address=va, guest_linear_address=va)
    is_write = bool(access & Access.WRITE)
    # Guest paging-structure accesses are reads for EPT, or writes when EPT A/D is on (29.3.3.2).
    table_need = EPT.W if ept is not None and ept.ad else EPT.R
    table_access = ExitQual.READ | (ExitQual.WRITE if table_need == EPT.W else 0)

    # 2. Start at the root, or below the lowest paging-structure cache that knows this address (4.10.3).
    level, table, rights = cpu.levels, cpu.root, int(Attr.W | Attr.U)
    for cached_level in range(2, cpu.levels + 1):
        psc = caches.psc.get(cached_level)
        hit = None if psc is None else caches.lookup(psc, va, caches.ctx)
        if hit is not None:
            level, table, rights = cached_level - 1, hit.frame << 12, hit.attrs & GUEST_RIGHTS
            break

    used: list[_GuestEntry] = []
    while True:
        address = table + 8 * _index(va, level)
        host_address, ept_rights = address, int(EPT.RWX)
        if ept is not None:  # the entry's guest-physical address is itself translated first
            result = _translate_gpa(t, ept, address, table_need)
            if result.status != Status.OK:
                return _ept_exit(t, result, address, table_access, gla=va, ept=ept)
            host_address, ept_rights = result.hpa, result.rights
        entry = t.read("guest", level, host_address)
        if not entry & PTE.P:
            return t.result(Status.PAGE_FAULT, error_code=fault_bits(access, cpu), fault_address=va,
                            guest_linear_address=va)
        leaf = _is_leaf(entry, level)
        if entry & x86_reserved_bits(level, leaf, cpu.efer_nxe, mem.maxphyaddr):
            return t.result(Status.PAGE_FAULT, error_code=PFErr.P | PFErr.RSVD | fault_bits(access, cpu),
                            fault_address=va, guest_linear_address=va)
        # 3. Rights combine over every entry: R/W and U/S must be 1 in all, XD=1 in any disables.
        if not entry & PTE.RW:
            rights &= ~int(Attr.W)
        if not entry & PTE.US:
            rights &= ~int(Attr.U)
        if entry & PTE.NX:
            rights |= Attr.XD
        used.append(_GuestEntry(level, address, host_address, entry, int(rights), ept_rights))
        if leaf:
            break
        table = entry & ADDR_MASK
        level -= 1

    # 4. The permission check (4.6) on the translation's rights.
    page_size = 1 << level_shift(level)
    attrs = rights & (Attr.W | Attr.U)
    if rights & Attr.XD and cpu.efer_nxe:
        attrs |= Attr.XD
    pkey = (entry >> PTE_PKEY_SHIFT) & 0xF
    attrs |= pkey << ATTR_PKEY_SHIFT
    error_code = check_access(attrs, access, cpu)
    if error_code:
        return t.result(Status.PAGE_FAULT, error_code=error_code, fault_address=va, guest_linear_address=va)
    if entry & PTE.D or is_write:
        attrs |= Attr.D
    is_global = bool(cpu.cr4_pge and entry & PTE.G)
    if is_global:
        attrs |= Attr.G
    physical = (entry & ADDR_MASK & ~(page_size - 1)) | (va & (page_size - 1))

    # 5. Under EPT: the final guest-physical address, then the A/D writes to the guest tables.
    host_address, memtype = physical, 0
    if ept is None:
        attrs |= Attr.EPT_R | Attr.EPT_W | Attr.EPT_X | Attr.EPT_D
    else:
        need, access_bit = _data_access(access)
        result = _translate_gpa(t, ept, physical, need)
        if result.status != Status.OK:
            return _ept_exit(t, result, physical, access_bit, gla=va, ept=ept, final=True, guest_attrs=attrs)
        for used_entry in used:
            flags = PTE.A | (PTE.D if used_entry.level == level and is_write else 0)
            # Setting a guest A/D flag is a write to the guest table: it needs EPT W (29.3.3.2).  The
            # update reads and writes the entry: qualification bits 0 and 1 both (Table 28-7, as KVM).
            if used_entry.value & flags != flags and not used_entry.ept_rights & EPT.W:
                return _ept_exit(t, _EptResult(Status.EPT_VIOLATION, rights=used_entry.ept_rights),
                                 used_entry.address, ExitQual.READ | ExitQual.WRITE, gla=va, ept=ept)
        host_address, memtype = result.hpa, result.memtype
        if result.page_size < page_size:  # the EPT maps the guest's page in pieces: the TLB caches one
            page_size = result.page_size
            attrs |= Attr.FRACTURED
        attrs |= _ept_attrs(result.rights, result.dirty, result.memtype)

    # 6. Success: A in every entry read, D in the leaf on a write (4.8); cache the upper entries.
    for used_entry in used:
        flags = PTE.A | (PTE.D if used_entry.level == level and is_write else 0)
        t.flag_updates.append((used_entry.host_address, flags))
    for used_entry in used[:-1]:  # the non-leaf entries read, top level first
        if used_entry.level in caches.psc:
            t.psc_fills.append((used_entry.level, (used_entry.value & ADDR_MASK) >> 12, used_entry.rights))
    t.commit(va)
    return t.result(Status.OK, host_address=host_address, guest_physical_address=physical if ept else 0,
                    page_size=page_size, attrs=int(attrs), is_global=is_global, pkey=pkey, memtype=memtype,
                    guest_linear_address=va)


def walk(mem: Any, cpu: CpuState, va: int, access: int = 0, *, caches: Any = None, trace: bool = False) -> Walk:
    """Translate linear address ``va`` natively: ``cpu.cr3`` holds the host-physical root.

    ``caches`` may name paging-structure caches: ``{"pde": TLB, "pdpte": TLB,
    "pml4e": TLB, "pml5e": TLB, "pcid": int, "vpid": int}`` (TLBs of kind "psc").

    >>> from fastmmu.reference.memory import HostMemory
    >>> from fastmmu.tables import PageTable
    >>> mem = HostMemory("64MiB")
    >>> pt = PageTable(mem)
    >>> pt.map(0x7000, 0x2000)
    >>> w = walk(mem, CpuState(cr3=pt.root), 0x7123, Access.WRITE | Access.USER)
    >>> hex(w.host_address), w.guest_refs
    ('0x2123', (1, 1, 1, 1, 0))
    """
    mem = _check_mem(mem)
    cpu = _check_cpu(cpu, mem.maxphyaddr)
    _check_root_in_memory(mem, cpu.root, "cpu.cr3")
    va = _integer(va, "va", 1 << 64)
    access = check_access_byte(access)
    caches_used = _Caches(caches, cpu.levels, x86=True, nested=False, pcid=cpu.pcid, eptag=0)
    return _walk_linear(mem, cpu, None, va, access, caches_used, bool(trace))


def walk_nested(mem: Any, cpu: CpuState, ept: EptConfig, gva: int, access: int = 0, *, caches: Any = None,
                trace: bool = False) -> Walk:
    """Translate guest linear address ``gva`` in two dimensions: ``cpu.cr3`` is guest-physical.

    ``caches`` may name paging-structure caches (keyed by linear address, caching
    guest-physical table frames) and a nested TLB (``"nested"``).
    """
    mem = _check_mem(mem)
    cpu = _check_cpu(cpu, mem.maxphyaddr)
    ept = _check_ept(ept, mem.maxphyaddr)
    _check_root_in_memory(mem, ept.root, "ept.root")
    gva = _integer(gva, "gva", 1 << 64)
    access = check_access_byte(access)
    caches_used = _Caches(caches, cpu.levels, x86=True, nested=True, pcid=cpu.pcid, eptag=ept.eptag)
    return _walk_linear(mem, cpu, ept, gva, access, caches_used, bool(trace))


__all__ = ["walk", "walk_ept", "walk_nested", "check_access", "check_access_byte", "fault_bits",
           "x86_reserved_bits", "ept_misconfigured", "ATTR_MEMTYPE_SHIFT"]
