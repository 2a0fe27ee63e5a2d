"""``python -m lstmcore.bench``: see the package's docstring (or ``--help``)."""

import sys

from lstmcore.bench.cli import main

sys.exit(main())
