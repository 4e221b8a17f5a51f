"""Shared CLI plumbing: logging setup and one-line errors with a non-zero exit."""

from __future__ import annotations

import logging
import sys
from typing import Callable

def expected_errors() -> tuple[type, ...]:
    """Errors caused by input (config, data, checkpoint, weights): shown as one line, exit 2."""
    from .errors import EXPECTED_ERRORS

    return EXPECTED_ERRORS


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def run(main: Callable, args) -> int:
    """Call ``main(args)``; input errors print ``error: <message>`` and exit 2, Ctrl-C exits 130."""
    from .errors import one_line

    try:
        main(args)
    except Exception as e:  # input errors (also raised in DataLoader workers) are one line
        msg = one_line(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
