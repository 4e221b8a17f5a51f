#!/usr/bin/env python
"""The default demo (``make demo``): generate the shapes dataset if absent, train the 3-head
ResNet-18-FPN model, evaluate it on the val split and draw predictions for held-out images.

``python tools/demo.py [--work-dir runs/demo] [--config configs/shapes/r18_fpn_3heads.yaml] [--set k=v ...]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from visionmtl.cli import parse_args, run

ROOT = Path(__file__).resolve().parents[2]  # the checkout holding configs/


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/shapes/r18_fpn_3heads.yaml"))
    p.add_argument("--work-dir", default="runs/demo")
    p.add_argument("--data", default="data/shapes", help="where the shapes dataset is generated")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--draw", type=int, default=8, help="held-out images to draw predictions for")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    return p


def main(args) -> None:
    from visionmtl.config import load_config
    from visionmtl.data.base import read_image
    from visionmtl.data.collate import Collate
    from visionmtl.data.shapes import ensure_shapes
    from visionmtl.engine.trainer import Trainer
    from visionmtl.files import write_image, write_text
    from visionmtl.inference.draw import draw_result

    t0 = time.time()
    data = ensure_shapes(args.data, args.train_images, args.val_images, args.size, seed=0)
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

    # draw predictions on held-out images, in original pixels
    net = trainer.net.eval()
    val = trainer.val_loader.dataset.parts[0]
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    import torch

    collate = Collate(cfg.tasks, cfg.data.augment.mean, cfg.data.augment.std)
    for i in range(min(args.draw, len(val))):
        batch = collate([val[i]])
        meta = batch.meta[0]
        with torch.inference_mode():
            raw = net(batch.images.to(trainer.device, memory_format=trainer.memory_format))
            pred = net.predict(raw, [meta["input_size"]], [meta["orig_size"]])[0]
        drawn = draw_result(read_image(meta["path"]), pred, cfg.tasks, score_thresh=0.5)
        write_image(pred_dir / f"{i:03d}.jpg", drawn)

    summary = {n: {k: v for k, v in m.items() if k != "per_class"} for n, m in metrics.items() if isinstance(m, dict)}
    print(json.dumps(summary, indent=2))
    print(f"training took {train_time / 60:.1f} min; total {(time.time() - t0) / 60:.1f} min")
    print(f"outputs: {out}/ (best.pt, last.pt, metrics.json, metrics.jsonl, loss_curves.png, "
          f"metric_curves.png, predictions/)")


def cli(argv=None, prog=None) -> int:
    """``visionmtl demo`` / ``python tools/demo.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
