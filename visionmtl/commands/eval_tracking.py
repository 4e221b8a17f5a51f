#!/usr/bin/env python
"""Tracking accuracy on generated videos of moving shapes with known trajectories.

``python tools/eval_tracking.py [--seeds 5] [--frames 100] [--objects 4] [--checkpoint CKPT]``

Without ``--checkpoint`` the tracker gets noisy ground-truth detections (jittered boxes, 10%
dropped, some low scores, false positives); with it, the checkpoint's detector runs on the
rendered frames. Prints CLEAR-MOT figures (MOTA, ID switches, FP, FN) per sequence and overall.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import json

from visionmtl.cli import parse_args, run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="number of generated sequences")
    p.add_argument("--frames", type=int, default=100, help="frames per sequence (default 100)")
    p.add_argument("--objects", type=int, default=4, help="moving objects per sequence (default 4)")
    p.add_argument("--checkpoint", help="run this checkpoint's detector on the rendered frames")
    p.add_argument("--conf", type=float, default=0.1, help="detector score threshold (low boxes feed stage two)")
    p.add_argument("--track-buffer", type=int, default=30, help="frames a lost track is kept (default 30)")
    p.add_argument("--out", help="folder to write tracking.json (every figure) into")
    return p


def main(args) -> None:
    import numpy as np

    from visionmtl.files import write_text
    from visionmtl.inference.mot import evaluate_tracker, synthetic_sequence
    from visionmtl.inference.track import ByteTracker

    detector = None
    if args.checkpoint:
        from visionmtl.inference.predictor import Predictor
        from visionmtl.tasks import spec

        predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu", conf=args.conf)
        det_task = next(n for n, t in predictor.tasks.items() if spec(t).trackable)

        def detector(frame):
            r = predictor(frame)[det_task]
            return r["boxes"], r["scores"], np.zeros(len(r["boxes"]), np.int64)  # one class: identity only

    rows = []
    for seed in range(args.seeds):
        seq = synthetic_sequence(n_frames=args.frames, n_objects=args.objects, seed=seed)
        m = evaluate_tracker(ByteTracker(track_buffer=args.track_buffer), seq, detector=detector)
        rows.append(m)
        print(f"seed {seed}: MOTA {m['MOTA']:.3f}  ID switches {m['IDSW']}  FP {m['FP']}  FN {m['FN']}  GT {m['GT']}")
    total = {k: sum(r[k] for r in rows) for k in ("IDSW", "FP", "FN", "GT")}
    total["MOTA"] = 1.0 - (total["FP"] + total["FN"] + total["IDSW"]) / max(total["GT"], 1)
    print(f"overall: MOTA {total['MOTA']:.3f}  ID switches {total['IDSW']} over {args.seeds} sequences "
          f"of {args.frames} frames ({'detector: ' + args.checkpoint if args.checkpoint else 'noisy ground-truth detections'})")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_text(Path(args.out) / "tracking.json", json.dumps({"sequences": rows, "overall": total}, indent=2, default=float))


def cli(argv=None, prog=None) -> int:
    """``visionmtl track-eval`` / ``python tools/eval_tracking.py``: parse ``argv``, run, return the exit status."""
    parser = get_args_parser()
    parser.prog = prog or parser.prog
    return run(main, parse_args(parser, argv))
