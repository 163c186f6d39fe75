"""The reference MMU: what the compiled batch run loop does, one readable access at a time.

Per access: canonical check, the L1 TLB of its kind (instruction or data),
then the L2, then a walk (native or 2D) that uses the paging-structure caches
and the nested TLB.  A cached translation is used only if its cached rights
allow the access (and, for a write, its dirty flags are set); otherwise it is
dropped and the next level is tried.  The batch stops at the first access
that is not translated: a fault, or a frame the caller asked to trap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fastmmu.arch import (
    CR3_NOFLUSH,
    PAGE_SHIFT,
    Access,
    Attr,
    ExitQual,
    Status,
    is_canonical,
)
from fastmmu.batch import REFERENCE_DTYPE, BatchResult, check_batch
from fastmmu.cpu import CpuState, EptConfig
from fastmmu.reference import paging
from fastmmu.reference.tlb import SIZE_NAMES, TLB
from fastmmu.tlbconfig import PSC_SHIFTS, SIZE_SHIFTS, TLBConfig, fill_target
from fastmmu.translation import Walk

SIZE_CODE = {4096: 0, 2 << 20: 1, 1 << 30: 2}
CODE_SIZE = {0: "4K", 1: "2M", 2: "1G"}
HISTOGRAM_BUCKETS = 64



class MMU:
    """One logical processor's translation hardware over a HostMemory (reference model)."""

    def __init__(self, mem: Any, *, tlb: TLBConfig | None = None, cpu: CpuState | None = None,
                 ept: EptConfig | None = None, vpid: int = 0) -> None:
        self.mem = mem
        self.config = tlb if tlb is not None else TLBConfig.skylake()
        self.levels: dict[str, list[TLB]] = {}
        for name in ("l1i", "l1d", "l2"):
            self.levels[name] = [
                TLB(g.entries, g.ways, sizes=g.sizes, policy=g.policy, name=f"{name}[{i}]")
                for i, g in enumerate(getattr(self.config, name))
            ]
        self.psc = {
            name: TLB(g.entries, g.ways, sizes=("region",), region_shift=PSC_SHIFTS[name],
                      policy=g.policy, name=f"psc.{name}")
            for name, g in self.config.psc.items()
        }
        g = self.config.nested_tlb
        self.nested = TLB(g.entries, g.ways, sizes=g.sizes, policy=g.policy, name="nested", kind="ntlb") if g else None
        self.set_context(cpu or CpuState(), ept=ept, vpid=vpid)
        self.reset_counters()
        self.logging = False
        self.log: list[tuple[int, int, int, int]] = []

    # -- state -------------------------------------------------------------------

    def set_context(self, cpu: CpuState, *, ept: EptConfig | None = None, vpid: int = 0) -> None:
        """Load processor state without invalidating anything (a VM entry or world switch)."""
        if not isinstance(cpu, CpuState):
            raise TypeError(f"cpu: expected a CpuState, got {type(cpu).__name__}")
        if ept is not None and not isinstance(ept, EptConfig):
            raise TypeError(f"ept: expected an EptConfig or None, got {type(ept).__name__}")
        if not 0 <= vpid < 1 << 16:
            raise ValueError(f"vpid: expected 0..65535, got {vpid!r}")
        cpu.validate(self.mem.maxphyaddr)
        if ept is not None:
            ept.validate(self.mem.maxphyaddr)
        self.cpu, self.ept, self.vpid = cpu, ept, vpid

    @property
    def ept_config(self) -> EptConfig | None:
        """The EptConfig in force, or None (as the compiled MMU's)."""
        return self.ept

    @property
    def eptag(self) -> int:
        return self.ept.eptag if self.ept is not None else 0

    def _all_tlbs(self) -> list[TLB]:
        return [t for level in self.levels.values() for t in level]

    def _walk_caches(self) -> dict[str, Any]:
        caches: dict[str, Any] = dict(self.psc)
        if self.cpu.levels == 4:
            caches.pop("pml5e", None)
        if self.nested is not None:
            caches["nested"] = self.nested
        caches["pcid"] = self.cpu.pcid
        caches["vpid"] = self.vpid
        return caches

    # -- invalidation: each structure applies the scope of its kind (docs/core-semantics.md) ----

    def _structures_list(self) -> list[TLB]:
        return list(self.structures().values())

    def mov_cr3(self, value: int) -> None:
        """MOV to CR3 (4.10.4.1): load a new root, flushing the new PCID's non-global entries
        unless PCIDE=1 and bit 63 (no-flush) is set."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise ValueError(f"mov_cr3: expected a 64-bit value, got {value!r}")
        noflush = bool(value & CR3_NOFLUSH)
        if noflush and not self.cpu.cr4_pcide:
            raise ValueError("mov_cr3: bit 63 (no-flush) is reserved while CR4.PCIDE=0")
        new = CpuState(**{**self.cpu.__dict__, "cr3": value & ~CR3_NOFLUSH})
        new.validate(self.mem.maxphyaddr)
        self.cpu = new
        if not noflush:
            for t in self._structures_list():
                t.mov_cr3(self.cpu.pcid, self.vpid, pcide=self.cpu.cr4_pcide)

    def invlpg(self, va: int) -> None:
        """INVLPG: the page's translations for the current PCID, and global ones of any PCID.
        A non-canonical address makes it a no-op, as on hardware."""
        for t in self._structures_list():
            t.invlpg(va, self.cpu.pcid, self.vpid, la57=self.cpu.levels == 5)

    def invpcid(self, kind: int, *, pcid: int = 0, va: int = 0) -> None:
        """INVPCID types 0 (address), 1 (single context), 2 (all, globals too), 3 (all but globals)."""
        for t in self._structures_list():
            t.invpcid(kind, pcid=pcid, va=va, vpid=self.vpid, la57=self.cpu.levels == 5)

    def invvpid(self, kind: int, *, vpid: int = 0, va: int = 0) -> None:
        """INVVPID types 0 (address), 1 (single context), 2 (all contexts), 3 (single, keep globals)."""
        for t in self._structures_list():
            t.invvpid(kind, vpid=vpid, va=va, la57=self.cpu.levels == 5)

    def invept(self, kind: int, *, eptag: int = 0) -> None:
        """INVEPT types 1 (single context: one EPT tag) and 2 (all contexts)."""
        for t in self._structures_list():
            t.invept(kind, eptag=eptag)

    def flush(self) -> None:
        """Empty every translation cache."""
        for t in self._structures_list():
            t.flush()

    # -- translation ---------------------------------------------------------------

    def _allows(self, attrs: int, access: int) -> bool:
        """Whether a cached translation may serve ``access`` without a walk."""
        if paging.check_access(attrs, access, self.cpu):
            return False
        write = access & Access.WRITE
        if write and not attrs & Attr.D:
            return False
        need = Attr.EPT_W if write else Attr.EPT_X if access & Access.FETCH else Attr.EPT_R
        if not attrs & need:
            return False
        return not (write and self.ept is not None and self.ept.ad and not attrs & Attr.EPT_D)

    def _probe(self, level: list[TLB], va: int, access: int) -> tuple[int, int, str] | None:
        for t in level:
            entry = t._find(va, self.cpu.pcid, self.vpid, self.eptag, t._tick())
            if entry is None:
                continue
            if self._allows(entry.attrs, access):
                return entry.frame, entry.attrs, SIZE_NAMES[entry.code]
            t._reject(entry)  # a miss, for the level and for the structure
            self.counts["tlb_rights_drops"] += 1
        return None

    def _fill(self, name: str, va: int, code: int, frame: int, attrs: int, is_global: bool) -> None:
        level = self.levels[name]
        index = fill_target(getattr(self.config, name), code)
        if index >= 0:
            level[index].fill(va, frame, size=CODE_SIZE[code], attrs=attrs, pcid=self.cpu.pcid,
                              vpid=self.vpid, eptag=self.eptag, global_=is_global)

    def translate_one(self, va: int, access: int = 0, *, trace: bool = False) -> Walk:
        """Translate one access through the caches and, if needed, a walk."""
        if access & ~15 or (access & Access.WRITE and access & Access.FETCH):
            raise ValueError(f"access: {access!r} is not a valid access kind (bits 0..3, never WRITE|FETCH)")
        self.counts["accesses"] += 1
        if not is_canonical(va, self.cpu.levels):
            self.counts["faults"]["gp"] += 1
            return Walk(status=Status.GP, fault_address=va, guest_linear_address=va)
        l1_name = "l1i" if access & Access.FETCH else "l1d"
        hit = None
        if self.levels[l1_name]:
            hit = self._probe(self.levels[l1_name], va, access)
            self.counts[l1_name]["hits" if hit else "misses"] += 1
        if hit is None and self.levels["l2"]:
            hit = self._probe(self.levels["l2"], va, access)
            self.counts["l2"]["hits" if hit else "misses"] += 1
            if hit is not None:
                frame, attrs, size = hit
                self._fill(l1_name, va, SIZE_CODE[1 << SIZE_SHIFTS[size]], frame, attrs, bool(attrs & Attr.G))
        if hit is not None:
            frame, attrs, size = hit
            page = 1 << SIZE_SHIFTS[size]
            result = Walk(status=Status.OK, host_address=(frame << PAGE_SHIFT) | (va & (page - 1)),
                          page_size=page, attrs=attrs)
        else:
            result = self._walk(va, access, trace)
            if result.status != Status.OK:
                self.counts["faults"][result.status.name.lower()] += 1
                self._fault_invalidations(result, va)
                return result
            code = SIZE_CODE[result.page_size]
            frame = (result.host_address & ~(result.page_size - 1)) >> PAGE_SHIFT
            self._fill("l2", va, code, frame, result.attrs, result.is_global)
            self._fill(l1_name, va, code, frame, result.attrs, result.is_global)
        frame = result.host_address >> PAGE_SHIFT
        if frame < self.mem.nframes and self.mem.is_trapped(frame):   # beyond memory: nothing to trap
            self.counts["faults"]["trap"] += 1
            if hit is None:   # the walk completed: its record (references included), the trap's status
                return dataclasses.replace(result, status=Status.TRAP, fault_address=va, guest_linear_address=va)
            return Walk(status=Status.TRAP, host_address=result.host_address, page_size=result.page_size,
                        attrs=result.attrs, fault_address=va, guest_linear_address=va)
        return result

    def _fault_invalidations(self, fault: Walk, va: int) -> None:
        """What delivering the fault of an access to ``va`` invalidates (docs/core-semantics.md,
        "Invalidations"): a page fault, the entries for ``va`` in this context (SDM 4.10.4.1), so that
        it does not recur from cached entries once the tables allow the access; an EPT violation, the
        nested-TLB entries for its guest-physical address and, when that was the translation of
        ``va`` (exit qualification bit 8), the entries for ``va`` (Vol. 3C 29.4.3.1)."""
        if fault.status == Status.PAGE_FAULT:
            for t in self._structures_list():
                t.page_fault(va, self.cpu.pcid, self.vpid, eptag=self.eptag)
        elif fault.status == Status.EPT_VIOLATION:
            final = bool(fault.exit_qualification & ExitQual.FINAL_TRANSLATION)
            for t in self._structures_list():
                t.ept_violation(fault.fault_address, eptag=self.eptag, va=va if final else None,
                                pcid=self.cpu.pcid, vpid=self.vpid)

    def _walk(self, va: int, access: int, trace: bool) -> Walk:
        caches = self._walk_caches()
        if self.ept is None:
            result = paging.walk(self.mem, self.cpu, va, access, caches=caches, trace=trace)
        else:
            result = paging.walk_nested(self.mem, self.cpu, self.ept, va, access, caches=caches, trace=trace)
        self.counts["walks"] += 1
        self.counts["walk_references"] += result.references
        self.counts["walk_refs_histogram"][min(result.references, HISTOGRAM_BUCKETS - 1)] += 1
        return result

    def translate(self, addresses: np.ndarray, kinds: np.ndarray | int | None = None, *,
                  out: np.ndarray | None = None, status: np.ndarray | None = None,
                  start: int = 0) -> BatchResult:
        """Translate ``addresses[start:]`` into ``out``; stop at the first access not translated."""
        addresses, kinds, out, status = check_batch(addresses, kinds, out, status, start)
        for i in range(start, len(addresses)):
            result = self.translate_one(int(addresses[i]), int(kinds[i]), trace=self.logging)
            self.log.extend((ref.address, i, ref.level, 0 if ref.dimension == "guest" else 1) for ref in result.trace)
            if result.status in (Status.OK, Status.TRAP):
                out[i] = result.host_address
            status[i] = result.status
            if result.status == Status.TRAP:   # a batch's trap record: where the access went
                return BatchResult(i, result.status, Walk(
                    status=Status.TRAP, host_address=result.host_address, page_size=result.page_size,
                    attrs=result.attrs, fault_address=result.fault_address,
                    guest_linear_address=result.guest_linear_address))
            if result.status != Status.OK:
                # A batch's fault record leaves per-walk reference detail to translate_one.
                fault = dataclasses.replace(result, guest_refs=(0,) * 5, ept_refs=(0,) * 5, trace=())
                return BatchResult(i, result.status, fault)
        return BatchResult(len(addresses), Status.OK, None)

    # -- the reference log -------------------------------------------------------

    def log_references(self, on: bool = True) -> None:
        """Record every memory reference of every walk ``translate`` makes (or stop)."""
        self.logging = bool(on)

    def take_references(self) -> np.ndarray:
        """The references logged since the last call, in order (REFERENCE_DTYPE)."""
        out = np.array(self.log, dtype=REFERENCE_DTYPE)
        self.log = []
        return out

    # -- counters ----------------------------------------------------------------

    def reset_counters(self) -> None:
        self.counts: dict[str, Any] = {
            "accesses": 0,
            "l1i": {"hits": 0, "misses": 0},
            "l1d": {"hits": 0, "misses": 0},
            "l2": {"hits": 0, "misses": 0},
            "walks": 0,
            "walk_refs_histogram": [0] * HISTOGRAM_BUCKETS,
            "walk_references": 0,
            "faults": {"page_fault": 0, "gp": 0, "ept_violation": 0, "ept_misconfig": 0, "trap": 0},
            "tlb_rights_drops": 0,
        }
        for t in self.structures().values():
            t.reset_stats()

    def structures(self) -> dict[str, TLB]:
        named = {t.name: t for t in self._all_tlbs()}
        named.update({t.name: t for t in self.psc.values()})
        if self.nested is not None:
            named["nested"] = self.nested
        return named

    def counters(self) -> dict[str, Any]:
        """Every counter, as plain Python data (the same layout as the compiled MMU's).

        A hit is a lookup whose entry served the access (a dropped entry's lookup is a miss),
        in the levels' counters and in the structures' stats alike.
        """
        result = {key: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                  for key, v in self.counts.items()}
        result["structures"] = {name: t.stats() for name, t in self.structures().items()}
        return result


__all__ = ["MMU"]
