"""Every class of bad input, through the real ``fastmmu`` command in a subprocess.

Each case gives the arguments and what the user must get: exit status 2 and exactly one line on
stderr naming the file and line (or record), or the option or setting and what it expects; never
a traceback.  A run that finished with part of its input not run exits 3, and a run stopped by a
bad input part way exits 2: both keep their results, and the files they write say partial.

The cases run concurrently once per session (a subprocess starts in about 0.3 s), and each test
checks one of them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fastmmu.traces.native import NativeWriter


def fastmmu_command() -> list[str]:
    """The installed console script (required when FASTMMU_EXPECT_INSTALLED is set), else
    ``python -m fastmmu``."""
    scripts = Path(sys.executable).parent
    script = next((p for p in (scripts / "fastmmu", scripts / "fastmmu.exe") if p.exists()), None)
    if script is None:
        assert not os.environ.get("FASTMMU_EXPECT_INSTALLED"), f"no fastmmu console script beside {sys.executable}"
        return [sys.executable, "-m", "fastmmu"]
    return [str(script)]


def lackey(addresses: list[int]) -> bytes:
    return "".join(f" L {a:x},8\n" for a in addresses).encode()


def hot_pages(count: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return (0x1000_0000 + rng.integers(0, 64, count) * 4096 + rng.integers(0, 512, count) * 8).tolist()


GP_AT = 2000   # the record (counting from 0) with a non-canonical address: the guest kernel kills it there
BIG = 150_000  # records of the compressed traces: more than the first MiB read, so a failure comes mid-run


def make_inputs(d: Path) -> None:
    (d / "ok.lackey").write_bytes(lackey([0x7F00_0000_1000] + hot_pages(1999, 1)))
    (d / "gp.lackey").write_bytes(lackey([0x8000_0000_0000 if i == GP_AT else a
                                          for i, a in enumerate(hot_pages(4000, 2))]))
    big = lackey(hot_pages(BIG, 3))
    for name, data in (("cut.lackey.gz", gzip.compress(big)), ("cut.lackey.xz", lzma.compress(big))):
        (d / name).write_bytes(data[: len(data) * 3 // 4])                  # truncated compressed data
    flipped = bytearray(gzip.compress(big, mtime=0))
    flipped[len(flipped) * 3 // 4:len(flipped) * 3 // 4 + 8] = bytes(8)    # bytes wiped in the middle
    (d / "wiped.lackey.gz").write_bytes(bytes(flipped))
    with NativeWriter(d / "ok.fmt", {"producer": "test"}) as writer:
        writer.write_accesses(np.array(hot_pages(3000, 4), dtype=np.uint64), 0)
    whole = (d / "ok.fmt").read_bytes()
    (d / "cut.fmt").write_bytes(whole[: len(whole) - 24 - 8 * 1000])     # its end record and 1,000 accesses lost
    (d / "empty.lackey").write_bytes(b"")
    (d / "notes.txt").write_text("hello world\nsecond line\n")
    (d / "noise.bin").write_bytes(bytes(range(256)) * 4)
    (d / "badline.lackey").write_text(" L 1000,8\n S 2000,4\n L zz12,8\n")
    (d / "wide.lackey").write_text(" L 1000,8\n L 1ffffffffffffff0,8\n")
    (d / "bad.toml").write_text("[hypervisor\nshadow_cache = 4\n")
    (d / "nonutf.toml").write_bytes(b"\xff\xfe[x")
    (d / "list.json").write_text("[1, 2]")
    zipf = {"generator": "zipf", "pages": 8, "n": 10}
    (d / "dup.json").write_text(json.dumps({"workload": {"vms": [{"name": "a", "processes": [zipf]},
                                                                 {"name": "a", "processes": [zipf]}]}}))
    (d / "gen.json").write_text(json.dumps({"workload": {"vms": [{"processes": [{**zipf, "generator": "zipff"}]}]}}))
    (d / "size.json").write_text(json.dumps({"machine": {"host_memory": True}}))
    (d / "adir").mkdir()
    (d / "afile").write_text("x")


E = "fastmmu: error: "
# (id, arguments (``{d}`` is the inputs' directory), exit status, the one stderr line: exact, or re:<regex>)
CASES = [
    # generator parameters (A1)
    ("zipf-pages-0", "compare --workload zipf:pages=0,n=10k",
     2, E + "--workload: zipf: pages: expected an integer in [1, 2**26], got 0"),
    ("strided-stride-0", "compare --workload strided:pages=100,n=1k,stride=0",
     2, E + "--workload: strided: stride: expected a multiple of 8 from 8 to the region's 409600 bytes, got 0"),
    ("zipf-writes-2", "compare --workload zipf:pages=100,n=1k,writes=2",
     2, E + "--workload: zipf: writes: expected a number in [0, 1], got 2.0"),
    ("zipf-alpha-negative", "compare --workload zipf:pages=100,n=1k,alpha=-1",
     2, E + "--workload: zipf: alpha: expected a number > 0, got -1.0"),
    ("unknown-generator", "compare --workload zipff:n=1", 2, E + "--workload.generator: unknown workload 'zipff' "
     "(did you mean \"zipf\"?); expected one of sequential, strided, uniform, zipf, working_sets, churn, or a trace "
     "= FILE"),
    ("missing-parameter", "compare --workload zipf:pages=10", 2, E + "--workload: zipf needs n (e.g. zipf:n=...)"),
    ("not-a-number", "compare --workload zipf:pages=x,n=1", 2, E + "--workload.pages: expected int, got 'x'"),
    ("no-vm-after-at", "compare --workload zipf:pages=10,n=10@",
     2, E + "zipf:pages=10,n=10@: expected a VM name after '@' (e.g. zipf:pages=10,n=10@vm1)"),
    # trace files
    ("missing-trace", "compare --trace {d}/nope.lackey", 2, E + "--trace: {d}/nope.lackey: no such file"),
    ("empty-trace", "compare --trace {d}/empty.lackey", 2, E + "--trace: {d}/empty.lackey: empty trace"),
    ("directory-trace", "compare --trace {d}/adir", 2, E + "--trace: {d}/adir: is a directory, not a trace file"),
    ("undetectable-text", "compare --trace {d}/notes.txt", 2, E + "--trace: {d}/notes.txt:1: cannot tell the trace "
     "format (tried native, lackey, din, champsim, champsim-cloudsuite; name one with format= or --format); its "
     "first line is: 'hello world'"),
    ("undetectable-binary", "trace info {d}/noise.bin", 2, E + "{d}/noise.bin: byte 0: cannot tell the trace format "
     "(tried native, lackey, din, champsim, champsim-cloudsuite; name one with format= or --format): binary data "
     "starting 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"),
    ("wrong-magic", "compare --format native --trace {d}/ok.lackey", 2, E + "--trace: {d}/ok.lackey: byte 0: not a "
     "native fastmmu trace: wrong magic (expected b'FMMUTRC1'); it looks like a lackey trace (leave the format out to "
     "detect it): ' L 7f000'"),
    ("unknown-format", "trace info --format pin {d}/ok.lackey", 2, E + "{d}/ok.lackey: unknown trace format 'pin' "
     "(known: native (fmt, fastmmu), lackey (valgrind), din (dinero), champsim, champsim-cloudsuite "
     "(champsim_cloudsuite, cloudsuite))"),
    ("bad-line", "compare --trace {d}/badline.lackey --modes nested", 2, E + "{d}/badline.lackey:3: not a valid "
     "record (expected 'I  hexaddr,size' or ' L|S|M hexaddr,size'): ' L zz12,8' (the results above stop there, "
     "marked partial)"),
    ("unknown-stream", "compare --trace {d}/ok.fmt --stream vm3/pid9", 2, E + "--trace: stream: {d}/ok.fmt has no "
     "stream 'vm3/pid9'; its streams are vm0/pid0 (3,000 records)"),
    ("negative-limit", "compare --trace {d}/ok.lackey --limit -1", 2, E + "--limit: expected a non-negative number, "
     "got -1"),
    # corrupt compressed and truncated traces, part way through a run (A3, A9): what ran is kept
    ("truncated-gzip-info", "trace info {d}/cut.lackey.gz",
     2, "re:" + re.escape(E + "{d}/cut.lackey.gz: corrupt or truncated gzip data after ") + r"[\d,]+ records "
     r"\(Compressed file ended before the end-of-stream marker was reached\); every record before it was read"),
    ("truncated-xz-info", "trace info {d}/cut.lackey.xz",
     2, "re:" + re.escape(E + "{d}/cut.lackey.xz: corrupt or truncated xz data after ") + r"[\d,]+ records "
     r"\(Compressed file ended before the end-of-stream marker was reached\); every record before it was read"),
    ("wiped-gzip-run", "compare --trace {d}/wiped.lackey.gz --modes nested -o {d}/out-wiped",
     2, "re:" + re.escape(E + "{d}/wiped.lackey.gz") + r"(:\d+: not a valid record .*|: corrupt or truncated gzip "
     r"data after [\d,]+ records \(.*\); every record before it was read) \(the results above stop there, marked "
     r"partial\)"),
    ("truncated-gzip-run", "compare --trace {d}/cut.lackey.gz --modes nested -o {d}/out-gz",
     2, "re:" + re.escape(E + "{d}/cut.lackey.gz: corrupt or truncated gzip data after ") + r"[\d,]+ records "
     r"\(Compressed file ended before the end-of-stream marker was reached\); every record before it was read "
     r"\(the results above stop there, marked partial\)"),
    # (a native trace is read through once to list its streams, so a truncated one is caught before the run)
    ("truncated-native-run", "compare --trace {d}/cut.fmt --modes nested -o {d}/out-fmt",
     2, E + "{d}/cut.fmt: byte 16040: truncated: the file ends after 2,000 accesses and 0 events without its end "
     "record (was its writer stopped?)"),
    ("truncated-native-info", "trace info {d}/cut.fmt", 2, E + "{d}/cut.fmt: byte 16040: truncated: the file ends "
     "after 2,000 accesses and 0 events without its end record (was its writer stopped?)"),
    # a process the guest kernel kills: the run finishes, part of the input never ran (A2)
    ("killed-compare", "compare --trace {d}/gp.lackey -o {d}/out-gp",
     3, "fastmmu: partial: processes were stopped before their program ended (see 'stopped:' above)"),
    ("killed-run", "run --mode shadow --trace {d}/gp.lackey -o {d}/out-gp-run",
     3, "fastmmu: partial: processes were stopped before their program ended (see 'stopped:' above)"),
    # settings and config files
    ("set-unknown-key", "compare --set hypervisor.shadow_cach=4",
     2, E + 'hypervisor.shadow_cach: unknown setting (did you mean "shadow_cache"?)'),
    ("set-bad-value", "compare --set hypervisor.shadow_cache=x",
     2, E + "hypervisor.shadow_cache: expected an integer, got 'x'"),
    ("set-no-equals", "compare --set nokey", 2, E + "'nokey': expected key=value, e.g. hypervisor.shadow_cache=4"),
    ("set-out-of-range", "compare --set guest.levels=7", 2, E + "guest.levels: expected an integer 4..5, got 7"),
    ("set-no-room", "compare --set machine.host_memory=1MiB",
     2, E + "hypervisor.memory: 256MiB leaves nothing of the host's 1MiB for VMs"),
    ("config-missing", "compare --config {d}/nope.toml",
     2, E + "{d}/nope.toml: cannot read it: No such file or directory"),
    ("config-directory", "compare --config {d}/adir", 2, E + "{d}/adir: is a directory, expected a TOML or JSON file"),
    ("config-bad-toml", "compare --config {d}/bad.toml", 2, E + "{d}/bad.toml: not valid TOML: Expected ']' at the "
     "end of a table declaration (at line 1, column 12)"),
    ("config-not-utf8", "config --config {d}/nonutf.toml", 2, E + "{d}/nonutf.toml: not valid TOML: 'utf-8' codec "
     "can't decode byte 0xff in position 0: invalid start byte"),
    ("config-not-a-table", "compare --config {d}/list.json",
     2, E + "{d}/list.json: expected a table of settings at the top level"),
    ("config-duplicate-vm", "compare --config {d}/dup.json",
     2, E + "workload.vms[1].name: 'a' is already the name of workload.vms[0]; VM names must be unique"),
    ("config-unknown-generator", "compare --config {d}/gen.json", 2, E + "workload.vms[0].processes[0].generator: "
     "unknown workload 'zipff' (did you mean \"zipf\"?); expected one of sequential, strided, uniform, zipf, "
     "working_sets, churn, or a trace = FILE"),
    ("config-bad-size", "compare --config {d}/size.json",
     2, E + "{d}/size.json: machine.host_memory: expected a size such as 4096 or '2GiB', got True"),
    # options
    ("bad-mode", "compare --modes shadw", 2, E + "modes: unknown mode 'shadw'; expected one of native, brute_force, "
     "shadow, nested (did you mean \"shadow\"?)"),
    ("max-accesses-0", "compare --max-accesses 0", 2, E + "--max-accesses: expected a positive number, got 0"),
    ("scale-0", "compare --scale 0", 2, E + "--scale: expected a positive number, got 0.0"),
    ("seed-negative", "compare --seed -1", 2, E + "--seed: expected a non-negative number, got -1"),
    ("bad-size", "compare --vm-memory 1x", 2, E + "argument --vm-memory: cannot read '1x' as a size; write e.g. 4096, "
     "'512MiB' or '1TiB' (see 'fastmmu compare --help')"),
    ("vm-too-big", "compare --vm-memory 1PiB --workload zipf:pages=10,n=10", 2, E + "vm.memory: cannot back 1PiB: "
     "the host has 16128MiB left for VMs (host_memory 16GiB, hypervisor.memory 256MiB); set "
     "hypervisor.overcommit=true to allow it"),
    ("missing-required", "run", 2, E + "the following arguments are required: --mode (see 'fastmmu run --help')"),
    ("unknown-option", "workloads --bogus", 2, E + "unrecognized arguments: --bogus (see 'fastmmu --help')"),
    ("bad-address", "explain xyz", 2, E + "ADDRESS: expected a number such as 0x7f0000001000, got 'xyz'"),
    ("explain-no-vm", "explain 0x1000 --vm nope --workload zipf:pages=10,n=10",
     2, E + "vm: no VM named 'nope'; the scenario has vm0"),
    # outputs: checked before any work (A4, A5)
    ("output-is-a-file", "compare -o {d}/afile", 2, E + "-o {d}/afile: exists and is not a directory"),
    ("output-under-a-file", "compare -o {d}/afile/sub", 2, E + "-o {d}/afile/sub: cannot create it: Not a directory"),
    ("plot-without-output", "compare --plot", 2, E + "--plot: give a directory for the charts with -o DIR"),
    ("convert-into-directory", "trace convert {d}/ok.lackey {d}/adir",
     2, E + "{d}/adir: is a directory; give a file name for the OUTPUT"),
    ("convert-missing-directory", "trace convert {d}/ok.lackey {d}/missing/out.fmt",
     2, E + "{d}/missing/out.fmt: the directory {d}/missing does not exist"),
    ("convert-onto-itself", "trace convert {d}/ok.lackey {d}/ok.lackey",
     2, E + "{d}/ok.lackey: the output would overwrite the input"),
    ("convert-wide-address", "trace convert {d}/wide.lackey {d}/wide.fmt", 2, E + "{d}/wide.lackey:2: address "
     "0x1ffffffffffffff0 does not fit in 57 bits (the native format holds canonical addresses of 5-level paging): "
     "' L 1ffffffffffffff0,8' (nothing written to {d}/wide.fmt)"),
    ("record-missing-directory", "trace record -o {d}/missing/x.fmt -- true",
     2, E + "{d}/missing/x.fmt: the directory {d}/missing does not exist"),
    ("record-no-program", "trace record -o {d}/x.fmt",
     2, E + "trace record: give the program to run after --, e.g. fastmmu trace record -o t.fmt -- ls"),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """Every case, run once, four at a time: (the inputs' directory, id -> its completed process)."""
    d = tmp_path_factory.mktemp("inputs")
    make_inputs(d)
    command = fastmmu_command()
    env = {**os.environ, "COLUMNS": "200"}

    def one(case: tuple) -> subprocess.CompletedProcess[str]:
        argv = [part.format(d=d) for part in case[1].split()]
        extra = ["--no-progress"] if argv[0] in ("compare", "run") else []
        return subprocess.run([*command, *argv, *extra], capture_output=True, text=True, timeout=300, env=env,
                              cwd=d)

    with ThreadPoolExecutor(4) as pool:
        return d, dict(zip([c[0] for c in CASES], pool.map(one, CASES), strict=True))


@pytest.mark.parametrize(("name", "argv", "status", "line"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_documented_status(outcomes, name: str, argv: str, status: int,
                                                       line: str) -> None:
    d, results = outcomes
    result = results[name]
    assert "Traceback" not in result.stderr
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    expected = line[3:].replace(re.escape("{d}"), re.escape(str(d))) if line.startswith("re:") else line.format(d=d)
    if line.startswith("re:"):
        assert re.fullmatch(expected, lines[0]), lines[0]
    else:
        assert lines[0] == expected


def saved(directory: Path) -> tuple[dict, list[dict]]:
    results = json.loads((directory / "results.json").read_text())
    rows = list(csv.DictReader(io.StringIO((directory / "results.csv").read_text())))
    return results, rows


def test_a_killed_process_is_in_the_table_and_the_files(outcomes) -> None:
    d, results = outcomes
    out = results["killed-compare"].stdout
    note = (f"stopped: native, brute_force, shadow, nested: vm0/gp.lackey (pid 1) stopped at access {GP_AT + 1:,} of "
            f"its program ({GP_AT:,} done): general protection fault at 0x800000000000 (non-canonical)")
    assert note in out.splitlines()
    assert "* brute_force, shadow, nested: vs native over the common prefix of 2,000 accesses" in out.splitlines()
    data, rows = saved(d / "out-gp")
    assert data["partial"] and not data["interrupted"] and data["error"] is None
    assert [(s["mode"], s["vm"], s["pid"], s["accesses"]) for s in data["stopped"]] == \
        [(mode, "vm0", 1, GP_AT) for mode in ("native", "brute_force", "shadow", "nested")]
    assert [(r["mode"], r["partial"], r["stopped"]) for r in rows] == \
        [(mode, "True", "1") for mode in ("native", "brute_force", "shadow", "nested")]
    assert rows[2]["overhead_basis"] == "over the common prefix of 2,000 accesses" and float(rows[2]["overhead"]) > 0
    one = json.loads((d / "out-gp-run" / "results.json").read_text())
    assert one["partial"] and one["stopped"][0]["reason"] == \
        "general protection fault at 0x800000000000 (non-canonical)"
    assert "stopped: vm0/gp.lackey (pid 1) stopped at access 2,001" in results["killed-run"].stdout


@pytest.mark.parametrize("name, directory", [("truncated-gzip-run", "out-gz"), ("wiped-gzip-run", "out-wiped")])
def test_a_run_stopped_by_its_input_keeps_what_ran(outcomes, name: str, directory: str) -> None:
    d, results = outcomes
    data, rows = saved(d / directory)
    assert data["partial"] and data["error"] == results[name].stderr.splitlines()[0].removeprefix(E).removesuffix(
        " (the results above stop there, marked partial)")
    done = data["results"]["native"]["stats"]["accesses"]
    assert 0 < done < BIG and rows[0]["partial"] == "True" and int(rows[0]["translations"]) == done
    assert "partial: not every process ran to its end" in results[name].stdout
    assert done > 1 << 16                        # more than the first block: the failure came mid-run


def test_failed_conversions_leave_no_file(outcomes) -> None:
    d, _ = outcomes
    assert not [p.name for p in d.iterdir() if p.name.endswith(".partial") or p.name.startswith((".wide", "wide.fmt"))]
    assert not (d / "missing").exists() and not (d / "x.fmt").exists()


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_record_of_a_program_valgrind_cannot_start_stops_and_writes_nothing(tmp_path) -> None:
    script = tmp_path / "broken.sh"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    result = subprocess.run([*fastmmu_command(), "trace", "record", "-o", str(tmp_path / "t.fmt"), "--", str(script)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (f"fastmmu: error: trace record: valgrind ran nothing of {script} "
                                              "(exit status 126; see its message above); nothing written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.sh"]
