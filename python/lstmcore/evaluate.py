"""``python -m lstmcore.evaluate``: the command line in :mod:`lstmcore.cli.evaluate`."""

import sys

from lstmcore.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
