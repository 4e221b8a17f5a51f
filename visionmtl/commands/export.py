#!/usr/bin/env python
"""Export a trained checkpoint to ONNX: one graph with the backbone, every selected head, the
decoding and NMS; optionally an INT8 copy (onnxruntime static QDQ quantization).

    python tools/export.py CHECKPOINT [--format onnx] [--out PATH] [--imgsz N] [--batch N | --dynamic]
        [--opset 18] [--tasks cls,det,...] [--int8 [--calib CONFIG] [--calib-images 64]]
        [--parity SOURCE [--parity-conf 0.05]]

Inputs of the graph: ``images`` uint8 [B,H,W,3] RGB (longest side resized to imgsz, padded
bottom/right with the mean colour), ``sizes`` int64 [B,2] (each image's valid h, w) and ``conf``
float32 [1] (the detection threshold: candidates below it never reach NMS).
Outputs: ``task.key`` (cls.probs, det.boxes/scores/labels/batch, seg.logits, inst.masks, ...).
The file carries its config and class names: ``tools/infer.py MODEL.onnx --source ...`` and
``Predictor.from_onnx(path)`` need nothing else. ``--int8`` also writes ``<out>.int8.onnx``,
calibrated on ``--calib-images`` training images of ``--calib`` (default the checkpoint's config).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint .pt written by the trainer")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's); the file is named after "
                                               "the checkpoint, best.pt -> best.onnx (and best.int8.onnx)")
    p.add_argument("--imgsz", type=int, default=None,
                   help="input side, a multiple of the largest stride (default: the config's evaluation size)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--batch", type=int, default=1, help="images per run of a static graph")
    shape.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--tasks", default=None, help="comma-separated task names (or head types) to keep; default all")
    p.add_argument("--int8", action="store_true", help="also write an INT8 (static QDQ) copy")
    p.add_argument("--calib", default=None, help="config whose training images calibrate INT8 (default: the checkpoint's)")
    p.add_argument("--calib-images", type=int, default=64, help="calibration images")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for --calib's config")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-against-PyTorch check")
    p.add_argument("--parity", default=None, metavar="SOURCE",
                   help="images (folder, glob or file) to run through the checkpoint and the .onnx file: "
                        "reports matched detections, identical label maps and score differences")
    p.add_argument("--parity-conf", type=float, default=0.05, help="detection threshold of the --parity run")
    return p


def main(args) -> dict:
    from visionmtl.config import load_config
    from visionmtl.inference.export import calibration_images, export_onnx, quantize_int8
    from visionmtl.inference.onnx_model import OnnxModel

    out = None
    if args.out:
        from visionmtl.errors import ConfigError

        if args.out.lower().endswith(".onnx"):
            raise ConfigError(f"--out {args.out}: --out is a folder; the file is named after the checkpoint "
                              f"({Path(args.checkpoint).stem}.onnx)")
        out = str(Path(args.out) / (Path(args.checkpoint).stem + ".onnx"))
    summary = export_onnx(args.checkpoint, out, imgsz=args.imgsz, batch=args.batch, dynamic=args.dynamic,
                          opset=args.opset, tasks=args.tasks, check=not args.no_check)
    print(f"wrote {summary['path']} ({summary['bytes'] / 1e6:.1f} MB): tasks {', '.join(summary['tasks'])}, "
          f"imgsz {summary['imgsz']}, batch {summary['batch']}, opset {summary['opset']}")
    if "max_abs_diff" in summary:
        worst = max(summary["max_abs_diff"].values()) if summary["max_abs_diff"] else 0.0
        print(f"check: max |onnxruntime - torch| = {worst:.2e} over {len(summary['max_abs_diff'])} outputs "
              f"({', '.join(f'{k} {v:.1e}' for k, v in summary['max_abs_diff'].items())})")
    if args.int8:
        cfg = load_config(args.calib, list(args.set)) if args.calib else OnnxModel(summary["path"]).cfg
        images = calibration_images(cfg, args.calib_images)
        out = str(Path(summary["path"]).with_suffix("")) + ".int8.onnx"
        q = quantize_int8(summary["path"], out, images)
        print(f"wrote {q['path']} ({q['bytes'] / 1e6:.1f} MB): INT8 QDQ, calibrated on {q['calibration_images']} images")
        summary["int8"] = q
    if args.parity:
        summary["parity"] = parity(args, summary)
    return summary


def parity(args, summary) -> dict:
    """The checkpoint and the exported fp32 file on the same images: graph outputs and decoded results."""
    from visionmtl.inference.parity import compare_results
    from visionmtl.inference.predictor import Predictor
    from visionmtl.inference.sources import open_source

    src = open_source(args.parity)
    try:
        images = [f.image for f in src]
    finally:
        src.close()
    batch = 4 if args.dynamic else args.batch
    path = summary["path"]
    ref = Predictor.from_checkpoint(args.checkpoint, device="cpu", tasks=summary["tasks"], conf=args.parity_conf,
                                    imgsz=summary["imgsz"], flip=False, batch_size=batch)
    ox = Predictor.from_onnx(path, conf=args.parity_conf, batch_size=batch)
    raw = raw_parity(ref, ox, images, batch)
    print(f"parity {Path(path).name} against {Path(args.checkpoint).name}: graph outputs on {len(images)} images, "
          f"max |onnxruntime - torch| = {max(raw.values()):.2e} ({', '.join(f'{k} {v:.1e}' for k, v in raw.items())})")
    r = compare_results(ref(images), ox(images))
    print(f"parity {Path(path).name} against {Path(args.checkpoint).name} on {r['images']} images "
          f"(conf {args.parity_conf:g}): {'SAME' if r['same'] else 'DIFFERENT'}; "
          f"{r['boxes'] - r['unmatched_boxes']}/{r['boxes']} detections matched (max box diff "
          f"{r['max_box_diff']:.1e} px), max score diff {r['max_score_diff']:.1e}, segmentation "
          f"{r['seg_pixels'] - r['seg_pixels_differing']}/{r['seg_pixels']} pixels equal"
          + (f", instance masks {r['mask_pixels'] - r['mask_pixels_differing']}/{r['mask_pixels']} pixels equal"
             if r["masks"] else "")
          + (f", {r['cls_differing']} images with other class labels" if r["cls_differing"] else ""))
    return {**r, "graph_max_abs_diff": raw}


def raw_parity(ref, ox, images, batch: int) -> dict:
    """Max |onnxruntime - PyTorch| per graph output over ``images`` (prepared as the predictor does)."""
    import torch

    from visionmtl.inference.export import check_parity
    from visionmtl.models.graph import InferenceGraph

    aug = ref.cfg.data.augment
    graph = InferenceGraph(ref.model, ox.task_names, aug.mean, aug.std).eval()
    worst: dict = {}
    for k in range(0, len(images), batch):
        pb = ox.prepare(images[k: k + batch])
        sizes = torch.as_tensor(pb.input_sizes, dtype=torch.int64)
        conf = torch.tensor([ox.conf], dtype=torch.float32)
        with torch.no_grad():
            out = graph(pb.images, sizes, conf)
        for name, v in check_parity(ox.onnx.path, graph, pb.images, sizes, ox.conf, out).items():
            worst[name] = max(worst.get(name, 0.0), v)
    return worst


def cli(argv=None, prog=None) -> int:
    """``visionmtl export`` / ``python tools/export.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
