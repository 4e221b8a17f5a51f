"""Export a trained checkpoint to one ONNX file (backbone, every selected head, decoding and NMS
inside) and quantize it to INT8 (what ``tools/export.py`` runs).

The graph is :class:`visionmtl.models.graph.InferenceGraph`, exported with ``torch.export``
(``torch.onnx.export(dynamo=True)``):

* inputs ``images`` uint8 ``[B, H, W, 3]`` RGB (resized and padded by the host, normalised inside)
  and ``sizes`` int64 ``[B, 2]``, each image's valid ``(h, w)``;
* outputs ``task.key`` (``cls.probs``, ``det.boxes`` / ``det.scores`` / ``det.labels`` /
  ``det.batch``, ``seg.logits``, ``inst.masks`` ...; see the heads' ``graph_outputs``).

NMS is inside the graph (ONNX ``NonMaxSuppression``): an instance head pools on the kept boxes,
which can only happen in the graph, and it cost less than the host-side alternative (README,
export table). The file carries its own metadata (``metadata_props`` ``visionmtl.*``): the
resolved config, tasks, classes, input size, batch, normalisation, strides, thresholds, output
names and version, so that :class:`visionmtl.inference.onnx_model.OnnxModel` needs nothing else.

INT8 is onnxruntime's static QDQ quantization (per-channel int8 weights, uint8 activations,
MinMax calibration on training images of a config); the feature network is quantized, decoding
and NMS stay fp32 (:func:`quantize_int8`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import __version__
from ..errors import CheckpointError, ConfigError
from ..models.graph import InferenceGraph
from ..models.multitask import predict_order

__all__ = ["META", "export_onnx", "quantize_int8", "read_checkpoint_for_export"]

log = logging.getLogger(__name__)
META = "visionmtl."  # metadata_props key prefix


@contextlib.contextmanager
def _quiet():
    """Keep the exporter's and the quantizer's progress chatter (prints, INFO logs) out of the console."""
    chatter = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            yield chatter
    finally:
        root.setLevel(level)
        log.debug(chatter.getvalue())


def read_checkpoint_for_export(path: Union[str, os.PathLike]):
    """(model, cfg) from a trainer checkpoint, or one clear error: not a checkpoint, written by
    another visionmtl version, or weights that do not fit the config it carries."""
    from ..engine.checkpoint import load_checkpoint, load_trained

    path = str(path)
    if str(path).endswith(".onnx"):
        raise CheckpointError(f"{path}: already an ONNX model; export takes a trainer checkpoint (.pt)")
    ckpt = load_checkpoint(path)
    version = ckpt.get("version")
    if version is not None and str(version).split(".")[:2] != __version__.split(".")[:2]:
        raise CheckpointError(f"{path}: checkpoint written by visionmtl {version}, this is {__version__}; "
                              f"export it with visionmtl {version} or retrain")
    model, cfg, _ = load_trained(path, "cpu", ckpt)
    return model, cfg


def _tasks(cfg, model, tasks) -> list[str]:
    from .predictor import parse_tasks

    names = parse_tasks(tasks, cfg)
    for n in names:
        after = getattr(model.heads[n], "after", None)
        if after and after not in names:
            raise ConfigError(f"--tasks: '{n}' decodes on the boxes of '{after}'; add '{after}' to --tasks")
    return predict_order(model.heads, names)


def _max_stride(model) -> int:
    return max(int(s) for s in model.backbone.strides.values())


def export_onnx(checkpoint: Union[str, os.PathLike], out: Optional[Union[str, os.PathLike]] = None, *,
                imgsz: Optional[int] = None, batch: int = 1, dynamic: bool = False, opset: int = 18,
                tasks: Optional[Union[str, Sequence[str]]] = None, check: bool = True) -> dict:
    """Write ``checkpoint`` as ONNX; returns a summary (path, size, tasks, outputs, parity of the
    export check on a random image: ``max_abs_diff`` per output).

    Args:
        imgsz: the input side (square ``imgsz`` x ``imgsz`` for a static graph; the metadata's
            default for a dynamic one). Default the config's evaluation size. A multiple of the
            largest stride.
        batch: images per run of a static graph.
        dynamic: batch, height and width dynamic (any multiple of the largest stride).
        tasks: the tasks to keep (names or head types), default all.
        check: run the file once in onnxruntime against PyTorch.
    """
    import onnx

    model, cfg = read_checkpoint_for_export(checkpoint)
    names = _tasks(cfg, model, tasks)
    imgsz = int(imgsz or cfg.data.eval_size)
    stride = _max_stride(model)
    if imgsz < stride or imgsz % stride:
        raise ConfigError(f"--imgsz {imgsz}: must be a multiple of the model's largest stride, {stride} "
                          f"(e.g. {max(stride, round(imgsz / stride) * stride)})")
    if batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch}")
    if not 7 <= opset <= 23:
        raise ConfigError(f"--opset {opset}: onnxruntime runs opsets 7 to 23 (18 recommended)")
    aug = cfg.data.augment
    graph = InferenceGraph(model, names, aug.mean, aug.std).eval()
    b = 2 if dynamic else batch
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, imgsz, imgsz, 3), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[imgsz, imgsz]] + [[imgsz - stride, imgsz]] * (b - 1), dtype=torch.int64)
    conf = torch.tensor([0.05], dtype=torch.float32)
    with torch.no_grad():
        ref = graph(images, sizes, conf)
    output_names = list(graph.output_names)
    out = Path(out) if out else Path(checkpoint).with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    kwargs = {}
    if dynamic:
        d = torch.export.Dim.DYNAMIC
        kwargs["dynamic_shapes"] = {"images": {0: d, 1: d, 2: d}, "sizes": {0: d}, "conf": None}
    try:
        with _quiet():
            torch.onnx.export(graph, (images, sizes, conf), str(tmp), dynamo=True, opset_version=opset,
                              input_names=["images", "sizes", "conf"], output_names=output_names,
                              external_data=False, optimize=True, **kwargs)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export of {checkpoint} failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    proto = onnx.load(str(tmp))
    meta = {
        "version": __version__,
        "config": json.dumps(cfg.to_dict()),
        "tasks": json.dumps(names),
        "types": json.dumps({n: cfg.tasks[n].type for n in names}),
        "classes": json.dumps({n: list(cfg.tasks[n].classes) for n in names}),
        "imgsz": str(imgsz),
        "batch": "dynamic" if dynamic else str(batch),
        "dynamic": json.dumps(bool(dynamic)),
        "input": "images uint8 [B,H,W,3] RGB, resized (longest side imgsz) and padded bottom/right with the "
                 "mean colour; sizes int64 [B,2] valid (h,w) per image; conf float32 [1] detection threshold",
        "mean": json.dumps(list(aug.mean)),
        "std": json.dumps(list(aug.std)),
        "strides": json.dumps({k: int(v) for k, v in model.backbone.strides.items()}),
        "max_stride": str(stride),
        "score_thresh": json.dumps({n: float(model.heads[n].score_thresh)
                                    for n in names if hasattr(model.heads[n], "score_thresh")}),
        "outputs": json.dumps(output_names),
        "precision": "fp32",
        "source": Path(checkpoint).name,
    }
    set_metadata(proto, meta)
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)
    summary = {"path": str(out), "bytes": out.stat().st_size, "tasks": names, "outputs": output_names,
               "imgsz": imgsz, "batch": meta["batch"], "opset": opset}
    if check:
        summary["max_abs_diff"] = check_parity(out, graph, images, sizes, float(conf), ref)
    return summary


def set_metadata(proto, meta: dict) -> None:
    """Write ``meta`` into ``proto.metadata_props`` under the ``visionmtl.`` prefix (replacing old keys)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(META)]
    del proto.metadata_props[:]
    for k, v in keep + [(META + k, str(v)) for k, v in meta.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def check_parity(path, graph: InferenceGraph, images: torch.Tensor, sizes: torch.Tensor, conf: float, ref) -> dict:
    """Max |onnxruntime - PyTorch| per graph output on one batch.

    Row outputs (detections, instances) are compared row for row after pairing each image's rows
    (:func:`pair_rows`): two detections whose scores differ by less than fp32 noise may come
    out in either order. A different row count per image counts as ``inf``."""
    from .onnx_model import OnnxModel

    outs = OnnxModel(path).run_raw(images.numpy(), sizes.numpy(), conf)
    refs = {name: r.numpy() for name, r in zip(graph.output_names, ref)}
    diffs: dict[str, float] = {}
    tasks = list(dict.fromkeys(n.split(".", 1)[0] for n in refs))
    for task in tasks:
        names = [n for n in refs if n.startswith(task + ".")]
        a, r = {n: outs[n] for n in names}, {n: refs[n] for n in names}
        if f"{task}.batch" in r:
            order = pair_rows(r, a, f"{task}.batch", len(images))
            if order is None:
                diffs.update({n: float("inf") for n in names})
                continue
            a = {n: v[order] for n, v in a.items()}
        for n in names:
            x, y = a[n].astype(np.float64), r[n].astype(np.float64)
            diffs[n] = float("inf") if x.shape != y.shape else (float(np.abs(x - y).max()) if x.size else 0.0)
    return diffs


def pair_rows(ref: dict, out: dict, batch_key: str, n_images: int) -> Optional[np.ndarray]:
    """Indices into ``out``'s rows giving ``ref``'s row order: per image, each reference row takes
    the free row of the same label (when there are labels) closest in every row output; None when
    an image has a different number of rows."""
    rb, ob = ref[batch_key], out[batch_key]
    if rb.shape != ob.shape:
        return None
    order = np.zeros(len(rb), np.int64)
    keys = [k for k in ref if k != batch_key and not k.endswith(".labels")]
    labels = next((k for k in ref if k.endswith(".labels")), None)
    for b in range(n_images):
        ri, oi = np.flatnonzero(rb == b), np.flatnonzero(ob == b)
        if len(ri) != len(oi):
            return None
        cost = np.zeros((len(ri), len(oi)))
        for k in keys:
            x, y = ref[k][ri].reshape(len(ri), -1), out[k][oi].reshape(len(oi), -1)
            cost = np.maximum(cost, np.abs(x[:, None, :] - y[None, :, :]).max(-1, initial=0))
        if labels:
            cost[ref[labels][ri][:, None] != out[labels][oi][None, :]] = np.inf
        free = np.ones(len(oi), bool)
        for i in range(len(ri)):
            j = int(np.argmin(np.where(free, cost[i], np.inf)))
            free[j] = False
            order[ri[i]] = oi[j]
    return order


_QUANT_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Relu", "MaxPool"]
_SELECT_OPS = {"TopK", "NonMaxSuppression", "NonZero", "Gather", "GatherND", "GatherElements", "RoiAlign"}


def decoding_nodes(graph) -> list[str]:
    """Names of the nodes that decode rather than compute features: those from which no
    convolution or matrix product is reachable without passing a selection (top-k, NMS, gather,
    RoIAlign). Quantizing them would put box coordinates and scores on an 8-bit grid."""
    import sys

    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    memo: dict[int, bool] = {}
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * len(graph.node) + 1000))

    def feeds_conv(n) -> bool:
        key = id(n)
        if key not in memo:
            memo[key] = False
            memo[key] = n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") or (
                n.op_type not in _SELECT_OPS and any(feeds_conv(c) for o in n.output for c in consumers.get(o, [])))
        return memo[key]

    return [n.name for n in graph.node if not feeds_conv(n)]


def quantize_int8(fp32: Union[str, os.PathLike], out: Union[str, os.PathLike], calib_images: Sequence[np.ndarray],
                  per_channel: bool = True) -> dict:
    """Static INT8 QDQ quantization of an exported fp32 file, calibrated on RGB uint8 images
    (each resized and padded as the predictor does). Returns a summary.

    uint8 activations (asymmetric) and per-channel int8 weights (U8S8, the x86 format with
    VNNI kernels: every convolution becomes a ``QLinearConv``; int8 activations left 37 of 51
    convolutions of the demo model in fp32 behind dequantized weights, slower than fp32),
    MinMax calibration. Convolutions, matrix products, residual additions, ReLU and max-pooling
    are quantized; :func:`decoding_nodes` (scores, boxes, NMS) stay fp32.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    from .predictor import Predictor

    pred = Predictor.from_onnx(fp32, conf=0.05)
    src = pred.onnx
    if src.precision != "fp32":
        raise ConfigError(f"{fp32}: already quantized ({src.precision})")
    feeds = []
    for img in calib_images:
        pb = pred.prepare([img])
        feeds += [f for f, _ in src.feeds(pb.images.numpy(), pb.input_sizes, pred.conf)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pre = out.with_name(out.name + ".pre.onnx")
    tmp = out.with_name(out.name + ".tmp")
    try:
        with _quiet():
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            excluded = decoding_nodes(onnx.load(str(pre)).graph)
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=_QUANT_OPS, nodes_to_exclude=excluded,
                            calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(tmp))
        set_metadata(proto, {**src.meta, "precision": "int8", "calibration_images": str(len(feeds))})
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "bytes": out.stat().st_size, "calibration_images": len(feeds),
            "decoding_nodes_fp32": len(excluded)}


def calibration_images(cfg, n: int, split: str = "train") -> list[np.ndarray]:
    """``n`` RGB images spread evenly over a config's ``split`` datasets (for INT8 calibration)."""
    from ..data.dataset import build_datasets

    datasets = build_datasets(cfg, split)
    total = sum(len(d.adapter) for d in datasets)
    if n < 1 or total == 0:
        raise ConfigError(f"--calib-images must be at least 1 and the {split} data non-empty (got {n}, {total} images)")
    picks = np.linspace(0, total - 1, min(n, total)).round().astype(int)
    images, offset, di = [], 0, 0
    for k in picks:
        while k >= offset + len(datasets[di].adapter):
            offset += len(datasets[di].adapter)
            di += 1
        images.append(datasets[di].adapter.load(int(k - offset))[0])
    return images
