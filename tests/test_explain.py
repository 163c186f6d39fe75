"""``fastmmu.explain``: one translation reference by reference, checked against independent facts.

Reference values and addresses are compared with the tables read through the host memory's
``read`` and the VM's layout, host addresses with what ``MMU.translate`` gives, cache hits with
the structures' own statistics, and error codes with the SDM's bits.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from deadlines import deadline

from fastmmu.arch import ADDR_MASK, EPT, PTE, Access, PFErr, Status
from fastmmu.comparison import build
from fastmmu.config import Config
from fastmmu.explain import (
    WIDTH,
    Explanation,
    access_kind,
    decode_error_code,
    decode_exit_qualification,
    explain,
    explain_in_scenario,
    pick_address,
)
from fastmmu.hypervisor.machine import VM, Machine
from fastmmu.workloads import Zipf
from fastmmu.workloads.scenario import ProcessSpec, Scenario, VMSpec

MODES = ("native", "brute_force", "shadow", "nested")
BASE = 0x0000_1000_0000_0000
PAGES = 4096
WARM = 1000


def small() -> Scenario:
    """One VM, one process touching a few hundred of its 4096 pages in the first 1000 accesses."""
    return Scenario([VMSpec("small", memory="64MiB", processes=[
        ProcessSpec("z", Zipf(pages=PAGES, n=5000, seed=1, base=BASE))])])


def config(tlb: str = "skylake", **sections: dict[str, Any]) -> Config:
    return Config.from_dict({"machine": {"tlb": tlb}, **sections})


def warmed(mode: str, cfg: Config | None = None) -> tuple[Machine, VM, Any]:
    machine = build(small(), mode, cfg or config())
    with deadline():
        machine.run(max_accesses=WARM)
    vm = next(iter(machine.vms.values()))
    process = next(iter(vm.guest.processes.values()))
    return machine, vm, process


def untouched(process: Any) -> int:
    """A page of the process's region that it has not touched."""
    for page in range(PAGES):
        va = BASE + (page << 12)
        if va not in process.pages:
            return va
    raise AssertionError("every page touched")


def translate(machine: Machine, va: int, kind: int) -> int:
    out = np.zeros(1, np.uint64)
    result = machine.mmu.translate(np.array([va], np.uint64), np.array([kind], np.uint8), out=out)
    assert result.complete
    return int(out[0])


def table_walk(mem: Any, root: int, va: int, levels: int, frame: Any = None) -> list[tuple[int, int]]:
    """(entry address, entry value) of every level, read with the memory's API; ``frame`` maps a
    table's frame as found in an entry to its host frame (guest-physical tables)."""
    frame = frame or (lambda f: f)
    out = []
    table = frame(root >> 12) << 12
    for level in range(levels, 0, -1):
        address = table + 8 * ((va >> (12 + 9 * (level - 1))) & 511)
        value = mem.read(address)
        out.append((address, value))
        table = frame((value & ADDR_MASK) >> 12) << 12
    return out


# -- a full walk, reference by reference -------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_mapped_address_is_walked_entry_by_entry(mode: str) -> None:
    machine, vm, process = warmed(mode, config("none"))
    va = pick_address(process) + 0x123
    e = explain(machine, vm, process, va)
    t = e.first
    assert t.ok and t.answered_by == "walk"
    assert len(t.references) == t.walk.references == (24 if mode == "nested" else 4)
    assert [r.number for r in t.references] == list(range(1, len(t.references) + 1))
    assert t.walk.host_address == translate(machine, va, int(Access.USER))
    gpa = process.pages[va & ~0xFFF].gfn << 12 | 0x123  # what the guest kernel mapped
    assert t.guest_physical == gpa
    assert t.walk.host_address == vm.memory.hfn(gpa >> 12) << 12 | 0x123
    mem = machine.mem
    x86 = [r for r in t.references if r.dimension != "ept"]
    if mode == "nested":
        expected = table_walk(mem, process.root << 12, va, 4, vm.memory.hfn)
        assert [r.dimension for r in x86] == ["guest"] * 4
        assert sum(r.dimension == "ept" for r in t.references) == 20
        assert [r.guest_physical for r in x86] == [vm.memory.gfn_of(a >> 12) << 12 | a & 0xFFF
                                                   for a, _ in expected]
        ept_leaf = t.references[-1]
        assert ept_leaf.level_name == "EPT PTE" and ept_leaf.for_gpa == gpa
        assert ept_leaf.points_to == vm.memory.hfn(gpa >> 12) << 12
        assert [s.purpose for s in t.ept_steps] == ["guest PML4E", "guest PDPTE", "guest PDE", "guest PTE",
                                                    "final"]
        assert all(s.references == 4 for s in t.ept_steps)
    else:
        expected = table_walk(mem, machine.mmu.cpu.cr3 & ADDR_MASK, va, 4)
        assert {r.dimension for r in x86} == {"native" if mode == "native" else
                                              "shadow" if mode == "shadow" else "guest"}
    assert [(r.address, r.after) for r in x86] == expected
    assert [r.level_name.split()[-1] for r in x86] == ["PML4E", "PDPTE", "PDE", "PTE"]
    assert x86[-1].leaf and x86[-1].points_to == (gpa if mode == "nested" else t.walk.host_address) & ~0xFFF
    assert "P" in x86[-1].bits and "US" in x86[-1].bits


def test_five_level_2d_walk_makes_35_references() -> None:
    cfg = config("none", guest={"levels": 5}, hypervisor={"ept_levels": 5})
    machine, vm, process = warmed("nested", cfg)
    va = pick_address(process)
    t = explain(machine, vm, process, va).first
    assert t.ok and len(t.references) == t.walk.references == 35
    names = [r.level_name for r in t.references if r.dimension == "guest"]
    assert names == ["guest PML5E", "guest PML4E", "guest PDPTE", "guest PDE", "guest PTE"]
    assert sum(r.level_name == "EPT PML5E" for r in t.references) == 6
    assert t.walk.host_address == translate(machine, va, int(Access.USER))
    # the EPT's top entry is one entry read six times: marked as a repeat of the first
    tops = [r for r in t.references if r.level_name == "EPT PML5E"]
    assert [r.repeat_of for r in tops] == [None] + [tops[0].number] * 5


def test_same_host_address_in_every_mode() -> None:
    hosts = set()
    for mode in MODES:
        machine, vm, process = warmed(mode, config("none"))
        hosts.add(explain(machine, vm, process, pick_address(process) + 8).first.walk.host_address)
    assert len(hosts) == 1


# -- accessed and dirty bits -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "nested", "brute_force"])
def test_first_read_sets_a_and_first_write_sets_d_on_the_leaf(mode: str) -> None:
    machine, vm, process = warmed(mode, config("none"))
    va = untouched(process)
    e = explain(machine, vm, process, va, "read", resolve=True)
    assert e.first.status == Status.PAGE_FAULT and e.final.ok
    leaf = [r for r in e.final.references if r.dimension != "ept"][-1]
    assert leaf.level == 1 and leaf.set_bits == ["A"]  # the guest kernel wrote the leaf without A
    assert machine.mem.read(leaf.address) & (PTE.A | PTE.D) == PTE.A
    assert vm.mode.peek_pte(process.pages[va].table, process.pages[va].index) & PTE.D == 0
    w = explain(machine, vm, process, va, "write").first
    assert w.ok
    leaf = [r for r in w.references if r.dimension != "ept"][-1]
    assert leaf.set_bits == ["D"]
    assert not any(r.set_bits for r in w.references if r is not leaf)
    assert machine.mem.read(leaf.address) & PTE.D
    assert vm.mode.peek_pte(process.pages[va].table, process.pages[va].index) & PTE.D  # the guest sees it


def test_ept_accessed_and_dirty_bits_are_reported() -> None:
    machine, vm, process = warmed("nested", config("none", hypervisor={"ept_ad": True}))
    va = pick_address(process)
    gpa = process.pages[va].gfn << 12
    t = explain(machine, vm, process, va, "write").first
    assert t.ok
    final_leaf = t.references[-1]
    assert final_leaf.dimension == "ept" and final_leaf.for_gpa == gpa
    before, after = final_leaf.value, machine.mem.read(final_leaf.address)
    expected = [n for bit, n in ((EPT.A, "A"), (EPT.D, "D")) if after & ~before & bit]
    assert final_leaf.set_bits == expected and after & EPT.D


# -- caches -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_second_explanation_hits_the_l1_tlb(mode: str) -> None:
    machine, vm, process = warmed(mode)
    va = pick_address(process)
    first = explain(machine, vm, process, va, flush=True).first
    assert first.answered_by == "walk" and first.references
    l1 = machine.mmu.structures()["l1d[0]"]
    hits = l1.stats()["hits"]
    second = explain(machine, vm, process, va)
    t = second.first
    assert t.answered_by == "L1 D-TLB" and t.references == [] and t.walk.references == 0
    assert l1.stats()["hits"] == hits + 1
    assert t.walk.host_address == first.walk.host_address
    text = second.text()
    assert "L1 D-TLB: hit (l1d[0] 4K hit" in text and "memory references" not in text


def _flush_tlbs(machine: Machine) -> None:
    """Empty the TLB levels only: the paging-structure caches and the nested TLB keep their entries."""
    for name, structure in machine.mmu.structures().items():
        if name.startswith(("l1", "l2")):
            structure.flush()


@pytest.mark.parametrize("mode", MODES)
def test_paging_structure_cache_hit_skips_levels(mode: str) -> None:
    machine, vm, process = warmed(mode)
    va = pick_address(process)
    explain(machine, vm, process, va, flush=True)
    _flush_tlbs(machine)
    pde = machine.mmu.structures()["psc.pde"]
    hits = pde.stats()["hits"]
    t = explain(machine, vm, process, va).first
    assert t.ok and t.answered_by == "walk"
    assert pde.stats()["hits"] == hits + 1
    assert t.psc_hit == "psc.pde" and t.start_level == 1 and t.skipped_levels == [4, 3, 2]
    x86 = [r for r in t.references if r.dimension != "ept"]
    assert [r.level for r in x86] == [1]  # only the PTE is read
    if mode == "nested":  # the nested TLB translated the PTE's and the final guest-physical address
        assert t.nested_tlb_hits == 2 and len(t.references) == 1
        assert "2 of 2 EPT translations answered by it" in explain_text(t)
    else:
        assert len(t.references) == 1
    assert "psc.pde hit -> the walk starts at the PTE (PML4E, PDPTE, PDE not read)" in explain_text(t)


def explain_text(t: Any) -> str:
    return "\n".join(t.lines())


def test_write_to_a_clean_cached_page_drops_the_tlb_entry() -> None:
    machine, vm, process = warmed("native")
    va = untouched(process)
    explain(machine, vm, process, va, "read", resolve=True)
    drops = machine.mmu.counters()["tlb_rights_drops"]
    t = explain(machine, vm, process, va, "write").first
    # the clean entry is in both levels (the walk filled L2 then L1): each is dropped, then it walks
    assert machine.mmu.counters()["tlb_rights_drops"] == drops + 2 == drops + t.rights_drops
    text = explain_text(t)
    assert t.answered_by == "walk" and "L1 D-TLB: miss (l1d[0] 4K hit, dropped (rights)" in text
    assert "L2 TLB: miss (l2[0] 4K/2M hit, dropped (rights)" in text
    leaf = t.references[-1]
    assert leaf.set_bits == ["D"] and machine.mem.read(leaf.address) & PTE.D


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_unmapped_address_faults_with_its_error_code(mode: str) -> None:
    machine, vm, process = warmed(mode, config("none"))
    va = untouched(process)
    leaf_slot = vm.guest._leaf_slot(process, va, create=False)
    e = explain(machine, vm, process, va, "write")
    t = e.first
    assert t.status == Status.PAGE_FAULT
    assert t.walk.error_code == PFErr.W | PFErr.U  # not present, user write (SDM 4.7)
    assert t.walk.fault_address == va
    assert f"page fault, CR2 {va:#x}, error code 0x6 (W U: user write, an entry on the way is not present)" \
        in e.text().replace("\n  ", " ")
    last = [r for r in t.references if r.dimension != "ept"][-1]
    assert last.points_to is None and not last.set_bits
    if leaf_slot is not None and mode != "shadow":  # its page table exists: the PTE itself is not present
        assert last.level == 1 and machine.mem.read(last.address) == 0
    if mode == "shadow":
        assert t.next_step.startswith("fault injection exit")
    else:
        assert "the guest kernel maps the page" in t.next_step


def test_resolving_a_fault_shows_every_translation_until_success_nested() -> None:
    machine, vm, process = warmed("nested", config("none"))
    va = untouched(process)
    e = explain(machine, vm, process, va, "read", resolve=True)
    statuses = [t.status for t in e.translations]
    assert statuses == [Status.PAGE_FAULT, Status.EPT_VIOLATION, Status.OK]  # lazy EPT: the new data frame
    fault, violation, done = e.translations
    assert fault.handled_exits == {} and "guest: page_faults +1" in fault.handled
    assert violation.handled_exits == {"ept_violation": 1}
    gfn = process.pages[va].gfn
    assert violation.walk.fault_address == gfn << 12
    # read, GLA valid, final translation; the guest page is user, writable, execute-disable (Table 28-7)
    assert violation.walk.exit_qualification == 0xF81
    assert decode_exit_qualification(0xF81) in violation.outcome()
    assert violation.ept_steps[-1].purpose == "final" and not violation.ept_steps[-1].ok
    assert f"EPT violation exit: the hypervisor backs guest frame {gfn:#x}" in violation.next_step
    assert done.walk.host_address == translate(machine, va, int(Access.USER)) == vm.memory.hfn(gfn) << 12
    assert "translation 3 of 3" in e.text()


def test_resolving_a_fault_under_shadow_paging_is_injected_then_hidden() -> None:
    machine, vm, process = warmed("shadow", config("none"))
    va = untouched(process)
    e = explain(machine, vm, process, va, "read", resolve=True)
    assert [t.status for t in e.translations] == [Status.PAGE_FAULT, Status.PAGE_FAULT, Status.OK]
    assert e.translations[0].handled_exits == {"fault_injection": 1}
    assert e.translations[1].next_step.startswith("hidden fault exit")
    assert e.translations[1].handled_exits == {"hidden_fault": 1}
    assert e.final.walk.host_address == translate(machine, va, int(Access.USER))


def test_fault_outside_every_region_kills_the_process() -> None:
    machine, vm, process = warmed("native", config("none"))
    va = BASE - 0x1000
    e = explain(machine, vm, process, va, "read", resolve=True)
    assert len(e.translations) == 1 and "segfault" in e.first.next_step
    assert "the process was killed" in e.first.handled and not process.alive
    with pytest.raises(ValueError, match="has exited"):
        explain(machine, vm, process, va)


def test_non_canonical_address_is_a_gp() -> None:
    machine, vm, process = warmed("nested")
    t = explain(machine, vm, process, 0x0000_8000_0000_0000).first
    assert t.status == Status.GP and t.references == [] and t.answered_by == "none"
    assert "#GP" in t.next_step and "not canonical" in t.outcome()


def test_decoders() -> None:
    assert decode_error_code(0x15) == "P U I/D: user fetch, the rights of the translation do not allow it"
    assert decode_error_code(0x0D).startswith("P U RSVD: user read, a reserved bit")
    assert decode_error_code(0x27).endswith("the protection key denies it")
    assert decode_exit_qualification(0x182) == ("access write, EPT rights so far none, guest linear address "
                                                "valid, to the final guest-physical address")
    assert decode_exit_qualification(0x81).endswith("to a guest paging-structure entry")
    assert access_kind("write") == Access.WRITE | Access.USER
    assert access_kind("fetch", user=False) == Access.FETCH
    with pytest.raises(ValueError, match="access"):
        access_kind("modify")
    with pytest.raises(ValueError, match="write cannot also be a fetch"):
        access_kind(3)


# -- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_text_renders_every_reference_and_fits_100_columns(mode: str) -> None:
    machine, vm, process = warmed(mode, config("none"))
    e = explain(machine, vm, process, untouched(process), "write", resolve=True)
    text = e.text()
    assert all(len(line) <= WIDTH for line in text.splitlines())
    lines = text.splitlines()
    width = len(str(max(len(t.references) for t in e.translations)))
    for t in e.translations:
        for r in t.references:
            row = [line for line in lines if line.startswith(f"{r.number:>{width}}  {r.level_name} ")
                   and f" {r.address:#x} " in line and f" {r.value:#x} " in line]
            assert row, f"no line for reference {r.number} ({r.level_name} at {r.address:#x})"
    data = json.loads(json.dumps(e.to_dict()))
    assert [len(t["references"]) for t in data["translations"]] == [len(t.references) for t in e.translations]
    assert data["mode"] == mode and data["translations"][-1]["status"] == "ok"


def test_explain_in_scenario_picks_a_touched_page_of_the_first_process() -> None:
    with deadline():
        e = explain_in_scenario(small(), "nested", warm=WARM)
    assert isinstance(e, Explanation) and e.first.ok
    assert e.process == "z" and e.vm == "small" and e.va >> 12 << 12 == e.va
    assert "chosen by fastmmu" in e.text()
    with pytest.raises(ValueError, match="no process 'nope'"):
        explain_in_scenario(small(), "native", warm=10, process="nope")
