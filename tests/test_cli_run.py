"""The run commands' workloads and outputs: --workload, run, -o DIR, --plot, --host-trace, progress,
config, workloads, explain (Ctrl-C with -o: test_cli_compare.py)."""

from __future__ import annotations

import csv
import io
import json
import time

import numpy as np
import pytest
from cli_runner import run

from fastmmu.cli.progress import ProgressBar
from fastmmu.config import Config

SMALL = ("--workload", "zipf:pages=512,n=20k,seed=3", "--workload", "strided:pages=256,n=5k@second",
         "--vm-memory", "32MiB")


def test_workloads_make_processes_in_the_named_vms(capsys):
    status, out, err = run(capsys, "compare", *SMALL, "--json")
    assert status == 0, err
    data = json.loads(out)
    vms = data["scenario"]["vms"]
    assert [(vm["name"], [p["generator"] for p in vm["processes"]]) for vm in vms] == \
        [("vm0", ["zipf"]), ("second", ["strided"])]
    assert vms[0]["processes"][0]["n"] == 20_000 and vms[0]["memory"] == 32 << 20
    for row in data["rows"]:
        assert row["translations"] == 25_000


def test_output_directory_holds_json_csv_and_a_config_that_runs_again(capsys, tmp_path):
    out_dir = tmp_path / "results"
    status, out, err = run(capsys, "compare", *SMALL, "--modes", "shadow", "-o", str(out_dir))
    assert status == 0, err
    assert f"results written to {out_dir}/" in out
    results = json.loads((out_dir / "results.json").read_text())
    rows = list(csv.DictReader(io.StringIO((out_dir / "results.csv").read_text())))
    assert [r["mode"] for r in rows] == ["native", "shadow"]
    assert int(rows[1]["exits.hidden_fault"]) == results["results"]["shadow"]["stats"]["vm_exits"]["hidden_fault"]
    assert float(rows[1]["cycles"]) == pytest.approx(results["results"]["shadow"]["cycles"])
    resolved = json.loads((out_dir / "config.json").read_text())
    assert set(resolved) == {"machine", "hypervisor", "guest", "costs", "workload"}
    assert resolved["hypervisor"] == Config().to_dict()["hypervisor"]  # every setting, defaults included
    # The resolved config alone runs the same workload again, to the same numbers.
    status, out, err = run(capsys, "run", "--mode", "shadow", "--config", str(out_dir / "config.json"), "--json")
    assert status == 0, err
    again = json.loads(out)["result"]
    assert again["stats"]["vm_exits"] == results["results"]["shadow"]["stats"]["vm_exits"]
    assert again["cycles"] == results["results"]["shadow"]["cycles"]


def test_run_prints_one_mode_in_detail(capsys):
    status, out, err = run(capsys, "run", "--mode", "nested", *SMALL)
    assert status == 0, err
    assert "mode nested: 25,000 accesses" in out
    assert "VM exits" in out and "ept_violation" in out and "cycles" in out
    status, _, err = run(capsys, "run", "--mode", "nestd", *SMALL)
    assert status == 2 and "did you mean" in err


def test_plots_are_written_as_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    status, _, err = run(capsys, "compare", *SMALL, "-o", str(tmp_path), "--plot")
    assert status == 0, err
    for name in ("overhead.png", "tlb_miss_rate.png", "exits.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_and_host_trace_need_a_directory(capsys):
    for option in (("--plot",), ("--host-trace", "native"), ("--pte-trace", "ramulator")):
        status, _, err = run(capsys, "compare", *SMALL, *option)
        assert status == 2 and "-o DIR" in err


def test_host_traces_one_per_mode_hold_every_access(capsys, tmp_path):
    from fastmmu.traces.base import ReadOptions
    from fastmmu.traces.native import read

    status, out, err = run(capsys, "compare", *SMALL, "--modes", "nested", "-o", str(tmp_path),
                           "--host-trace", "native")
    assert status == 0, err
    native, nested = tmp_path / "host-native.fmt", tmp_path / "host-nested.fmt"
    totals = []
    for path in (native, nested):
        with path.open("rb") as f:
            chunks = list(read(f, ReadOptions(str(path))))
        totals.append(np.concatenate([c.addresses for c in chunks]))
    assert len(totals[0]) == len(totals[1]) == 25_000
    status, out, err = run(capsys, "compare", *SMALL, "--modes", "nested", "-o", str(tmp_path / "pte"),
                           "--pte-trace", "dramsim3", "--json")
    assert status == 0, err
    walk_references = json.loads(out)["results"]["nested"]["stats"]["tlb"]["walk_references"]
    lines = (tmp_path / "pte" / "pte-nested.dramsim3.txt").read_text().splitlines()
    assert len(lines) == walk_references and lines[0].split()[1:] == ["READ", "0"]
    status, _, err = run(capsys, "compare", *SMALL, "--modes", "native", "-o", str(tmp_path),
                         "--host-trace", "ramulator")
    lines = (tmp_path / "host-native.ramulator.txt").read_text().splitlines()
    assert len(lines) == 25_000 and all(line.split()[1] in ("R", "W") for line in lines[:100])


def test_progress_line_shows_rate_and_eta_only_when_asked_or_on_a_terminal():
    stream = io.StringIO()
    bar = ProgressBar(["native", "nested"], 1_000_000, stream=stream, interval=0.0)
    assert not bar.enabled  # a StringIO is not a terminal
    bar.start_mode("native", 0)
    bar.on_batch(None, None, None, None, None, 0, 500_000)
    assert stream.getvalue() == ""
    bar = ProgressBar(["native", "nested"], 1_000_000, stream=stream, interval=0.0, force=True)
    bar.start_mode("nested", 1)
    bar.on_batch(None, None, None, None, None, 0, 5)
    assert stream.getvalue().endswith("ETA -:--:--")   # too early to estimate
    time.sleep(0.5)
    bar.on_batch(None, None, None, None, None, 0, 250_000)
    text = stream.getvalue()
    assert "nested [2/2]" in text and "250.0k/~1.0M accesses" in text and "/s" in text
    assert text.rstrip().endswith("ETA 0:00:01") or text.rstrip().endswith("ETA 0:00:00")
    bar.close()
    assert stream.getvalue().endswith("\r")


def test_config_dump_lists_every_setting_and_its_toml_runs(capsys, tmp_path):
    status, out, _ = run(capsys, "config", "--dump")
    assert status == 0
    for row in Config().describe():
        assert row["key"] in out and row["description"] in out
    status, out, _ = run(capsys, "config", "--dump", "--format", "toml")
    path = tmp_path / "all.toml"
    path.write_text(out)
    status, out, err = run(capsys, "config", "--config", str(path), "--format", "json")
    assert status == 0, err
    assert json.loads(out) == Config().to_dict()
    status, out, _ = run(capsys, "config", "--set", "hypervisor.shadow_cache=3")
    assert "hypervisor.shadow_cache" in out and "(default 16)" in out


def test_workloads_lists_every_generator(capsys):
    from fastmmu.workloads import GENERATORS

    status, out, _ = run(capsys, "workloads")
    assert status == 0
    for name in GENERATORS:
        assert f"{name}: " in out
    status, out, _ = run(capsys, "workloads", "--json")
    assert [g["name"] for g in json.loads(out)] == list(GENERATORS)


@pytest.mark.parametrize(("argv", "message"), [
    (("--workload", "zipff:pages=4"), 'did you mean "zipf"'),
    (("--workload", "zipf:pages=4,n=x"), "--workload.n: expected int"),
    (("--workload", "zipf:pages=4"), "zipf needs n"),
    (("--workload", "zipf:pagez=4,n=5"), 'did you mean "pages"'),
    (("--workload", "zipf:pages"), "not name=value"),
    (("--trace", "/nonexistent/trace.lackey"), "/nonexistent/trace.lackey"),
])
def test_bad_workloads_are_one_line_errors(capsys, argv, message):
    status, out, err = run(capsys, "compare", *argv)
    assert status == 2
    assert message in err and "Traceback" not in err


def test_explain_on_the_command_line(capsys):
    status, out, err = run(capsys, "explain", "--mode", "nested", "--set", "machine.tlb=none", *SMALL)
    assert status == 0, err
    assert "memory references: 24" in out and "EPT PML4E" in out
    status, out, err = run(capsys, "explain", "0x7", "--mode", "native", "--resolve", "--json", *SMALL)
    assert status == 0, err
    data = json.loads(out)
    assert data["translations"][0]["status"] == "page_fault" and data["translations"][0]["error_code"] == 4
    status, _, err = run(capsys, "explain", "0xZZ", *SMALL)
    assert status == 2 and "ADDRESS" in err


def test_a_config_json_runs_again_from_another_directory(capsys, tmp_path, monkeypatch):
    """config.json stores trace paths absolute; a relative path in a config file is relative to that file."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "t.din").write_text("".join(f"0 {0x7000_0000 + 4096 * (i % 40):x}\n" for i in range(500)))
    monkeypatch.chdir(work)
    status, _, err = run(capsys, "compare", "--trace", "t.din", "--modes", "nested", "-o", "res", "--json")
    assert status == 0, err
    resolved = json.loads((work / "res" / "config.json").read_text())
    assert resolved["workload"]["vms"][0]["processes"][0]["trace"] == str(work / "t.din")
    monkeypatch.chdir(elsewhere)
    status, out, err = run(capsys, "compare", "--config", str(work / "res" / "config.json"), "--modes", "nested",
                           "--json")
    assert status == 0, err
    assert [row["translations"] for row in json.loads(out)["rows"]] == [500, 500]
    # a hand-written config naming the trace relative to itself
    (work / "mine.toml").write_text('[[workload.vms]]\nname = "a"\nprocesses = [{ trace = "t.din" }]\n')
    status, out, err = run(capsys, "compare", "--config", str(work / "mine.toml"), "--modes", "nested", "--json")
    assert status == 0, err
    assert json.loads(out)["rows"][0]["translations"] == 500


def test_coinciding_miss_rate_lines_say_so():
    from fastmmu.hypervisor.result import RunResult
    from fastmmu.plots import miss_rate_lines

    def result(mode, rates):
        return RunResult(mode, {}, 1.0, timeline=[{"accesses": 10 * (i + 1), "tlb_miss_rate": r, "vm_exits": 0}
                                                  for i, r in enumerate(rates)])

    results = {"native": result("native", [0.1, 0.2]), "brute_force": result("brute_force", [0.1, 0.2]),
               "shadow": result("shadow", [0.3, 0.2]), "nested": result("nested", [])}
    assert miss_rate_lines(results) == [("native", [10, 20], [0.1, 0.2]), ("brute_force (= native)", [10, 20],
                                         [0.1, 0.2]), ("shadow", [10, 20], [0.3, 0.2])]
