"""``python -m visionmtl SUBCOMMAND ...``: the ``visionmtl`` command."""

import sys

from visionmtl.commands import main

if __name__ == "__main__":
    sys.exit(main())
