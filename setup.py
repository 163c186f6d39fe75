"""Build the compiled core.  Metadata lives in pyproject.toml.

The Cython sources are in ``pyx/``; their contracts (``.pxd``) ship in
``src/fastmmu/_core/`` and Cython finds them there through ``include_path``.
Set ``FASTMMU_CYTHON_DEBUG=1`` to build with bounds, wraparound and
initialisation checks on and without optimisation: the test suite must pass
under both builds.
"""

import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["memory", "tlb", "paging", "mmu", "traceparse"]
# FASTMMU_MODULES=memory,tlb builds only those (handy while one module is being edited).
if os.environ.get("FASTMMU_MODULES"):
    MODULES = [m for m in os.environ["FASTMMU_MODULES"].split(",") if m in MODULES]

DEBUG = os.environ.get("FASTMMU_CYTHON_DEBUG", "") not in ("", "0")
# Each variant keeps its generated C and objects in its own build tree: pip builds in the
# source tree, and a release build must never reuse a debug build's files or the reverse.
VARIANT = "debug" if DEBUG else "release"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

if sys.platform == "win32":
    compile_args = ["/Od", "/Zi"] if DEBUG else ["/O2"]
else:
    # Never -march=native: a wheel must run on any x86-64 / aarch64.
    compile_args = ["-O0", "-g"] if DEBUG else ["-O2"]

extensions = [
    Extension(
        f"fastmmu._core.{name}",
        [f"pyx/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in MODULES
    if os.path.exists(f"pyx/{name}.pyx")
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src"],
        compiler_directives=directives,
        compile_time_env={"FASTMMU_DEBUG": DEBUG},
        build_dir=f"build/cython-{VARIANT}",
    ),
    options={
        "build": {"build_base": f"build/{VARIANT}"},
        "build_ext": {"parallel": os.cpu_count() or 1},
    },
)
