"""``python -m fastmmu``: the same as the ``fastmmu`` command."""

import sys

from fastmmu.cli import main

if __name__ == "__main__":   # (importing the module, as type checkers and stubtest do, runs nothing)
    sys.exit(main())
