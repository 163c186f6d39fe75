"""HostTraceWriter on real runs: the file holds exactly what ``on_batch`` saw, in every format."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastmmu.comparison import build
from fastmmu.traces.base import ReadOptions, SwitchProcess, SwitchVM
from fastmmu.traces.native import read, read_header
from fastmmu.traces.writers import HostTraceWriter, format_lines
from fastmmu.workloads import ProcessSpec, Scenario, VMSpec, sequential, zipf


def scenario() -> Scenario:
    """Two VMs, three processes: VM and process switches between batches, and page faults inside them."""
    return Scenario([
        VMSpec("a", memory="64MiB", processes=[
            ProcessSpec("z", zipf(pages=300, n=6_000, seed=1, chunk=1_000)),
            ProcessSpec("s", sequential(pages=40, n=3_000, seed=2, writes=0.5, base=0x2000_0000_0000)),
        ]),
        VMSpec("b", memory="64MiB", seed=3, processes=[ProcessSpec("z", zipf(pages=200, n=4_000, seed=4))]),
    ])


class Recorder:
    """What on_batch saw, passed on to the writer."""

    def __init__(self, writer: HostTraceWriter) -> None:
        self.writer = writer
        self.hosts: list[np.ndarray] = []
        self.kinds: list[np.ndarray] = []
        self.owners: list[tuple[int, int, int]] = []  # (accesses before, vm, pid) per batch

    def on_batch(self, vm: Any, process: Any, addresses: np.ndarray, kinds: np.ndarray,
                 host_addresses: np.ndarray, start: int, stop: int) -> None:
        if stop > start:
            self.owners.append((sum(map(len, self.hosts)), vm.id, process.pid))
            self.hosts.append(host_addresses[start:stop].copy())
            self.kinds.append(kinds[start:stop].copy())
        self.writer.on_batch(vm, process, addresses, kinds, host_addresses, start, stop)

    def seen(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.hosts), np.concatenate(self.kinds)


def run(mode: str, target: Any, format: str, **options: Any) -> Recorder:
    with HostTraceWriter(target, format, **options) as writer:
        recorder = Recorder(writer)
        result = build(scenario(), mode).run(on_batch=recorder.on_batch)
    assert not result.partial and result.stats["accesses"] == 13_000
    assert writer.records == 13_000
    return recorder


def expected_events(owners: list[tuple[int, int, int]]) -> list:
    events, vm, pid = [], None, None
    for index, batch_vm, batch_pid in owners:
        if (batch_vm, batch_pid) != (vm, pid):
            if batch_vm != vm:
                events.append((index, SwitchVM(batch_vm)))
            events.append((index, SwitchProcess(batch_pid)))
            vm, pid = batch_vm, batch_pid
    return events


@pytest.mark.parametrize("mode", ["native", "nested", "shadow"])
@pytest.mark.parametrize("buffer_records", [7, 1 << 16])
def test_native_host_trace_is_what_on_batch_saw(mode: str, buffer_records: int) -> None:
    out = io.BytesIO()
    recorder = run(mode, out, "native", metadata={"mode": mode}, buffer_records=buffer_records)
    hosts, kinds = recorder.seen()
    data = out.getvalue()
    header = read_header(io.BytesIO(data))
    assert header.metadata["mode"] == mode and header.metadata["content"] == "host-physical addresses"
    options = ReadOptions("host.fmt", chunk_records=1_000)
    chunks = list(read(io.BytesIO(data), options))
    got = np.concatenate([c.addresses for c in chunks])
    np.testing.assert_array_equal(got, hosts)
    np.testing.assert_array_equal(np.concatenate([c.kinds for c in chunks]), kinds & 3)
    events, total = [], 0
    for chunk in chunks:
        events += [(total + index, event) for index, event in chunk.events]
        total += len(chunk)
    assert events == expected_events(recorder.owners)
    switched_to = {event.vm for _, event in events if isinstance(event, SwitchVM)}
    assert switched_to == {vm for _, vm, _ in recorder.owners} and len(switched_to) == 2
    assert options.stats.records == 13_000


def parse(text: str, dramsim3: bool) -> tuple[list[int], list[bool], list[int]]:
    addresses, writes, cycles = [], [], []
    for line in text.splitlines():
        fields = line.split(" ")
        assert fields[0].startswith("0x") and fields[0] == hex(int(fields[0], 16))  # no leading zeros
        addresses.append(int(fields[0], 16))
        if dramsim3:
            assert len(fields) == 3 and fields[1] in ("READ", "WRITE")
            writes.append(fields[1] == "WRITE")
            cycles.append(int(fields[2]))
        else:
            assert len(fields) == 2 and fields[1] in ("R", "W")
            writes.append(fields[1] == "W")
    return addresses, writes, cycles


@pytest.mark.parametrize("format", ["ramulator", "dramsim3"])
@pytest.mark.parametrize("buffer_records", [5, 1 << 16])
def test_text_host_trace_parses_back(format: str, buffer_records: int) -> None:
    out = io.BytesIO()
    recorder = run("nested", out, format, buffer_records=buffer_records)
    hosts, kinds = recorder.seen()
    addresses, writes, cycles = parse(out.getvalue().decode("ascii"), format == "dramsim3")
    assert addresses == hosts.tolist()
    assert writes == ((kinds & 1) != 0).tolist()  # fetches are reads
    if format == "dramsim3":
        assert cycles == list(range(13_000))


def test_compressed_text_trace(tmp_path: Path) -> None:
    path = tmp_path / "host.trace.gz"
    recorder = run("native", path, "ramulator")
    addresses, _, _ = parse(gzip.decompress(path.read_bytes()).decode("ascii"), False)
    assert addresses == recorder.seen()[0].tolist()


def test_format_lines_exact_text() -> None:
    addresses = np.array([0, 0x1, 0xABC0, 0xF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64)
    writes = np.array([False, True, True, False, True])
    assert format_lines(addresses, writes, "ramulator") == (
        b"0x0 R\n0x1 W\n0xabc0 W\n0xffffffffff000 R\n0xffffffffffffffff W\n")
    assert format_lines(addresses, writes, "dramsim3", first_cycle=99_999_998) == (
        b"0x0 READ 99999998\n0x1 WRITE 99999999\n0xabc0 WRITE 100000000\n0xffffffffff000 READ 100000001\n"
        b"0xffffffffffffffff WRITE 100000002\n")
    assert format_lines(addresses[:1], writes[:1], "dramsim3", first_cycle=(1 << 64) - 1) == (
        b"0x0 READ 18446744073709551615\n")
    assert format_lines(addresses[:0], writes[:0], "ramulator") == b""


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^format: expected one of native, ramulator, dramsim3, got 'csv'"):
        HostTraceWriter(io.BytesIO(), "csv")
    with pytest.raises(ValueError, match=r"^buffer_records: expected a positive count, got 0"):
        HostTraceWriter(io.BytesIO(), buffer_records=0)


@pytest.mark.parametrize("mode", ["native", "brute_force", "shadow", "nested"])
def test_pte_access_trace_holds_every_walk_reference_and_only_table_frames(mode: str) -> None:
    from fastmmu.arch import FrameKind
    from fastmmu.config import Config
    from fastmmu.traces.writers import PteTraceWriter

    machine = build(scenario(), mode, Config.from_dict({"machine": {"host_memory": "1GiB"}}))
    kinds: set[int] = set()

    class Checked(PteTraceWriter):
        def write(self, vm: Any, process: Any, hosts: np.ndarray, access: np.ndarray) -> None:
            # Walks read page tables, nothing else: frames that hold entries right now (data frames
            # have none; tables are freed as processes exit, so this is checked as the run goes).
            tables = set(machine.mem.content_frames().tolist())
            for frame in np.unique(hosts >> np.uint64(12)).tolist():
                assert frame in tables, f"{mode}: a walk read frame {frame:#x}, which holds no table"
                kinds.add(machine.mem.kind_of(frame))
            super().write(vm, process, hosts, access)

    out = io.BytesIO()
    with Checked(out, "native") as writer:
        writer.attach(machine)
        result = machine.run(on_batch=writer.on_batch)
    addresses = np.concatenate([c.addresses for c in read(io.BytesIO(out.getvalue()), ReadOptions("pte"))])
    assert len(addresses) == writer.records == result.stats["tlb"]["walk_references"] > 0
    if mode == "nested":   # both dimensions: the EPT (the hypervisor's frames) and the guest's own tables
        assert int(FrameKind.EPT) in kinds and int(FrameKind.DATA) in kinds
    assert read_header(io.BytesIO(out.getvalue())).metadata["content"] == "page-walk references (host-physical)"


# -- a killed writer leaves no file that looks whole ----------------------------------------------

KILLED_WRITER = """
import sys, time
import numpy as np
from fastmmu.traces.writers import HostTraceWriter
writer = HostTraceWriter(sys.argv[1], sys.argv[2], buffer_records=1000)
class VM: id = 1
class Process: pid = 7
writer.write(VM, Process, np.arange(5000, dtype=np.uint64) * 64, np.zeros(5000, dtype=np.uint8))
writer.flush()
print("written", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("format, name", [("native", "host.fmt"), ("native", "host.fmt.gz"),
                                          ("ramulator", "host.ramulator.txt")])
def test_a_writer_killed_mid_file_leaves_no_file_under_its_name(tmp_path: Path, format: str, name: str) -> None:
    import signal
    import subprocess
    import sys

    from fastmmu.traces import TraceError
    from fastmmu.traces import open as open_trace

    path = tmp_path / name
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), format], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "written\n"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert not path.exists()                                   # the final name appears only when the file is whole
    (left,) = tmp_path.iterdir()                               # kill -9 leaves the temporary file, named as such
    assert left.name.startswith(f".{name}.") and left.name.endswith(".partial")
    if name == "host.fmt":                                     # and read anyway, it says it is truncated
        with pytest.raises(TraceError) as info:
            for _ in open_trace(left).chunks():
                pass
        assert str(info.value).endswith("truncated: the file ends after 5,000 accesses and 2 events without its "
                                        "end record (was its writer stopped?)")


def test_a_closed_host_trace_is_whole_and_a_failed_run_leaves_none(tmp_path: Path) -> None:
    path = tmp_path / "host.fmt"
    recorder = run("nested", path, "native")
    options = ReadOptions(str(path))
    with open(path, "rb") as stream:
        assert sum(len(c) for c in read(stream, options)) == 13_000
    assert options.stats.ended and not options.stats.writer_partial
    assert len(recorder.seen()[0]) == 13_000
    with pytest.raises(RuntimeError):
        with HostTraceWriter(tmp_path / "failed.ramulator.txt", "ramulator") as writer:
            build(scenario(), "shadow").run(on_batch=writer.on_batch)
            raise RuntimeError("the run failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.fmt"]
