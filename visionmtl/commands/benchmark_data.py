#!/usr/bin/env python
"""Data-pipeline speed: images/s of the train pipeline (decode, augment, collate).

``python tools/benchmark_data.py CONFIG --workers N [--batches 30]`` also prints where the time
goes in one process (decode, annotation/mask, augment, collate).
"""

from __future__ import annotations

import argparse

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config whose training pipeline is timed")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts to time (default 1 2)")
    p.add_argument("--batches", type=int, default=30, help="batches timed per worker setting (after warm-up)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--no-profile", action="store_true", help="skip the per-stage breakdown")
    return p


def main(args) -> None:
    from visionmtl.config import load_config

    cfg = load_config(args.config, args.set)

    from visionmtl.data.speed import loader_speed, stage_profile
    print(f"train pipeline at {cfg.data.img_size} px, batch {cfg.data.batch_size}")
    if not args.no_profile:
        prof = stage_profile(cfg, n=64)
        bad = prof.pop("bad")
        total = sum(prof.values())
        print("per-image time in one process: " + ", ".join(f"{k} {v * 1e3:.2f} ms ({v / total:.0%})" for k, v in prof.items())
              + f"; total {total * 1e3:.2f} ms = {1 / total:.0f} img/s" + (f"; {bad} bad samples skipped" if bad else ""))
    for w in args.workers:
        ips = loader_speed(cfg, w, args.batches)
        print(f"workers={w}: {ips:.1f} images/s ({ips / max(w, 1):.1f} per worker)")


def cli(argv=None, prog=None) -> int:
    """``visionmtl data-speed`` / ``python tools/benchmark_data.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
