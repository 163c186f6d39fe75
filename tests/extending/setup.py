"""A downstream project: a Cython module built against fastmmu's shipped ``.pxd`` contracts.

Like ``numpy.get_include()``, the include path is found from the installed
package: ``fastmmu/_core/*.pxd`` sit beside the compiled modules in
site-packages.  ``tests/test_extending.py`` copies this folder to a temporary
directory and runs ``python setup.py build_ext --inplace`` there, passing the
folder of the fastmmu it imported as ``FASTMMU_INCLUDE``.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def fastmmu_include() -> str:
    """The folder that holds the fastmmu package, so that ``cimport fastmmu._core.memory`` resolves."""
    if os.environ.get("FASTMMU_INCLUDE"):  # the test passes the fastmmu it imported
        return os.environ["FASTMMU_INCLUDE"]
    import fastmmu

    return os.path.dirname(os.path.dirname(os.path.abspath(fastmmu.__file__)))


FASTMMU_INCLUDE = fastmmu_include()

setup(
    name="fastmmu-downstream",
    ext_modules=cythonize(
        [Extension("fastmmu_downstream", ["fastmmu_downstream.pyx"])],
        include_path=[FASTMMU_INCLUDE],
        compiler_directives={"language_level": 3},
    ),
)
