"""How host memory is divided among VMs (fastmmu.hypervisor.layout): partitions and each VM's
guest frame -> host frame layout, eager or on demand, contiguous or scattered, or overcommitted."""

from __future__ import annotations

import numpy as np
import pytest

from fastmmu import HostMemory
from fastmmu.arch import FrameKind
from fastmmu.guest.port import GuestMemoryError
from fastmmu.hypervisor import Machine
from fastmmu.hypervisor.layout import HostExhausted, Partitions, VMMemory
from fastmmu.settings import ConfigError

OWNER = 7
FREE, DATA = int(FrameKind.FREE), int(FrameKind.DATA)


def layout(mem, frames=1024, *, backing="contiguous", allocation="eager", base=1024, seed=0, owner=OWNER):
    return VMMemory(mem, owner, frames, backing=backing, allocation=allocation, base=base, seed=seed)


@pytest.fixture
def mem():
    return HostMemory("64MiB")  # 16384 frames


# -- partitions --------------------------------------------------------------------------


def test_partitions_are_taken_first_fit_from_the_bottom():
    parts = Partitions(10, 100)
    assert parts.available == 90
    assert parts.take(20) == 10
    assert parts.take(5) == 30
    assert parts.free == [(35, 100)]
    assert parts.available == 65
    assert parts.take(66) is None  # too big: nothing changes
    assert parts.free == [(35, 100)]
    assert parts.take(65) == 35  # an exact fit leaves no empty extent
    assert parts.free == [] and parts.available == 0
    assert parts.take(1) is None


def test_partitions_align_and_keep_the_gap_below_for_later():
    parts = Partitions(10, 2000)
    assert parts.take(100, 512) == 512
    assert parts.free == [(10, 512), (612, 2000)]
    assert parts.take(50) == 10  # first fit: the gap left by the alignment
    assert parts.take(500) == 612  # 502 frames left in the gap: too few
    assert parts.take(300, 512) == 1536
    assert parts.free == [(60, 512), (1112, 1536), (1836, 2000)]
    assert parts.take(100, 1024) is None


def test_give_back_coalesces_neighbouring_extents():
    parts = Partitions(0, 300)
    a, b, c = parts.take(100), parts.take(100), parts.take(100)
    assert (a, b, c) == (0, 100, 200) and parts.free == []
    parts.give_back(b, 100)
    assert parts.free == [(100, 200)]
    parts.give_back(c, 100)
    assert parts.free == [(100, 300)]
    assert parts.take(150) == 100
    parts.give_back(100, 150)
    parts.give_back(a, 100)
    assert parts.free == [(0, 300)]
    assert parts.take(300) == 0  # one extent again: the whole fits


def test_give_back_keeps_separate_extents_apart():
    parts = Partitions(0, 100)
    for _ in range(4):
        parts.take(25)
    parts.give_back(0, 25)
    parts.give_back(50, 25)
    assert parts.free == [(0, 25), (50, 75)]
    assert parts.take(30) is None
    assert parts.available == 50


def test_an_empty_partition_range_has_nothing():
    parts = Partitions(50, 50)
    assert parts.free == [] and parts.available == 0 and parts.take(1) is None


# -- contiguous and scattered ------------------------------------------------------------


def test_a_contiguous_layout_maps_guest_frame_g_to_base_plus_g(mem):
    vm = layout(mem)
    assert [vm.hfn(g) for g in (0, 1, 1023)] == [1024, 1025, 2047]
    assert vm.gfn_of(1024) == 0 and vm.gfn_of(2047) == 1023
    assert vm.gfn_of(1023) is None and vm.gfn_of(2048) is None
    assert vm.size == 1024 << 12


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_a_scattered_layout_is_a_bijection_onto_the_partition(mem, seed):
    vm = layout(mem, backing="scattered", seed=seed)
    frames = np.array([vm.hfn(g) for g in range(1024)])
    assert sorted(frames) == list(range(1024, 2048))  # every frame of the partition, once
    assert (frames != np.arange(1024, 2048)).sum() > 1000  # scattered, not the identity
    assert all(vm.gfn_of(int(h)) == g for g, h in enumerate(frames))
    assert vm.gfn_of(1023) is None and vm.gfn_of(2048) is None
    # neighbouring guest frames are rarely neighbours on the host
    assert (np.abs(np.diff(frames)) == 1).sum() < 10


def test_a_scattered_layout_is_fixed_by_its_seed():
    def frames(seed):
        vm = layout(HostMemory("64MiB"), backing="scattered", seed=seed)
        return [vm.hfn(g) for g in range(1024)]

    assert frames(3) == frames(3)
    assert frames(3) != frames(4)


def test_an_eager_layout_backs_every_frame_at_creation(mem):
    free = mem.free_frames
    vm = layout(mem, backing="scattered")
    assert vm.backed_frames == 1024
    assert mem.free_frames == free - 1024
    assert mem.frames_owned(OWNER) == 1024
    assert all(mem.owner_of(f) == OWNER and mem.kind_of(f) == DATA for f in (1024, 1500, 2047))
    assert mem.owner_of(2048) != OWNER and mem.kind_of(2048) == FREE
    assert np.array_equal(np.sort(vm.host_frames()), np.arange(1024, 2048, dtype=np.uint64))


@pytest.mark.parametrize("backing", ["contiguous", "scattered"])
def test_an_on_demand_layout_backs_a_frame_at_its_first_use(mem, backing):
    vm = layout(mem, backing=backing, allocation="on_demand")
    assert vm.backed_frames == 0 and mem.frames_owned(OWNER) == 0
    frame = vm.planned(5)
    assert mem.kind_of(frame) == FREE and not vm.is_backed(5)
    assert vm.hfn(5) == frame
    assert mem.owner_of(frame) == OWNER and mem.kind_of(frame) == DATA
    assert vm.is_backed(5) and not vm.is_backed(6)
    assert vm.hfn(5) == frame  # the second use takes nothing more
    assert vm.backed_frames == 1 and mem.frames_owned(OWNER) == 1
    assert list(vm.host_frames()) == [frame]


def test_the_frame_a_guest_frame_gets_does_not_depend_on_when_it_is_backed():
    eager = layout(HostMemory("64MiB"), backing="scattered", seed=9)
    lazy = layout(HostMemory("64MiB"), backing="scattered", seed=9, allocation="on_demand")
    order = np.random.default_rng(0).permutation(1024)
    assert [lazy.hfn(int(g)) for g in order] == [eager.hfn(int(g)) for g in order]


# -- large runs --------------------------------------------------------------------------


def test_large_run_is_the_host_frame_of_an_aligned_contiguous_run(mem):
    vm = layout(mem, frames=2048, base=2048)
    assert vm.large_run(0, 512) == 2048
    assert vm.large_run(1536, 512) == 3584
    assert vm.large_run(256, 512) is None  # not aligned in the guest
    assert vm.large_run(2048, 512) is None  # beyond the VM
    assert vm.large_run(0, 4096) is None  # bigger than the VM
    assert vm.large_run(5, 1) == 2053


def test_large_run_needs_the_host_frames_aligned_too(mem):
    vm = layout(mem, frames=1024, base=1000)
    assert vm.large_run(0, 512) is None
    assert vm.large_run(24, 8) == 1024  # 1000 + 24 is 8-aligned


def test_a_scattered_layout_has_no_large_runs(mem):
    vm = layout(mem, backing="scattered")
    assert vm.large_run(0, 512) is None and vm.large_run(512, 512) is None


def test_large_run_backs_the_run_on_demand_unless_commit_is_false(mem):
    vm = layout(mem, frames=1024, base=1024, allocation="on_demand")
    vm.hfn(3)
    assert vm.large_run(0, 512, commit=False) == 1024
    assert vm.backed_frames == 1 and mem.frames_owned(OWNER) == 1
    assert vm.large_run(0, 512) == 1024
    assert vm.backed_frames == 512 and mem.frames_owned(OWNER) == 512
    assert all(vm.is_backed(g) for g in range(512)) and not vm.is_backed(512)
    assert vm.large_run(0, 512) == 1024 and vm.backed_frames == 512  # nothing twice


# -- overcommit --------------------------------------------------------------------------


def overcommitted(mem, frames=64, lo=16, owner=OWNER):
    return VMMemory(mem, owner, frames, backing="contiguous", allocation="on_demand", base=None, seed=0,
                    overcommit_lo=lo)


def test_overcommit_allocates_host_frames_at_first_use_above_the_pool():
    mem = HostMemory("1MiB")  # 256 frames
    vm = overcommitted(mem)
    assert vm.backed_frames == 0 and mem.frames_owned(OWNER) == 0
    frames = [vm.hfn(g) for g in (9, 3, 9, 40)]
    assert frames[0] == frames[2] and len(set(frames)) == 3
    assert all(f >= 16 for f in frames)
    assert vm.backed_frames == 3 and mem.frames_owned(OWNER) == 3
    assert all(mem.kind_of(f) == DATA for f in frames)
    assert vm.gfn_of(frames[1]) == 3 and vm.gfn_of(frames[3]) == 40
    assert vm.gfn_of(200) is None
    assert vm.large_run(0, 8) is None  # no fixed layout: no large pages
    assert sorted(vm.host_frames()) == sorted(set(frames))


def test_overcommit_reports_its_backed_frames():
    vm = overcommitted(HostMemory("1MiB"))
    vm.hfn(2)
    assert vm.is_backed(2)
    assert not vm.is_backed(3)


def test_overcommit_gives_a_guest_frame_the_same_host_frame_every_time_even_frame_zero():
    mem = HostMemory("1MiB")
    vm = overcommitted(mem, lo=0)  # the layout's own default: the whole host
    first = vm.hfn(0)
    assert [vm.hfn(0) for _ in range(3)] == [first] * 3
    assert vm.backed_frames == 1 and mem.frames_owned(OWNER) == 1


def test_overcommit_raises_host_exhausted_when_the_host_runs_out():
    mem = HostMemory("1MiB")
    vm = overcommitted(mem, frames=64, lo=250)  # 6 host frames above lo
    for g in range(6):
        vm.hfn(g)
    with pytest.raises(HostExhausted, match="guest frame 0x6"):
        vm.hfn(6)
    assert vm.backed_frames == 6
    assert vm.hfn(5) == vm.hfn(5)  # frames already backed still work


def test_an_overcommitted_machine_stops_only_the_vm_that_runs_out():
    from fastmmu.workloads import uniform

    machine = Machine("24MiB", hypervisor={"memory": "4MiB", "overcommit": True, "vm_slice": 1000})
    small = machine.create_vm("4MiB", "native", guest={"reserved": "1MiB"})
    big = machine.create_vm("64MiB", "native", guest={"reserved": "1MiB"})  # more than the host has
    assert big.memory.base is None and big.memory.backed_frames == 0
    worker = small.spawn(uniform(pages=50, n=5000, seed=2))
    big.spawn(uniform(pages=8000, n=40_000, seed=1))
    result = machine.run()
    assert big.terminated is not None and "host memory exhausted" in big.terminated
    assert result.stats["vm_exits"]["termination"] == 1
    assert small.alive and worker.exit_reason == "exit"
    # every host frame above the hypervisor's pool went to one of the two
    owned = machine.mem.frames_owned(small.id) + machine.mem.frames_owned(big.id)
    assert owned == machine.mem.nframes - machine.pool_frames


# -- release and bounds ------------------------------------------------------------------


@pytest.mark.parametrize("backing, allocation", [("contiguous", "eager"), ("scattered", "eager"),
                                                 ("contiguous", "on_demand"), ("scattered", "on_demand")])
def test_release_gives_every_backed_frame_back(mem, backing, allocation):
    free = mem.free_frames
    vm = layout(mem, backing=backing, allocation=allocation)
    for g in (0, 7, 1023):
        vm.hfn(g)
    vm.release()
    assert mem.free_frames == free
    assert mem.frames_owned(OWNER) == 0 and vm.backed_frames == 0
    assert all(mem.kind_of(f) == FREE for f in range(1024, 2048, 97))


def test_release_of_an_overcommitted_layout_frees_its_frames():
    mem = HostMemory("1MiB")
    free = mem.free_frames
    vm = overcommitted(mem)
    frames = [vm.hfn(g) for g in range(10)]
    vm.release()
    assert mem.free_frames == free and vm.backed_frames == 0
    assert vm.gfn_of(frames[0]) is None


@pytest.mark.parametrize("backing, allocation, base", [("contiguous", "eager", 1024),
                                                       ("scattered", "on_demand", 1024),
                                                       ("contiguous", "on_demand", None)])
@pytest.mark.parametrize("gfn", [-1, 1024, 1 << 40])
def test_a_guest_frame_outside_the_vm_is_a_guest_memory_error(mem, backing, allocation, base, gfn):
    vm = VMMemory(mem, OWNER, 1024, backing=backing, allocation=allocation, base=base, seed=0, overcommit_lo=16)
    free = mem.free_frames
    with pytest.raises(GuestMemoryError, match="beyond the VM's 0x400000 bytes"):
        vm.hfn(gfn)
    assert mem.free_frames == free
    assert not vm.is_backed(gfn)


# -- through the machine -----------------------------------------------------------------


def test_vm_partitions_are_disjoint_and_come_back_when_a_vm_is_destroyed():
    machine = Machine("64MiB", hypervisor={"memory": "4MiB"})
    pool = machine.pool_frames
    a = machine.create_vm("8MiB", "native")
    b = machine.create_vm("16MiB", "native", backing="scattered", seed=2)
    assert a.memory.base >= pool and a.memory.base % 512 == 0 and b.memory.base % 512 == 0
    a_frames, b_frames = set(map(int, a.memory.host_frames())), set(map(int, b.memory.host_frames()))
    assert len(a_frames) == 2048 and len(b_frames) == 4096 and not a_frames & b_frames
    assert machine.mem.frames_owned(a.id) == 2048 and machine.mem.frames_owned(b.id) == 4096
    with pytest.raises(ConfigError, match="overcommit"):
        machine.create_vm("48MiB", "native")
    available = machine.partitions.available
    a.destroy()
    assert machine.partitions.available == available + 2048
    assert machine.mem.frames_owned(a.id) == 0
    b.destroy()
    assert machine.partitions.free == [(pool, machine.mem.nframes)]
    assert machine.create_vm("60MiB", "native").memory.base == pool


def test_an_on_demand_vm_backs_only_what_its_guest_touches():
    from fastmmu.workloads import uniform

    machine = Machine("64MiB", hypervisor={"memory": "4MiB"})
    vm = machine.create_vm("32MiB", "native", allocation="on_demand", guest={"reserved": "1MiB"})
    assert vm.memory.backed_frames == 0
    vm.spawn(uniform(pages=100, n=1000, seed=1))
    result = machine.run()
    backed = result.stats["vms"][0]["backed_bytes"] >> 12
    assert 100 < backed < 120  # the pages, the tables, nothing else
    assert machine.mem.frames_owned(vm.id) == backed
