"""``python -m lstmcore.serve``: the command line in :mod:`lstmcore.cli.serve`."""

import sys

from lstmcore.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
