"""VMs come and go: creation carves host memory out for them, destruction gives all of it back.

- ``Machine.destroy_vm`` returns every frame of the VM (its memory and the
  hypervisor's tables made for it) and leaves nothing of it in any TLB,
  paging-structure cache or nested TLB, while another VM runs on untouched;
- VMs' host frames are disjoint partitions: contiguous backing is one run,
  scattered backing is not;
- on-demand allocation backs frames as the guest touches memory;
- a 64 GiB VM fits on a 128 GiB host and runs a small workload quickly;
- overcommit lets VMs promise more than the host has, and a VM that cannot
  get a frame is stopped with a reason while the run goes on; without it,
  asking for too much is a ``ConfigError`` naming ``vm.memory``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from fastmmu.hypervisor.machine import VM, Machine, RunResult
from fastmmu.settings import ConfigError
from fastmmu.workloads import Accesses, Mmap, StepList, churn, sequential, zipf

MODES = ("native", "brute_force", "shadow", "nested")
LAYOUTS = [("contiguous", "eager"), ("contiguous", "on_demand"), ("scattered", "eager"), ("scattered", "on_demand")]
SIZE_FRAMES = {"4K": 1, "2M": 512, "1G": 512 * 512, "region": 1}


def workload(seed: int) -> Any:
    return zipf(pages=2_000, n=20_000, writes=0.4, seed=seed)


def rows(m: Machine) -> list[tuple[str, dict[str, Any]]]:
    return [(name, row) for name, tlb in m.mmu.structures().items() for row in tlb.contents()]


def frames_of_row(name: str, row: dict[str, Any]) -> range:
    return range(row["frame"], row["frame"] + SIZE_FRAMES[row["size"]])


def belongs_to(vm: VM, name: str, row: dict[str, Any]) -> bool:
    """Whether a cached entry was made for ``vm`` (by its tags; untagged ones are the current VM's)."""
    if name == "nested":
        return hasattr(vm.mode, "ept") and row["eptag"] == vm.mode.ept.config.eptag
    if vm.mode.uses_vpid:
        return row["vpid"] == vm.vpid
    return row["vpid"] == 0 and vm.machine.current is vm


# -- destroy_vm ----------------------------------------------------------------------------


@pytest.mark.parametrize(("backing", "allocation"), LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_destroy_returns_every_frame_and_forgets_every_translation(mode: str, backing: str, allocation: str) -> None:
    m = Machine("2GiB", hypervisor={"vm_slice": 2_000, "ept": "lazy"})
    survivor = m.create_vm("64MiB", mode, backing="scattered", seed=3, name="survivor")
    survivor.spawn(workload(2))
    free_before = m.mem.free_frames + len(survivor.hv_frames)  # the survivor's own tables come and go
    available_before = m.partitions.available
    vm = m.create_vm("64MiB", mode, backing=backing, allocation=allocation, seed=7)
    vm.spawn(workload(1))
    vm.spawn(churn(pages=64, n=500, rounds=3, seed=4, base=0x0000_3000_0000_0000))
    m.run(max_accesses=8_000)  # stopped half-way: its processes and translations are live
    m.run(vms=[vm], max_accesses=1_000)  # and it is the VM on the CPU
    assert vm.alive and vm.guest.runnable()
    assert any(belongs_to(vm, name, row) for name, row in rows(m)), "nothing cached: the test would prove nothing"
    if mode in ("shadow", "nested"):
        assert vm.hv_frames, "the hypervisor made no table for it"
    frames = {int(f) for f in vm.memory.host_frames()} | set(vm.hv_frames)
    eptag = vm.mode.ept.config.eptag if mode == "nested" else None

    m.destroy_vm(vm)

    assert m.mem.frames_owned(vm.id) == 0
    assert m.mem.free_frames + len(survivor.hv_frames) == free_before, \
        "frames of the VM or of the hypervisor's tables for it were kept"
    assert m.partitions.available == available_before
    assert not vm.hv_frames and vm.terminated == "destroyed" and vm.id not in m.vms
    assert m.current is not vm
    for f in frames:
        assert m.mem.owner_of(f) == 0
    for name, row in rows(m):
        if not (name.startswith("psc.") and survivor.mode.name == "nested"):  # those hold guest-physical frames
            assert not frames & set(frames_of_row(name, row)), f"{name} still maps a frame of the destroyed VM: {row}"
        if vm.mode.uses_vpid:
            assert row["vpid"] != vm.vpid, f"{name}: {row} is tagged with the destroyed VM's VPID"
        if eptag is not None and eptag != survivor.mode.ept.config.eptag:
            assert row["eptag"] != eptag, f"{name}: {row} is tagged with the destroyed VM's EPT"
    with pytest.raises(ValueError, match="not a VM of this machine"):
        m.destroy_vm(vm)
    # the other VM did not notice
    result = m.run()
    assert survivor.terminated is None and not result.partial
    assert all(p.exit_reason == "exit" for p in survivor.guest.processes.values())


@pytest.mark.parametrize("mode", MODES)
def test_destroyed_partition_is_reused_whole(mode: str) -> None:
    m = Machine("1GiB", hypervisor={"memory": "64MiB"})
    free = m.mem.free_frames
    for round_ in range(3):
        vm = m.create_vm("512MiB", mode, backing="scattered" if round_ % 2 else "contiguous", seed=round_)
        vm.spawn(zipf(pages=300, n=3_000, seed=round_))
        m.run()
        assert vm.terminated is None
        m.destroy_vm(vm)
        assert m.mem.free_frames == free
        assert m.committed == 0


# -- partitions -----------------------------------------------------------------------------


@pytest.mark.parametrize("allocation", ["eager", "on_demand"])
def test_vms_get_disjoint_partitions_contiguous_or_scattered(allocation: str) -> None:
    m = Machine("1GiB", hypervisor={"memory": "16MiB"})
    contiguous = m.create_vm("96MiB", "nested", backing="contiguous", allocation=allocation)
    scattered = m.create_vm("96MiB", "nested", backing="scattered", allocation=allocation, seed=5)
    other = m.create_vm("32MiB", "shadow", backing="scattered", allocation=allocation, seed=6)
    planned = {vm.id: np.array([vm.memory.planned(g) for g in range(vm.memory.frames)]) for vm in
               (contiguous, scattered, other)}
    # partitions: disjoint, above the hypervisor's pool, inside the host
    seen: set[int] = set()
    for frames in planned.values():
        assert len(set(frames.tolist())) == len(frames)
        assert not seen & set(frames.tolist()), "two VMs share host frames"
        seen |= set(frames.tolist())
        assert frames.min() >= m.pool_frames and frames.max() < m.mem.nframes
    # contiguous: guest frame g is host frame base + g
    first = planned[contiguous.id][0]
    assert (planned[contiguous.id] == first + np.arange(contiguous.memory.frames)).all()
    # scattered: the same kind of run of host frames, in a shuffled order (almost no neighbours stay)
    for vm in (scattered, other):
        frames = planned[vm.id]
        assert (np.sort(frames) == frames.min() + np.arange(len(frames))).all()
        assert np.mean(np.diff(frames) == 1) < 0.01
    assert planned[scattered.id].tolist() != planned[other.id].tolist()
    if allocation == "eager":
        for vm in (contiguous, scattered, other):
            assert m.mem.frames_owned(vm.id) == vm.memory.frames
            assert {m.mem.owner_of(int(f)) for f in planned[vm.id][:: 97]} == {vm.id}
    # every access of every VM lands in its own partition
    for i, vm in enumerate((contiguous, scattered, other)):
        vm.spawn(zipf(pages=500, n=5_000, seed=i))
    partition = {vm_id: set(frames.tolist()) for vm_id, frames in planned.items()}

    def on_batch(vm: VM, process: Any, addresses: Any, kinds: Any, out: np.ndarray, start: int, stop: int) -> None:
        assert set((out[start:stop] >> np.uint64(12)).tolist()) <= partition[vm.id]

    m.run(on_batch=on_batch)


def test_scattered_layout_is_seeded() -> None:
    def layout(seed: int) -> list[int]:
        m = Machine("1GiB")
        vm = m.create_vm("8MiB", "nested", backing="scattered", seed=seed)
        return [vm.memory.planned(g) for g in range(vm.memory.frames)]

    assert layout(1) == layout(1)
    assert layout(1) != layout(2)


# -- allocation on demand ---------------------------------------------------------------------


@pytest.mark.parametrize("backing", ["contiguous", "scattered"])
@pytest.mark.parametrize("mode", MODES)
def test_on_demand_backing_grows_with_use(mode: str, backing: str) -> None:
    m = Machine("2GiB")
    vm = m.create_vm("1GiB", mode, backing=backing, allocation="on_demand", seed=1)
    at_start = m.mem.frames_owned(vm.id)
    assert at_start < 64  # nothing but what the guest kernel touched to start (no process yet)
    owned = [at_start]
    base = 0x0000_1000_0000_0000
    vm.spawn(StepList([Mmap(base, 4_000 << 12)] + [
        Accesses(base + (np.arange(k * 1_000, (k + 1) * 1_000, dtype=np.uint64) << np.uint64(12)), 1)
        for k in range(4)]))
    for _ in range(4):
        m.run(max_accesses=1_000)
        owned.append(m.mem.frames_owned(vm.id))
    assert owned == sorted(owned) and len(set(owned)) == len(owned), owned  # it grew at every step
    assert owned[-1] - at_start >= 4_000  # at least the pages touched, plus page tables
    assert owned[-1] < vm.memory.frames // 8  # and far from the whole VM
    assert vm.memory.backed_frames == m.mem.frames_owned(vm.id)
    assert vm.terminated is None


def test_eager_backing_takes_everything_at_creation() -> None:
    m = Machine("1GiB")
    free = m.mem.free_frames
    vm = m.create_vm("128MiB", "nested", allocation="eager")
    assert m.mem.frames_owned(vm.id) == vm.memory.frames
    assert m.mem.free_frames == free - vm.memory.frames - len(vm.hv_frames)


# -- large VMs --------------------------------------------------------------------------------


@pytest.mark.parametrize("allocation", ["on_demand", "eager"])
@pytest.mark.parametrize("mode", ["nested", "shadow"])
def test_64gib_vm_on_a_128gib_host_runs_a_small_workload_quickly(mode: str, allocation: str) -> None:
    started = time.perf_counter()
    m = Machine("128GiB")
    vm = m.create_vm("64GiB", mode, backing="contiguous", allocation=allocation)
    vm.spawn(zipf(pages=2_000, n=20_000, seed=1))
    vm.spawn(sequential(pages=1_000, n=5_000, stride=4096, base=0x0000_2000_0000_0000))
    result = m.run()
    elapsed = time.perf_counter() - started
    assert isinstance(result, RunResult) and not result.partial
    assert vm.terminated is None
    assert result.stats["accesses"] == 25_000
    assert m.mem.frames_owned(vm.id) == (vm.memory.frames if allocation == "eager" else vm.memory.backed_frames)
    assert elapsed < 5.0, f"creating a 64 GiB VM ({allocation}) and running 25,000 accesses took {elapsed:.1f} s"


def test_64gib_vm_is_one_gib_aligned_so_that_one_gib_ept_pages_fit() -> None:
    m = Machine("128GiB", hypervisor={"ept_page_size": "1G"})
    vm = m.create_vm("64GiB", "nested", allocation="on_demand")
    assert vm.memory.base % (512 * 512) == 0
    vm.spawn(zipf(pages=500, n=5_000, seed=1))
    m.run()
    assert vm.terminated is None
    assert len(vm.mode.ept.frames) == 2  # 1 GiB leaves: the root and one PDPT, nothing below
    leaves = list(vm.mode.mapped_frames())
    assert leaves and all(m.mem.owner_of(frame) == vm.id for _, frame in leaves)


# -- overcommit -------------------------------------------------------------------------------


def test_without_overcommit_too_much_memory_is_a_config_error() -> None:
    m = Machine("1GiB", hypervisor={"memory": "64MiB"})
    m.create_vm("512MiB", "nested")
    free, committed, vms = m.mem.free_frames, m.committed, dict(m.vms)
    with pytest.raises(ConfigError, match=r"^vm\.memory: .*overcommit"):
        m.create_vm("512MiB", "shadow")
    assert (m.mem.free_frames, m.committed, m.vms) == (free, committed, vms)  # nothing half-made
    m.create_vm("448MiB", "shadow")  # what is left still fits exactly
    with pytest.raises(ConfigError, match=r"^vm\.memory"):
        m.create_vm("8MiB", "native")
    with pytest.raises(ConfigError, match=r"^vm\.memory"):
        Machine("1GiB").create_vm("2GiB", "nested")


@pytest.mark.parametrize("mode", MODES)
def test_overcommit_stops_the_vm_that_runs_out_and_the_run_goes_on(mode: str) -> None:
    m = Machine("64MiB", hypervisor={"overcommit": True, "memory": "4MiB", "vm_slice": 5_000})
    big = [m.create_vm("48MiB", mode, name=f"big{i}") for i in range(2)]  # 96 MiB promised on a 60 MiB host
    small = m.create_vm("8MiB", mode, name="small")
    assert sum(vm.memory.size for vm in m.vms.values()) > m.mem.size
    for i, vm in enumerate(big):
        vm.spawn(sequential(pages=10_000, n=30_000, stride=4096, writes=0.5, seed=i))
    small.spawn(zipf(pages=200, n=2_000, seed=3))
    result = m.run()  # returns normally
    stopped = [vm for vm in big if vm.terminated is not None]
    assert stopped, "the host ran out of memory but no VM was stopped"
    for vm in stopped:
        assert "memory" in vm.terminated and vm.exits["termination"] == 1
    assert small.terminated is None, small.terminated  # it got its frames before the host ran dry
    assert all(p.exit_reason == "exit" for p in small.guest.processes.values())
    # the run went on to its end, and says which processes the stopped VMs never finished
    assert result.partial and {(e["vm"], e["reason"]) for e in result.stopped} == {
        (vm.name, f"its VM was stopped: {vm.terminated}") for vm in stopped}
    assert {row["id"]: row["terminated"] for row in result.stats["vms"]} == {
        vm.id: vm.terminated for vm in m.vms.values()}
    # a stopped VM's memory can be given back, and the others use it
    for vm in stopped:
        m.destroy_vm(vm)
        assert m.mem.frames_owned(vm.id) == 0
    assert m.mem.free_frames > 0


def test_overcommit_promises_are_not_checked_at_creation() -> None:
    m = Machine("256MiB", hypervisor={"overcommit": True, "memory": "8MiB"})
    vms = [m.create_vm("1GiB", "nested", allocation="eager") for _ in range(4)]  # 4 GiB on 256 MiB
    assert all(m.mem.frames_owned(vm.id) == 0 for vm in vms)  # with overcommit nothing is taken up front
