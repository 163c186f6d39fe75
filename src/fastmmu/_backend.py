"""Which implementation of the core is loaded, from where, and how it was built.

fastmmu has one backend for the simulation: the compiled Cython core in
``fastmmu._core``.  The pure-Python reference model is a twin for the tests,
never a fallback: when a compiled module cannot be imported, fastmmu says so
(``fastmmu info``) and explains how to fix it instead of running something
slower in its place.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

# The compiled modules a complete build contains (pyx/<name>.pyx each).
CORE_MODULES = ("memory", "tlb", "paging", "mmu", "traceparse")

FIX_NOT_BUILT = (
    "this module was not built: reinstall from the source tree with `pip install .` "
    "(needs a C compiler; FASTMMU_MODULES=... restricts a build to some modules)"
)
FIX_BROKEN = (
    "this module is present but does not load in this interpreter: reinstall with "
    "`pip install --force-reinstall --no-deps .` from the source tree (after an in-place "
    "build, rerun `python setup.py build_ext --inplace`)"
)


@dataclass(frozen=True)
class ModuleStatus:
    """What importing one compiled module gave."""

    name: str  # "fastmmu._core.memory"
    state: str  # "loaded", "not built" or "broken"
    path: str | None = None  # the extension file, when loaded
    debug: bool | None = None  # BUILD_DEBUG of the module, when loaded
    error: str | None = None  # the import error, when not loaded
    fix: str | None = None  # what to do about it, when not loaded


def module_status(short_name: str) -> ModuleStatus:
    """Import ``fastmmu._core.<short_name>`` and report what happened."""
    name = f"fastmmu._core.{short_name}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return ModuleStatus(name, "not built", error=str(exc), fix=FIX_NOT_BUILT)
        return ModuleStatus(name, "broken", error=f"{type(exc).__name__}: {exc}", fix=FIX_BROKEN)
    except ImportError as exc:
        return ModuleStatus(name, "broken", error=f"{type(exc).__name__}: {exc}", fix=FIX_BROKEN)
    debug = getattr(module, "BUILD_DEBUG", None)
    return ModuleStatus(name, "loaded", path=getattr(module, "__file__", None),
                        debug=None if debug is None else bool(debug))


def core_status() -> list[ModuleStatus]:
    """The status of every compiled module, in build order."""
    return [module_status(name) for name in CORE_MODULES]


def _version() -> str:
    try:
        return importlib.metadata.version("fastmmu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (fastmmu is imported from a source tree, not installed)"


def backend_report() -> dict[str, Any]:
    """Everything ``fastmmu info`` prints, as plain JSON-ready data.

    ``backend`` is ``"compiled"`` when the host-memory module loads (nothing
    runs without it) and ``"unavailable"`` otherwise; ``ok`` is False when
    any module that exists fails to load, or the memory module is missing.
    """
    import fastmmu

    modules = core_status()
    by_name = {m.name.rsplit(".", 1)[1]: m for m in modules}
    memory_loaded = by_name["memory"].state == "loaded"
    debug_flags = {m.debug for m in modules if m.state == "loaded" and m.debug is not None}
    if not debug_flags:
        build = "unknown"
    elif len(debug_flags) == 2:
        build = "mixed (some modules debug, some release)"
    else:
        build = "debug (FASTMMU_CYTHON_DEBUG=1: bounds checks on)" if debug_flags.pop() else "release"
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:  # pragma: no cover - numpy is a dependency
        numpy_version = "not installed"
    return {
        "version": _version(),
        "package": fastmmu.__file__,
        "backend": "compiled" if memory_loaded else "unavailable",
        "build": build,
        "ok": memory_loaded and not any(m.state == "broken" for m in modules),
        "modules": [asdict(m) for m in modules],
        "reference_model": importlib.util.find_spec("fastmmu.reference") is not None,
        "numpy": numpy_version,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
