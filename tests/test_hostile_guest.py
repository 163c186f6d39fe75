"""A hostile guest kernel, one class of attack at a time (issue 11, items 15-22).

Each test drives a guest kernel by hand through its paging port (the only way a guest reaches its
tables) and asserts the architectural outcome exactly: the page fault with its error code, the
translation to the VM's own frame, or the VM stopped with its reason; never another VM's frame,
never a Python exception out of ``Machine.run``.  The broad random version is
``tests/test_isolation_soak.py`` (``bench/soak_isolation.py``).
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from deadlines import deadline

from fastmmu.arch import ADDR_MASK, PTE, Access, PFErr
from fastmmu.guest.os import Process
from fastmmu.guest.port import GuestMemoryError
from fastmmu.hypervisor.machine import VM, Machine, VMTerminated
from fastmmu.workloads import Accesses, Mmap, StepList

MODES = ("native", "brute_force", "shadow", "nested")
DIRECT = ("native", "brute_force")
P, RW, US, A, D, PS = (int(f) for f in (PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS))
TABLE = P | RW | US
L4, L3, L2, L1 = 1 << 39, 1 << 30, 1 << 21, 1 << 12
READ, WRITE = 0, int(Access.WRITE)
RSVD_READ = int(PFErr.P | PFErr.U | PFErr.RSVD)  # a user read that meets a reserved bit
SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "fastmmu"


def accesses(*vas: int, kind: int = READ) -> Accesses:
    return Accesses(np.array(vas, dtype=np.uint64), kind)


def new_machine(pool: str = "4MiB") -> Machine:
    return Machine("1GiB", tlb="skylake", hypervisor={"memory": pool}, record_faults=True)


def content(m: Machine) -> dict[int, bytes]:
    """Every frame of host memory that holds entries, as bytes: what a write anywhere would change."""
    return {int(f): m.mem.read_frame(int(f)).tobytes() for f in m.mem.content_frames()}


def caches(m: Machine) -> dict[str, list[dict[str, Any]]]:
    return {name: t.contents() for name, t in m.mmu.structures().items()}


def reached(m: Machine) -> tuple[Callable[..., None], list[tuple[str, int, int]]]:
    """``on_batch`` that records (VM, linear address, host frame) of every completed access."""
    seen: list[tuple[str, int, int]] = []

    def on_batch(vm: VM, process: Process, addresses: np.ndarray, kinds: np.ndarray, out: np.ndarray,
                 start: int, stop: int) -> None:
        seen.extend((vm.name, int(addresses[i]), int(out[i]) >> 12) for i in range(start, stop))

    return on_batch, seen


def assert_isolated(m: Machine, seen: list[tuple[str, int, int]] = ()) -> None:  # type: ignore[assignment]
    """Every access reached its own VM's frame; every structure a mode keeps maps its VM's frames."""
    by_name = {vm.name: vm for vm in m.vms.values()}
    for name, va, frame in seen:
        assert m.mem.owner_of(frame) == by_name[name].id, f"{name} reached host frame {frame:#x} at {va:#x}"
    for vm in m.vms.values():
        for structure, frame in vm.mode.mapped_frames():
            assert m.mem.owner_of(frame) == vm.id, f"{vm.name}: {structure} maps host frame {frame:#x}"


def table_of(vm: VM, process: Process, va: int, level: int) -> int:
    """The guest frame of the table at ``level`` on the walk of ``va`` (it must exist)."""
    table = process.root
    for current in range(vm.guest_config.levels, level, -1):
        entry = vm.mode.peek_pte(table, (va >> (12 + 9 * (current - 1))) & 511)
        assert entry & P and not (current <= 3 and entry & PS), f"no table at level {current - 1} for {va:#x}"
        table = (entry & ADDR_MASK) >> 12
    return table


# -- item 15: the root stays the root while a CR3 holds it ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("va", "outcome"), [
    (0x1000, "rsvd"),  # PML4[0] has PS: reserved at level 4
    (L4 | 0x50_0000, "beyond"),  # PML4[1] -> the root read as a PDPT: PDPT[0] is a 1 GiB page at 0
    (L4 | 0x3000, "inside"),  # the same 1 GiB page, inside the VM's 4 MiB
], ids=["reserved-at-level-4", "1GiB-page-beyond-the-vm", "1GiB-page-inside-the-vm"])
def test_a_released_root_is_walked_as_the_root_it_is(mode: str, va: int, outcome: str) -> None:
    """The guest releases the table CR3 still holds, then writes into it (issue 11, item 15; repro
    f1): the frame stays a root at level 4, where PS is reserved.  Through PML4[1] -> root it is
    also a PDPT, where the same entry is a 1 GiB page: beyond the VM that stops it; inside the VM
    shadow and nested map it, and the direct modes stop the VM (one slot cannot hold both a
    reserved-bit PML4 entry and a 1 GiB page over frames that are not one aligned run)."""
    m = new_machine()
    attacker = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20}, name="attacker")
    victim = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20}, name="victim")
    victim_process = victim.spawn(StepList([Mmap(L4, 16 * L1), accesses(*range(L4, L4 + 16 * L1, L1))]))
    p = attacker.spawn([accesses(va)])
    attacker.guest.switch_to(p)
    port, root = attacker.mode, p.root
    port.write_pte(root, 0, 0x87)  # PS at level 4
    port.release_table(root)  # the guest frees it; CR3 still holds it
    port.write_pte(root, 1, root << 12 | TABLE)  # PML4[1] -> the root
    on_batch, seen = reached(m)
    with deadline():
        m.run(on_batch=on_batch)
    assert_isolated(m, seen)
    assert victim.terminated is None and victim_process.exit_reason == "exit"
    assert [v for name, v, _ in seen if name == "victim"] == list(range(L4, L4 + 16 * L1, L1))
    if outcome == "rsvd":
        assert attacker.terminated is None
        assert attacker.guest.fault_log == [(p.pid, va, RSVD_READ)]
        assert p.exit_reason == f"segfault at {va:#x} (error code {RSVD_READ:#x})"
    elif outcome == "beyond":
        assert attacker.terminated == f"access at {va:#x} to guest-physical address 0x500000, beyond the VM's memory"
        assert attacker.guest.fault_log == []
    elif mode in DIRECT:
        host = attacker.memory.hfn(root)
        assert attacker.terminated == (
            f"access at {va:#x} through entry 0 of guest page-table frame {root:#x}, a table at levels 4, 3, 2, 1 "
            f"whose levels want different real entries for it (0x87): {mode} mode cannot map it")
        assert m.mem.owner_of(host) == attacker.id
    else:
        assert attacker.terminated is None and p.exit_reason == "exit"
        assert [(v, f) for name, v, f in seen if name == "attacker"] == [(va, attacker.memory.hfn(3))]


@pytest.mark.parametrize("mode", MODES)
def test_a_released_root_stops_being_a_table_when_cr3_moves_on_and_is_one_again_when_loaded(mode: str) -> None:
    """After CR3 leaves a released root, the frame is data; loaded again, it is a root again and
    its PS entry is reserved again (a #PF with RSVD, not a 512 GiB... or any page)."""
    m = new_machine()
    vm = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20})
    first, second = vm.spawn([accesses(0x2000)]), vm.spawn()
    vm.guest.switch_to(first)
    port = vm.mode
    port.release_table(first.root)
    vm.guest.switch_to(second)  # CR3 leaves it: no longer a table
    port.write_pte(first.root, 0, 0x87)
    assert port.peek_pte(first.root, 0) == 0x87
    vm.guest.switch_to(first)  # the hostile kernel loads the released frame again
    with deadline():
        m.run()
    assert vm.terminated is None
    assert vm.guest.fault_log == [(first.pid, 0x2000, RSVD_READ)]
    assert_isolated(m)


# -- item 16: the port's arguments -------------------------------------------------------------------


def port_calls(frames: int) -> list[tuple[str, Callable[[Any], Any], type[Exception], str]]:
    """(name, call on the port, the error, its text): the same in every mode."""
    value_error = "is not a 64-bit value (0..2**64-1)"
    return [
        ("read index 512", lambda p: p.read_pte(0, 512), ValueError, "read_pte: entry index 512 is not 0..511"),
        ("read index -1", lambda p: p.read_pte(0, -1), ValueError, "read_pte: entry index -1 is not 0..511"),
        ("read index far", lambda p: p.read_pte(0, 0xD00 << 9 | 3), ValueError,
         "read_pte: entry index 1703939 is not 0..511"),
        ("peek index 512", lambda p: p.peek_pte(0, 512), ValueError, "peek_pte: entry index 512 is not 0..511"),
        ("write index 512", lambda p: p.write_pte(0, 512, 7), ValueError, "write_pte: entry index 512 is not 0..511"),
        ("write index str", lambda p: p.write_pte(0, "1", 7), ValueError,
         "write_pte: expected an entry index, got '1'"),
        ("write index float", lambda p: p.write_pte(0, 1.0, 7), ValueError,
         "write_pte: expected an entry index, got 1.0"),
        ("write index bool", lambda p: p.write_pte(0, True, 7), ValueError,
         "write_pte: expected an entry index, got True"),
        ("write value 2**64", lambda p: p.write_pte(0x100, 0, 1 << 64), ValueError,
         f"write_pte: value: 0x10000000000000000 {value_error}"),
        ("write value -1", lambda p: p.write_pte(0x100, 0, -1), ValueError, f"write_pte: value: -0x1 {value_error}"),
        ("write value None", lambda p: p.write_pte(0x100, 0, None), ValueError,
         "write_pte: value: expected an integer, got None"),
        ("write frame -1", lambda p: p.write_pte(-1, 0, 7), ValueError, "write_pte: guest frame -1 is negative"),
        ("read frame beyond", lambda p: p.read_pte(frames, 0), GuestMemoryError,
         f"read_pte: guest frame {frames:#x} is beyond the VM's memory ({frames:#x} frames)"),
        ("write frame beyond", lambda p: p.write_pte(frames + 5, 0, 7), GuestMemoryError,
         f"write_pte: guest frame {frames + 5:#x} is beyond the VM's memory ({frames:#x} frames)"),
        ("new table beyond", lambda p: p.new_table(frames), GuestMemoryError,
         f"new_table: guest frame {frames:#x} is beyond the VM's memory ({frames:#x} frames)"),
        ("release table -3", lambda p: p.release_table(-3), ValueError, "release_table: guest frame -3 is negative"),
        ("new table str", lambda p: p.new_table("7"), ValueError, "new_table: expected a guest frame number, got '7'"),
        ("cr3 2**64", lambda p: p.load_cr3(1 << 64), ValueError, f"load_cr3: 0x10000000000000000 {value_error}"),
        ("invlpg -1", lambda p: p.invlpg(-1), ValueError, f"invlpg: -0x1 {value_error}"),
        ("invpcid type -1", lambda p: p.invpcid(-1), ValueError, f"invpcid: type: -0x1 {value_error}"),
        ("invpcid pcid 2**64", lambda p: p.invpcid(0, 1 << 64), ValueError,
         f"invpcid: descriptor PCID: 0x10000000000000000 {value_error}"),
        ("invpcid va 2**64", lambda p: p.invpcid(0, 0, 1 << 64), ValueError,
         f"invpcid: descriptor address: 0x10000000000000000 {value_error}"),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_port_argument_is_one_error_raised_before_anything_is_touched(mode: str) -> None:
    """Issue 11, item 16 (repros f2_index, f2_errors): an index is 0..511, a value 0..2**64-1, a frame
    one of the VM's.  Entry 0xD00 << 9 | 3 of frame 0 used to be entry 3 of another VM's root table.
    The check comes first: no exit counted, no EPT violation, nothing written anywhere, no TLB
    entry dropped, and the VM runs on."""
    m = new_machine()
    a = m.create_vm("8MiB", mode, guest={"reserved": 1 << 20}, name="a")
    b = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20}, name="b")
    pb = b.spawn()
    b.guest.switch_to(pb)
    pa = a.spawn(StepList([Mmap(L4, 4 * L1), accesses(L4, L4 + L1)]))
    a.run(max_accesses=2)  # the VM's tables and the TLBs hold something
    for name, call, error, text in port_calls(a.memory.frames):
        before = (content(m), caches(m), dict(a.exits), dict(b.exits), dict(a.guest.stats))
        with pytest.raises(error) as caught:
            call(a.mode)
        assert str(caught.value) == text, name
        assert (content(m), caches(m), dict(a.exits), dict(b.exits), dict(a.guest.stats)) == before, name
        assert a.terminated is None, name
    assert pa.alive
    with deadline():
        a.run()
    assert a.terminated is None and pa.exit_reason == "exit"


@pytest.mark.parametrize("mode", MODES)
def test_numpy_integers_are_frame_numbers_and_indexes_too(mode: str) -> None:
    m = new_machine()
    vm = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20})
    vm.mode.new_table(np.uint64(0x200))
    vm.mode.write_pte(np.int64(0x200), np.uint16(5), np.uint64(0x300 << 12 | TABLE))
    assert vm.mode.read_pte(0x200, 5) == 0x300 << 12 | TABLE
    assert vm.mode.peek_pte(np.uint32(0x200), np.int8(5)) == 0x300 << 12 | TABLE


def test_the_port_checks_are_documented_in_the_port() -> None:
    """guest/port.py states the two error classes (the contract the modes share)."""
    doc = (SRC / "guest" / "port.py").read_text()
    assert "``ValueError`` for an argument no instruction could encode" in doc
    assert "``GuestMemoryError`` for a frame the VM does not have" in doc


# -- item 17: INVPCID operands that fault on hardware ----------------------------------------------


GP_CASES = [
    ((4, 0, 0), True, "INVPCID: type 4 is not 0..3 (#GP(0) in the guest kernel)"),
    (((1 << 64) - 1, 0, 0), True, f"INVPCID: type {(1 << 64) - 1} is not 0..3 (#GP(0) in the guest kernel)"),
    ((0, 4096, 0), True, "INVPCID: descriptor 0x1000 sets reserved bits 63:12 (#GP(0) in the guest kernel)"),
    ((2, 1 << 63, 0), False, "INVPCID: descriptor 0x8000000000000000 sets reserved bits 63:12 (#GP(0) in the guest "
                             "kernel)"),
    ((0, 1, 1 << 47), True, "INVPCID: type 0 address 0x800000000000 is not canonical (#GP(0) in the guest kernel)"),
    ((0, 0, 0x7FFF_0000_0000_0000), False, "INVPCID: type 0 address 0x7fff000000000000 is not canonical (#GP(0) in "
                                           "the guest kernel)"),
    ((1, 5, 0), False, "INVPCID: type 1 names PCID 5 while CR4.PCIDE=0 (#GP(0) in the guest kernel)"),
    ((0, 5, 0x1000), False, "INVPCID: type 0 names PCID 5 while CR4.PCIDE=0 (#GP(0) in the guest kernel)"),
]


def shadow_state(vm: VM) -> Any:
    cache = getattr(vm.mode, "cache", None)
    return None if cache is None else [(key, list(space.frames), dict(space.pieces)) for key, space in cache.items()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("operands", "pcid", "reason"), GP_CASES, ids=[str(c[0]) for c in GP_CASES])
def test_an_invpcid_that_faults_on_hardware_stops_the_vm_with_no_side_effect(
        mode: str, operands: tuple[int, int, int], pcid: bool, reason: str) -> None:
    """Issue 11, item 17 (repro f3): #GP(0) in the guest kernel, so the VM is stopped with the
    reason; nothing is flushed, no shadow page dropped.  Where INVPCID exits (brute force, shadow:
    INVLPG exiting with INVPCID enabled) the exit is counted: the checks belong to the instruction's
    execution, which the exit pre-empts, and the hypervisor injects the #GP (KVM's
    kvm_handle_invpcid); where it does not exit (native, nested) nothing is counted but the stop."""
    m = new_machine()
    vm = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20, "pcid": pcid})
    p = vm.spawn(StepList([Mmap(L4, 8 * L1), accesses(*range(L4, L4 + 8 * L1, L1))]))
    vm.run(max_accesses=8)
    assert p.alive
    before = (content(m), caches(m), shadow_state(vm), dict(vm.guest.stats))
    exits = dict(vm.exits)
    with pytest.raises(VMTerminated) as caught:
        vm.mode.invpcid(*operands)
    assert caught.value.reason == reason and vm.terminated == reason
    assert (content(m), caches(m), shadow_state(vm), dict(vm.guest.stats)) == before
    expected = dict(exits)
    expected["termination"] = 1
    if mode in ("brute_force", "shadow"):
        expected["invlpg"] = expected.get("invlpg", 0) + 1
    assert dict(vm.exits) == expected


@pytest.mark.parametrize("mode", MODES)
def test_an_invpcid_that_faults_inside_a_run_stops_the_vm_and_the_run_returns(mode: str) -> None:
    """The guest kernel executes it in its page-fault handler: Machine.run returns normally, the
    VM stopped with the reason, the other VM finished, and the run says it is partial: the stopped
    VM's process did not run to its end."""
    m = new_machine()
    vm = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20})
    other = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20})
    vm.spawn(StepList([Mmap(L4, 8 * L1), accesses(L4)]))
    other_process = other.spawn(StepList([Mmap(L4, 8 * L1), accesses(*range(L4, L4 + 8 * L1, L1))]))

    def hostile(process: Process, va: int, error_code: int) -> bool:
        vm.mode.invpcid(0, 1, 1 << 60)
        return True

    vm.guest.page_fault = hostile  # type: ignore[method-assign]
    with deadline():
        result = m.run()
    assert vm.terminated == "INVPCID: type 0 address 0x1000000000000000 is not canonical (#GP(0) in the guest kernel)"
    assert other.terminated is None and other_process.exit_reason == "exit"
    reason = "its VM was stopped: " + vm.terminated
    assert result.partial and result.stopped == [{"vm": vm.name, "process": "p1", "pid": 1, "reason": reason,
                                                  "accesses": 0}]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("operands", "pcid"), [((1, 5, 0), True), ((2, 9, 1 << 63), False), ((3, 0, 0), False),
                                                ((0, 0, 0xFFFF_8000_0000_0000), False), ((0, 4095, 0x1000), True)])
def test_an_invpcid_that_hardware_accepts_runs(mode: str, operands: tuple[int, int, int], pcid: bool) -> None:
    m = new_machine()
    vm = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20, "pcid": pcid})
    vm.guest.switch_to(vm.spawn())
    vm.mode.invpcid(*operands)
    assert vm.terminated is None


# -- item 19: CR3 = 0 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reserved", [0, 4096], ids=["root-at-gfn-0", "root-at-gfn-1"])
def test_a_root_table_at_guest_frame_0_is_a_root(mode: str, reserved: int) -> None:
    """Issue 11, item 19 (repro f5): with PCIDs off, a root at guest frame 0 makes CR3 0, which was
    read as "no CR3 loaded": every slice after the first ran on an empty table."""
    a, b = 0x1000_0000_0000, 0x2000_0000_0000
    program = [Mmap(a, 4096), Mmap(b, 4096), Accesses(np.array([a] * 60 + [b], np.uint64), np.zeros(61, np.uint8))]
    m = Machine("1GiB", hypervisor={"memory": "4MiB", "vm_slice": 50}, record_faults=True)
    vm = m.create_vm("4MiB", mode, guest={"reserved": reserved, "pcid": False})
    assert vm.mode.cr3 is None  # no CR3 loaded yet
    p = vm.spawn(program)
    with deadline():
        m.run()
    assert p.root == reserved >> 12
    assert vm.terminated is None
    assert vm.guest.fault_log == [(p.pid, a, int(PFErr.U)), (p.pid, b, int(PFErr.U))]


# -- item 20: self-references, and large pages over scattered frames -------------------------------------


SELF = 5  # the PML4 slot of the self-map
SELF_VA = SELF << 39 | SELF << 30 | SELF << 21 | SELF << 12  # four times through it: the PML4 as a page


def self_mapped(va: int, levels: int = 4) -> int:
    """The linear address at which the page table that maps ``va`` is seen through the self-map."""
    return SELF << 39 | (va >> 9) & ((1 << 39) - 1) & ~0xFFF


@pytest.mark.parametrize("mode", MODES)
def test_a_self_referencing_root_is_walked_as_hardware_walks_it(mode: str) -> None:
    """Issue 11, item 20 (repro f6): a PML4 entry pointing at the PML4 itself (Windows' self-map)
    makes every table a page at some address; the walk through it reaches the guest's own table
    frames, whose accessed flags it sets as hardware does."""
    m = new_machine()
    vm = m.create_vm("8MiB", mode, backing="scattered", guest={"reserved": 1 << 20})
    data = 0x4000_0000
    p = vm.spawn(StepList([Mmap(data, 8 * L1), accesses(data, data + L1, kind=WRITE),
                           accesses(SELF_VA, self_mapped(data))]))
    vm.guest.switch_to(p)
    vm.mode.write_pte(p.root, SELF, p.root << 12 | TABLE)
    on_batch, seen = reached(m)
    with deadline():
        m.run(max_accesses=4, on_batch=on_batch)
    assert vm.terminated is None and p.alive
    pt = table_of(vm, p, data, 1)
    assert [(va, frame) for _, va, frame in seen] == [
        (data, vm.memory.hfn(p.pages[data].gfn)), (data + L1, vm.memory.hfn(p.pages[data + L1].gfn)),
        (SELF_VA, vm.memory.hfn(p.root)), (self_mapped(data), vm.memory.hfn(pt))]
    assert vm.guest.fault_log == [(p.pid, data, int(PFErr.U | PFErr.W)), (p.pid, data + L1, int(PFErr.U | PFErr.W))]
    assert vm.mode.peek_pte(p.root, SELF) == p.root << 12 | TABLE | A  # used at every level: accessed
    assert_isolated(m, seen)


def huge_program(base: int, offsets: list[int], kind: int = READ) -> StepList:
    return StepList([Mmap(base, 2 * L2, huge=True), accesses(*(base + o for o in offsets), kind=kind)])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backing", ["contiguous", "scattered"])
def test_a_guest_2mib_page_maps_its_frames_whatever_the_backing(mode: str, backing: str) -> None:
    """Issue 11, item 20 (repro f6): a guest 2 MiB page over scattered host frames (reached with
    Mmap(huge=True), as create_vm now accepts huge pages on any backing): one fault, every 4 KiB of
    it reaches the host frame of its guest frame, A then D set in the guest's entry exactly."""
    m = new_machine("16MiB")
    vm = m.create_vm("8MiB", mode, backing=backing, guest={"reserved": 1 << 20})
    base = 1 << 30
    offsets = [0, 0x5123, 0x1F_F008, 0x10_0000]
    p = vm.spawn(huge_program(base, offsets))
    on_batch, seen = reached(m)
    with deadline():
        m.run(max_accesses=len(offsets), on_batch=on_batch)
    assert vm.terminated is None and vm.guest.stats["huge_pages"] == 1
    page = p.pages[base]
    assert [frame for _, _, frame in seen] == [vm.memory.hfn(page.gfn + (o >> 12)) for o in offsets]
    assert vm.mode.peek_pte(page.table, page.index) & (P | PS | A | D) == P | PS | A  # read only: not dirty
    assert_isolated(m, seen)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backing", ["contiguous", "scattered"])
def test_invlpg_of_one_address_drops_every_piece_of_a_large_page(mode: str, backing: str) -> None:
    """SDM Vol. 3A 4.10.4.1: INVLPG of any address of a page larger than 4 KiB invalidates every TLB
    entry of it.  The guest clears A in its 2 MiB entry and invalidates one address; reading another
    part of the page that the TLB held walks again and sets A, in every mode and on any backing (a
    piece left in the TLB would hit and leave A clear: a mode that gives the hardware the page in
    pieces must drop them all; shadow paging on scattered frames did not)."""
    base, far = 1 << 30, 0x1F_F000
    m = new_machine("16MiB")
    vm = m.create_vm("8MiB", mode, backing=backing, guest={"reserved": 1 << 20})
    p = vm.spawn(StepList([Mmap(base, 2 * L2, huge=True), accesses(base, base + far, base + 0x3000),
                           accesses(base + far), accesses(base + 0x7000)]))
    with deadline():
        m.run(max_accesses=3)
    page = p.pages[base]
    port = vm.mode
    entry = port.read_pte(page.table, page.index)
    assert entry & (A | D) == A
    port.write_pte(page.table, page.index, entry & ~A)
    port.invlpg(base + 0x3000)
    with deadline():
        m.run(max_accesses=1)  # base + far again: its piece went with the page
    assert port.peek_pte(page.table, page.index) & (A | D) == A
    port.write_pte(page.table, page.index, entry & ~A)
    with deadline():
        m.run(max_accesses=1)  # no INVLPG this time: a piece (or the whole page) may still be cached
    assert vm.terminated is None and vm.guest.fault_log == [(p.pid, base, int(PFErr.U))]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backing", ["contiguous", "scattered"])
def test_a_guest_1gib_page_maps_the_vm_and_stops_it_beyond(mode: str, backing: str) -> None:
    """A hostile PDPT entry with PS over a VM of 8 MiB: the part inside the VM maps its frames, an
    access beyond stops the VM, in every mode."""
    m = new_machine("16MiB")
    vm = m.create_vm("8MiB", mode, backing=backing, guest={"reserved": 1 << 20})
    base = 3 * L3
    inside = [0x1000, 0x7F_F123, 0x20_0000]
    p = vm.spawn([accesses(*(base + o for o in inside)), accesses(base + (8 << 20))])
    vm.guest.switch_to(p)
    port = vm.mode
    port.new_table(0x80)  # a frame of the kernel's own (below guest.reserved)
    port.write_pte(p.root, 0, 0x80 << 12 | TABLE)
    port.write_pte(0x80, 3, 0 | PS | TABLE)  # a 1 GiB page at guest-physical 0
    on_batch, seen = reached(m)
    with deadline():
        m.run(on_batch=on_batch)
    assert [frame for _, _, frame in seen] == [vm.memory.hfn(o >> 12) for o in inside]
    beyond = base + (8 << 20)
    assert vm.terminated == f"access at {beyond:#x} to guest-physical address 0x800000, beyond the VM's memory"
    assert vm.guest.fault_log == []
    assert_isolated(m, seen)


@pytest.mark.parametrize("mode", MODES)
def test_a_self_map_over_a_scattered_large_page_is_the_one_case_direct_modes_refuse(mode: str) -> None:
    """The documented limit: with the self-map, every page directory is also read as a page table;
    a 2 MiB entry over scattered frames then needs two real entries in one slot (a 4 KiB leaf for the
    page-table reading, a pointer to hidden tables for the directory reading).  Shadow and nested
    paging map it; native and brute force stop the VM, with that reason, at the first access that
    goes through it, and only then."""
    m = new_machine("16MiB")
    vm = m.create_vm("8MiB", mode, backing="scattered", guest={"reserved": 1 << 20})
    base, small = 1 << 30, 0x4000_0000 + 2 * L2 + 4 * L2
    p = vm.spawn(StepList([Mmap(small, L1), Mmap(base, 2 * L2, huge=True), accesses(small, SELF_VA),
                           accesses(base + 0x5000)]))
    vm.guest.switch_to(p)
    vm.mode.write_pte(p.root, SELF, p.root << 12 | TABLE)
    on_batch, seen = reached(m)
    with deadline():
        m.run(on_batch=on_batch)
    assert_isolated(m, seen)
    assert [va for _, va, _ in seen][:2] == [small, SELF_VA]
    if mode in DIRECT:
        pd = table_of(vm, p, base, 2)
        assert vm.terminated == (
            f"access at {base + 0x5000:#x} through entry 0 of guest page-table frame {pd:#x}, a table at levels 2, 1 "
            f"whose levels want different real entries for it ({vm.mode.peek_pte(pd, 0):#x}): {mode} mode cannot "
            "map it")
    else:
        assert vm.terminated is None and p.exit_reason == "exit"


# -- item 21: a stop in the middle of a change ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_table_relinked_at_another_level_leaves_only_the_vms_frames(mode: str) -> None:
    """Repro f7: a page table holding a 4 KiB page with PAT over the VM's last frame is unlinked and
    linked again as a page directory, where the same entry is a 2 MiB page with reserved bits (and,
    through its other entry, makes the root a page table too).  The VM used to be stopped halfway,
    with a neighbour's frame left in its tables; now every level is served and nothing stops."""
    m = new_machine()
    vm = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20})
    neighbour = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20})
    p = vm.spawn([accesses(L4 | L3 | 0x1000, L4 | L3 | L2 | 0x1234)])
    vm.guest.switch_to(p)
    port, root, last = vm.mode, p.root, vm.memory.frames - 1
    pdpt, pd, t = 0x80, 0x81, 0x82  # frames of the kernel's own (below guest.reserved)
    for frame in (pdpt, pd, t):
        port.new_table(frame)
    port.write_pte(root, 1, pdpt << 12 | TABLE)
    port.write_pte(pdpt, 0, pd << 12 | TABLE)
    port.write_pte(pd, 0, t << 12 | TABLE)
    port.write_pte(t, 0, root << 12 | TABLE)  # T[0]: a 4 KiB page over the root frame
    port.write_pte(t, 1, last << 12 | 0x87)  # T[1]: a 4 KiB page with PAT over the last frame
    port.write_pte(pd, 0, 0)  # T unlinked ...
    port.write_pte(pdpt, 1, t << 12 | TABLE)  # ... and linked again as a page directory
    assert_isolated(m)
    on_batch, seen = reached(m)
    with deadline():
        m.run(on_batch=on_batch)
    assert_isolated(m, seen)
    # root[1] -> PDPT, [1] -> T as a PD, T[0] -> the root as a PT, root[1] as a PTE: the PDPT as a page
    assert [(va, frame) for _, va, frame in seen] == [(L4 | L3 | 0x1000, vm.memory.hfn(pdpt))]
    # T[1] as a PDE: a 2 MiB page with reserved bits 20:13 set
    assert vm.guest.fault_log == [(p.pid, L4 | L3 | L2 | 0x1234, RSVD_READ)]
    assert vm.terminated is None and neighbour.terminated is None


@pytest.mark.parametrize("mode", DIRECT)
def test_a_hidden_table_the_pool_cannot_give_stops_the_vm_and_leaves_nothing(mode: str) -> None:
    """A guest 1 GiB page over scattered frames needs hidden tables (one per 2 MiB of the VM); a
    hypervisor pool too small stops the VM with the reason, and nothing of a half-built splinter
    stays: no frame of the pool, no entry pointing at one."""
    m = new_machine("64KiB")
    vm = m.create_vm("64MiB", mode, backing="scattered", guest={"reserved": 1 << 20})
    p = vm.spawn([accesses(3 * L3 + 0x5000)])
    vm.guest.switch_to(p)
    port = vm.mode
    port.new_table(0x80)
    port.write_pte(p.root, 0, 0x80 << 12 | TABLE)
    port.write_pte(0x80, 3, PS | TABLE)
    idle = set(vm.hv_frames)
    with deadline():
        m.run()
    assert vm.terminated == ("the hypervisor's memory (64KiB) is exhausted; raise hypervisor.memory")
    assert vm.hv_frames == idle
    assert_isolated(m)
    assert port.peek_pte(0x80, 3) == PS | TABLE


@pytest.mark.parametrize("mode", MODES)
def test_a_write_that_fails_its_check_changes_nothing(mode: str) -> None:
    """A write naming a frame beyond the VM is refused before any change, even in the middle of a
    guest's tables: the entry, the levels and every cache are as they were."""
    m = new_machine()
    vm = m.create_vm("4MiB", mode, guest={"reserved": 1 << 20})
    p = vm.spawn(StepList([Mmap(L4, 4 * L1), accesses(L4, L4 + L1)]))
    vm.run(max_accesses=2)
    before = (content(m), caches(m), list(vm.mode.mapped_frames()))
    with pytest.raises(GuestMemoryError):
        vm.mode.write_pte(vm.memory.frames, 0, p.root << 12 | TABLE)
    assert (content(m), caches(m), list(vm.mode.mapped_frames())) == before


# -- item 22: no assert guards a state a guest can cause ---------------------------------------------------


@pytest.mark.parametrize("package", ["hypervisor", "guest"])
def test_no_assert_statement_in_the_hypervisor_or_the_guest(package: str) -> None:
    """Under python -O an assert vanishes, and otherwise it is a traceback: neither is an outcome
    for a guest.  Guest-caused states are architectural faults or a VM stopped with its reason; a
    state only a simulator bug can reach raises RuntimeError saying so."""
    found = []
    for path in sorted((SRC / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert) or (isinstance(node, ast.Raise) and node.exc is not None
                                                and "AssertionError" in ast.unparse(node.exc)):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []
