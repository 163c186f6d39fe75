"""``python -m fastmmu``: the same as the ``fastmmu`` command."""

import sys

from fastmmu.cli import main

sys.exit(main())
