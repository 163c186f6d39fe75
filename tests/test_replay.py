"""Real traces as guest processes: TraceProgram, streams of a native trace, its events, and the
trace commands (info, convert, record) end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run

from fastmmu.comparison import compare, run_mode
from fastmmu.settings import ConfigError
from fastmmu.traces import open as open_trace
from fastmmu.traces.base import Invlpg, MapRegion, SwitchProcess, SwitchVM, UnmapRegion
from fastmmu.traces.native import NativeWriter
from fastmmu.workloads import ProcessSpec, Scenario, TraceProgram, VMSpec, program_from_spec, trace_streams

DATA = Path(__file__).parent / "data" / "traces"
LACKEY = DATA / "sample.lackey"
BASE = 0x0000_5000_0000_0000


def one_process(program, memory: str = "64MiB") -> Scenario:
    return Scenario([VMSpec("vm0", memory=memory, processes=[ProcessSpec("p", program)])])


def records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(open_trace(str(path)).chunks())
    return np.concatenate([c.addresses for c in chunks]), np.concatenate([c.kinds for c in chunks])


def test_a_lackey_trace_replays_every_record_and_faults_once_per_page():
    addresses, _ = records(LACKEY)
    pages = len(np.unique(addresses >> np.uint64(12)))
    comparison = compare(one_process(TraceProgram(str(LACKEY))))
    for result in comparison.results.values():
        assert result.stats["accesses"] == len(addresses)
        assert result.stats["guest"]["page_faults"] == pages   # demand paging, nothing evicted
        assert result.stats["guest"]["segfaults"] == 0         # every touched region was mapped


def test_limit_and_every_format_replay(tmp_path):
    for name in ("sample.lackey", "sample.din", "sample.champsim", "sample.cloudsuite.champsim"):
        addresses, _ = records(DATA / name)
        result = run_mode(one_process(TraceProgram(str(DATA / name), limit=50)), "nested")
        assert result.stats["accesses"] == min(50, len(addresses)), name


def test_a_small_region_size_maps_more_regions_with_the_same_faults():
    coarse = run_mode(one_process(TraceProgram(str(LACKEY))), "native")
    fine = run_mode(one_process(TraceProgram(str(LACKEY), region_shift=12)), "native")
    assert fine.stats["guest"]["page_faults"] == coarse.stats["guest"]["page_faults"]
    with pytest.raises(ConfigError, match="region_shift"):
        program_from_spec({"trace": str(LACKEY), "region_shift": 8})


def write_native(path: Path, items: list) -> None:
    with NativeWriter(path) as writer:
        for item in items:
            if isinstance(item, tuple):
                writer.write_accesses(np.array(item[0], dtype=np.uint64), np.array(item[1], dtype=np.uint8))
            else:
                writer.write_event(item)


def pages(base: int, count: int) -> list[int]:
    return [base + i * 4096 for i in range(count)]


def test_streams_of_a_native_trace_become_processes_in_their_vms(tmp_path, capsys):
    path = tmp_path / "multi.fmt"
    write_native(path, [
        (pages(BASE, 3), [0, 1, 0]),                       # vm0/pid0: 3 records
        SwitchProcess(7), (pages(BASE, 5), [1] * 5),       # vm0/pid7: 5
        SwitchVM(1), SwitchProcess(2), (pages(BASE, 4), [0] * 4),  # vm1/pid2: 4
        SwitchVM(0), SwitchProcess(7), (pages(BASE + (1 << 30), 2), [0, 0]),  # vm0/pid7: 2 more
    ])
    assert trace_streams(open_trace(str(path))) == {"vm0/pid0": 3, "vm0/pid7": 7, "vm1/pid2": 4}
    status, out, err = run(capsys, "compare", "--trace", str(path), "--vm-memory", "32MiB", "--json")
    assert status == 0, err
    data = json.loads(out)
    layout = {vm["name"]: sorted(p["stream"] for p in vm["processes"]) for vm in data["scenario"]["vms"]}
    assert layout == {"vm0": ["vm0/pid0", "vm0/pid7"], "vm1": ["vm1/pid2"]}
    for result in data["results"].values():
        assert result["stats"]["accesses"] == 14
        per_vm = {vm["name"]: vm["guest"]["page_faults"] for vm in result["stats"]["vms"]}
        assert per_vm == {"vm0": 3 + 7, "vm1": 4}
    # --stream picks one of them: one process
    status, out, err = run(capsys, "compare", "--trace", str(path), "--stream", "vm0/pid7", "--json")
    assert json.loads(out)["rows"][0]["translations"] == 7


def test_a_native_trace_s_own_mappings_and_invlpgs_are_replayed(tmp_path):
    plain, evented = tmp_path / "plain.fmt", tmp_path / "evented.fmt"
    write_native(plain, [(pages(BASE, 4), [0] * 4), (pages(BASE, 4), [0] * 4)])
    write_native(evented, [(pages(BASE, 4), [0] * 4), Invlpg(BASE), Invlpg(BASE + 4096),
                           (pages(BASE, 4), [0] * 4)])
    counts = [run_mode(one_process(TraceProgram(str(p))), "shadow").stats["vm_exits"]["invlpg"]
              for p in (plain, evented)]
    assert counts[1] == counts[0] + 2                      # each INVLPG traps under shadow paging
    # A read-only mapping from the trace is honoured: the write after it is a segfault.
    readonly = tmp_path / "readonly.fmt"
    write_native(readonly, [MapRegion(BASE, 1 << 20, writable=False), (pages(BASE, 2), [0, 0]),
                            ([BASE + 8192], [1])])
    result = run_mode(one_process(TraceProgram(str(readonly))), "native")
    assert result.stats["guest"]["segfaults"] == 1 and result.stats["accesses"] == 2
    # An unmap frees the pages: touching them again faults again (mapped on first touch anew).
    unmapped = tmp_path / "unmapped.fmt"
    write_native(unmapped, [(pages(BASE, 3), [0] * 3), UnmapRegion(BASE, 3 * 4096), (pages(BASE, 3), [0] * 3)])
    result = run_mode(one_process(TraceProgram(str(unmapped))), "nested")
    assert result.stats["guest"]["page_faults"] == 6 and result.stats["guest"]["segfaults"] == 0


def test_trace_info_reports_what_the_trace_holds(capsys):
    status, out, err = run(capsys, "trace", "info", str(LACKEY), "--json")
    assert status == 0, err
    info = json.loads(out)
    addresses, kinds = records(LACKEY)
    assert info["format"] == "lackey" and info["records"] == len(addresses)
    assert (info["reads"], info["writes"], info["fetches"]) == tuple(int((kinds == k).sum()) for k in (0, 1, 2))
    assert info["pages_touched"] == len(np.unique(addresses >> np.uint64(12)))
    assert info["skipped_lines"] > 0                      # valgrind's own ==pid== lines
    assert info["lowest_address"] == int(addresses.min())


def test_convert_to_native_keeps_every_record_and_the_same_results(capsys, tmp_path):
    out_path = tmp_path / "sample.fmt.gz"
    status, out, err = run(capsys, "trace", "convert", str(LACKEY), str(out_path))
    assert status == 0, err
    original, converted = records(LACKEY), records(out_path)
    assert np.array_equal(original[0], converted[0]) and np.array_equal(original[1], converted[1])
    assert open_trace(str(out_path)).metadata()["source_format"] == "lackey"
    a = run_mode(one_process(TraceProgram(str(LACKEY))), "shadow")
    b = run_mode(one_process(TraceProgram(str(out_path))), "shadow")
    assert a.stats["vm_exits"] == b.stats["vm_exits"] and a.cycles == b.cycles
    status, _, err = run(capsys, "trace", "convert", str(LACKEY), str(tmp_path / "few.fmt"), "--limit", "10")
    assert len(records(tmp_path / "few.fmt")[0]) == 10
    status, _, err = run(capsys, "trace", "convert", str(LACKEY), str(LACKEY))
    assert status == 2 and "overwrite the input" in err
    status, _, err = run(capsys, "trace", "convert", str(tmp_path / "missing.lackey"), str(tmp_path / "x.fmt"))
    assert status == 2 and "missing.lackey: no such file" in err


def test_a_malformed_trace_stops_with_file_and_line_or_is_skipped(capsys, tmp_path):
    bad = tmp_path / "bad.lackey"
    lines = LACKEY.read_text().splitlines()
    lines.insert(20, " L zz12,8")
    bad.write_text("\n".join(lines) + "\n")
    status, out, err = run(capsys, "compare", "--trace", str(bad))
    assert status == 2 and f"{bad}:21" in err and "zz12" in err and "Traceback" not in err
    # A bad record further in: the run stops there, and what was done is kept, marked partial.
    lines = LACKEY.read_text().splitlines() * 30
    lines.insert(3000, " L zz12,8")
    bad.write_text("\n".join(lines) + "\n")
    status, out, err = run(capsys, "compare", "--trace", str(bad), "--modes", "nested", "-o", str(tmp_path / "r"))
    assert status == 2 and f"{bad}:3001" in err and "marked partial" in err
    assert "native" in out and "nested" not in out.split("-----")[-1]   # nothing ran after the error
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["partial"] and saved["error"].startswith(f"{bad}:3001")
    assert 0 < saved["results"]["native"]["stats"]["accesses"] < 3000
    status, out, err = run(capsys, "compare", "--trace", str(bad), "--skip-bad", "--json")
    assert status == 0, err
    assert json.loads(out)["rows"][0]["translations"] == 30 * len(records(LACKEY)[0])


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_record_traces_a_real_program_into_a_native_trace(capsys, tmp_path):
    out_path = tmp_path / "true.fmt.xz"
    status, _, err = run(capsys, "trace", "record", "-o", str(out_path), "--", "true")
    assert status == 0, err
    trace = open_trace(str(out_path))
    assert trace.format == "native" and trace.compression == "xz"
    assert trace.metadata()["command"] == ["true"] and trace.metadata()["source"] == "valgrind lackey"
    addresses, kinds = records(out_path)
    assert len(addresses) > 10_000 and set(np.unique(kinds).tolist()) == {0, 1, 2}
    result = run_mode(one_process(TraceProgram(str(out_path))), "nested")
    assert result.stats["accesses"] == len(addresses) and result.stats["guest"]["segfaults"] == 0
    status, _, err = run(capsys, "trace", "record", "-o", str(tmp_path / "x.fmt"), "--", "no-such-program-here")
    assert status == 2 and "no such program" in err


def test_trace_info_text_lines_up_and_says_what_the_format_skips(capsys, tmp_path):
    din = tmp_path / "t.din"
    din.write_text("0 1000\n1 2000 x\n3 0\n2 3000\n")
    status, out, err = run(capsys, "trace", "info", str(din))
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{din}: din trace, 27B"
    assert lines[1:5] == ["  records    3: 1 read, 1 write, 1 fetch",
                          "  skipped    1 line by design (escape records, labels 3 and 4, and blank lines), "
                          "0 bad records",
                          "  pages      3 distinct 4 KiB pages (12.0KiB)",
                          "  addresses  0x1000 .. 0x3000"]
    converted = tmp_path / "t.fmt"
    assert run(capsys, "trace", "convert", str(LACKEY), str(converted))[0] == 0
    status, out, _ = run(capsys, "trace", "info", str(converted))
    labels = [line[:17] for line in out.splitlines()[1:-1]]
    assert "  source_format  " in labels and "  records        " in labels   # one column, the longest label's
    assert json.loads(run(capsys, "trace", "info", str(converted), "--json")[1])["end_record"] is True


def test_convert_interrupted_keeps_a_whole_file_flagged_partial(capsys, tmp_path, monkeypatch):
    real = NativeWriter.write_accesses
    calls = []

    def interrupted(self, *args):
        real(self, *args)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(NativeWriter, "write_accesses", interrupted)
    out_path = tmp_path / "part.fmt"
    status, out, err = run(capsys, "trace", "convert", str(LACKEY), str(out_path))
    monkeypatch.undo()
    assert status == 130 and "(interrupted: partial, and its end record says so)" in out
    trace = open_trace(str(out_path))
    assert sum(len(c) for c in trace.chunks()) == len(records(LACKEY)[0]) and trace.stats.writer_partial
    status, out, _ = run(capsys, "trace", "info", str(out_path))
    assert "  partial        its writer stopped before the end of its input (the end record says so)" in out
    assert [p.name for p in tmp_path.iterdir()] == ["part.fmt"]


def test_a_stream_the_trace_lacks_is_an_error_naming_its_streams(tmp_path):
    path = tmp_path / "two.fmt"
    with NativeWriter(path) as writer:
        for pid in (3, 4):
            writer.write_event(SwitchProcess(pid))
            writer.write_accesses(np.arange(5, dtype=np.uint64) * 4096, 0)
    assert TraceProgram(str(path), stream="vm0/pid4").check() is None
    with pytest.raises(ValueError) as info:
        TraceProgram(str(path), stream="vm1/pid3").check()
    assert str(info.value) == (f"stream: {path} has no stream 'vm1/pid3'; its streams are vm0/pid3 (5 records), "
                               "vm0/pid4 (5 records)")


def test_a_process_killed_part_way_is_reported_with_the_access_it_stopped_at(tmp_path):
    """A #GP on a non-canonical address kills the process: the run is partial and says where."""
    path = tmp_path / "gp.lackey"
    addresses = [0x7000_0000 + 64 * i for i in range(300)]
    addresses[120] = 0x8000_0000_0000
    path.write_text("".join(f" L {a:x},8\n" for a in addresses))
    for mode in ("native", "brute_force", "shadow", "nested"):
        result = run_mode(one_process(TraceProgram(str(path))), mode)
        assert result.partial and result.stats["accesses"] == 120
        assert result.stopped == [{"vm": "vm0", "process": "p", "pid": 1, "accesses": 120,
                                   "reason": "general protection fault at 0x800000000000 (non-canonical)"}]
        assert result.stop_notes() == ["vm0/p (pid 1) stopped at access 121 of its program (120 done): general "
                                       "protection fault at 0x800000000000 (non-canonical)"]


def test_a_vm_stopped_by_the_hypervisor_reports_its_unfinished_processes():
    from fastmmu.comparison import build
    from fastmmu.workloads import zipf

    scenario = Scenario([VMSpec("a", memory="64MiB", processes=[ProcessSpec("z", zipf(pages=50, n=3000, seed=1))]),
                         VMSpec("b", memory="64MiB", processes=[ProcessSpec("y", zipf(pages=50, n=3000, seed=2)),
                                                                ProcessSpec("x", zipf(pages=9, n=10, seed=3))])])
    machine = build(scenario, "nested")
    seen = {"b": 0}

    def stop_b(vm, process, addresses, kinds, out, start, stop):
        if vm.name == "b":
            seen["b"] += stop - start
            if seen["b"] >= 500:
                vm.terminate("stopped by the test")

    result = machine.run(on_batch=stop_b)
    assert result.partial
    (entry,) = [e for e in result.stopped if e["process"] == "y"]
    assert entry["vm"] == "b" and entry["reason"] == "its VM was stopped: stopped by the test"
    assert 0 < entry["accesses"] < 3000
    assert all(e["vm"] == "b" for e in result.stopped)          # VM a ran to its end
    again = machine.run()
    assert again.stopped == [] and not again.partial            # reported in the run it happened in, once


@pytest.mark.parametrize("seed", range(20))
def test_the_regions_a_chunk_touches_are_found_exactly_and_in_ascending_order(seed):
    from fastmmu.workloads.replay import PEEL_REGIONS, _AddressSpace

    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 3 * PEEL_REGIONS))   # below and above the number peeled one by one
    regions = rng.integers(0, 1 << 20, count, dtype=np.uint64)
    addresses = (rng.choice(regions, 5000) << np.uint64(30)) | rng.integers(0, 1 << 30, 5000, dtype=np.uint64)
    expected = np.unique(addresses >> np.uint64(30)).tolist()
    assert _AddressSpace(30)._distinct_regions(addresses) == expected
