"""``python -m lstmcore.export``: the command line in :mod:`lstmcore.cli.export`."""

import sys

from lstmcore.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
