#!/usr/bin/env python
"""``python tools/benchmark.py ...`` is ``visionmtl benchmark ...``: the code is ``visionmtl/commands/benchmark.py``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without installing

from visionmtl.commands.benchmark import cli, get_args_parser, main  # noqa: E402,F401

if __name__ == "__main__":
    from visionmtl.cli import setup_logging

    setup_logging()
    sys.exit(cli())
