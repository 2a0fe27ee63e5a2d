"""``python -m lstmcore`` is ``python -m lstmcore.train``."""

import sys

from lstmcore.cli.train import main

sys.exit(main())
