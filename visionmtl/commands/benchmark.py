#!/usr/bin/env python
"""Every head combination against separate single-task models: speed, memory, FLOPs and accuracy Δm.

    python tools/benchmark.py CONFIG [--combos all | cls,det+seg,...] [--imgsz 512] [--batch 8]
        [--device cpu|cuda] [--amp [auto|bf16|fp16]] [--channels-last] [--train] [--compare-separate]
        [--repeats N] [--warmup N] [--out DIR] [--accuracy] [--train-epochs N]
        [--checkpoints task=path,...,mtl=path] [--threads N]
    python tools/benchmark.py CONFIG --backend torch,onnxruntime,int8 --weights CKPT [--imgsz 160,512]
        [--batch 1,4] [--repeats N]

A combination is task names joined by '+'; 'all' is every non-empty subset of the config's tasks.
Writes benchmark.md (also printed), benchmark.csv, benchmark.json and benchmark.png to --out
(and accuracy.md/csv/json with --accuracy or --checkpoints).

With --backend, a trained checkpoint (--weights) is timed instead: PyTorch fp32 against its ONNX
export in onnxruntime, fp32 and INT8 (calibrated on the config's training images), model +
decoding + NMS per image on the config's validation images, interleaved; deploy.md/json in --out.
"""

from __future__ import annotations

import argparse
import sys

from visionmtl.cli import add_amp, parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file (its tasks, backbone and heads are benchmarked)")
    p.add_argument("--combos", default="all", help="'all' or comma-separated combinations, e.g. cls,det+seg")
    p.add_argument("--imgsz", default=None,
                   help="square input side (default: the config's data.img_size); with --backend a list, e.g. 160,512")
    p.add_argument("--batch", default="8", help="images per batch (default 8); with --backend a list, e.g. 1,4")
    p.add_argument("--backend", default=None,
                   help="time a trained checkpoint (--weights) on these backends: torch, onnxruntime, int8")
    p.add_argument("--weights", default=None, help="the checkpoint --backend times")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or a GPU index N")
    add_amp(p)
    p.add_argument("--channels-last", action="store_true", help="channels-last models and inputs")
    p.add_argument("--train", action="store_true", help="also time a training step and its memory")
    p.add_argument("--compare-separate", action="store_true", help="also run one single-task model per task")
    p.add_argument("--repeats", type=int, default=20, help="timed batches per combination (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per combination first (default 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory passes")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and of --accuracy's training")
    p.add_argument("--out", default="runs/benchmark", help="output folder (default runs/benchmark)")
    p.add_argument("--accuracy", action="store_true",
                   help="train single-task models and the multi-task model, evaluate on val, report Δm")
    p.add_argument("--accuracy-all-combos", action="store_true",
                   help="with --accuracy, also train every selected multi-task combination")
    p.add_argument("--train-epochs", type=int, default=None, help="epochs for --accuracy (default: the config's)")
    p.add_argument("--checkpoints", default=None,
                   help="task=path (single-task), mtl=path (all tasks) or a+b=path, comma-separated; "
                        "evaluated instead of trained")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's, or train.threads)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    return p


def main(args) -> None:
    from visionmtl.config import load_config

    cfg = load_config(args.config, args.set)

    import torch

    from visionmtl.benchmark import BenchmarkOptions, run_benchmark
    from visionmtl.benchmark.report import format_markdown

    from visionmtl.errors import ConfigError

    threads = args.threads or cfg.train.threads
    if threads > 0:
        torch.set_num_threads(threads)

    def ints(value, name):
        try:
            out = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--{name} {value}: expected integers separated by commas") from None
        if not out or min(out) < 1:
            raise ConfigError(f"--{name} {value}: expected positive integers")
        return out

    if args.backend:
        from visionmtl.benchmark.deploy import format_deploy, run_deploy

        if not args.weights:
            raise ConfigError("--backend times a trained checkpoint: give it with --weights")
        sizes = ints(args.imgsz, "imgsz") if args.imgsz else [cfg.data.eval_size, 512]
        result = run_deploy(cfg, args.weights, args.out, [b.strip() for b in args.backend.split(",")], sizes,
                            ints(args.batch, "batch") if args.batch != "8" else [1, 4], repeats=args.repeats,
                            warmup=args.warmup)
        print(format_deploy(result))
        return
    imgsz = ints(args.imgsz, "imgsz") if args.imgsz else [None]
    batch = ints(args.batch, "batch")
    if len(imgsz) > 1 or len(batch) > 1:
        raise ConfigError("--imgsz and --batch take one value each without --backend")
    opts = BenchmarkOptions(combos=args.combos, imgsz=imgsz[0], batch=batch[0], device=args.device,
                            amp=args.amp, channels_last=args.channels_last, train=args.train,
                            compare_separate=args.compare_separate, repeats=args.repeats, warmup=args.warmup,
                            seed=args.seed, threads=threads, memory=not args.no_memory)
    result = run_benchmark(cfg, opts, args.out, accuracy=args.accuracy, train_epochs=args.train_epochs,
                           checkpoints=args.checkpoints, accuracy_all_combos=args.accuracy_all_combos)
    print(format_markdown(result))
    print(f"\noutputs: {', '.join(result['paths'].values())}")
    if not result["flop_check"]["ok"]:
        print(f"warning: FLOP check failed (relative error {result['flop_check']['rel_err']:.2%})", file=sys.stderr)


def cli(argv=None, prog=None) -> int:
    """``visionmtl benchmark`` / ``python tools/benchmark.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
