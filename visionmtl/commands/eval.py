#!/usr/bin/env python
"""Evaluate a checkpoint: ``python tools/eval.py CONFIG CHECKPOINT|MODEL.onnx [--out runs/val] [--amp]``.

An ``.onnx`` file (tools/export.py) runs in onnxruntime through the same loader and evaluators.

Prints ``{"cls": {"mAP": ...}, "det": {"mAP": ..., "mAP50": ...}, "seg": {"mIoU": ...}}`` (keys are
the config's task names, with per-class detail) and writes it to ``--out`` as metrics.json, with
a confusion matrix per classification and segmentation task and precision-recall curves per
detection and instance task (``<task>_confusion_matrix.png``, ``<task>_pr_curve.png``). An --out
that holds results is kept: the next free ``runs/val2``, ``runs/val3``, ... is used instead.
Evaluation runs in fp32 unless ``--amp`` asks for autocast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visionmtl.cli import add_amp, parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file or shipped config name (its data.val is evaluated)")
    p.add_argument("checkpoint", help="checkpoint .pt file, or an exported .onnx file")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--split", default="val", choices=["val", "train"], help="which data split to evaluate")
    p.add_argument("--out", default="runs/val", help="output folder for metrics.json and the plots (default runs/val)")
    p.add_argument("--exist-ok", action="store_true", help="write into --out even when it holds results")
    p.add_argument("--no-plots", action="store_true", help="metrics.json only")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or a GPU index N")
    add_amp(p)
    return p


def main(args) -> dict:
    from visionmtl.engine.evaluate_tool import evaluate_checkpoint
    from visionmtl.files import free_folder, write_text

    out = Path(args.out) if args.exist_ok else free_folder(args.out)  # never over earlier results
    plots = None if args.no_plots else out
    if args.checkpoint.lower().endswith(".onnx"):
        from visionmtl.errors import ConfigError
        from visionmtl.inference.onnx_eval import evaluate_onnx

        if args.amp != "off":
            raise ConfigError(f"--amp: {args.checkpoint} runs in the precision it was exported in")
        results = evaluate_onnx(args.config, args.checkpoint, args.set, args.split, plots=plots)
    else:
        results = evaluate_checkpoint(args.config, args.checkpoint, args.set, args.split, args.device, args.amp,
                                      plots=plots)
    drawn = results.pop("plots", [])
    text = json.dumps(results, indent=2)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "metrics.json", text)
    print(f"outputs in {out}: metrics.json" + "".join(f", {Path(p).name}" for p in drawn))
    return results


def cli(argv=None, prog=None) -> int:
    """``visionmtl val`` / ``python tools/eval.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
