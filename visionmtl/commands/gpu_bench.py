#!/usr/bin/env python
"""Training throughput through the trainer's own step: img/s, peak GPU memory, MFU, GPU busy share.

    python tools/gpu_bench.py [CONFIG] [--imgsz 512] [--batch 32] [--steps 20] [--warmup 5]
        [--loader-steps 60] [--compile] [--time-limit S] [--json OUT.json] [--md OUT.md]
        [--cpu-smoke] [--set KEY=VALUE ...]

CONFIG defaults to configs/coco128/r50_fpn_3heads_gpu.yaml (R50-FPN, cls+det+seg, bf16). The
figures are explained in visionmtl/benchmark/throughput.py. ``--cpu-smoke`` runs the same code
on the CPU at 64 px, batch 2, two steps, fp32, one thread and no loader workers: a check that the script
works, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from visionmtl.cli import parse_args, run

DEFAULT_CONFIG = "configs/coco128/r50_fpn_3heads_gpu.yaml"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(Path(__file__).resolve().parents[2] / DEFAULT_CONFIG),
                   help=f"YAML config (default {DEFAULT_CONFIG})")
    p.add_argument("--imgsz", type=int, default=512, help="square input side of the compute steps (default 512)")
    p.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--steps", type=int, default=20, help="timed compute steps (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--loader-steps", type=int, default=60, help="timed steps fed by the DataLoader (default 60)")
    p.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile the forward)")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="skip the extra cudnn.benchmark timing")
    p.add_argument("--time-limit", type=float, default=0.0, help="seconds for the timed loops together (0 = none)")
    p.add_argument("--json", help="write every figure as JSON here")
    p.add_argument("--md", help="write the table as markdown here")
    p.add_argument("--work-dir", help="the trainer's scratch folder (default: a temporary one)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="CPU, 64 px, batch 2, 2 steps, fp32, 1 thread, no workers: checks the code path in seconds")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    return p


def main(args) -> dict:
    from visionmtl.config import ConfigError, load_config

    if args.cpu_smoke:
        args.imgsz, args.batch, args.steps, args.warmup, args.loader_steps = 64, 2, 2, 1, 2
    for name in ("imgsz", "batch", "steps", "loader_steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    sets = [f"data.img_size={args.imgsz}", f"data.batch_size={args.batch}", "train.ema_decay=0",
            f"train.compile={str(args.compile).lower()}"]
    if args.cpu_smoke:
        sets += ["train.device=cpu", "train.amp=\"off\"", "train.threads=1", "data.workers=0"]
    cfg = load_config(args.config, sets + list(args.set))

    from visionmtl.benchmark.throughput import ThroughputOptions, format_table, measure_throughput

    opts = ThroughputOptions(steps=args.steps, warmup=args.warmup, loader_steps=args.loader_steps,
                             cudnn_benchmark=not args.no_cudnn_benchmark, time_limit=args.time_limit)
    if args.cpu_smoke:
        opts.peak_sizes = (512,)
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        result = measure_throughput(cfg, args.imgsz, args.batch, opts, args.work_dir or tmp)
    table = format_table(result)
    print(table, flush=True)
    for path, text in ((args.json, json.dumps(result, indent=2)), (args.md, table + "\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    return result


def cli(argv=None, prog=None) -> int:
    """``visionmtl gpu-bench`` / ``python tools/gpu_bench.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
