#!/usr/bin/env python
"""Train a multi-task model: ``python tools/train.py CONFIG [k=v ...] [--out DIR] [--device N] [--amp] [--resume]``.

Under ``torchrun --nproc_per_node N`` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse

from visionmtl.cli import add_amp, parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys, e.g. train.lr=0.01")
    p.add_argument("--out", "--work-dir", dest="work_dir", metavar="DIR",
                   help="the run's folder (default: the config's work_dir; a folder holding a run is kept, and "
                        "the new run goes to the next free numbered one)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or a GPU index N (default: train.device)")
    p.add_argument("--exist-ok", action="store_true",
                   help="write into the work dir even when it holds a run (default: a new run goes to the next free "
                        "numbered folder, runs/x2, runs/x3, ...)")
    add_amp(p, default=None)
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="continue from WORK_DIR/last.pt, or from the given checkpoint")
    return p


def main(args) -> None:
    from visionmtl.config import load_config

    cfg = load_config(args.config, args.set)  # every key checked before torch loads: a typo fails at once

    from visionmtl.engine import dist
    from visionmtl.engine.trainer import Trainer

    if args.work_dir:
        cfg.work_dir = args.work_dir
    if args.device:
        cfg.train.device = args.device
    if args.amp:
        cfg.train.amp = args.amp
    trainer = Trainer(cfg, cfg.work_dir, resume=args.resume, exist_ok=args.exist_ok)
    try:
        trainer.train()
    finally:
        dist.cleanup()
    if trainer.main:
        wrote = sorted(p.name for p in trainer.work_dir.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
        print(f"outputs in {trainer.work_dir}: {', '.join(wrote)}")


def cli(argv=None, prog=None) -> int:
    """``visionmtl train`` / ``python tools/train.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
