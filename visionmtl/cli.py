"""Shared CLI plumbing: logging setup and one-line errors with a non-zero exit."""

from __future__ import annotations

import logging
import sys
from typing import Callable, Optional

def expected_errors() -> tuple[type, ...]:
    """Errors caused by input (config, data, checkpoint, weights): shown as one line, exit 2."""
    from .errors import EXPECTED_ERRORS

    return EXPECTED_ERRORS


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def add_amp(parser, default: Optional[str] = "off") -> None:
    """The one precision flag of every command: ``--amp [off|auto|bf16|fp16]`` (bare = auto)."""
    if default == "off":
        what = "default off: fp32 on every device, so results do not depend on the CPU or GPU"
    else:
        what = "default: the config's train.amp"
    from .config_check import AMP_MODES

    parser.add_argument("--amp", nargs="?", const="auto", default=default, choices=AMP_MODES,
                        help=f"autocast precision: off, auto (bf16/fp16 on CUDA, bf16 on CPUs with AMX or "
                             f"AVX512-BF16), bf16 or fp16; bare --amp = auto ({what})")


def add_verbosity(parser) -> None:
    """``--verbose`` / ``--quiet`` (every command has them; :func:`parse_args` adds them)."""
    if "--verbose" in getattr(parser, "_option_string_actions", {}):
        return
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages too (and FFmpeg's own)")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def apply_verbosity(args) -> int:
    """Set visionmtl's log level from ``--verbose`` / ``--quiet``; returns the level it replaced."""
    logger = logging.getLogger("visionmtl")
    before = logger.level
    if getattr(args, "verbose", False):
        logger.setLevel(logging.DEBUG)
    elif getattr(args, "quiet", False):
        logger.setLevel(logging.WARNING)
    return before


def run(main: Callable, args) -> int:
    """Call ``main(args)``; input errors print ``error: <message>`` and exit 2, Ctrl-C exits 130."""
    from .errors import one_line

    level = apply_verbosity(args)
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
    finally:
        logging.getLogger("visionmtl").setLevel(level)
    return 0


def parse_args(parser, argv=None):
    """``parser.parse_args`` where config overrides may be given anywhere as bare ``key=value``
    tokens (``visionmtl train CONFIG train.epochs=3``, as Ultralytics' ``yolo`` takes them) or
    after ``--set``, which no longer swallows a config path that follows it
    (``--set train.lr=0.01 CONFIG``). Parsers without ``--set`` parse ``argv`` unchanged."""
    import re

    argv = list(sys.argv[1:] if argv is None else argv)
    add_verbosity(parser)
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
