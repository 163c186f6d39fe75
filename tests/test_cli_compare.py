"""``fastmmu compare``: the main job on the command line, its settings, and its errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from cli_runner import run

from fastmmu.hypervisor.machine import Machine

SMALL = ("--scale", "0.02")  # the built-in workload at 2% of its accesses: well under a second a mode


@pytest.fixture(scope="module")
def compared() -> dict:
    """One JSON comparison of the small workload, shared by the tests that only read it."""
    out = subprocess.run([sys.executable, "-m", "fastmmu", "compare", *SMALL, "--json"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_compare_prints_one_row_per_mode_with_overhead_versus_native(capsys):
    status, out, err = run(capsys, "compare", *SMALL)
    assert status == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode"))
    for column in ("translations", "TLB miss", "walks", "refs/walk", "guest #PF", "VM exits", "top exits",
                   "cycles", "vs native"):
        assert column in lines[header]
    rows = [line.split()[0] for line in lines[header + 2:header + 6]]
    assert rows == ["native", "brute_force", "shadow", "nested"]
    assert "baseline" in lines[header + 2]
    assert all(line.rstrip().endswith("x") for line in lines[header + 3:header + 6])


def test_compare_json_has_every_mode_and_the_same_guest_work(compared):
    rows = {row["mode"]: row for row in compared["rows"]}
    assert list(rows) == ["native", "brute_force", "shadow", "nested"]
    translations = {row["translations"] for row in rows.values()}
    faults = {row["guest_page_faults"] for row in rows.values()}
    assert len(translations) == 1 and len(faults) == 1  # the guests did the same work in every mode
    assert rows["native"]["vm_exits"] == 0 and rows["native"]["overhead"] == 0.0
    assert rows["brute_force"]["overhead"] > rows["nested"]["overhead"] > 0
    result = compared["results"]["shadow"]
    assert result["stats"]["vm_exits"]["hidden_fault"] > 0
    assert result["cycles"] == pytest.approx(sum(v for k, v in result["breakdown"].items() if k != "total"))
    assert compared["config"]["hypervisor"]["shadow_cache"] == 16


def test_modes_option_keeps_native_as_the_baseline(capsys):
    status, out, _ = run(capsys, "compare", *SMALL, "--modes", "nested", "--json")
    assert status == 0
    assert [row["mode"] for row in json.loads(out)["rows"]] == ["native", "nested"]


def test_set_changes_a_setting_and_the_result(capsys):
    def shadow_cache(*settings: str) -> dict:
        argv = ["compare", *SMALL, "--modes", "shadow", "--set", "guest.quantum=2000", "--json"]
        for setting in settings:
            argv += ["--set", setting]
        status, out, _ = run(capsys, *argv)
        assert status == 0
        data = json.loads(out)
        assert data["config"]["guest"]["quantum"] == 2000
        return data["results"]["shadow"]["stats"]["hypervisor"]

    cached, single = shadow_cache(), shadow_cache("hypervisor.shadow_cache=1")
    assert cached["shadow_cache_misses"] == 6  # one shadow per process, found again at every switch
    assert cached["shadow_cache_hits"] > 0 and cached["shadow_cache_evictions"] == 0
    assert single["shadow_cache_misses"] > 6 and single["shadow_cache_evictions"] > 0


def test_config_file_toml_and_json(capsys, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[costs]\nvm_exit = 100\n[guest]\nquantum = 5000\n')
    status, out, _ = run(capsys, "compare", *SMALL, "--modes", "nested", "--config", str(toml), "--json")
    assert status == 0
    config = json.loads(out)["config"]
    assert config["costs"]["vm_exit"] == 100 and config["guest"]["quantum"] == 5000
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"hypervisor": {"ept": "eager"}}))
    status, out, _ = run(capsys, "compare", *SMALL, "--modes", "nested", "--config", str(as_json), "--json")
    assert status == 0
    assert json.loads(out)["results"]["nested"]["stats"]["vm_exits"]["ept_violation"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--set", "hypervisor.shadow_cach=3"], 'hypervisor.shadow_cach: unknown setting (did you mean "shadow_cache"?)'),
    (["--set", "hypervisr.ept=eager"], 'hypervisr.ept: unknown section (did you mean "hypervisor"?)'),
    (["--set", "costs.vm_exit=-5"], "costs.vm_exit: expected a number >= 0"),
    (["--set", "guest.reserved=1000"], "guest.reserved: 1000B is not a multiple of the 4 KiB page size"),
    (["--set", "hypervisor.ept=sometimes"], "hypervisor.ept: expected one of lazy, eager"),
    (["--set", "machine.host_memory=600MiB"], "vm.memory: cannot back 512MiB"),
    (["--set", "machine.host_memory=16MiB"], "hypervisor.memory: 256MiB leaves nothing"),
    (["--set", "guest.pcid"], "expected key=value"),
    (["--modes", "shadw"], 'modes: unknown mode \'shadw\'; expected one of native, brute_force, shadow, nested '
                           '(did you mean "shadow"?)'),
    (["--scale", "0"], "--scale: expected a positive number"),
    (["--max-accesses", "0"], "--max-accesses: expected a positive number"),
    (["--config", "/nonexistent/run.toml"], "/nonexistent/run.toml: cannot read it"),
])
def test_bad_input_is_one_line_naming_the_setting_and_exit_2(capsys, argv, message):
    status, out, err = run(capsys, "compare", *SMALL, *argv)
    assert status == 2
    assert err.startswith("fastmmu: error: ") and message in err
    assert "Traceback" not in err and out == ""


def test_bad_config_files(capsys, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[hypervisor\nept = 1\n")
    status, _, err = run(capsys, "compare", *SMALL, "--config", str(broken))
    assert status == 2 and f"{broken}: not valid TOML" in err and "line 1" in err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[hypervisor]\nshadow_cahce = 2\n")
    status, _, err = run(capsys, "compare", *SMALL, "--config", str(unknown))
    assert status == 2 and f"{unknown}: hypervisor.shadow_cahce: unknown setting" in err
    status, _, err = run(capsys, "compare", *SMALL, "--config", str(tmp_path))
    assert status == 2 and "is a directory" in err


def test_max_accesses_marks_the_results_partial(capsys):
    status, out, _ = run(capsys, "compare", *SMALL, "--modes", "native", "--max-accesses", "1000")
    assert status == 0
    assert "partial: not every process ran to its end" in out


def test_ctrl_c_keeps_the_results_so_far(capsys, monkeypatch):
    """An interrupt inside a run: that mode's results so far, marked partial; exit status 130."""
    real_run = Machine._run_slice
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(Machine, "_run_slice", interrupted)
    status, out, _ = run(capsys, "compare", *SMALL)
    assert status == 130
    assert "partial: not every process ran to its end (interrupted)" in out
    assert "native" in out and "nested" not in out  # nothing ran after the interrupt


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_from_outside_exits_130_with_partial_output(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "fastmmu", "compare", "--scale", "5", "-o", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out_line = proc.stdout.readline()  # the workload line: the run has started
        assert out_line.startswith("workload:")
        import time

        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "(interrupted)" in out
    # -o DIR: the results so far are written too, marked partial
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["partial"] and results["interrupted"]
    assert (tmp_path / "config.json").exists() and (tmp_path / "results.csv").exists()
