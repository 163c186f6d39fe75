"""One translation, reference by reference: the teaching view behind ``fastmmu explain``.

``explain(machine, vm, process, va)`` puts ``vm`` on the CPU with ``process``'s
CR3 and PCID loaded (as the run loop does) and runs one access through the
machine's MMU with ``MMU.translate_one(..., trace=True)``: the same path as a
batch, so TLBs, paging-structure caches, the nested TLB and A/D bits change
exactly as they would in a run.  Everything it reports is read, not guessed:

- which TLB structures were probed and which answered: the per-structure
  statistics (``MMU.structures()``) before and after;
- every memory reference of the walk, in order, with the host-physical
  address of the entry, its value as read, its decoded bits and the A/D bits
  the walk set (the entry read again from host memory afterwards);
- which paging-structure cache let the walk start lower, and which EPT
  translations the nested TLB answered (an EPT translation with no reference);
- the outcome: the host-physical address and page size, or the fault with
  its error code or exit qualification decoded, and what the guest kernel or
  the hypervisor does next.

With ``resolve=True`` a fault is then handled as the run loop would (the
mode's ``on_fault``: the guest maps the page, the hypervisor fills the shadow
or the EPT) and the access is explained again, until it succeeds.

>>> from fastmmu.explain import explain_in_scenario
>>> e = explain_in_scenario(None, "nested", warm=2_000)   # doctest: +SKIP
>>> print(e.text())                                        # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastmmu.arch import (
    ADDR_MASK,
    EPT,
    EPT_MEMTYPE_SHIFT,
    PTE,
    PTE_PKEY_SHIFT,
    Access,
    ExitQual,
    MemType,
    PFErr,
    Status,
)
from fastmmu.batch import BatchResult
from fastmmu.translation import Walk

if TYPE_CHECKING:
    from fastmmu.config import Config
    from fastmmu.guest.os import Process
    from fastmmu.hypervisor.machine import VM, Machine
    from fastmmu.workloads.scenario import Scenario

__all__ = ["CacheLookup", "DecodedReference", "EptStep", "Explanation", "Translation", "access_kind", "explain",
           "explain_in_scenario", "pick_address"]

WIDTH = 100  # text() fits a terminal this wide
VPN_MASK = (1 << 48) - 1  # the page-number bits a TLB entry keeps (tlb.pxd)
DEFAULT_WARM = 20_000
MAX_STEPS = 8  # translations shown at most with ``resolve`` (a guest fault, EPT violations, the success)

LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
ACCESSES = {"read": int(Access.READ), "write": int(Access.WRITE), "fetch": int(Access.FETCH)}
TLB_LEVELS = (("l1i", "L1 I-TLB"), ("l1d", "L1 D-TLB"), ("l2", "L2 TLB"))
PSC_NAMES = (("pde", 2), ("pdpte", 3), ("pml4e", 4), ("pml5e", 5))  # the order a walk probes them

# What the hardware walks in each mode, and how its table references are named.
WALKS = {
    "native": ("native", "the hardware walks the process's page tables, which hold host-physical addresses"),
    "brute_force": ("guest", "the hardware walks the guest's own tables in place; the hypervisor keeps "
                             "them holding host addresses (every guest read and write of them traps)"),
    "shadow": ("shadow", "the hardware walks the shadow table the hypervisor built for this guest CR3 "
                         "(guest virtual -> host physical)"),
    "nested": ("guest", "the hardware walks the guest's tables (guest virtual -> guest physical) and "
                        "translates every guest-physical address through the EPT (2D walk)"),
}

_X86_BITS = ((PTE.P, "P"), (PTE.RW, "RW"), (PTE.US, "US"), (PTE.PWT, "PWT"), (PTE.PCD, "PCD"), (PTE.A, "A"),
             (PTE.D, "D"), (PTE.PS, "PS"), (PTE.G, "G"), (PTE.NX, "NX"))
_EPT_BITS = ((EPT.R, "R"), (EPT.W, "W"), (EPT.X, "X"), (EPT.IGNORE_PAT, "IPAT"), (EPT.PS, "PS"), (EPT.A, "A"),
             (EPT.D, "D"))
_PF_BITS = ((PFErr.P, "P"), (PFErr.W, "W"), (PFErr.U, "U"), (PFErr.RSVD, "RSVD"), (PFErr.ID, "I/D"),
            (PFErr.PK, "PK"))
_EQ_BITS = ((ExitQual.READ, "read"), (ExitQual.WRITE, "write"), (ExitQual.FETCH, "fetch"),
            (ExitQual.READABLE, "R"), (ExitQual.WRITABLE, "W"), (ExitQual.EXECUTABLE, "X"),
            (ExitQual.GLA_VALID, "GLA valid"), (ExitQual.FINAL_TRANSLATION, "final"),
            (ExitQual.GLA_USER, "user"), (ExitQual.GLA_WRITABLE, "writable"), (ExitQual.GLA_XD, "XD"))
_AD_X86 = int(PTE.A | PTE.D)
_AD_EPT = int(EPT.A | EPT.D)


# -- decoding ------------------------------------------------------------------------------


def _names(value: int, table: tuple[tuple[Any, str], ...]) -> list[str]:
    return [name for bit, name in table if value & int(bit)]


def _is_x86_leaf(value: int, level: int) -> bool:
    return level == 1 or (level in (2, 3) and bool(value & PTE.PS))


def decode_entry(dimension: str, level: int, value: int) -> tuple[list[str], int | None]:
    """The bits of an entry by name, and the address it points at (None when not present)."""
    if dimension == "ept":
        if not value & EPT.RWX:
            return [], None
        bits = _names(value, _EPT_BITS)
        leaf = level == 1 or bool(value & EPT.PS)
        if leaf:
            memtype = (value >> EPT_MEMTYPE_SHIFT) & 7
            name = MemType(memtype).name if memtype in MemType._value2member_map_ else f"memtype {memtype}"
            bits.insert(3, name)
        size = 1 << (12 + 9 * (level - 1)) if leaf else 4096
        return bits, value & ADDR_MASK & ~(size - 1)
    if not value & PTE.P:
        return [], None
    bits = _names(value, _X86_BITS)
    if level == 1 and value & PTE.PS:  # bit 7 of a PTE is PAT
        bits[bits.index("PS")] = "PAT"
    leaf = _is_x86_leaf(value, level)
    size = 1 << (12 + 9 * (level - 1)) if leaf else 4096
    if leaf and level > 1 and value & PTE.PAT_LARGE:
        bits.append("PAT")
    key = (value >> PTE_PKEY_SHIFT) & 15
    if key and leaf:
        bits.append(f"PK={key}")
    return bits, value & ADDR_MASK & ~(size - 1)


def decode_error_code(error_code: int) -> str:
    """A page-fault error code by its bits (SDM 4.7), with what it means."""
    bits = _names(error_code, _PF_BITS) or ["none"]
    if error_code & PFErr.RSVD:
        why = "a reserved bit is set in an entry"
    elif error_code & PFErr.PK:
        why = "the protection key denies it"
    elif error_code & PFErr.P:
        why = "the rights of the translation do not allow it"
    else:
        why = "an entry on the way is not present"
    kind = "fetch" if error_code & PFErr.ID else "write" if error_code & PFErr.W else "read"
    who = "user" if error_code & PFErr.U else "supervisor"
    return f"{' '.join(bits)}: {who} {kind}, {why}"


def decode_exit_qualification(qualification: int) -> str:
    """An EPT-violation exit qualification by its bits (SDM Vol. 3C, Table 28-7)."""
    access = [n for b, n in _EQ_BITS[:3] if qualification & int(b)] or ["none"]
    rights = "".join(n for b, n in _EQ_BITS[3:6] if qualification & int(b)) or "none"
    parts = [f"access {'+'.join(access)}", f"EPT rights so far {rights}"]
    if qualification & ExitQual.GLA_VALID:
        parts.append("guest linear address valid")
        if qualification & ExitQual.FINAL_TRANSLATION:
            parts.append("to the final guest-physical address")
            guest = [n for b, n in _EQ_BITS[8:] if qualification & int(b)]
            if guest:
                parts.append("guest page " + "/".join(guest))
        else:
            parts.append("to a guest paging-structure entry")
    return ", ".join(parts)


def access_kind(access: str | int, *, user: bool = True) -> int:
    """The access byte of ``access`` ("read", "write", "fetch" or ``Access`` bits) by a CPL-3
    process when ``user``."""
    if isinstance(access, str):
        if access not in ACCESSES:
            raise ValueError(f"access: expected one of {', '.join(ACCESSES)}, got {access!r}")
        kind = ACCESSES[access]
    elif isinstance(access, int) and not isinstance(access, bool) and 0 <= access < 16:
        kind = int(access)
    else:
        raise ValueError(f"access: expected read, write, fetch or Access bits, got {access!r}")
    if kind & Access.WRITE and kind & Access.FETCH:
        raise ValueError("access: a write cannot also be a fetch")
    return kind | (int(Access.USER) if user else 0)


def _access_name(kind: int) -> str:
    name = "fetch" if kind & Access.FETCH else "write" if kind & Access.WRITE else "read"
    if kind & Access.IMPLICIT:
        return f"implicit supervisor {name}"
    return f"{'user' if kind & Access.USER else 'supervisor'} {name}"


def _size_name(size: int) -> str:
    return {4096: "4 KiB", 2 << 20: "2 MiB", 1 << 30: "1 GiB"}.get(size, f"{size} bytes")


# -- what an explanation holds ---------------------------------------------------------------


@dataclass(frozen=True)
class DecodedReference:
    """One memory reference of a walk, decoded."""

    number: int  # 1.. in walk order
    dimension: str  # "native", "guest", "shadow" or "ept" (per mode: what the hardware walks)
    level: int  # 1 (PT) .. 5 (PML5)
    address: int  # host-physical address of the entry
    value: int  # as read, before the walk's A/D updates
    after: int  # read again from host memory after the translation
    guest_physical: int | None = None  # the entry's guest-physical address (nested guest tables)
    for_gpa: int | None = None  # EPT references: the guest-physical address being translated
    repeat_of: int | None = None  # the number of an earlier reference to the same entry

    @property
    def level_name(self) -> str:
        name = LEVEL_NAMES[self.level]
        return f"EPT {name}" if self.dimension == "ept" else f"{self.dimension} {name}"

    @property
    def bits(self) -> list[str]:
        return decode_entry(self.dimension, self.level, self.value)[0]

    @property
    def points_to(self) -> int | None:
        """The address field: the next table, or the page of a leaf (None: not present)."""
        return decode_entry(self.dimension, self.level, self.value)[1]

    @property
    def leaf(self) -> bool:
        if self.dimension == "ept":
            return bool(self.value & EPT.RWX) and (self.level == 1 or bool(self.value & EPT.PS))
        return bool(self.value & PTE.P) and _is_x86_leaf(self.value, self.level)

    @property
    def set_bits(self) -> list[str]:
        """The A/D bits this translation set in the entry (reported on its first reference)."""
        if self.repeat_of is not None:
            return []
        changed = self.after & ~self.value
        if self.dimension == "ept":
            return [n for b, n in ((EPT.A, "A"), (EPT.D, "D")) if changed & b]
        return [n for b, n in ((PTE.A, "A"), (PTE.D, "D")) if changed & b]

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "dimension": self.dimension, "level": self.level,
                "entry": self.level_name, "address": self.address, "value": self.value, "after": self.after,
                "bits": self.bits, "points_to": self.points_to, "leaf": self.leaf, "set": self.set_bits,
                "guest_physical": self.guest_physical, "for_gpa": self.for_gpa, "repeat_of": self.repeat_of}


@dataclass(frozen=True)
class CacheLookup:
    """One translation cache during one translation: lookups that hit and missed (statistics deltas).

    A lookup whose entry was dropped because its rights did not allow the access is a miss, and a
    ``rights_drops`` (docs/core-semantics.md: a hit is a lookup whose entry served)."""

    name: str  # "l1d[0]", "l2[0]", "psc.pde", "nested"
    sizes: tuple[str, ...]
    hits: int
    misses: int
    fills: int
    rights_drops: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sizes": list(self.sizes), "hits": self.hits, "misses": self.misses,
                "rights_drops": self.rights_drops, "fills": self.fills}


@dataclass(frozen=True)
class EptStep:
    """One guest-physical translation of a 2D walk: the EPT walk it took, or the nested TLB."""

    gpa: int
    purpose: str  # "guest PML4E", ..., or "final"
    references: int  # EPT references (0: answered by the nested TLB, or beyond the EPT)
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"gpa": self.gpa, "for": self.purpose, "references": self.references, "ok": self.ok,
                "nested_tlb_hit": self.ok and self.references == 0}


@dataclass
class Translation:
    """One access run through the MMU: how it was answered and what came of it."""

    va: int
    access: int
    walk: Walk  # what translate_one returned
    references: list[DecodedReference]
    caches: list[CacheLookup]
    level_hits: dict[str, tuple[int, int]]  # "l1d" -> (hits, misses) of the level (counters())
    rights_drops: int
    ept_steps: list[EptStep]
    guest_physical: int | None  # of the final address (from the VM's layout), when the VM has it
    start_level: int  # the level the walk started at (below the top: a paging-structure cache hit)
    levels: int
    next_step: str  # what the guest kernel or hypervisor does about a fault ("" on success)
    handled: str = ""  # with resolve: what software did about the fault
    handled_exits: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.walk.status == Status.OK

    @property
    def status(self) -> Status:
        return self.walk.status

    @property
    def walked(self) -> bool:
        """Whether the TLBs missed and the hardware walked (a #GP stops before any lookup)."""
        return self.walk.references > 0 or self.status in (Status.PAGE_FAULT, Status.EPT_VIOLATION,
                                                           Status.EPT_MISCONFIG) \
            or any(c.name.startswith(("psc.", "nested")) and c.hits + c.misses for c in self.caches)

    @property
    def answered_by(self) -> str:
        """"L1 D-TLB", "L1 I-TLB", "L2 TLB" or "walk" (or "none" for a #GP)."""
        if self.status == Status.GP:
            return "none"
        for level, title in TLB_LEVELS:
            if self.level_hits.get(level, (0, 0))[0]:
                return title
        return "walk"

    @property
    def psc_hit(self) -> str | None:
        """The paging-structure cache that answered ("psc.pde", ...), if one did."""
        for lookup in self.caches:
            if lookup.name.startswith("psc.") and lookup.hits:
                return lookup.name
        return None

    @property
    def skipped_levels(self) -> list[int]:
        """Levels of the walk a paging-structure cache hit skipped (the top first)."""
        return list(range(self.levels, self.start_level, -1))

    @property
    def nested_tlb_hits(self) -> int:
        return sum(1 for step in self.ept_steps if step.ok and step.references == 0)

    def outcome(self) -> str:
        w = self.walk
        if self.ok:
            text = f"host-physical {w.host_address:#x}, {_size_name(w.page_size)} page"
            if self.guest_physical is not None:
                text += f" (guest-physical {self.guest_physical:#x})"
            return text
        if w.status == Status.PAGE_FAULT:
            return f"page fault, CR2 {w.fault_address:#x}, error code {w.error_code:#x} " \
                   f"({decode_error_code(w.error_code)})"
        if w.status == Status.EPT_VIOLATION:
            return f"EPT violation at guest-physical {w.fault_address:#x}, exit qualification " \
                   f"{w.exit_qualification:#x} ({decode_exit_qualification(w.exit_qualification)})"
        if w.status == Status.EPT_MISCONFIG:
            return f"EPT misconfiguration at guest-physical {w.fault_address:#x}"
        if w.status == Status.GP:
            return f"#GP: {self.va:#x} is not canonical"
        return f"trap: host-physical {w.host_address:#x} is in a frame marked to stop the run"

    def to_dict(self) -> dict[str, Any]:
        w = self.walk
        return {
            "va": self.va, "access": _access_name(self.access), "status": w.status.name.lower(),
            "answered_by": self.answered_by, "host_address": w.host_address, "page_size": w.page_size,
            "guest_physical_address": self.guest_physical, "error_code": w.error_code,
            "error_code_decoded": decode_error_code(w.error_code) if w.status == Status.PAGE_FAULT else None,
            "fault_address": w.fault_address, "exit_qualification": w.exit_qualification,
            "exit_qualification_decoded": decode_exit_qualification(w.exit_qualification)
            if w.status == Status.EPT_VIOLATION else None,
            "references": [r.to_dict() for r in self.references], "reference_count": len(self.references),
            "tlb_levels": {k: {"hits": h, "misses": m} for k, (h, m) in self.level_hits.items()},
            "tlb_rights_drops": self.rights_drops, "caches": [c.to_dict() for c in self.caches],
            "psc_hit": self.psc_hit, "skipped_levels": [LEVEL_NAMES[lv] for lv in self.skipped_levels],
            "ept_translations": [s.to_dict() for s in self.ept_steps], "nested_tlb_hits": self.nested_tlb_hits,
            "outcome": self.outcome(), "next": self.next_step, "handled": self.handled,
            "handled_exits": dict(self.handled_exits),
        }

    # -- rendering ---------------------------------------------------------------------

    def lines(self, title: str = "translation") -> list[str]:
        """The rendering of ``text()``: prose wrapped to 100 columns, the reference table as is."""
        prose = [f"{title}: {_access_name(self.access)} of {self.va:#x}, answered by {self.answered_by}"]
        prose += self._tlb_lines()
        table: list[str] = []
        if self.walked:
            prose += self._psc_lines()
            table = self._reference_lines()
        after = [f"outcome: {self.outcome()}"]
        if self.next_step:
            after.append(f"next: {self.next_step}")
        if self.handled:
            after.append(f"handled: {self.handled}")
        return [w for line in prose for w in _wrap(line)] + table + [w for line in after for w in _wrap(line)]

    def _tlb_lines(self) -> list[str]:
        out = []
        for level, title in TLB_LEVELS:
            hits, misses = self.level_hits.get(level, (0, 0))
            if not hits + misses:
                continue
            parts = []
            for c in self.caches:
                if c.name.startswith(level + "[") and c.hits + c.misses:
                    what = "hit" if c.hits else "hit, dropped (rights)" if c.rights_drops else "miss"
                    parts.append(f"{c.name} {'/'.join(c.sizes)} {what}")
            fills = [c.name for c in self.caches if c.name.startswith(level + "[") and c.fills]
            result = "hit" if hits else "miss"
            line = f"{title}: {result}" + (f" ({', '.join(parts)})" if parts else "")
            if fills:
                line += f"; filled {', '.join(fills)}"
            out.append(line)
        if not out and self.status != Status.GP:
            out.append("TLB: none configured")
        return out

    def _psc_lines(self) -> list[str]:
        out = []
        probes = [c for c in self.caches if c.name.startswith("psc.") and c.hits + c.misses]
        if probes:
            parts = [f"{c.name} {'hit' if c.hits else 'miss'}" for c in probes]
            line = "paging-structure caches: " + ", ".join(parts)
            if self.psc_hit:
                skipped = ", ".join(LEVEL_NAMES[lv] for lv in self.skipped_levels)
                line += f" -> the walk starts at the {LEVEL_NAMES[self.start_level]} ({skipped} not read)"
            out.append(line)
        nested = [c for c in self.caches if c.name == "nested"]
        if self.ept_steps:
            if not nested:
                out.append(f"nested TLB: none configured; all {len(self.ept_steps)} EPT translations walk")
            else:
                lookups = sum(c.hits + c.misses for c in nested)
                out.append(f"nested TLB: {lookups} lookups; {self.nested_tlb_hits} of {len(self.ept_steps)} "
                           "EPT translations answered by it (no EPT reference)")
        return out

    def _reference_lines(self) -> list[str]:
        if not self.references:
            return ["memory references: none"]
        rows = [("#", "entry", "host address", "value", "bits", "points to", "set")]
        marks: dict[int, str] = {}  # reference index -> a heading line printed before it
        step_index = 0
        refs = self.references
        if self.ept_steps:
            # headings: each EPT translation before the references it made (or a nested-TLB note)
            position = 0
            for step in self.ept_steps:
                purpose = "the final address" if step.purpose == "final" else f"the {step.purpose}"
                if step.references:
                    note = f"EPT walk for guest-physical {step.gpa:#x} ({purpose})"
                elif step.ok:
                    note = f"guest-physical {step.gpa:#x} ({purpose}): nested TLB hit, no EPT reference"
                else:
                    note = f"guest-physical {step.gpa:#x} ({purpose}): beyond the EPT's reach"
                marks.setdefault(position, "")
                marks[position] += ("\n" if marks[position] else "") + note
                position += step.references
                if step.purpose != "final":
                    position += 1  # the guest entry itself
                step_index += 1
        body: list[tuple[str, ...] | str] = []
        for index, ref in enumerate(refs):
            if index in marks:
                body.extend(f"    {note}" for note in marks[index].split("\n"))
            bits = " ".join(ref.bits) if ref.points_to is not None else "not present"
            target = "" if ref.points_to is None else f"{ref.points_to:#x}" + (" (page)" if ref.leaf else "")
            if ref.repeat_of is not None:
                target = (target + f" =#{ref.repeat_of}").strip()
            body.append((str(ref.number), ref.level_name, f"{ref.address:#x}", f"{ref.value:#x}", bits, target,
                         " ".join(ref.set_bits)))
        tail = len(refs)
        if tail in marks:
            body.extend(f"    {note}" for note in marks[tail].split("\n"))
        table = [r for r in body if isinstance(r, tuple)]
        widths = [max(len(r[i]) for r in rows + table) for i in range(len(rows[0]))]
        out = [f"memory references: {len(refs)}"]

        def fmt(row: tuple[str, ...]) -> str:
            cells = [row[0].rjust(widths[0])] + [c.ljust(widths[i + 1]) for i, c in enumerate(row[1:])]
            return "  ".join(cells).rstrip()

        out.append(fmt(rows[0]))
        out += [fmt(r) if isinstance(r, tuple) else r for r in body]
        return out


@dataclass
class Explanation:
    """The translation of one address in one process, and (with ``resolve``) its retries."""

    mode: str
    vm: str
    process: str
    pid: int
    pcid: int
    cr3: int  # what the MMU walks from (host-physical natively, the shadow root, guest-physical nested)
    ept_root: int | None
    va: int
    access: int
    translations: list[Translation]
    chosen: str = ""  # how the address was picked, when it was

    @property
    def first(self) -> Translation:
        return self.translations[0]

    @property
    def final(self) -> Translation:
        return self.translations[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "vm": self.vm, "process": self.process, "pid": self.pid, "pcid": self.pcid,
                "cr3": self.cr3, "ept_root": self.ept_root, "va": self.va, "access": _access_name(self.access),
                "chosen": self.chosen, "walks": WALKS[self.mode][1] if self.mode in WALKS else "",
                "translations": [t.to_dict() for t in self.translations]}

    def text(self) -> str:
        """A fixed-width rendering for a terminal (at most 100 columns)."""
        head = f"explain {self.va:#x} ({_access_name(self.access)}) in process {self.process} (pid {self.pid}) " \
               f"of VM {self.vm}, {self.mode} mode"
        out = _wrap(head)
        if self.chosen:
            out += _wrap(f"address {self.chosen}")
        if self.mode in WALKS:
            out += _wrap(WALKS[self.mode][1] + ".")
        root = f"CR3 {self.cr3:#x} (root table at {'guest' if self.ept_root is not None else 'host'}-physical " \
               f"{self.cr3 & ADDR_MASK:#x}, PCID {self.pcid})"
        if self.ept_root is not None:
            root += f"; EPT root at host-physical {self.ept_root:#x}"
        out += _wrap(root)
        for number, translation in enumerate(self.translations, 1):
            title = f"translation {number} of {len(self.translations)}" if len(self.translations) > 1 \
                else "translation"
            out.append("")
            out += translation.lines(title)
        return "\n".join(out)


def _wrap(line: str, width: int = WIDTH, indent: str = "  ") -> list[str]:
    import textwrap

    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [""]


# -- running one translation -----------------------------------------------------------------


def _enter(machine: Machine, vm: VM, process: Process) -> None:
    """Put ``vm`` on the CPU with ``process`` running, as the run loop does before a batch."""
    machine._enter(vm, charge=False)
    vm.guest.switch_to(process)
    if vm.mode.stale_walks:
        vm.mode.forget_cached_walks()


def _stats(machine: Machine) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, structure in machine.mmu.structures().items():
        stats = structure.stats()
        out[name] = {key: stats[key] for key in ("hits", "misses", "rights_drops", "fills")}
    return out


def _translate(machine: Machine, vm: VM, process: Process, va: int, kind: int) -> Translation:
    mmu, mem = machine.mmu, machine.mem
    structures = mmu.structures()
    before, counters_before = _stats(machine), mmu.counters()
    walk = mmu.translate_one(va, kind, trace=True)
    after, counters_after = _stats(machine), mmu.counters()
    caches = [CacheLookup(name, tuple(getattr(structures[name], "sizes", ())),
                          after[name]["hits"] - before[name]["hits"],
                          after[name]["misses"] - before[name]["misses"],
                          after[name]["fills"] - before[name]["fills"],
                          after[name]["rights_drops"] - before[name]["rights_drops"]) for name in structures]
    level_hits = {level: (counters_after[level]["hits"] - counters_before[level]["hits"],
                          counters_after[level]["misses"] - counters_before[level]["misses"])
                  for level, _ in TLB_LEVELS}
    mode = vm.mode
    nested = mode.name == "nested"
    x86_name = WALKS.get(mode.name, ("guest", ""))[0]
    layout = vm.memory
    references: list[DecodedReference] = []
    seen: dict[int, int] = {}
    for number, ref in enumerate(walk.trace, 1):
        dimension = "ept" if ref.dimension == "ept" else x86_name
        gpa = None
        if nested and dimension != "ept":
            gfn = layout.gfn_of(ref.address >> 12)
            gpa = None if gfn is None else gfn << 12 | (ref.address & 0xFFF)
        references.append(DecodedReference(number, dimension, ref.level, ref.address, ref.value,
                                           mem.read(ref.address), guest_physical=gpa,
                                           repeat_of=seen.get(ref.address)))
        seen.setdefault(ref.address, number)
    levels = mmu.cpu.levels
    start = levels  # a paging-structure cache hit at level L gives the table of level L - 1
    for name, level in PSC_NAMES:
        if any(c.name == f"psc.{name}" and c.hits for c in caches):
            start = level - 1
            break
    ept_steps = _ept_steps(references, walk, start) if nested and walk.status != Status.GP else []
    if ept_steps:  # name the guest-physical address each EPT reference translates
        position = 0
        for step in ept_steps:
            for i in range(position, position + step.references):
                references[i] = _with(references[i], for_gpa=step.gpa)
            position += step.references + (0 if step.purpose == "final" else 1)
    translation = Translation(va, kind, walk, references, caches, level_hits,
                              counters_after["tlb_rights_drops"] - counters_before["tlb_rights_drops"],
                              ept_steps, None, start, levels, "")
    if walk.status == Status.OK:
        if nested:
            translation.guest_physical = walk.guest_physical_address or _gpa_of(layout, walk.host_address)
        else:
            translation.guest_physical = _gpa_of(layout, walk.host_address)
    translation.next_step = _next_step(vm, process, translation)
    return translation


def _with(ref: DecodedReference, **changes: Any) -> DecodedReference:
    from dataclasses import replace

    return replace(ref, **changes)


def _gpa_of(layout: Any, host_address: int) -> int | None:
    gfn = layout.gfn_of(host_address >> 12)
    return None if gfn is None else gfn << 12 | (host_address & 0xFFF)


def _ept_steps(references: list[DecodedReference], walk: Walk, start: int) -> list[EptStep]:
    """Cut a 2D walk's references into its EPT translations: each guest entry's, then the final one."""
    steps: list[EptStep] = []
    pending = 0
    last_guest: DecodedReference | None = None
    for ref in references:
        if ref.dimension == "ept":
            pending += 1
            continue
        assert ref.guest_physical is not None
        steps.append(EptStep(ref.guest_physical, f"guest {LEVEL_NAMES[ref.level]}", pending, True))
        pending, last_guest = 0, ref
    if walk.status == Status.OK:
        steps.append(EptStep(walk.guest_physical_address, "final", pending, True))
    elif walk.status in (Status.EPT_VIOLATION, Status.EPT_MISCONFIG):
        if last_guest is None:
            purpose = f"guest {LEVEL_NAMES[start]}"
        elif last_guest.leaf:
            purpose = "final"
        else:
            purpose = f"guest {LEVEL_NAMES[last_guest.level - 1]}"
        steps.append(EptStep(walk.fault_address, purpose, pending, False))
    return steps


# -- what software does next -----------------------------------------------------------------


def _next_step(vm: VM, process: Process, t: Translation) -> str:
    w, mode = t.walk, vm.mode
    if w.status == Status.OK:
        return ""
    if w.status == Status.GP:
        return "#GP in the guest: the guest kernel kills the process (no VM exit)"
    if w.status == Status.EPT_MISCONFIG:
        return "EPT misconfiguration exit: a hypervisor bug; the VM is terminated"
    if w.status == Status.EPT_VIOLATION:
        gfn = w.fault_address >> 12
        if gfn >= vm.memory.frames:
            return "EPT violation exit: the address is beyond the VM's memory; the hypervisor terminates the VM"
        host = vm.memory.planned(gfn) if vm.memory.base is not None else None
        where = f" (host frame {host:#x})" if host is not None else ""
        return f"EPT violation exit: the hypervisor backs guest frame {gfn:#x}{where} in the EPT and resumes"
    if w.status == Status.TRAP:
        frame = w.host_address >> 12
        if frame in getattr(mode, "links", {}) or frame in getattr(mode, "roots", set()):
            what = "pt_write" if t.access & Access.WRITE else "pt_read"
            return f"trap: the access lands on a live guest page table; the hypervisor emulates it ({what} exit)"
        return "trap: the frame is no longer a page table; the hypervisor unprotects it (unprotect exit) " \
               "and the access is done"
    # a page fault
    error = w.error_code
    prefix = ""
    if mode.name == "shadow":
        from fastmmu.hypervisor.guestwalk import software_walk

        guest = software_walk(mode.peek_pte, lambda *_: None, mode.cpu_state(mode.cr3 or 0), t.va, t.access,
                              vm.machine.mem.maxphyaddr)
        if guest.status == Status.OK:
            return "hidden fault exit: the guest's own tables allow the access; the hypervisor walks them, " \
                   "fills the shadow entry and resumes"
        if guest.status != Status.PAGE_FAULT:
            return "the guest's tables lead outside the VM's memory: the hypervisor terminates the VM"
        error = guest.error_code
        prefix = f"fault injection exit (the guest's own walk faults too, error code {error:#x}): "
    elif mode.name == "nested":
        prefix = "guest page fault, no VM exit: "
    elif mode.name == "brute_force":
        prefix = "guest page fault: "
    else:
        prefix = "page fault: "
    vma = process.vma_of(t.va)
    if vma is None:
        return prefix + "the address is in no region of the process; the guest kernel kills it (segfault)"
    if error & (PFErr.P | PFErr.RSVD) or (error & PFErr.W and not vma.writable) \
            or (error & PFErr.ID and not vma.executable):
        return prefix + "the region does not allow this access; the guest kernel kills the process (segfault)"
    action = "the guest kernel maps the page (demand paging) and the access is retried"
    if mode.name == "brute_force":
        action += "; each of its page-table reads and writes traps (pt_read, pt_write exits)"
    elif mode.name == "shadow":
        action += ", a hidden fault then fills the shadow"
    return prefix + action


def _handle(vm: VM, process: Process, t: Translation) -> bool:
    """Let the mode handle ``t``'s fault as the run loop does; True when the access is to be retried."""
    from fastmmu.guest.port import GuestMemoryError
    from fastmmu.hypervisor.layout import HostExhausted
    from fastmmu.hypervisor.machine import VMTerminated
    from fastmmu.hypervisor.modes import Outcome

    exits_before = Counter(vm.exits)
    guest_before = dict(vm.guest.stats)
    result = BatchResult(0, t.walk.status, t.walk)
    try:
        outcome = vm.mode.on_fault(process, result, t.va, t.access)
    except VMTerminated as exc:
        t.handled = f"the VM was terminated: {exc.reason}"
        outcome = Outcome.TERMINATED
    except (GuestMemoryError, HostExhausted) as exc:
        try:
            vm.terminate(str(exc))
        except VMTerminated:
            pass
        t.handled = f"the VM was terminated: {exc}"
        outcome = Outcome.TERMINATED
    t.handled_exits = {r: n - exits_before.get(r, 0) for r, n in vm.exits.items() if n - exits_before.get(r, 0)}
    guest = {k: v - guest_before.get(k, 0) for k, v in vm.guest.stats.items()
             if k in ("page_faults", "pt_reads", "pt_writes", "segfaults", "page_tables", "evictions")
             and v - guest_before.get(k, 0)}
    if outcome is not Outcome.TERMINATED:
        said = {Outcome.RETRY: "retried", Outcome.DONE: "carried out by software",
                Outcome.KILLED: f"the process was killed ({process.exit_reason})"}[outcome]
        t.handled = said
    exits = ", ".join(f"{r} {n}" for r, n in t.handled_exits.items()) or "none"
    work = ", ".join(f"{k} {n:+d}" for k, n in guest.items())
    t.handled += f"; VM exits: {exits}" + (f"; guest: {work}" if work else "")
    return outcome is Outcome.RETRY


# -- the public API ----------------------------------------------------------------------------


def explain(machine: Machine, vm: VM, process: Process, va: int, access: str | int = "read", *,
            resolve: bool = False, flush: bool = False, user: bool = True) -> Explanation:
    """Translate ``va`` for ``process`` in ``vm`` exactly as the machine's MMU would, reference by
    reference.

    ``access`` is "read", "write", "fetch" or ``Access`` bits; a process's accesses are user-mode
    (``user=False`` makes them supervisor ones).  ``flush`` empties every TLB and translation cache
    first, so that the whole walk shows.  With ``resolve``, a fault is handled as the run loop
    handles it (the guest kernel or the hypervisor fixes the cause) and the access is translated
    again, until it succeeds, the process is killed, or after 8 translations.

    The translation changes the machine as the run would (A/D bits, cache contents, statistics);
    the returned ``Explanation`` renders with ``text()`` and ``to_dict()``.
    """
    if machine.vms.get(vm.id) is not vm:
        raise ValueError(f"{vm.name} is not a VM of this machine")
    if not vm.alive:
        raise ValueError(f"{vm.name} was terminated: {vm.terminated}")
    if vm.guest.processes.get(process.pid) is not process:
        raise ValueError(f"process {process.name} does not belong to {vm.name}")
    if not process.alive:
        raise ValueError(f"process {process.name} has exited ({process.exit_reason})")
    if isinstance(va, bool) or not isinstance(va, int) or not 0 <= va < 1 << 64:
        raise ValueError(f"va: expected a 64-bit unsigned address, got {va!r}")
    kind = access_kind(access, user=user)
    _enter(machine, vm, process)
    if flush:
        machine.mmu.flush()
    translations: list[Translation] = []
    while True:
        translation = _translate(machine, vm, process, va, kind)
        translations.append(translation)
        if translation.ok or not resolve or len(translations) >= MAX_STEPS:
            break
        if not _handle(vm, process, translation) or not process.alive or not vm.alive:
            break
        _enter(machine, vm, process)
    cpu, ept = vm.mode.context()
    return Explanation(vm.mode.name, vm.name, process.name, process.pid, cpu.pcid, cpu.cr3,
                       None if ept is None else ept.root, va, kind, translations)


def pick_address(process: Process, machine: Machine | None = None) -> int:
    """An address ``process`` has touched: the first byte of the oldest of its pages still mapped
    (in the order the guest kernel mapped them).  Given the ``machine``, the oldest one that no TLB
    holds is preferred, so that the explanation shows a walk.  ValueError if no page is mapped."""
    if not process.pages:
        raise ValueError(f"process {process.name} has no page mapped yet: run it longer (warm) or give "
                         "an address")
    if machine is not None:
        shifts = {"4K": 12, "2M": 21, "1G": 30}
        cached: set[tuple[int, int]] = set()
        for name, structure in machine.mmu.structures().items():
            if name.startswith(("l1", "l2")):
                cached.update((shifts[row["size"]], row["vpn"]) for row in structure.contents())
        for page_va in process.pages:
            if not any((shift, (page_va >> shift) & VPN_MASK) in cached for shift in shifts.values()):
                return page_va
    return next(iter(process.pages))


def explain_in_scenario(scenario: Scenario | None = None, mode: str = "nested", va: int | None = None,
                        access: str | int = "read", *, process: str | int | None = None, vm: str | None = None,
                        warm: int = DEFAULT_WARM, config: Config | None = None, resolve: bool = False,
                        flush: bool = False) -> Explanation:
    """Build ``scenario`` (default: the built-in one) in ``mode``, run it for ``warm`` accesses
    (tables and caches populated), then explain ``va`` in one of its processes.

    ``vm`` and ``process`` pick by name (``process`` also by pid); the default is the first
    process of the first VM.  Without ``va``, the address is one the process has touched
    (``pick_address``: the oldest of its pages still mapped that no TLB holds, else the oldest).
    ``resolve`` and ``flush`` are ``explain``'s.
    """
    from fastmmu.comparison import build
    from fastmmu.hypervisor.config import check_mode
    from fastmmu.workloads.scenario import default_scenario

    scenario = scenario or default_scenario()
    if warm < 0:
        raise ValueError(f"warm: expected a non-negative number of accesses, got {warm}")
    machine = build(scenario, check_mode(mode), config)
    if warm:
        machine.run(max_accesses=warm)
    vms = list(machine.vms.values())
    chosen_vm = vms[0] if vm is None else next((v for v in vms if v.name == vm), None)
    if chosen_vm is None:
        raise ValueError(f"vm: no VM named {vm!r}; the scenario has {', '.join(v.name for v in vms)}")
    processes = list(chosen_vm.guest.processes.values())
    if process is None:
        chosen = processes[0] if processes else None
    else:
        chosen = next((p for p in processes if p.name == process or p.pid == process), None)
    if chosen is None:
        raise ValueError(f"process: no process {process!r} in VM {chosen_vm.name}; it has "
                         f"{', '.join(p.name for p in processes) or 'none'}")
    how = ""
    if va is None:
        va = pick_address(chosen, machine)
        how = f"chosen by fastmmu: the oldest page process {chosen.name} touched that is still mapped and " \
              f"not in a TLB (after {warm} accesses of the run)"
    result = explain(machine, chosen_vm, chosen, va, access, resolve=resolve, flush=flush)
    result.chosen = how
    return result
