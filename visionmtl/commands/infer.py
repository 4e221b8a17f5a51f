#!/usr/bin/env python
"""Run a trained checkpoint (or its ONNX export) on images, folders, globs, videos, webcams or streams.

    python tools/infer.py CHECKPOINT|MODEL.onnx --source SRC [--out DIR] [--tasks cls,det,seg] [--conf 0.3]
        [--imgsz N] [--batch N] [--device auto|cpu|cuda|N] [--amp [auto|bf16|fp16]] [--flip] [--save-json] [--no-draw]
        [--show] [--track] [--track-buffer 30] [--max-frames N]

SRC: an image, a folder of images, a quoted glob ("imgs/**/*.jpg"), a video file (mp4, avi,
mkv, mov, ...), a webcam index (0) or a stream URL (rtsp://, http(s)://). The checkpoint
carries its config and class names.

Outputs in --out (default runs/infer): drawn images (image sets) or <name>.mp4 (videos; MJPG
.avi if mp4v is unavailable); with --save-json also predictions.jsonl (one record per image or
frame, boxes in original pixels, masks as COCO RLE) and, for image sets with a detection head,
coco_results.json + coco_images.json (COCO(coco_images.json).loadRes(coco_results.json));
summary.json with frame counts, per-stage times and FPS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visionmtl.cli import add_amp, add_verbosity, parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint .pt written by the trainer (carries its config), or a .onnx "
                                      "file written by tools/export.py (runs in onnxruntime)")
    p.add_argument("--source", required=True, help="image, folder, glob, video, webcam index or stream URL")
    p.add_argument("--out", default="runs/infer",
                   help="output folder; when it already holds results, the next free runs/infer2, runs/infer3, ...")
    p.add_argument("--exist-ok", action="store_true", help="write into --out even when it holds results")
    p.add_argument("--tasks", default=None, help="comma-separated task names (or head types) to run; default all")
    p.add_argument("--conf", type=float, default=0.3, help="detection score threshold")
    p.add_argument("--imgsz", type=int, default=None, help="longest input side (default: the config's data.eval_img_size, else data.img_size)")
    p.add_argument("--batch", type=int, default=1, help="frames per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or a GPU index N")
    add_amp(p)
    p.add_argument("--half", action="store_true", help=argparse.SUPPRESS)  # older spelling of --amp
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="horizontal-flip test-time augmentation, twice the model time (default: the config's data.eval_flip)")
    p.add_argument("--save-json", action="store_true", help="write predictions.jsonl (+ COCO results for image sets)")
    p.add_argument("--mask-format", default="rle", choices=["rle", "png"], help="segmentation masks in the JSONL")
    p.add_argument("--no-draw", action="store_true", help="skip drawing and encoding entirely")
    p.add_argument("--show", action="store_true", help="display results in a window (needs a GUI OpenCV build)")
    p.add_argument("--track", action="store_true", help="ByteTrack ids on detections (videos, webcams, streams)")
    p.add_argument("--track-buffer", type=int, default=30, help="frames a lost track is kept before it ends")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--reconnect", type=int, default=3, help="reconnect attempts when a stream or webcam drops")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compare-model-only", type=int, default=0, metavar="N",
                   help="after the run, time the model alone on the first N frames at the same batch and size "
                        "and report end-to-end FPS as a fraction of it")
    add_verbosity(p)  # --verbose also lets FFmpeg print its own messages (quiet by default)
    return p


def main(args) -> dict:
    from visionmtl.config import ConfigError
    from visionmtl.inference.capture import configure_ffmpeg_logging
    from visionmtl.inference.sources import open_source
    from visionmtl.inference.video import check_display

    if args.verbose:
        configure_ffmpeg_logging(True)  # before the first capture opens: FFmpeg reads it once

    for name in ("batch", "imgsz", "max_frames"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.track_buffer < 0:
        raise ConfigError(f"--track-buffer must be >= 0, got {args.track_buffer}")
    if args.show:
        check_display()
    if not args.exist_ok:
        from visionmtl.files import free_folder

        args.out = str(free_folder(args.out))  # never over an earlier run's results
    source = open_source(args.source, reconnect=args.reconnect)  # a bad source fails before the model loads
    try:
        return _run(args, source)
    finally:
        source.close()


def _run(args, source) -> dict:
    import torch

    from visionmtl.files import write_text
    from visionmtl.inference.predictor import Predictor
    from visionmtl.inference.video import format_summary, run_video

    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, tasks=args.tasks, conf=args.conf,
                                          imgsz=args.imgsz, half=args.half, amp=args.amp, flip=args.flip)
    if predictor.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = source.info
    details = [f"{info.size[0]}x{info.size[1]}" if info.size else "", f"{info.fps:g} fps" if info.fps else "",
               f"{info.frame_count} frames" if info.frame_count else ""]
    details = ", ".join(d for d in details if d)
    print(f"{predictor}\nsource: {info.kind} {info.spec}" + (f" ({details})" if details else ""), flush=True)
    summary = run_video(predictor, source, args.out, batch=args.batch, draw=not args.no_draw,
                        save_json=args.save_json, show=args.show, track=args.track, track_buffer=args.track_buffer,
                        max_frames=args.max_frames, mask_format=args.mask_format, progress=not args.no_progress)
    if args.compare_model_only:
        summary["model_only_fps"] = _model_only(predictor, args)
        summary["e2e_over_model_only"] = summary["fps"] / summary["model_only_fps"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"outputs in {out}")
    if args.compare_model_only:
        print(f"model only: {summary['model_only_fps']:.1f} FPS at batch {args.batch}; "
              f"end-to-end / model only = {summary['e2e_over_model_only']:.2f}")
    return summary


def _model_only(predictor, args) -> float:
    """Model-only FPS on the first N frames of the source (decoded up front, no I/O timed)."""
    from visionmtl.inference.sources import open_source
    from visionmtl.inference.video import model_only_fps

    frames = []
    src = open_source(args.source)
    try:
        for frame in src:
            frames.append(frame.image)
            if len(frames) >= args.compare_model_only:
                break
    finally:
        src.close()
    return model_only_fps(predictor, frames, batch=args.batch)


def cli(argv=None, prog=None) -> int:
    """``visionmtl predict`` / ``python tools/infer.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
