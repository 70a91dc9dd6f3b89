"""``python -m biomask``: the ``biomask`` command, for environments without its script."""

import sys

from biomask.cli import main

if __name__ == "__main__":
    sys.exit(main())
