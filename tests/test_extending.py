"""The shipped ``.pxd`` contracts work for downstream Cython code.

Like ``numpy/random/tests/test_extending.py``: copy ``tests/extending/`` (a
tiny project that ``cimport``s ``fastmmu._core.memory`` and
``fastmmu._core.types``) to a temporary directory, build it with this
interpreter against the fastmmu these tests import (the installed one: the
``.pxd`` files must ship in the package), import it, and check that it
reads, without the GIL, what ``HostMemory.write`` wrote.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import fastmmu
from fastmmu import HostMemory
from fastmmu.arch import PAGE_SHIFT, PTE, FrameKind

EXTENDING = Path(__file__).parent / "extending"
PACKAGE = Path(fastmmu.__file__).parent
SHIPPED = ["memory.pxd", "types.pxd", "tlb.pxd", "memory.pyi"]


def _c_compiler_missing() -> str | None:
    """Why no C compiler can be used here, or None.  (Windows: the build itself tells.)"""
    if sys.platform == "win32":
        return None
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC")
    if not cc:
        return "no C compiler is configured for this Python (sysconfig CC is empty)"
    program = shlex.split(cc)[0]
    if shutil.which(program) is None:
        return f"no C compiler: {program!r} (this Python's CC) is not on PATH"
    return None


def test_contracts_are_shipped_in_the_package():
    """``pip install .`` must put the .pxd contracts, stubs and py.typed beside the modules."""
    missing = [name for name in SHIPPED if not (PACKAGE / "_core" / name).is_file()]
    assert not missing, f"not installed in {PACKAGE / '_core'}: {missing}"
    assert (PACKAGE / "py.typed").is_file()


@pytest.fixture(scope="module")
def downstream(tmp_path_factory):
    pytest.importorskip("Cython", reason="building downstream code needs Cython (the test extra has it)")
    pytest.importorskip("setuptools", reason="building downstream code needs setuptools")
    reason = _c_compiler_missing()
    if reason:
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("downstream")
    shutil.copytree(EXTENDING, build, dirs_exist_ok=True)
    # The contracts come from the fastmmu these tests run against: the installed package
    # (tests run against a non-editable install), never the source tree by accident.
    env = {**os.environ, "FASTMMU_INCLUDE": str(PACKAGE.parent)}
    result = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=build, env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0 and sys.platform == "win32" and "Microsoft Visual C++" in output:
        pytest.skip("no C compiler: Microsoft Visual C++ is not installed")
    assert result.returncode == 0, f"building the downstream module failed:\n{output}"
    sys.path.insert(0, str(build))
    try:
        yield importlib.import_module("fastmmu_downstream")
    finally:
        sys.path.remove(str(build))
        sys.modules.pop("fastmmu_downstream", None)


def test_downstream_reads_what_write_wrote(downstream):
    mem = HostMemory("1TiB")
    table = mem.alloc_frame(owner=2, kind=FrameKind.GUEST_PT)
    base = table << PAGE_SHIFT
    mem.write(base + 8 * 3, 0x1234_5000 | PTE.P | PTE.RW)
    mem.write(base + 8 * 511, (1 << 63) | 0xABC_D000 | PTE.P)
    mem.write(base + 8 * 7, 0xE000)  # not present
    assert downstream.read_entry(mem, base + 8 * 3) == 0x1234_5000 | PTE.P | PTE.RW
    assert downstream.read_entry(mem, base + 8 * 511) == (1 << 63) | 0xABC_D000 | PTE.P
    assert downstream.read_entry(mem, base + 8 * 4) == 0
    assert downstream.count_present(mem, base) == 2
    assert downstream.pte_p() == PTE.P == 1


def test_downstream_reads_zero_where_there_is_no_content(downstream):
    """mem_read never leaves the buffer: frames without content and addresses beyond memory read 0."""
    mem = HostMemory("1GiB")
    data = mem.alloc_frame()
    assert downstream.read_entry(mem, data << PAGE_SHIFT) == 0
    assert downstream.read_entry(mem, mem.size) == 0
    assert downstream.read_entry(mem, (1 << 64) - 8) == 0
