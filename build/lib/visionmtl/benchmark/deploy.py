"""Deployment speed: a trained checkpoint in PyTorch fp32 against its ONNX export in onnxruntime,
fp32 and INT8 (``tools/benchmark.py CONFIG --backend torch,onnxruntime,int8 --weights CKPT``).

Each backend runs the predictor's device part and decoding (``forward`` + ``postprocess``: the
network, detection top-k and NMS, segmentation upsampling, results as numpy) on the same
prepared batches of real images (the config's validation images, resized and padded by
``Predictor.prepare``), at each input size and batch. The backends are interleaved round by
round (a round times one batch on each, in rotating order), so that a shared, noisy machine
slows them alike; the table gives the median milliseconds per image and the ratios.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..files import write_text

__all__ = ["run_deploy", "format_deploy"]

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnxruntime", "int8")


def run_deploy(cfg, checkpoint: str, out_dir: str, backends: Sequence[str] = BACKENDS,
               sizes: Sequence[int] = (160, 512), batches: Sequence[int] = (1, 4), repeats: int = 20, warmup: int = 3,
               calib_images: int = 64, onnx_path: Optional[str] = None, int8_path: Optional[str] = None) -> dict:
    """Time ``backends`` on ``checkpoint``; exports the dynamic ONNX (and INT8) files into
    ``out_dir`` unless given. Returns the result dict (also written as deploy.json / deploy.md)."""
    import json

    from ..errors import ConfigError
    from ..inference.export import calibration_images, export_onnx, quantize_int8
    from ..inference.predictor import Predictor

    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ConfigError(f"--backend {','.join(bad)}: valid backends are {', '.join(BACKENDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ("onnxruntime" in backends or "int8" in backends) and onnx_path is None:
        onnx_path = export_onnx(checkpoint, out / "model.onnx", dynamic=True, imgsz=max(sizes), check=False)["path"]
    if "int8" in backends and int8_path is None:
        int8_path = quantize_int8(onnx_path, out / "model.int8.onnx", calibration_images(cfg, calib_images))["path"]
    preds = {}
    for b in backends:
        if b == "torch":
            preds[b] = Predictor.from_checkpoint(checkpoint, device="cpu", flip=False)
        else:
            preds[b] = Predictor.from_onnx(onnx_path if b == "onnxruntime" else int8_path)
    images = calibration_images(cfg, max(batches), split="val")
    rows = []
    for size in sizes:
        for batch in batches:
            group = [images[k % len(images)] for k in range(batch)]
            prepared = {}
            for name, p in preds.items():
                p.imgsz = int(size)
                prepared[name] = p.prepare(group)
            times = {name: [] for name in preds}
            model_times = {name: [] for name in preds}
            names = list(preds)
            for r in range(warmup + repeats):
                order = names[r % len(names):] + names[: r % len(names)]
                for name in order:
                    p, pb = preds[name], prepared[name]
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        raw = p.forward(pb)
                        t1 = time.perf_counter()
                        p.postprocess(raw, pb)
                    if r >= warmup:
                        times[name].append(time.perf_counter() - t0)
                        model_times[name].append(t1 - t0)
            row = {"imgsz": int(size), "batch": int(batch)}
            for name, t in times.items():
                row[f"{name}_ms"] = 1000.0 * float(np.median(t)) / batch
                row[f"{name}_forward_ms"] = 1000.0 * float(np.median(model_times[name])) / batch
            if "torch" in times and "onnxruntime" in times:
                row["ort_speedup"] = row["torch_ms"] / row["onnxruntime_ms"]
            if "onnxruntime" in times and "int8" in times:
                row["int8_speedup"] = row["onnxruntime_ms"] / row["int8_ms"]
                row["int8_forward_speedup"] = row["onnxruntime_forward_ms"] / row["int8_forward_ms"]
            rows.append(row)
            log.info("imgsz %d batch %d: %s", size, batch,
                     ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.endswith(("_ms", "_speedup"))))
    result = {"checkpoint": str(checkpoint), "onnx": onnx_path, "int8": int8_path, "backends": list(backends),
              "threads": torch.get_num_threads(), "repeats": repeats, "rows": rows}
    write_text(out / "deploy.json", json.dumps(result, indent=2))
    write_text(out / "deploy.md", format_deploy(result) + "\n")
    return result


def format_deploy(result: dict) -> str:
    """The markdown table: ms per image per backend and the speed-ups."""
    names = {"torch": "PyTorch fp32", "onnxruntime": "ORT fp32", "int8": "ORT INT8"}
    cols = [b for b in result["backends"]]
    labels = {"ort_speedup": "ORT fp32 vs PyTorch", "int8_speedup": "INT8 vs ORT fp32",
              "int8_forward_speedup": "INT8 vs ORT fp32, forward only"}
    extra = [k for k in labels if any(k in r for r in result["rows"])]
    head = ["imgsz", "batch"] + [f"{names[b]} ms/img (forward)" for b in cols] + [labels[k] for k in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [str(r["imgsz"]), str(r["batch"])] + [f"{r[f'{b}_ms']:.1f} ({r[f'{b}_forward_ms']:.1f})" for b in cols]
        cells += [f"{r[k]:.2f}x" for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n{result['threads']} threads, median of {result['repeats']} interleaved rounds; ms per image of "
                 "forward + postprocess (forward alone in brackets: for ORT the graph with its decoding and "
                 "NMS, for PyTorch the network)")
    return "\n".join(lines)
