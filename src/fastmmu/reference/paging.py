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

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastmmu.arch import (
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
from fastmmu.cpu import CpuState, EptConfig, _check_levels
from fastmmu.translation import Reference, Walk

# Bits 20..22 of a translation's attrs: the EPT memory type (docs/core-semantics.md, TLB entries).
ATTR_MEMTYPE_SHIFT = 20
ATTR_EPT_RIGHTS_SHIFT = 16  # ATTR_EPT_R/W/X are EPT R/W/X (bits 0..2) shifted here
GUEST_RIGHTS = Attr.W | Attr.U | Attr.XD  # what a paging-structure cache entry accumulates

# Paging-structure caches: the dict key, and the level of the entry each one caches (4.10.3).
PSC_LEVEL = {"pde": 2, "pdpte": 3, "pml4e": 4, "pml5e": 5}
CACHE_KEYS = (*PSC_LEVEL, "nested", "pcid", "vpid")
PAGE_SIZE_NAMES = {4096: "4K", 2 << 20: "2M", 1 << 30: "1G"}
PAGE_SIZE_BYTES = {name: size for size, name in PAGE_SIZE_NAMES.items()}
_U64 = (1 << 64) - 1


# -- arguments -------------------------------------------------------------------


def check_access_byte(access: Any) -> int:
    """The access kind as an int; ValueError for bits 4..7 or WRITE|FETCH (docs: "Access kinds")."""
    if isinstance(access, bool) or not hasattr(access, "__index__"):
        raise TypeError(f"access: expected an access byte (an int of Access flags), got {access!r}")
    value = operator.index(access)
    if value < 0 or value & ~0xF or (value & Access.WRITE and value & Access.FETCH):
        raise ValueError(f"access: {access!r} is not a valid access kind (bits 0..3, never WRITE|FETCH)")
    return value


def _check_u64(value: Any, what: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what}: expected an integer address, got {value!r}")
    value = operator.index(value)
    if not 0 <= value <= _U64:
        raise ValueError(f"{what}: expected a 64-bit unsigned address, got {value:#x}")
    return value


def _check_cpu(cpu: Any, maxphyaddr: int) -> CpuState:
    if not isinstance(cpu, CpuState):
        raise TypeError(f"cpu: expected a CpuState, got {type(cpu).__name__}")
    _check_levels(cpu.levels, "levels")
    cpu.validate(maxphyaddr)
    return cpu


def _check_ept(ept: Any, maxphyaddr: int) -> EptConfig:
    if not isinstance(ept, EptConfig):
        raise TypeError(f"ept: expected an EptConfig, got {type(ept).__name__}")
    _check_levels(ept.levels, "EPT levels")
    ept.validate(maxphyaddr)
    return ept


def _check_caches(caches: Any) -> Mapping[str, Any]:
    if caches is None:
        return {}
    if not isinstance(caches, Mapping):
        raise TypeError(f"caches: expected a dict such as {{'pde': TLB, 'nested': TLB}} or None, got {caches!r}")
    for key in caches:
        if key not in CACHE_KEYS:
            raise ValueError(f"caches: unknown key {key!r}; expected some of {', '.join(CACHE_KEYS)}")
    return caches


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


# -- one translation in progress ---------------------------------------------------------


@dataclass
class _EptResult:
    """Outcome of one guest-physical translation inside a walk."""

    status: Status
    hpa: int = 0
    rights: int = 0  # EPT R/W/X (bits 0..2): of the translation, or so far when it failed
    page_size: int = 0
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
    caches: Mapping[str, Any]
    keep_trace: bool
    guest_refs: list[int] = field(default_factory=lambda: [0] * 5)
    ept_refs: list[int] = field(default_factory=lambda: [0] * 5)
    trace: list[Reference] = field(default_factory=list)
    flag_updates: list[tuple[int, int]] = field(default_factory=list)  # (host address, bits to OR in)
    psc_fills: list[tuple[Any, int, int, int]] = field(default_factory=list)  # (cache, va, frame, attrs)
    nested_fills: list[tuple[int, int, int, int]] = field(default_factory=list)  # (gpa, frame, size, attrs)
    nested_pages: set[tuple[int, int]] = field(default_factory=set)  # EPT pages (base, size) filled

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

    def commit(self, pcid: int, vpid: int, eptag: int) -> None:
        """The translation succeeded: set the A/D flags, then fill the caches (docs: fills)."""
        for address, bits in self.flag_updates:
            current = self.mem.read(address)  # OR into what is there now: tables may alias
            if current & bits != bits:
                self.mem.write(address, current | bits)
        for cache, va, frame, attrs in self.psc_fills:
            cache.fill(va, frame, size="region", attrs=attrs, pcid=pcid, vpid=vpid, eptag=eptag)
        nested = self.caches.get("nested")
        for gpa, frame, size, attrs in self.nested_fills:
            nested.fill(gpa, frame, size=PAGE_SIZE_NAMES[size], attrs=attrs, eptag=eptag)


# -- EPT (29.3) -------------------------------------------------------------------------------


def _translate_gpa(t: _Translation, ept: EptConfig, gpa: int, need: int) -> _EptResult:
    """Translate ``gpa`` through the EPT for an access that needs EPT right ``need`` (R, W or X).

    On success the EPT A/D updates and the nested-TLB fill are queued on ``t``.
    """
    # A guest-physical address wider than the EPT can map has no translation (docs: EPT).
    if gpa >> (12 + 9 * ept.levels):
        return _EptResult(Status.EPT_VIOLATION)
    is_write = need == EPT.W

    nested = t.caches.get("nested")
    if nested is not None:
        hit = nested.lookup(gpa, eptag=ept.eptag)
        if hit is not None:
            frame, attrs, size_name = hit
            rights = (attrs >> ATTR_EPT_RIGHTS_SHIFT) & EPT.RWX
            dirty = bool(attrs & Attr.EPT_D)
            if rights & need and not (is_write and ept.ad and not dirty):
                size = PAGE_SIZE_BYTES[size_name]
                return _EptResult(Status.OK, hpa=(frame << 12) | (gpa & (size - 1)), rights=rights,
                                  page_size=size, memtype=(attrs >> ATTR_MEMTYPE_SHIFT) & 7, dirty=dirty)
            # The cached rights do not allow this access: forget the entry and walk the EPT.
            nested.drop(gpa, eptag=ept.eptag)

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
    if nested is not None and (page, size) not in t.nested_pages:  # one fill per EPT page per access
        t.nested_pages.add((page, size))
        attrs = (rights << ATTR_EPT_RIGHTS_SHIFT | (Attr.EPT_D if dirty else 0)
                 | memtype << ATTR_MEMTYPE_SHIFT)
        t.nested_fills.append((gpa, page >> 12, size, attrs))
    return _EptResult(Status.OK, hpa=page | (gpa & (size - 1)), rights=rights, page_size=size,
                      memtype=memtype, dirty=dirty)


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
    return t.result(Status.EPT_VIOLATION, fault_address=gpa, exit_qualification=qualification,
                    guest_linear_address=linear)


def _data_access(access: int) -> tuple[int, int]:
    """(the EPT right an access needs, its exit-qualification bit)."""
    if access & Access.WRITE:
        return EPT.W, ExitQual.WRITE
    if access & Access.FETCH:
        return EPT.X, ExitQual.FETCH
    return EPT.R, ExitQual.READ


def walk_ept(mem: Any, ept: EptConfig, gpa: int, access: int = 0, *, caches: Mapping[str, Any] | None = None,
             trace: bool = False) -> Walk:
    """Translate guest-physical ``gpa`` through the EPT alone (no linear address: exit-qual bit 7 = 0).

    Only ``caches["nested"]`` is used.
    """
    access = check_access_byte(access)
    gpa = _check_u64(gpa, "gpa")
    ept = _check_ept(ept, mem.maxphyaddr)
    t = _Translation(mem, _check_caches(caches), trace)
    need, access_bit = _data_access(access)
    result = _translate_gpa(t, ept, gpa, need)
    if result.status != Status.OK:
        return _ept_exit(t, result, gpa, access_bit, gla=None, ept=ept)
    t.commit(0, 0, ept.eptag)
    attrs = (result.rights << ATTR_EPT_RIGHTS_SHIFT | (Attr.EPT_D if result.dirty else 0)
             | result.memtype << ATTR_MEMTYPE_SHIFT)
    return t.result(Status.OK, host_address=result.hpa, guest_physical_address=gpa, page_size=result.page_size,
                    attrs=attrs, memtype=result.memtype)


# -- the x86 walk, native or nested (4.4, 4.5) ------------------------------------------------------


def _psc_lookup(t: _Translation, va: int, levels: int, pcid: int, vpid: int, eptag: int
                ) -> tuple[int, int, int] | None:
    """Probe the paging-structure caches, lowest level first: (level of the cached entry, frame, attrs)."""
    for name, level in PSC_LEVEL.items():
        cache = t.caches.get(name)
        if cache is None or level > levels:
            continue
        hit = cache.lookup(va, pcid=pcid, vpid=vpid, eptag=eptag)
        if hit is not None:
            frame, attrs, _ = hit
            return level, frame, attrs
    return None


def _walk_linear(mem: Any, cpu: CpuState, ept: EptConfig | None, va: int, access: int,
                 caches: Mapping[str, Any], keep_trace: bool) -> Walk:
    t = _Translation(mem, caches, keep_trace)
    # 1. Canonical check (3.3.7.1): a #GP, before any reference.
    if not is_canonical(va, cpu.levels):
        return t.result(Status.GP, fault_address=va, guest_linear_address=va)
    pcid = cpu.pcid if caches.get("pcid") is None else caches["pcid"]
    vpid = caches.get("vpid") or 0
    eptag = ept.eptag if ept is not None else 0
    is_write = bool(access & Access.WRITE)
    # Guest paging-structure accesses are reads for EPT, or writes when EPT A/D is on (29.3.3.2).
    table_need = EPT.W if ept is not None and ept.ad else EPT.R
    table_access = ExitQual.READ | (ExitQual.WRITE if table_need == EPT.W else 0)

    # 2. Start at the root, or below the lowest paging-structure cache that knows this address.
    level, table, rights = cpu.levels, cpu.root, int(Attr.W | Attr.U)
    hit = _psc_lookup(t, va, cpu.levels, pcid, vpid, eptag)
    if hit is not None:
        cached_level, frame, cached_rights = hit
        level, table, rights = cached_level - 1, frame << 12, cached_rights & GUEST_RIGHTS

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
        used.append(_GuestEntry(level, address, host_address, entry, rights, ept_rights))
        if leaf:
            break
        table = entry & ADDR_MASK
        level -= 1

    # 4. The permission check (4.6) on the translation's rights.
    page_size = 1 << level_shift(level)
    attrs = rights & (Attr.W | Attr.U)
    if rights & Attr.XD and cpu.efer_nxe:
        attrs |= Attr.XD
    if entry & PTE.D or is_write:
        attrs |= Attr.D
    is_global = bool(cpu.cr4_pge and entry & PTE.G)
    if is_global:
        attrs |= Attr.G
    pkey = (entry >> PTE_PKEY_SHIFT) & 0xF
    attrs |= pkey << ATTR_PKEY_SHIFT
    error_code = check_access(attrs, access, cpu)
    if error_code:
        return t.result(Status.PAGE_FAULT, error_code=error_code, fault_address=va, guest_linear_address=va)
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
            # Setting a guest A/D flag is a write to the guest table: it needs EPT W (29.3.3.2).
            if used_entry.value & flags != flags and not used_entry.ept_rights & EPT.W:
                return _ept_exit(t, _EptResult(Status.EPT_VIOLATION, rights=used_entry.ept_rights),
                                 used_entry.address, ExitQual.WRITE, gla=va, ept=ept)
        host_address, memtype = result.hpa, result.memtype
        page_size = min(page_size, result.page_size)
        attrs |= (result.rights << ATTR_EPT_RIGHTS_SHIFT | (Attr.EPT_D if result.dirty else 0)
                  | memtype << ATTR_MEMTYPE_SHIFT)

    # 6. Success: A in every entry read, D in the leaf on a write (4.8); cache the upper entries.
    for used_entry in used:
        flags = PTE.A | (PTE.D if used_entry.level == level and is_write else 0)
        t.flag_updates.append((used_entry.host_address, flags))
    for used_entry in used[:-1]:
        name = next(key for key, cached_level in PSC_LEVEL.items() if cached_level == used_entry.level)
        cache = caches.get(name)
        if cache is not None:
            t.psc_fills.append((cache, va, (used_entry.value & ADDR_MASK) >> 12, used_entry.rights))
    t.commit(pcid, vpid, eptag)
    return t.result(Status.OK, host_address=host_address, guest_physical_address=physical if ept else 0,
                    page_size=page_size, attrs=int(attrs), is_global=is_global, pkey=pkey, memtype=memtype,
                    guest_linear_address=va)


def walk(mem: Any, cpu: CpuState, va: int, access: int = 0, *, caches: Mapping[str, Any] | None = None,
         trace: bool = False) -> Walk:
    """Translate linear address ``va`` natively: ``cpu.cr3`` holds the host-physical root.

    >>> from fastmmu.reference.memory import HostMemory
    >>> from fastmmu.tables import PageTable
    >>> mem = HostMemory("64MiB")
    >>> pt = PageTable(mem)
    >>> pt.map(0x7000, 0x2000)
    >>> w = walk(mem, CpuState(cr3=pt.root), 0x7123, Access.WRITE | Access.USER)
    >>> hex(w.host_address), w.guest_refs
    ('0x2123', (1, 1, 1, 1, 0))
    """
    access = check_access_byte(access)
    va = _check_u64(va, "va")
    cpu = _check_cpu(cpu, mem.maxphyaddr)
    return _walk_linear(mem, cpu, None, va, access, _check_caches(caches), trace)


def walk_nested(mem: Any, cpu: CpuState, ept: EptConfig, gva: int, access: int = 0, *,
                caches: Mapping[str, Any] | None = None, trace: bool = False) -> Walk:
    """Translate guest linear address ``gva`` in two dimensions: ``cpu.cr3`` is guest-physical."""
    access = check_access_byte(access)
    gva = _check_u64(gva, "gva")
    cpu = _check_cpu(cpu, mem.maxphyaddr)
    ept = _check_ept(ept, mem.maxphyaddr)
    return _walk_linear(mem, cpu, ept, gva, access, _check_caches(caches), trace)


__all__ = ["walk", "walk_ept", "walk_nested", "check_access", "check_access_byte", "fault_bits",
           "x86_reserved_bits", "ept_misconfigured", "ATTR_MEMTYPE_SHIFT"]
