#!/usr/bin/env python
"""Draw training samples after augmentation, as the model sees them.

``python tools/browse_dataset.py CONFIG --split train --num 16 --out DIR``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from visionmtl.cli import run, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--out", default="runs/browse")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args) -> None:
    from visionmtl.config import load_config

    cfg = load_config(args.config, args.set)

    from visionmtl.data.browse import browse
    paths = browse(cfg, args.split, args.num, args.out, args.seed)
    print(f"wrote {len(paths)} images to {args.out}")


if __name__ == "__main__":
    setup_logging()
    sys.exit(run(main, get_args_parser().parse_args()))
