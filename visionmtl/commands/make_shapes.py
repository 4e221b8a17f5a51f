"""Generate the synthetic shapes dataset (COCO format), the project's built-in default data.

    python tools/make_shapes.py --out datasets/shapes --train 1000 --val 200 --imgsz 128 --seed 0

writes ``OUT/{train,val}/images/*.jpg``, ``OUT/{train,val}/annotations.json`` and
``OUT/meta.json``; the same arguments always give identical files. ``--crops N`` also writes
``OUT/crops/{train,val}/<class>/*.jpg``, N single-object crops per class (an image-folder
classification set).
"""

from __future__ import annotations

from visionmtl.cli import parse_args, run

import argparse
from pathlib import Path


MIN_SIZE = 32  # same as visionmtl.data.shapes.MIN_SIZE (not imported: bad args fail fast)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _image_size(text: str) -> int:
    value = _count(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_SIZE} px, got {value}")
    return value


def _out_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a directory")
    return path


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "make_shapes", description="Generate the synthetic shapes dataset (COCO format).", add_help=add_help
    )
    parser.add_argument("--out", type=_out_dir, required=True, help="output directory")
    parser.add_argument("--train", type=_count, default=1000, help="number of training images (default 1000)")
    parser.add_argument("--val", type=_count, default=200, help="number of validation images (default 200)")
    parser.add_argument(
        "--imgsz", "--size", dest="size", type=_image_size, default=128,
        help=f"image side in px, >= {MIN_SIZE} (default 128)"
    )
    parser.add_argument("--seed", type=_count, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--workers",
        type=_count,
        default=None,
        help="rendering processes; 0 = in this process (default: a pool for large sets)",
    )
    parser.add_argument(
        "--crops",
        type=_count,
        default=0,
        help="also write OUT/crops/{train,val}/<class>/*.jpg: this many single-object crops per class "
        "(an image-folder classification set)",
    )
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if OUT already holds a dataset made with the same arguments",
    )
    return parser


def format_summary(summary: dict) -> str:
    """Human-readable lines for a :func:`visionmtl.data.shapes.make_shapes` summary."""
    lines = [f"shapes dataset in {summary['out']}  ({summary['size']} px, seed {summary['seed']})"]
    for split, info in summary["splits"].items():
        lines.append(f"  {split}: {info['images']} images, {info['objects']} objects")
        if not info["images"]:
            continue
        per_class = ", ".join(f"{name} {n}" for name, n in info["per_class"].items())
        lines.append(f"    per class: {per_class}")
        hist = " ".join(f"{k}:{n}" for k, n in enumerate(info["objects_per_image"]))
        lines.append(f"    objects per image: {hist}")
        if info.get("rle_segmentations"):
            lines.append(f"    RLE segmentations (holes): {info['rle_segmentations']}")
    lines.append(f"  time: {summary['seconds']:.2f} s")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict | None:
    from visionmtl.data import shapes

    workers = args.workers
    if workers is None:
        workers = shapes.default_workers(args.train + args.val)
    summary = None
    if args.if_missing and shapes.is_current(args.out, args.train, args.val, args.size, args.seed):
        print(f"{args.out}: up to date, nothing to do")
    else:
        summary = shapes.make_shapes(args.out, args.train, args.val, args.size, args.seed, workers=workers)
        print(format_summary(summary))
    if args.crops:
        from visionmtl.data.shape_crops import make_shape_crops

        counts = make_shape_crops(args.out, args.crops)
        for split, per in counts.items():
            print(f"  crops/{split}: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    return summary


def cli(argv=None, prog=None) -> int:
    """``visionmtl shapes`` / ``python tools/make_shapes.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
