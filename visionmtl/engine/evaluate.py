"""Run a model over a loader and compute every task's metrics.

Detection is scored by pycocotools in original image pixels (predictions scaled back from the
network input; ground truth as the annotation gave it, with its ``area`` for mAP_s/m/l, when the
adapter provides it: ``eval_boxes``/``eval_areas``); segmentation by a confusion matrix at the original
resolution (logits resized back as inference does, against the untouched mask, or the
transformed one without its padded border when the input was not resized); classification by
AP / top-1. Only the images that
carry a task's label count for that task. Metrics are reduced across DDP ranks.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Optional

import torch

from ..models.tta import predict_flip
from ..tasks import spec
from ..tasks.detection import detection_gt  # noqa: F401  (older imports)


def build_evaluators(tasks: dict) -> dict:
    return {name: spec(t).evaluator(t) for name, t in tasks.items()}


def main_metric(task) -> str:
    """The task's main metric (its spec's first): cls ``mAP``/``top1``, det ``mAP``, seg ``mIoU``, reg ``MAE``."""
    return spec(task).main_metric(task)


def lower_is_better(task, metric: str) -> bool:
    return bool(spec(task).metrics(task).get(metric, False))


@torch.inference_mode()
def evaluate(model, loader, tasks: dict, device, amp_dtype=None, channels_last: bool = True,
             max_batches: int = 0, flip: bool = False, plots: Optional[str | os.PathLike] = None) -> dict:
    """Return ``{task: metrics}``: each task's spec's evaluator over the images labelled for it
    (cls ``mAP``/``top1``, det ``mAP``/``mAP50``, seg ``mIoU``, reg ``MAE``/``RMSE``).

    ``flip``: merge each batch's predictions with its mirrored copy's (:mod:`visionmtl.models.tta`).
    ``plots``: a folder where each evaluator that can draws its figures (confusion matrices, PR
    curves); their paths are returned under ``"plots"``.
    """
    net = getattr(model, "module", model)
    was_training = net.training
    net.eval()
    evaluators = build_evaluators(tasks)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    ac = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    n_bad = 0
    for bi, batch in enumerate(loader):
        if max_batches and bi >= max_batches:
            break
        n_bad += batch.n_bad
        if len(batch) == 0:
            continue
        images = batch.images.to(device, non_blocking=True, memory_format=mf)
        sizes = [m["input_size"] for m in batch.meta]
        origs = [m["orig_size"] for m in batch.meta]  # predictions come back in original pixels
        if flip:
            def forward(x):
                with ac:
                    return net(x)
            preds = predict_flip(net, images, sizes, forward, origs)
        else:
            with ac:
                raw = net(images)
            preds = net.predict(raw, sizes, origs)
        for name, t in tasks.items():
            idx = [i for i, h in enumerate(batch.has[name].tolist()) if h]
            if idx:
                spec(t).update(evaluators[name], t, [preds[i][name] for i in idx], [batch.targets[i] for i in idx],
                               [batch.meta[i] for i in idx])
    results: dict = {}
    drawn: list[str] = []
    for name, ev in evaluators.items():
        ev.sync()
        results[name] = ev.compute()
        if plots is not None and hasattr(ev, "plot"):
            drawn += [str(p) for p in ev.plot(plots, name)]
    if drawn:
        results["plots"] = drawn
    if n_bad:
        results["n_bad"] = n_bad
    net.train(was_training)
    return results


def summary_score(results: dict, tasks: dict, key: str = "auto") -> float:
    """The number ``best.pt`` is chosen by (higher is better): ``task.metric``, or the mean of each
    task's main metric; a metric where lower is better (regression MAE) counts negated."""
    if key != "auto":
        task, metric = key.split(".", 1)
        v = results.get(task, {}).get(metric)
        if v is None:
            return float("-inf")
        return -float(v) if task in tasks and lower_is_better(tasks[task], metric) else float(v)
    vals = []
    for n, t in tasks.items():
        v = results.get(n, {}).get(main_metric(t)) if n in results else None
        if v is not None:
            vals.append(-float(v) if lower_is_better(t, main_metric(t)) else float(v))
    return sum(vals) / len(vals) if vals else float("-inf")
