"""The cost model: counts in, estimated cycles out.

Every number is a setting (``costs.<name>``) with a documented default.  The
defaults are order-of-magnitude figures for a Skylake-class core, chosen from
public measurements; they are estimates for comparing modes, not a timing
model.  Sources (see docs/hypervisor.md for the discussion):

- TLB hit latencies: Intel 64 and IA-32 Architectures Optimization Reference
  Manual (Skylake: the L1 DTLB lookup is part of the 4-5 cycle load-to-use
  latency; an STLB hit adds about 9 cycles), and 7-cpu.com's Skylake page.
- Memory reference of a page walk: Bhargava et al., ASPLOS 2008, and Barr et
  al., ISCA 2010: page-walk references mostly hit in the data caches, so the
  average is far below DRAM latency; we use 25 cycles.
- VM exit round trip: about 1,000-1,500 cycles for exit + entry with a
  trivial handler on Haswell-Skylake (KVM's kvm-unit-tests ``vmexit`` suite;
  Adams and Agesen, ASPLOS 2006, measured far more on first-generation VT-x).
  The per-reason costs below are the handler's work on top of the round trip.
- Guest page fault: a minor fault with zero-fill is about 1-2 us on Linux
  (exception entry, handler, 4 KiB clear); we use 2,000 cycles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fastmmu.settings import check_number, setting

EXIT_REASONS = (
    "cr3_load",  # MOV to CR3 intercepted (brute force, shadow)
    "invlpg",  # INVLPG / INVPCID intercepted (brute force, shadow)
    "pt_read",  # a guest read of a page-table entry (brute force)
    "pt_write",  # a guest write of a page-table entry (brute force)
    "hidden_fault",  # a shadow miss the hypervisor fixes without the guest knowing (shadow)
    "fault_injection",  # a #PF the hypervisor reflects into the guest (shadow)
    "ept_violation",  # an EPT violation: the hypervisor backs or maps the page (nested)
    "vm_switch",  # the hypervisor schedules another VM
    "unprotect",  # a data access hit a frame no longer used as a page table (brute force)
    "termination",  # the VM is stopped for good (its reason is recorded)
)
"""Why the guest left for the hypervisor; every mode counts its exits under these names."""


@dataclass(frozen=True)
class CostModel:
    """Cycles charged per event.  A run's estimate is the sum of count x cost."""

    access: float = setting(1.0, "the work of one memory access itself, so overheads are relative to a "
                                 "whole run and not to translation alone", unit="cycles")
    tlb_l1_hit: float = setting(1.0, "an L1 TLB hit", unit="cycles")
    tlb_l2_hit: float = setting(9.0, "an L2 (STLB) hit, after the L1 missed", unit="cycles")
    walk_reference: float = setting(25.0, "one memory reference of a page walk (native, shadow or 2D)",
                                    unit="cycles")
    walk_start: float = setting(5.0, "starting a walk (the page-miss handler), per walk", unit="cycles")
    guest_page_fault: float = setting(2000.0, "a page fault handled by the guest kernel, zero-fill included",
                                      unit="cycles")
    guest_pt_access: float = setting(2.0, "a guest kernel read or write of a page-table entry (the access "
                                          "itself; where it traps, its exit is counted on top)", unit="cycles")
    context_switch: float = setting(500.0, "a guest context switch (scheduler + MOV to CR3)", unit="cycles")
    vm_exit: float = setting(1200.0, "a VM exit and the VM entry back (the round trip, any reason)",
                             unit="cycles")
    cr3_load: float = setting(400.0, "handler: emulate MOV to CR3 (a shadow-cache lookup in shadow mode)",
                              unit="cycles")
    invlpg: float = setting(300.0, "handler: emulate INVLPG or INVPCID", unit="cycles")
    pt_read: float = setting(200.0, "handler: emulate a guest page-table read", unit="cycles")
    pt_write: float = setting(400.0, "handler: emulate a guest page-table write and update the real table",
                              unit="cycles")
    hidden_fault: float = setting(1500.0, "handler: walk the guest tables and fill the shadow", unit="cycles")
    fault_injection: float = setting(600.0, "handler: walk the guest tables and inject the #PF",
                                     unit="cycles")
    ept_violation: float = setting(1500.0, "handler: back the guest page and write the EPT entry",
                                   unit="cycles")
    vm_switch: float = setting(2000.0, "handler: save one VM's state and load another's", unit="cycles")
    unprotect: float = setting(300.0, "handler: stop tracking a frame no longer used as a page table",
                               unit="cycles")
    termination: float = setting(0.0, "handler: stop a VM", unit="cycles")
    shadow_table_build: float = setting(300.0, "allocating and zeroing one shadow table frame", unit="cycles")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_number(getattr(self, f.name), f"costs.{f.name}"))

    def estimate(self, stats: dict[str, Any]) -> dict[str, float]:
        """Cycles per cause for a run's ``stats`` (see ``RunResult.stats``)."""
        tlb = stats["tlb"]
        exits = stats["vm_exits"]
        guest = stats["guest"]
        breakdown = {
            "accesses": stats["accesses"] * self.access,
            "tlb": tlb["l1_hits"] * self.tlb_l1_hit + tlb["l2_hits"] * self.tlb_l2_hit,
            "walks": tlb["walks"] * self.walk_start + tlb["walk_references"] * self.walk_reference,
            "guest_page_faults": guest["page_faults"] * self.guest_page_fault,
            "guest_pt_accesses": (guest["pt_reads"] + guest["pt_writes"]) * self.guest_pt_access,
            "context_switches": guest["context_switches"] * self.context_switch,
            "vm_exits": sum(n * (self.vm_exit + getattr(self, reason)) for reason, n in exits.items()
                            if reason != "total"),
            "shadow_tables": stats["hypervisor"]["shadow_tables_built"] * self.shadow_table_build,
        }
        breakdown["total"] = sum(breakdown.values())
        return breakdown
