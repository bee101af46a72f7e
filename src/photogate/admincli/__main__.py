"""``python -m photogate.admincli``: the same as the ``photogate-admin`` console script."""

import sys

from .program import main

if __name__ == "__main__":
    sys.exit(main())
