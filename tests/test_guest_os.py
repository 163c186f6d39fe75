"""The guest kernel (fastmmu.guest): demand paging, the clock, munmap, exit, the scheduler and
huge pages, driven through a real machine (native mode unless the test is about the modes)."""

from __future__ import annotations

import numpy as np
import pytest

from fastmmu.arch import ADDR_MASK, CR3_NOFLUSH, PTE, PFErr
from fastmmu.guest.frames import HUGE_FRAMES, FrameAllocator
from fastmmu.hypervisor import Machine
from fastmmu.workloads import Accesses, Churn, Mmap, Munmap, Phases, Uniform

MODES = ("native", "brute_force", "shadow", "nested")
PAGE = 4096
HUGE = 2 << 20
BASE = 0x1000_0000  # 256 MiB: 2 MiB-aligned, first entry of its page table
P, RW, US, A, D, PS, NX = (int(f) for f in (PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS, PTE.NX))
READ, WRITE = 0, 1
USER_READ = int(PFErr.U)  # error code of a user read of a not-present page
FLAG_BITS = P | RW | US | A | D | PS | NX


def make_vm(mode="native", memory="16MiB", *, record=False, **guest):
    guest.setdefault("reserved", "1MiB")
    machine = Machine("256MiB", hypervisor={"memory": "8MiB"}, record_faults=record)
    return machine.create_vm(memory, mode, guest=guest)


def tiny_vm(data_frames, mode="native", *, record=False, **guest):
    """A 1 MiB VM whose processes get 4 frames of page tables (one root, one chain down to one
    page table) and ``data_frames`` frames of data."""
    frames = 4 + data_frames
    return make_vm(mode, "1MiB", record=record, reserved=(1 << 20) - frames * PAGE, **guest)


def by_hand(vm):
    """The VM's guest kernel, to drive by hand: the VM is entered first (so the MMU has its
    context, with CR4.PCIDE as the guest sets it), as a run would."""
    vm.mode.enter()
    return vm.guest


def acc(addresses, kinds=READ):
    return Accesses(np.asarray(addresses, dtype=np.uint64), kinds)


def count(steps):
    return sum(len(s) for s in steps if isinstance(s, Accesses))


def run_alive(vm, process, steps):
    """Run ``steps`` as ``process``'s program, stopping after its last access so that it does not
    exit (its pages stay mapped for inspection)."""
    result = vm.run(process, steps, max_accesses=count(steps))
    assert process.alive, process.exit_reason
    return result


def page(i, base=BASE):
    return base + i * PAGE


def flags(vm, process, va):
    return vm.guest.mappings(process)[va][1] & FLAG_BITS


class PortLog:
    """Records what the guest does through its port (the mode): entry writes (with the entry
    they replace), invalidations and CR3 loads, plus where exits begin and end."""

    def __init__(self, vm):
        self.vm = vm
        self.events = []
        mode, guest = vm.mode, vm.guest
        write, invlpg, invpcid, load_cr3 = mode.write_pte, mode.invlpg, mode.invpcid, mode.load_cr3
        exit_ = guest.exit

        def write_pte(table, index, value):
            self.events.append(("write", table, index, mode.peek_pte(table, index), value))
            write(table, index, value)

        def inv_page(va):
            self.events.append(("invlpg", va))
            invlpg(va)

        def inv_pcid(kind, pcid=0, va=0):
            self.events.append(("invpcid", kind, pcid, va))
            invpcid(kind, pcid, va)

        def cr3(value):
            self.events.append(("cr3", value))
            load_cr3(value)

        def exit_process(process, reason="exit"):
            self.events.append(("exit_begin", process.pid, process.pcid))
            exit_(process, reason)
            self.events.append(("exit_end", process.pid))

        def clear_ptes(tables, indices):  # the teardown's writes, one call for all
            for table, index in zip(tables.tolist(), indices.tolist(), strict=True):
                self.events.append(("write", table, index, mode.peek_pte(table, index), 0))
            clear(tables, indices)

        clear = mode.clear_ptes
        mode.write_pte, mode.invlpg, mode.invpcid, mode.load_cr3 = write_pte, inv_page, inv_pcid, cr3
        mode.clear_ptes = clear_ptes
        guest.exit = exit_process

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]

    def clear(self):
        self.events.clear()


# -- demand paging -----------------------------------------------------------------------


def test_the_first_touch_of_each_page_faults_once_and_later_touches_do_not():
    vm = make_vm(record=True)
    process = vm.spawn()
    pages = [page(i) for i in range(16)]
    touches = [va + offset for offset in (0, 8, 4088) for va in pages]
    result = run_alive(vm, process, [Mmap(BASE, 32 * PAGE), acc(touches)])
    assert result.stats["guest"]["page_faults"] == 16
    assert [va for _, va, _ in vm.guest.fault_log] == pages  # the first touch, in order
    assert all(code == USER_READ for _, _, code in vm.guest.fault_log)
    assert sorted(vm.guest.mappings(process)) == pages
    assert vm.guest.stats["resident_pages"] == 16
    again = run_alive(vm, process, [acc(touches)])
    assert again.stats["guest"]["page_faults"] == 0


def test_a_mapped_page_gets_its_frame_from_the_guest_frame_allocator():
    vm = make_vm()
    guest = vm.guest
    first = guest.frames.first
    assert first == (1 << 20) // PAGE  # guest.reserved stays the kernel's
    process = vm.spawn()
    assert process.root == first  # the root table is the first frame handed out
    run_alive(vm, process, [Mmap(BASE, 64 * PAGE), acc([page(i) for i in range(10)])])
    gfns = {va: gpa >> 12 for va, (gpa, _) in guest.mappings(process).items()}
    tables = {p.table for p in process.pages.values()}
    # the first page's frame is handed out before the tables of its walk are
    assert gfns[page(0)] == first + 1
    assert tables.isdisjoint(gfns.values())
    assert len(set(gfns.values())) == 10
    # nothing was freed: data frames and tables are exactly the frames handed out
    used = set(gfns.values()) | tables | {process.root}
    assert len(used) == guest.stats["resident_pages"] + guest.stats["page_tables"] - 2  # PDPT, PD not seen
    assert used <= set(range(first, guest.frames._next))
    assert guest.frames._next - first == guest.stats["resident_pages"] + guest.stats["page_tables"]
    assert guest.frames.available == guest.frames.total - 10 - guest.stats["page_tables"]


def test_a_writable_data_page_is_present_writable_user_and_not_executable():
    vm = make_vm()
    process = vm.spawn()
    run_alive(vm, process, [Mmap(BASE, 4 * PAGE), acc([page(0)])])
    assert flags(vm, process, page(0)) & ~(A | D) == P | RW | US | NX


def test_read_only_and_executable_regions_get_their_own_flags():
    vm = make_vm()
    process = vm.spawn()
    ro, code = BASE, BASE + 0x10_0000
    run_alive(vm, process, [Mmap(ro, PAGE, writable=False), Mmap(code, PAGE, writable=False, executable=True),
                            acc([ro, code], [READ, 2])])
    assert flags(vm, process, ro) & ~(A | D) == P | US | NX
    assert flags(vm, process, code) & ~(A | D) == P | US
    assert process.alive


def test_a_read_sets_accessed_but_not_dirty_and_a_write_sets_both():
    vm = make_vm()
    process = vm.spawn()
    run_alive(vm, process, [Mmap(BASE, 4 * PAGE), acc([page(0), page(1), page(2), page(2)], [READ, WRITE, READ, READ])])
    assert flags(vm, process, page(0)) & (A | D) == A
    assert flags(vm, process, page(1)) & (A | D) == A | D
    assert flags(vm, process, page(2)) & (A | D) == A
    run_alive(vm, process, [acc([page(2)], WRITE)])  # a write to a clean page that the TLB holds
    assert flags(vm, process, page(2)) & (A | D) == A | D
    assert flags(vm, process, page(0)) & (A | D) == A


# -- the clock ---------------------------------------------------------------------------


def test_memory_pressure_evicts_pages_and_evicted_pages_refault_as_major_faults():
    vm = make_vm(memory="2MiB", record=True)  # 256 frames for processes
    process = vm.spawn()
    pages = [page(i) for i in range(400)]
    run_alive(vm, process, [Mmap(BASE, 400 * PAGE), acc(pages), acc(pages)])
    stats = vm.guest.stats
    assert stats["evictions"] > 0
    assert stats["resident_pages"] == stats["page_faults"] - stats["evictions"]
    assert stats["resident_pages"] + stats["page_tables"] <= 256
    seen, refaults = set(), 0
    for _, va, _ in vm.guest.fault_log:
        refaults += va in seen
        seen.add(va)
    assert stats["major_faults"] == refaults > 0
    assert set(process.pages).isdisjoint(process.swapped)
    assert set(process.pages) | process.swapped == set(pages)
    assert stats["page_faults"] > 400


@pytest.mark.parametrize("touch_again, resident, evicted", [
    (True, "BDE", "AC"),  # B touched between the sweeps: its second chance saves it, C goes
    (False, "CDE", "AB"),  # no touch: B, first in the clock with a clear flag, goes
])
def test_a_page_accessed_between_sweeps_gets_a_second_chance(touch_again, resident, evicted):
    vm = tiny_vm(3)  # room for three data pages
    process = vm.spawn()
    va = {name: page(i) for i, name in enumerate("ABCDE")}
    order = "ABCDBE" if touch_again else "ABCDE"
    run_alive(vm, process, [Mmap(BASE, 8 * PAGE), acc([va[c] for c in order])])
    assert set(process.pages) == {va[c] for c in resident}
    assert process.swapped == {va[c] for c in evicted}
    assert vm.guest.stats["evictions"] == 2
    assert vm.guest.stats["major_faults"] == 0
    run_alive(vm, process, [acc([va[evicted[0]]])])
    assert vm.guest.stats["major_faults"] == 1
    assert va[evicted[0]] in process.pages


def test_the_clock_reads_and_clears_accessed_flags_and_invalidates_each_change():
    vm = tiny_vm(3)
    process = vm.spawn()
    run_alive(vm, process, [Mmap(BASE, 8 * PAGE), acc([page(0), page(1)])])
    guest = vm.guest
    before = dict(guest.stats)
    run_alive(vm, process, [acc([page(2)])])  # a fault that needs no eviction
    plain_reads = guest.stats["pt_reads"] - before["pt_reads"]
    plain_writes = guest.stats["pt_writes"] - before["pt_writes"]
    assert (plain_reads, plain_writes) == (3, 1)  # the walk down to the page table; the leaf
    for i in range(3):
        assert flags(vm, process, page(i)) & A
    log = PortLog(vm)
    before = dict(guest.stats)
    run_alive(vm, process, [acc([page(3)])])
    # the sweep: read and clear A of pages 0, 1, 2; read page 0 again (clear) and evict it
    assert guest.stats["pt_reads"] - before["pt_reads"] - plain_reads == 4
    assert guest.stats["pt_writes"] - before["pt_writes"] - plain_writes == 4
    assert [e[1] for e in log.of("invlpg")] == [page(0), page(1), page(2), page(0)]
    assert page(0) not in process.pages
    assert flags(vm, process, page(1)) & A == 0
    assert flags(vm, process, page(2)) & A == 0
    assert flags(vm, process, page(3)) & A  # the faulting access went through after the fault


def test_the_clock_driven_by_hand_is_fifo_without_accessed_flags_and_spares_a_flagged_page():
    vm = tiny_vm(3)
    guest = by_hand(vm)
    process = guest.spawn()
    guest.mmap(process, BASE, 8 * PAGE)
    guest.switch_to(process)
    log = PortLog(vm)
    for i in range(3):
        assert guest.page_fault(process, page(i), USER_READ)
    assert all(f & A == 0 for f in (flags(vm, process, page(i)) for i in range(3)))  # software sets no A
    reads = guest.stats["pt_reads"]
    assert guest.page_fault(process, page(3), USER_READ)
    assert guest.stats["pt_reads"] - reads == 1 + 3  # one look at page 0, then the walk
    assert set(process.pages) == {page(1), page(2), page(3)}
    # the hardware sets A on page 1: the clock gives it a second chance and takes page 2
    slot = process.pages[page(1)]
    vm.mode.write_pte(slot.table, slot.index, vm.mode.peek_pte(slot.table, slot.index) | A)
    log.clear()
    assert guest.page_fault(process, page(4), USER_READ)
    assert set(process.pages) == {page(1), page(3), page(4)}
    assert flags(vm, process, page(1)) & A == 0
    assert [e[1] for e in log.of("invlpg")] == [page(1), page(2)]
    assert process.swapped == {page(0), page(2)}


def test_the_clock_invalidates_another_process_page_with_invpcid():
    # two roots, then one's chain of 3 tables and 2 pages: 7; two's fault needs 4 more
    vm = make_vm("native", "1MiB", reserved=(1 << 20) - 10 * PAGE)
    guest = by_hand(vm)
    one, two = guest.spawn(), guest.spawn()
    for p in (one, two):
        guest.mmap(p, BASE, 8 * PAGE)
    guest.switch_to(one)
    assert guest.page_fault(one, page(0), USER_READ)
    assert guest.page_fault(one, page(1), USER_READ)
    guest.switch_to(two)
    log = PortLog(vm)
    assert guest.page_fault(two, page(0), USER_READ)
    assert guest.stats["evictions"] == 1 and page(0) not in one.pages  # one's page, first in the clock
    assert log.of("invpcid") == [("invpcid", 0, one.pcid, page(0))]
    log.clear()
    assert guest.page_fault(two, page(1), USER_READ)
    assert log.of("invpcid") == [("invpcid", 0, one.pcid, page(1))]
    assert not log.of("invlpg")
    assert one.pages == {} and one.swapped == {page(0), page(1)}
    assert set(two.pages) == {page(0), page(1)}


# -- munmap ------------------------------------------------------------------------------


def test_munmap_frees_the_pages_and_the_tables_that_only_covered_the_range():
    vm = make_vm()
    guest, mode = vm.guest, vm.mode
    process = vm.spawn()
    a, b = 4 << 30, 8 << 30  # 1 GiB each: one page directory each, under the same PDPT
    touched_a = [a, a + PAGE, a + HUGE]  # two page tables under a's directory
    run_alive(vm, process, [Mmap(a, 1 << 30), Mmap(b, HUGE), acc(touched_a + [b])])
    assert guest.stats["page_tables"] == 7  # root, PDPT, a's PD and 2 PTs, b's PD and PT
    pdpt = (mode.peek_pte(process.root, 0) & ADDR_MASK) >> 12
    pd_a = (mode.peek_pte(pdpt, 4) & ADDR_MASK) >> 12
    freed = {process.pages[va].gfn for va in touched_a} | {process.pages[va].table for va in touched_a} | {pd_a}
    available = guest.frames.available
    log = PortLog(vm)
    guest.munmap(process, a, 1 << 30)
    assert guest.stats["page_tables"] == 4
    assert guest.stats["resident_pages"] == 1
    assert set(process.pages) == {b}
    assert guest.frames.available == available + 6
    assert set(guest.frames._free) == freed
    assert mode.peek_pte(pdpt, 4) == 0
    assert mode.peek_pte(pdpt, 8) & P  # b's directory stays
    # each page, then each table entry, invalidated right after it is cleared
    assert [e[1] for e in log.of("invlpg")] == touched_a + [a, a + HUGE, a]
    # the frames are reused (last freed, first reused); b still works without a fault
    result = run_alive(vm, process, [acc([b, b + PAGE])])
    assert result.stats["guest"]["page_faults"] == 1
    assert process.pages[b + PAGE].gfn in freed


def test_munmap_of_part_of_a_page_table_keeps_the_table_and_the_rest_of_the_region():
    vm = make_vm()
    guest = vm.guest
    process = vm.spawn()
    run_alive(vm, process, [Mmap(BASE, 8 * PAGE), acc([page(i) for i in range(8)])])
    tables = guest.stats["page_tables"]
    guest.munmap(process, page(2), 3 * PAGE)
    assert guest.stats["page_tables"] == tables
    assert sorted(process.pages) == [page(i) for i in (0, 1, 5, 6, 7)]
    assert [(v.base, v.end) for v in process.vmas] == [(BASE, page(2)), (page(5), page(8))]
    result = run_alive(vm, process, [acc([page(0), page(7)])])
    assert result.stats["guest"]["page_faults"] == 0
    vm.run(process, [acc([page(3)])])  # no longer mapped: a segfault
    assert not process.alive and "segfault" in process.exit_reason


def test_munmap_of_a_process_that_is_not_running_uses_invpcid_with_its_pcid():
    vm = make_vm()
    guest = by_hand(vm)
    one, two = guest.spawn(), guest.spawn()
    for p in (one, two):
        guest.mmap(p, BASE, 4 * PAGE)
        guest.switch_to(p)
        assert guest.page_fault(p, page(0), USER_READ)
    log = PortLog(vm)
    guest.munmap(one, BASE, 4 * PAGE)
    assert not log.of("invlpg")
    assert ("invpcid", 0, one.pcid, page(0)) in log.events
    assert all(e[1:3] == (0, one.pcid) for e in log.of("invpcid"))


def test_munmap_of_a_process_that_is_not_running_without_pcids_invalidates_nothing():
    vm = make_vm(pcid=False)
    guest = by_hand(vm)
    one, two = guest.spawn(), guest.spawn()
    assert one.pcid == two.pcid == 0
    for p in (one, two):
        guest.mmap(p, BASE, 4 * PAGE)
        guest.switch_to(p)
        assert guest.page_fault(p, page(0), USER_READ)
    log = PortLog(vm)
    guest.munmap(one, BASE, 4 * PAGE)
    assert log.of("write") and not log.of("invlpg") and not log.of("invpcid")
    guest.switch_to(one)
    assert log.of("cr3") == [("cr3", one.root << 12)]  # the flushing load that makes it safe


def _check_every_live_change_is_invalidated(log, guest):
    """Each write over a present entry is followed at once by INVLPG or INVPCID (one address);
    an exit's writes are covered by one INVPCID of the process's context before it ends."""
    events, checked, i = log.events, 0, 0
    while i < len(events):
        event = events[i]
        if event[0] == "exit_begin":
            end = next(j for j in range(i, len(events)) if events[j][0] == "exit_end")
            if guest.config.pcid:
                assert ("invpcid", 1, event[2], 0) in events[i:end]
            i = end + 1
            continue
        if event[0] == "write" and event[3] & P:
            after = events[i + 1]
            assert after[0] == "invlpg" or (after[0] == "invpcid" and after[1] == 0), (event, after)
            checked += 1
        i += 1
    return checked


@pytest.mark.parametrize("pcid", [True, False])
def test_every_change_of_a_live_entry_is_followed_by_an_invalidation(pcid):
    churn = Churn(pages=40, n=200, rounds=5, seed=3, base=0x3000_0000)
    scatter = Uniform(pages=300, n=2000, seed=4)
    vm = make_vm(memory="2MiB", quantum=300, pcid=pcid)
    log = PortLog(vm)
    if pcid:  # the clock also takes the other process's pages: INVPCID
        vm.spawn(churn)
        vm.spawn(scatter)
    else:  # without PCIDs a process that is not running needs none: keep to one
        vm.spawn(Phases((churn, scatter)))
    result = vm.run()
    stats = result.stats["guest"]
    assert stats["evictions"] > 0 and stats["exits"] == (2 if pcid else 1)
    assert _check_every_live_change_is_invalidated(log, vm.guest) >= stats["evictions"] + 5 * 3
    kinds = {e[1] for e in log.of("invpcid")}
    assert kinds == ({0, 1} if pcid else {3})


# -- exit --------------------------------------------------------------------------------


def test_exit_frees_every_frame_and_table_and_recycles_the_pcid():
    vm = make_vm(memory="2MiB")
    guest = vm.guest
    available = guest.frames.available
    process = vm.spawn()
    run_alive(vm, process, [Mmap(BASE, 300 * PAGE), Mmap(4 << 30, PAGE), acc([page(i) for i in range(300)]),
                            acc([4 << 30])])
    assert guest.stats["evictions"] > 0 and process.swapped
    log = PortLog(vm)
    guest.exit(process)
    assert not process.alive and process.exit_reason == "exit"
    assert guest.frames.available == available
    assert guest.stats["page_tables"] == 0 and guest.stats["resident_pages"] == 0
    assert not guest.resident.count and not len(guest.resident.clock_order()) and not process.pages
    assert not process.swapped
    assert ("invpcid", 1, process.pcid, 0) in log.events
    assert guest.current is None
    log.clear()
    again = vm.spawn()
    assert again.pcid == process.pcid and again.pid != process.pid
    assert log.events == [("invpcid", 1, process.pcid, 0)]  # the reused tag is flushed first


def test_a_process_exits_when_its_program_ends_and_its_memory_returns():
    vm = make_vm()
    guest = vm.guest
    available = guest.frames.available
    first = vm.spawn([Mmap(BASE, 8 * PAGE), acc([page(i) for i in range(8)], WRITE)])
    result = vm.run()
    assert not first.alive and first.done and first.exit_reason == "exit"
    assert result.stats["guest"]["exits"] == 1 and result.stats["guest"]["page_faults"] == 8
    assert guest.frames.available == available
    second = vm.spawn()
    assert second.pcid == first.pcid and second.root == first.root  # LIFO: the same frames come back


# -- segfaults ---------------------------------------------------------------------------


def test_an_access_outside_every_region_kills_the_process_and_the_others_run_on():
    vm = make_vm(quantum=2)
    bad = vm.spawn([Mmap(BASE, PAGE), acc([BASE, BASE + 5 * PAGE + 16, BASE])], name="bad")
    good = vm.spawn([Mmap(BASE, 4 * PAGE), acc([page(i % 4) for i in range(10)])], name="good")
    result = vm.run()
    assert not bad.alive and bad.exit_reason.startswith(f"segfault at {BASE + 5 * PAGE + 16:#x}")
    assert good.exit_reason == "exit"
    assert result.stats["accesses"] == 1 + 10
    assert result.stats["guest"]["segfaults"] == 1 and result.stats["guest"]["exits"] == 2
    assert vm.alive and vm.terminated is None
    assert vm.guest.stats["resident_pages"] == 0


@pytest.mark.parametrize("touch_first", [False, True])
def test_a_write_to_a_read_only_region_is_a_segfault(touch_first):
    vm = make_vm()
    kinds = [READ, WRITE] if touch_first else [WRITE]
    process = vm.spawn([Mmap(BASE, PAGE, writable=False), acc([BASE] * len(kinds), kinds)])
    result = vm.run()
    code = int(PFErr.W | PFErr.U) | (int(PFErr.P) if touch_first else 0)
    assert process.exit_reason == f"segfault at {BASE:#x} (error code {code:#x})"
    assert result.stats["guest"]["segfaults"] == 1
    assert result.stats["accesses"] == len(kinds) - 1


def test_a_fetch_from_a_non_executable_region_is_a_segfault():
    vm = make_vm()
    process = vm.spawn([Mmap(BASE, PAGE), acc([BASE, BASE], [READ, 2])])
    vm.run()
    assert "segfault" in process.exit_reason
    assert int(process.exit_reason.rsplit(" ", 1)[1].rstrip(")"), 16) & int(PFErr.ID)


# -- the scheduler -----------------------------------------------------------------------


def _runs(vm):
    """Run the machine and return the (pid, accesses) runs in the order they happened."""
    runs = []

    def hook(_vm, process, _addresses, _kinds, _out, start, stop):
        if runs and runs[-1][0] == process.pid:
            runs[-1][1] += stop - start
        else:
            runs.append([process.pid, stop - start])

    result = vm.run(on_batch=hook)
    return [tuple(r) for r in runs], result


def _loop(n, base=BASE):
    return [Mmap(base, PAGE), acc([base] * n)]


def test_processes_switch_every_quantum_in_round_robin_order_with_pcid_cr3_loads():
    vm = make_vm(quantum=4)
    processes = [vm.spawn(_loop(10)) for _ in range(3)]
    log = PortLog(vm)
    runs, result = _runs(vm)
    assert runs == [(1, 4), (2, 4), (3, 4)] * 2 + [(1, 2), (2, 2), (3, 2)]
    by_pid = {p.pid: p for p in processes}
    expected = [by_pid[pid].root << 12 | by_pid[pid].pcid | CR3_NOFLUSH for pid, _ in runs]
    assert [e[1] for e in log.of("cr3")] == expected
    assert len({p.pcid for p in processes}) == 3 and all(1 <= p.pcid < 4096 for p in processes)
    assert result.stats["guest"]["context_switches"] == 9


def test_round_robin_goes_on_after_the_process_that_exited():
    vm = make_vm(quantum=4)
    for n in (10, 2, 10):
        vm.spawn(_loop(n))
    runs, _ = _runs(vm)
    # process 2 ends inside its quantum: process 3 is next, not process 1 again
    assert runs == [(1, 4), (2, 2), (3, 4), (1, 4), (3, 4), (1, 2), (3, 2)]


def test_without_pcids_cr3_loads_flush_and_carry_no_pcid():
    walks = {}
    for pcid in (True, False):
        vm = make_vm(quantum=4, pcid=pcid)
        one = vm.spawn(_loop(12, BASE))
        two = vm.spawn(_loop(12, BASE + 0x4000_0000))
        log = PortLog(vm)
        runs, result = _runs(vm)
        assert runs == [(1, 4), (2, 4)] * 3
        # a fourth turn each finds the program at its end
        values = [e[1] for e in log.of("cr3")]
        if pcid:
            assert values == [p.root << 12 | p.pcid | CR3_NOFLUSH for p in (one, two)] * 4
        else:
            assert values == [p.root << 12 for p in (one, two)] * 4
        walks[pcid] = result.stats["tlb"]["walks"]
    # each of the 4 returns to a process walks its page again when the CR3 load flushed
    assert walks[False] - walks[True] == 4


# -- huge pages --------------------------------------------------------------------------


def test_a_huge_region_takes_one_fault_per_2mib_and_maps_ps_pages():
    vm = make_vm(memory="32MiB")
    process = vm.spawn()
    base = 0x4000_0000
    touches = [base + i * 0x1_1000 % (2 * HUGE) for i in range(300)] + [base, base + HUGE]
    run_alive(vm, process, [Mmap(base, 2 * HUGE, huge=True), acc(touches, WRITE)])
    stats = vm.guest.stats
    assert stats["page_faults"] == 2 and stats["huge_pages"] == 2
    assert stats["page_tables"] == 3  # root, PDPT, PD: no page table
    mappings = vm.guest.mappings(process)
    assert sorted(mappings) == [base, base + HUGE]
    for gpa, bits in mappings.values():
        assert gpa % HUGE == 0
        assert bits & FLAG_BITS == P | RW | US | PS | NX | A | D
    assert vm.guest.frames.available == vm.guest.frames.total - 3 - 2 * HUGE_FRAMES


def test_guest_huge_pages_setting_backs_every_region_that_fits_with_2mib_pages():
    vm = make_vm(memory="32MiB", huge_pages=True)
    process = vm.spawn()
    base = 0x4000_0000
    # 2 MiB that fits, then a region one page short of 2 MiB that does not
    run_alive(vm, process, [Mmap(base, HUGE), Mmap(base + HUGE, HUGE - PAGE),
                            acc([base + i * PAGE for i in range(512)] + [base + HUGE, base + HUGE + PAGE])])
    stats = vm.guest.stats
    assert stats["huge_pages"] == 1
    assert stats["page_faults"] == 3
    mappings = vm.guest.mappings(process)
    assert mappings[base][1] & PS
    assert not mappings[base + HUGE][1] & PS


def test_huge_pages_fall_back_to_4k_pages_when_no_aligned_run_is_free():
    vm = make_vm(memory="4MiB")  # frames [256, 1024): one aligned 2 MiB run, at 512
    process = vm.spawn()
    base = 0x4000_0000
    run_alive(vm, process, [Mmap(base, 2 * HUGE, huge=True), acc([base, base + HUGE, base + 8, base + HUGE + 8])])
    stats = vm.guest.stats
    assert stats["page_faults"] == 2 and stats["huge_pages"] == 1
    mappings = vm.guest.mappings(process)
    assert mappings[base] == (512 << 12, mappings[base][1]) and mappings[base][1] & PS
    gpa, bits = mappings[base + HUGE]
    assert not bits & PS
    assert 256 <= gpa >> 12 < 512  # one of the frames skipped to align the run


def test_an_evicted_huge_page_refaults_as_a_major_fault():
    vm = make_vm(memory="6MiB", record=True)  # frames [256, 1536): two aligned runs, 512 and 1024
    guest = vm.guest
    process = vm.spawn()
    r1, r2, r3 = 0x4000_0000, 0x4000_0000 + HUGE, 0x4000_0000 + 2 * HUGE
    fill = [r3 + i * PAGE for i in range(253)]  # the frames skipped to align: 252 after r3's table
    run_alive(vm, process, [Mmap(r1, HUGE, huge=True), Mmap(r2, HUGE, huge=True), Mmap(r3, HUGE),
                            acc([r1, r2] + fill)])
    assert guest.stats["evictions"] == 1 and r1 not in process.pages
    assert len(process.swapped) == HUGE_FRAMES  # all of r1 went to swap
    guest.munmap(process, r2, HUGE)  # frees an aligned run
    run_alive(vm, process, [acc([r1 + 0x1234])])
    assert process.pages[r1].huge
    assert not process.swapped
    assert guest.stats["major_faults"] == 1


# -- 5-level guests ----------------------------------------------------------------------


def test_a_five_level_guest_maps_addresses_beyond_48_bits():
    high = 0x0080_0000_0000_0000  # bit 55: needs LA57; one PML5 entry spans 2**48 bytes
    vm = make_vm(levels=5)
    process = vm.spawn()
    run_alive(vm, process, [Mmap(high, 1 << 48), Mmap(BASE, PAGE), acc([high, high + PAGE, BASE], WRITE)])
    guest = vm.guest
    assert guest.stats["page_faults"] == 3
    assert guest.stats["page_tables"] == 1 + 4 + 4  # the PML5 root, then a chain of 4 for each region
    assert sorted(guest.mappings(process)) == [BASE, high, high + PAGE]
    assert flags(vm, process, high) & (A | D) == A | D
    assert (vm.mode.peek_pte(process.root, high >> 48 & 511) & P) == P
    log = PortLog(vm)
    guest.munmap(process, high, 1 << 48)
    assert guest.stats["page_tables"] == 1 + 4
    assert vm.mode.peek_pte(process.root, high >> 48 & 511) == 0
    assert [e[1] for e in log.of("invlpg")][-1] == high  # the PML5 entry, last
    guest.exit(process)
    assert guest.stats["page_tables"] == 0


def test_a_four_level_guest_cannot_use_a_57_bit_address():
    vm = make_vm()
    process = vm.spawn([Mmap(0x0080_0000_0000_0000, PAGE), acc([0x0080_0000_0000_0000])])
    vm.run()
    assert not process.alive and "general protection" in process.exit_reason
    assert vm.alive


# -- the same behaviour in every mode ----------------------------------------------------


def _scripted(mode):
    """Pressure, second chances, a segfault, munmap, a huge page and exits, in ``mode``."""
    vm = make_vm(mode, memory="4MiB", record=True, quantum=50)  # 768 frames for processes
    base2, huge = 0x2000_0000, 0x4000_0000
    worker = [Mmap(BASE, 1200 * PAGE), Mmap(huge, HUGE, huge=True), acc([huge, huge + 0x1000]),
              acc([page(i) for i in range(1200)], WRITE), acc([page(i) for i in range(0, 1200, 7)]),
              Munmap(BASE, 600 * PAGE), acc([page(i) for i in range(600, 1200, 3)], READ)]
    crash = [Mmap(base2, PAGE, writable=False), acc([base2, base2, base2], [READ, READ, WRITE])]
    keeper = [Mmap(base2, 16 * PAGE), acc([page(i, base2) for i in range(16)] * 4, WRITE)]
    processes = [vm.spawn(worker, name="worker"), vm.spawn(crash, name="crash"), vm.spawn(keeper, name="keep")]
    total = count(worker) + 2 + count(keeper)
    result = vm.run(max_accesses=total - 1)  # the worker, last to end, stays alive
    assert result.stats["accesses"] == total - 1 and result.partial
    return vm, result, processes


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_gives_the_guest_the_same_paging_behaviour(mode):
    vm, result, (worker, crash, keeper) = _scripted(mode)
    assert vm.alive, vm.terminated
    stats = result.stats["guest"]
    assert stats["evictions"] > 0 and stats["major_faults"] > 0
    assert stats["segfaults"] == 1 and crash.exit_reason.startswith("segfault at 0x20000000")
    assert stats["huge_pages"] == 1
    assert worker.alive and keeper.exit_reason == "exit"
    assert stats["exits"] == 2
    if mode == "native":
        return
    native, native_result, (native_worker, _, _) = _scripted("native")
    for key in ("page_faults", "major_faults", "evictions", "segfaults", "huge_pages", "context_switches",
                "pt_reads", "pt_writes", "page_tables", "resident_pages", "exits"):
        assert stats[key] == native_result.stats["guest"][key], key
    assert vm.guest.fault_log == native.guest.fault_log
    assert vm.guest.mappings(worker) == native.guest.mappings(native_worker)
    assert worker.swapped == native_worker.swapped


# -- the frame allocator -----------------------------------------------------------------


def test_frames_are_handed_out_lowest_first_then_reused_last_freed_first():
    frames = FrameAllocator(10, 20)
    assert frames.total == 10 and frames.available == 10
    assert [frames.alloc() for _ in range(4)] == [10, 11, 12, 13]
    assert frames.available == 6
    frames.free(11)
    frames.free(13)
    assert frames.available == 8
    assert frames.alloc() == 13 and frames.alloc() == 11
    assert frames.alloc() == 14
    rest = [frames.alloc() for _ in range(5)]
    assert rest == [15, 16, 17, 18, 19]
    assert frames.available == 0 and frames.alloc() is None


def test_alloc_huge_aligns_and_the_skipped_frames_stay_usable():
    frames = FrameAllocator(3, 3 * HUGE_FRAMES)
    base = frames.alloc_huge()
    assert base == HUGE_FRAMES
    assert frames.available == 3 * HUGE_FRAMES - 3 - HUGE_FRAMES
    skipped = [frames.alloc() for _ in range(HUGE_FRAMES - 3)]
    assert skipped == list(range(3, HUGE_FRAMES))  # still lowest first
    assert frames.alloc() == 2 * HUGE_FRAMES
    assert frames.alloc_huge() is None  # the next aligned run would end past the end
    assert frames.available == HUGE_FRAMES - 1


def test_a_freed_huge_run_is_reused_whole_or_split_when_4k_frames_run_out():
    frames = FrameAllocator(0, 2 * HUGE_FRAMES)
    one, two = frames.alloc_huge(), frames.alloc_huge()
    assert (one, two) == (0, HUGE_FRAMES)
    assert frames.available == 0 and frames.alloc() is None and frames.alloc_huge() is None
    frames.free_huge(one)
    assert frames.available == HUGE_FRAMES
    assert frames.alloc_huge() == one
    frames.free_huge(two)
    got = [frames.alloc() for _ in range(HUGE_FRAMES)]
    assert got == list(range(two, two + HUGE_FRAMES))  # split, lowest first
    assert frames.available == 0 and frames.alloc() is None


def test_frame_allocator_rejects_a_reversed_range():
    with pytest.raises(ValueError, match="not a range"):
        FrameAllocator(5, 4)
    assert FrameAllocator(4, 4).alloc() is None
