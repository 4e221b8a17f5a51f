#!/usr/bin/env python
"""Train multi-task strategies under the same budget and data and compare them.

    python tools/compare_strategies.py CONFIG --strategies single,fixed,uncertainty,dwa,gradnorm,mgda,pcgrad,cagrad,alternating,soft,mtan
        [--epochs N] [--out DIR] [--threads N] [--set k=v ...]

Writes compare.md (also printed), compare.csv, compare.json and compare.png to --out; each
run's outputs and result.json go to OUT/<strategy>/ (a finished run is reused when the command
is run again). Strategies: see visionmtl/benchmark/compare.py (STRATEGIES).
"""

from __future__ import annotations

import argparse

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file (tasks, data, schedule)")
    p.add_argument("--strategies", default="single,fixed,uncertainty,dwa,gradnorm,mgda,pcgrad,cagrad,alternating,soft,mtan",
                   help="comma-separated strategy names")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the config's)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per run (default: torch's)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    return p


def main(args) -> None:
    from visionmtl.config import load_config

    cfg = load_config(args.config, args.set)

    from visionmtl.benchmark.compare import compare_strategies, format_compare, parse_strategies
    names = parse_strategies(args.strategies)
    result = compare_strategies(cfg, names, args.out, args.epochs, args.threads)
    print(format_compare(result))
    print(f"\noutputs: {', '.join(result['paths'].values())}")


def cli(argv=None, prog=None) -> int:
    """``visionmtl compare`` / ``python tools/compare_strategies.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
