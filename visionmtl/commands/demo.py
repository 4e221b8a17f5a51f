#!/usr/bin/env python
"""The default demo (``make demo``): generate the shapes dataset if absent, train the 3-head
ResNet-18-FPN model, evaluate it on the val split and draw predictions for held-out images,
each beside its ground truth.

``python tools/demo.py [--out runs/demo] [--config shapes/r18_fpn_3heads] [k=v ...]``
"""

from __future__ import annotations

import argparse
import json
import time

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="shapes/r18_fpn_3heads",
                   help="config file or shipped config name (default shapes/r18_fpn_3heads)")
    p.add_argument("--out", "--work-dir", dest="work_dir", default="runs/demo", metavar="DIR",
                   help="the run's folder (default runs/demo; when it holds a run, the next free runs/demo2, ...)")
    p.add_argument("--data", default=None,
                   help="where the shapes dataset is generated (default: $VISIONMTL_DATASETS/shapes, i.e. data/shapes "
                        "in a checkout)")
    p.add_argument("--train-images", type=int, default=2000, help="shapes training images (default 2000)")
    p.add_argument("--val-images", type=int, default=200, help="shapes validation images (default 200)")
    p.add_argument("--imgsz", "--size", dest="size", type=int, default=128, help="shapes image side (default 128)")
    p.add_argument("--draw", type=int, default=8, help="held-out images to draw predictions for (default 8)")
    p.add_argument("--draw-size", type=int, default=384,
                   help="longest side of the drawn images (smaller images are upscaled; default 384)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    return p


def main(args) -> None:
    from visionmtl.config import load_config
    from visionmtl.data.shapes import ensure_shapes
    from visionmtl.engine.trainer import Trainer
    from visionmtl.files import write_text
    from visionmtl.paths import datasets_dir

    t0 = time.time()
    data = ensure_shapes(args.data or datasets_dir() / "shapes", args.train_images, args.val_images, args.size, seed=0)
    print(f"shapes dataset: {data} ({time.time() - t0:.1f} s)")
    overrides = [
        f"data.train.0.ann_file={data}/train/annotations.json", f"data.train.0.img_dir={data}/train/images",
        f"data.val.0.ann_file={data}/val/annotations.json", f"data.val.0.img_dir={data}/val/images",
    ] + list(args.set)
    cfg = load_config(args.config, overrides)
    cfg.work_dir = args.work_dir
    trainer = Trainer(cfg, args.work_dir)
    t1 = time.time()
    metrics = trainer.train()
    train_time = time.time() - t1
    out = trainer.work_dir  # runs/demo, or runs/demo2 ... when runs/demo holds an earlier run
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    draw_predictions(trainer, out / "predictions", args.draw, args.draw_size)

    summary = {n: {k: v for k, v in m.items() if k != "per_class"} for n, m in metrics.items() if isinstance(m, dict)}
    print(json.dumps(summary, indent=2))
    print(f"training took {train_time / 60:.1f} min; total {(time.time() - t0) / 60:.1f} min")
    print(f"outputs: {out}/ (best.pt, last.pt, metrics.json, metrics.jsonl, loss_curves.png, "
          f"metric_curves.png, predictions/)")


def draw_predictions(trainer, folder, count: int, size: int) -> list:
    """Held-out images drawn as ground truth | prediction, ``size`` px on the longest side."""
    from visionmtl.data.transforms import build_transforms
    from visionmtl.files import write_image
    from visionmtl.inference.draw import draw_targets, side_by_side
    from visionmtl.inference.predictor import Predictor

    cfg = trainer.cfg
    predictor = Predictor(trainer.eval_model, cfg, trainer.device, conf=0.5)
    val = trainer.val_loader.dataset.parts[0]
    show = build_transforms(size, cfg.data.augment, train=False)  # the ground truth resized for display
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(count, len(val))):
        image, target = val.load(i)
        shown, t = show(image, target)
        truth = draw_targets(shown.permute(1, 2, 0).numpy(), t, cfg.tasks, text_strip=True)
        pred = predictor(image).plot(min_size=size, text_strip=True)
        paths.append(folder / f"{i:03d}.jpg")
        write_image(paths[-1], side_by_side([truth, pred], ["ground truth", "prediction"]))
    return paths


def cli(argv=None, prog=None) -> int:
    """``visionmtl demo`` / ``python tools/demo.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
