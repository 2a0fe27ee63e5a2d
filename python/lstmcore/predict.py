"""``python -m lstmcore.predict``: the command line in :mod:`lstmcore.cli.predict`."""

import sys

from lstmcore.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
