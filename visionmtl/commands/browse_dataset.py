#!/usr/bin/env python
"""Draw training samples after augmentation, as the model sees them.

``python tools/browse_dataset.py CONFIG --split train --num 16 --out DIR``
"""

from __future__ import annotations

import argparse

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config whose datasets are drawn")
    p.add_argument("--split", default="train", choices=["train", "val"], help="which split (train: augmented)")
    p.add_argument("--num", type=int, default=16, help="samples to draw (default 16)")
    p.add_argument("--out", default="runs/browse", help="output folder (default runs/browse)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--seed", type=int, default=0, help="which samples and augmentations (default 0)")
    return p


def main(args) -> None:
    from visionmtl.config import load_config

    cfg = load_config(args.config, args.set)

    from visionmtl.data.browse import browse
    paths = browse(cfg, args.split, args.num, args.out, args.seed)
    print(f"wrote {len(paths)} images to {args.out}")


def cli(argv=None, prog=None) -> int:
    """``visionmtl browse`` / ``python tools/browse_dataset.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
