"""``python -m lstmcore`` is ``python -m lstmcore.train``."""

import sys

from lstmcore.train import main

sys.exit(main())
