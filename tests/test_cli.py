"""The ``fastmmu`` command line: info, demo, help texts, and errors without tracebacks."""

from __future__ import annotations

import importlib.abc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run

import fastmmu
from fastmmu import cli
from fastmmu._backend import CORE_MODULES, backend_report
from fastmmu._core import memory as core_memory
from fastmmu.arch import ENTRIES_PER_TABLE

REPO = Path(__file__).resolve().parent.parent


# -- which fastmmu is under test -------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("FASTMMU_EXPECT_INSTALLED"),
                    reason="set FASTMMU_EXPECT_INSTALLED=1 when fastmmu is installed non-editable (.ci/run)")
def test_tests_run_against_the_installed_package():
    package = Path(fastmmu.__file__).resolve().parent
    assert REPO / "src" not in package.parents, f"fastmmu was imported from the source tree: {package}"
    assert "site-packages" in package.parts


# -- info ----------------------------------------------------------------------------------


def test_info_names_the_compiled_backend_and_its_files(capsys):
    status, out, err = run(capsys, "info")
    assert status == 0 and err == ""
    assert f"fastmmu {backend_report()['version']}" in out
    assert "backend:   compiled" in out
    assert f"fastmmu._core.memory   loaded   {core_memory.__file__}" in out
    assert f"build:     {'debug' if core_memory.BUILD_DEBUG else 'release'}" in out
    import numpy

    assert f"numpy:     {numpy.__version__}" in out


def test_info_json(capsys):
    status, out, _ = run(capsys, "info", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["backend"] == "compiled" and report["ok"] is True
    assert [m["name"] for m in report["modules"]] == [f"fastmmu._core.{n}" for n in CORE_MODULES]
    memory = report["modules"][0]
    assert memory == {"name": "fastmmu._core.memory", "state": "loaded", "path": core_memory.__file__,
                      "debug": core_memory.BUILD_DEBUG, "error": None, "fix": None}
    # every compiled module exports BUILD_DEBUG, and one build gives them all the same
    assert {m["debug"] for m in report["modules"] if m["state"] == "loaded"} == {core_memory.BUILD_DEBUG}
    assert report["package"] == fastmmu.__file__
    assert report["python"].endswith(".".join(map(str, sys.version_info[:2])) + f".{sys.version_info[2]}")
    assert set(report) >= {"version", "build", "numpy", "platform", "machine", "python_executable"}


class _Broken(importlib.abc.MetaPathFinder):
    """Makes one module fail to import the way a stale or mismatched extension does."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname == self.name:
            raise ImportError(f"{fullname}: undefined symbol: __pyx_fake")
        return None


@pytest.fixture
def broken(monkeypatch):
    def breaker(short: str) -> None:
        name = f"fastmmu._core.{short}"
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setattr(sys, "meta_path", [_Broken(name), *sys.meta_path])

    return breaker


def test_info_reports_a_module_that_does_not_load_and_how_to_fix_it(capsys, broken):
    broken("tlb")
    status, out, _ = run(capsys, "info")
    assert status == 1
    assert "fastmmu._core.tlb      BROKEN: ImportError: fastmmu._core.tlb: undefined symbol: __pyx_fake" in out
    assert "fix: this module is present but does not load in this interpreter: reinstall with " in out
    assert "backend:   compiled" in out


def test_info_says_when_the_core_cannot_run(capsys, broken):
    broken("memory")
    status, out, _ = run(capsys, "info", "--json")
    report = json.loads(out)
    assert status == 1
    assert report["backend"] == "unavailable" and report["ok"] is False
    assert report["modules"][0]["state"] == "broken"
    status, out, _ = run(capsys, "info")
    assert status == 1
    assert out.rstrip().endswith(
        "fastmmu: error: the compiled core (fastmmu._core.memory) cannot be imported; "
        "nothing can run until it is rebuilt (see 'fix' above)")


def test_info_distinguishes_a_module_that_was_not_built(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastmmu._core.mmu", None)  # import raises ModuleNotFoundError
    status, out, _ = run(capsys, "info", "--json")
    mmu = json.loads(out)["modules"][3]
    assert mmu["state"] == "not built"
    assert mmu["fix"].startswith("this module was not built: reinstall from the source tree with `pip install .`")


# -- demo ------------------------------------------------------------------------------------


def test_demo_result():
    vm_memory = 64 << 20
    pages = vm_memory >> 12
    tables = pages // ENTRIES_PER_TABLE
    result = cli.demo(64 << 30, vm_memory, seed=3, accesses=50_000)
    assert result["host_memory"] == 64 << 30
    assert result["table_frames"] == 2 * tables == 64
    if core_memory.HostMemory(4096).layout == "flat":
        assert result["table_bytes"] == 64 * 4096  # flat: 4 KiB committed per table frame
    else:
        assert result["table_bytes"] == 128 * 4096  # 65 slots with the zero frame: capacity doubled to 128
    assert result["free_frames"] == result["host_frames"] - 2 * pages - 2 * tables
    assert [(vm["owner"], vm["layout"], vm["data_frames"], vm["table_frames"], vm["frames_owned"])
            for vm in result["vms"]] == [(1, "contiguous", pages, tables, pages),
                                         (2, "scattered", pages, tables, pages)]
    assert result["check"]["guest_page"] == pages - 1
    assert result["check"]["entry"] == (result["check"]["host_frame"] << 12) | 0x37  # RWX, memory type WB
    assert cli.demo(64 << 30, vm_memory, seed=3, accesses=10)["check"] == result["check"]  # the seed fixes the layout
    native, nested = result["translation"]["modes"]
    # The same trace through the same TLBs: the same hits and walks; a nested walk costs more references.
    assert (native["mode"], nested["mode"]) == ("native", "nested")
    assert (native["l1_hit"], native["stlb_hit"], native["walks"]) == (nested["l1_hit"], nested["stlb_hit"],
                                                                    nested["walks"])
    assert 1 <= native["refs_per_walk"] <= 4 < nested["refs_per_walk"] <= 24


def test_demo_prints_the_table_cost(capsys):
    status, out, err = run(capsys, "demo", "--memory", "1TiB", "--vm-memory", "8MiB")
    assert status == 0 and err == ""
    assert out.startswith("host memory: 1TiB configured (268435456 frames of 4 KiB)\n")
    assert "VM 1     contiguous          8MiB         2048            4      2048" in out
    assert "VM 2     scattered           8MiB         2048            4      2048" in out
    if core_memory.HostMemory(4096).layout == "flat":  # 4 KiB committed per table frame
        assert "table content held in RAM: 32KiB (8 table frames) for 1TiB configured: 1/33,554,432 of it" in out
    else:  # 9 slots with the zero frame: capacity 16
        assert "table content held in RAM: 64KiB (8 table frames) for 1TiB configured: 1/16,777,216 of it" in out


def test_demo_json(capsys):
    status, out, _ = run(capsys, "demo", "--memory", "1GiB", "--vm-memory", "4MiB", "--json")
    assert status == 0
    assert json.loads(out)["table_frames"] == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--memory", "lots"],
         "fastmmu: error: argument --memory: cannot read 'lots' as a size; write e.g. 4096, '512MiB' or '1TiB'"),
        (["demo", "--memory", "5000"],
         "fastmmu: error: --memory: host memory size: expected a positive multiple of 4 KiB, got 5000 bytes"),
        (["demo", "--memory", "1GiB", "--vm-memory", "1GiB"],
         "fastmmu: error: --vm-memory: two VMs of 1GiB and their tables need 525312 frames; "
         "host memory has 262144 (1GiB)"),
        (["demo", "--vm-memory", "6000"],
         "fastmmu: error: --vm-memory: expected a positive multiple of 4 KiB, got 6000 bytes"),
        (["demo", "--seed", "x"], "fastmmu: error: argument --seed: invalid int value: 'x'"),
        ([], "fastmmu: error: the following arguments are required: COMMAND"),
        (["fly"], "fastmmu: error: argument COMMAND: invalid choice: 'fly'"),
    ],
)
def test_user_errors_exit_2_without_a_traceback(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert message in err
    assert "Traceback" not in err and out == ""


# -- help, version, entry points ----------------------------------------------------------------


def _commands() -> list[str]:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return list(subparsers.choices)


def test_every_command_has_an_example_in_its_help(capsys):
    assert _commands() == ["compare", "run", "explain", "trace", "workloads", "config", "info", "demo"]
    for command in _commands():
        status, out, _ = run(capsys, command, "--help")
        assert status == 0
        assert f"example:\n  fastmmu {command}" in out


def test_top_level_help_and_version(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert "Run 'fastmmu COMMAND --help' for a command's options and an example." in out
    assert "    info " in out and "    demo " in out
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.startswith("fastmmu ")


def test_python_dash_m_fastmmu():
    result = subprocess.run([sys.executable, "-m", "fastmmu", "info", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backend"] == "compiled"


def test_console_script():
    scripts = Path(sys.executable).parent
    script = next((p for p in (scripts / "fastmmu", scripts / "fastmmu.exe") if p.exists()), None)
    if script is None:
        pytest.skip(f"no fastmmu console script beside {sys.executable} (not installed with pip?)")
    result = subprocess.run([str(script), "demo", "--memory", "1GiB", "--vm-memory", "2MiB", "--seed", "x"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "fastmmu: error: argument --seed: invalid int value: 'x' (see 'fastmmu demo --help')\n"


def test_help_of_the_package_shows_its_api():
    import pydoc

    text = pydoc.render_doc(fastmmu, renderer=pydoc.plaintext)
    assert "Main entry points" in text and "compare(scenario" in text
    for name in ("class Machine(", "class MMU(", "class Config(", "class RunResult(", "class TLBConfig("):
        assert name in text
    assert {"Machine", "compare", "traces", "workloads", "MMU"} <= set(dir(fastmmu))
    assert all(hasattr(fastmmu, name) for name in fastmmu.__all__)


def test_demo_calls_the_second_level_the_stlb(capsys):
    status, out, _ = run(capsys, "demo", "--memory", "1GiB", "--vm-memory", "4MiB", "--accesses", "1000")
    assert status == 0
    assert "mode       L1 hit STLB hit      walks  refs/walk  M accesses/s" in out and "L2" not in out
