#!/usr/bin/env python
"""What the datasets of a config hold, and every problem in them: run it before training.

``python tools/dataset_info.py CONFIG [--split train|val|all] [--out DIR] [--set KEY=VALUE ...]``

Reads every image and annotation through the same adapters training uses and prints, per
dataset and split: images, how many each task labels, empty images, image sizes, images / boxes /
mask pixels per class, box sizes and aspect ratios, the adapter's counters, and every problem
found (unreadable or missing files, bad annotation lines, boxes out of bounds, unknown class
ids, masks of the wrong size), counted per kind and listed with the files. Writes
``dataset_info.json`` and one PNG of plots per dataset and split to ``--out``. Exits 0 when it
read the datasets (problems or not), 1 with ``--strict`` when it found problems, 2 on a bad config.
"""

from __future__ import annotations

import argparse

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config whose data.train / data.val datasets are read")
    p.add_argument("--split", default="all", choices=["train", "val", "all"], help="which split (default: all)")
    p.add_argument("--out", default="runs/dataset_info", help="folder for dataset_info.json and the plots")
    p.add_argument("--top", type=int, default=10, help="classes shown per histogram line (default 10)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any problem is found")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    return p


def main(args) -> int:
    from visionmtl.config import load_config

    cfg = load_config(args.config, args.set)

    from visionmtl.data.report import dataset_report, format_report, write_report

    splits = ["train", "val"] if args.split == "all" else [args.split]
    splits = [s for s in splits if getattr(cfg.data, s)]
    entries = dataset_report(cfg, splits)
    print(format_report(entries, top=args.top))
    paths = write_report(entries, args.out)
    print(f"wrote {paths[0]} and {len(paths) - 1} plots to {args.out}")
    problems = sum(p["count"] for e in entries for p in e.get("problems", {}).values())
    return 1 if args.strict and problems else 0


def cli(argv=None, prog=None) -> int:
    """``visionmtl data`` / ``python tools/dataset_info.py``: the exit status (1: problems under --strict)."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    args = parse_args(parser, argv)
    code = {"rc": 0}

    def _main(a):
        code["rc"] = main(a)

    return run(_main, args) or code["rc"]
