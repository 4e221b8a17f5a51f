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


def parse_args(parser, argv=None):
    """``parser.parse_args`` where config overrides may be given anywhere as bare ``key=value``
    tokens (``visionmtl train CONFIG train.epochs=3``, as Ultralytics' ``yolo`` takes them) or
    after ``--set``, which no longer swallows a config path that follows it
    (``--set train.lr=0.01 CONFIG``). Parsers without ``--set`` parse ``argv`` unchanged."""
    import re

    argv = list(sys.argv[1:] if argv is None else argv)
    actions = getattr(parser, "_option_string_actions", {})
    if "--set" not in actions:
        return parser.parse_args(argv)
    key = re.compile(r"^[A-Za-z_][\w]*(\.[\w-]+)*=")
    out: list[str] = []
    sets: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--set":
            i += 1
            while i < len(argv) and not argv[i].startswith("-") and key.match(argv[i]):
                sets.append(argv[i])
                i += 1
            continue
        prev = actions.get(out[-1]) if out else None
        takes_value = prev is not None and prev.nargs != 0 and not out[-1].startswith("--set")
        if not a.startswith("-") and key.match(a) and not takes_value:
            sets.append(a)
        else:
            out.append(a)
        i += 1
    return parser.parse_args(out + (["--set", *sets] if sets else []))
