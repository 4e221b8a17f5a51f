#!/usr/bin/env python
"""Evaluate a checkpoint: ``python tools/eval.py CONFIG CHECKPOINT|MODEL.onnx [--out metrics.json]``.

An ``.onnx`` file (tools/export.py) runs in onnxruntime through the same loader and evaluators.

Prints and writes ``{"cls": {"mAP": ...}, "det": {"mAP": ..., "mAP50": ...}, "seg": {"mIoU": ...}}``
(keys are the config's task names) with per-class detail.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file (its data.val is evaluated)")
    p.add_argument("checkpoint", help="checkpoint .pt file, or an exported .onnx file")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--split", default="val", choices=["val", "train"], help="which data split to evaluate")
    p.add_argument("--out", help="write the metrics JSON here")
    p.add_argument("--device", default="auto")
    return p


def main(args) -> None:
    from visionmtl.engine.evaluate_tool import evaluate_checkpoint
    from visionmtl.files import write_text

    if args.checkpoint.lower().endswith(".onnx"):
        from visionmtl.inference.onnx_eval import evaluate_onnx

        results = evaluate_onnx(args.config, args.checkpoint, args.set, args.split)
    else:
        results = evaluate_checkpoint(args.config, args.checkpoint, args.set, args.split, args.device)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)


def cli(argv=None, prog=None) -> int:
    """``visionmtl val`` / ``python tools/eval.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
