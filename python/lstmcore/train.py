"""``python -m lstmcore.train``: the command line in :mod:`lstmcore.cli.train`."""

import sys

from lstmcore.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
