"""The ``visionmtl`` command: ``visionmtl SUBCOMMAND [options]`` (also ``python -m visionmtl``).

Each subcommand is a module here with ``get_args_parser()``, ``main(args)`` and ``cli(argv)``;
``tools/<module>.py`` are thin wrappers over the same code, for a checkout without installing.
Input errors are one line, ``error: ...``, with exit status 2 (:func:`visionmtl.cli.run`).
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

__all__ = ["SUBCOMMANDS", "main"]

# subcommand -> (module, what it does)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a model from a config (tools/train.py)"),
    "val": ("eval", "evaluate a checkpoint or an .onnx file on a config's data (tools/eval.py)"),
    "predict": ("infer", "predict on images, folders, videos, webcams or streams (tools/infer.py)"),
    "export": ("export", "export a checkpoint to ONNX, optionally INT8 (tools/export.py)"),
    "benchmark": ("benchmark", "head combinations, or a checkpoint on each backend (tools/benchmark.py)"),
    "data": ("dataset_info", "what a config's datasets hold and every problem in them (tools/dataset_info.py)"),
    "compare": ("compare_strategies", "train each training strategy under one budget (tools/compare_strategies.py)"),
    "demo": ("demo", "what `make demo` runs (tools/demo.py)"),
    "shapes": ("make_shapes", "generate the synthetic shapes dataset (tools/make_shapes.py)"),
    "browse": ("browse_dataset", "draw augmented samples with their targets (tools/browse_dataset.py)"),
    "coco2yolo": ("coco_to_yolo", "write a COCO dataset in the YOLO layout (tools/coco_to_yolo.py)"),
    "data-speed": ("benchmark_data", "images/s of the training data pipeline (tools/benchmark_data.py)"),
    "track-eval": ("eval_tracking", "tracking MOTA on generated videos (tools/eval_tracking.py)"),
    "gpu-bench": ("gpu_bench", "GPU training throughput and MFU (tools/gpu_bench.py)"),
}


def usage() -> str:
    from .. import __version__

    width = max(map(len, SUBCOMMANDS))
    lines = [f"visionmtl {__version__}: multi-task computer vision on one shared backbone", "",
             "usage: visionmtl SUBCOMMAND [options]   (visionmtl SUBCOMMAND --help for its options)", "",
             "subcommands:"]
    lines += [f"  {name.ljust(width)}  {what}" for name, (_, what) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``visionmtl`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        from .. import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        known = ", ".join(SUBCOMMANDS)
        print(f"error: unknown subcommand '{name}'; the subcommands are: {known}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{SUBCOMMANDS[name][0]}")
    from ..cli import setup_logging

    setup_logging()
    return int(module.cli(argv[1:], prog=f"visionmtl {name}") or 0)
