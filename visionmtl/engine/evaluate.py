"""Run a model over a loader and compute every task's metrics.

Detection is scored by pycocotools in original image pixels (predicted and ground-truth boxes
are both scaled back from the network input); segmentation by a confusion matrix at the original
resolution (logits resized back as inference does, against the untouched mask, or the
transformed one without its padded border when the input was not resized); classification by
AP / top-1. Only the images that
carry a task's label count for that task. Metrics are reduced across DDP ranks.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..metrics.classification import ClassificationEvaluator
from ..metrics.detection import CocoDetectionEvaluator
from ..metrics.segmentation import SegmentationEvaluator
from ..models.heads.common import rescale_boxes
from ..models.tta import predict_flip


def build_evaluators(tasks: dict) -> dict:
    ev = {}
    for name, t in tasks.items():
        if t.type == "classification":
            ev[name] = ClassificationEvaluator(t.classes, multilabel=t.multilabel)
        elif t.type == "detection":
            ev[name] = CocoDetectionEvaluator(t.classes)
        else:
            ev[name] = SegmentationEvaluator(t.classes, ignore_index=255)
    return ev


def main_metric(task_type: str, multilabel: bool = True) -> str:
    return {"classification": "mAP" if multilabel else "top1", "detection": "mAP", "segmentation": "mIoU"}[task_type]


@torch.inference_mode()
def evaluate(model, loader, tasks: dict, device, amp_dtype=None, channels_last: bool = True,
             max_batches: int = 0, flip: bool = False) -> dict:
    """Return ``{task: metrics}`` with fixed keys (cls ``mAP``/``top1``, det ``mAP``/``mAP50``, seg ``mIoU``).

    ``flip``: merge each batch's predictions with its mirrored copy's (:mod:`visionmtl.models.tta`).
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
            if not idx:
                continue
            p = [preds[i][name] for i in idx]
            tg = [batch.targets[i] for i in idx]
            if t.type == "classification":
                scores = torch.stack([x["scores"] for x in p]).float().cpu()
                labels = [torch.as_tensor([tgt["attrs"][t.attr]]) if t.attr else tgt["labels"] for tgt in tg]
                evaluators[name].update(scores, labels)
            elif t.type == "detection":
                metas = [batch.meta[i] for i in idx]
                pd = [{"boxes": x["boxes"].float().cpu(), "scores": x["scores"].float().cpu(),
                       "labels": x["labels"].cpu()} for x in p]
                evaluators[name].update(pd, [detection_gt(tgt, m) for tgt, m in zip(tg, metas)])
            else:
                pm, gm = [], []
                for x, tgt, i in zip(p, tg, idx):
                    h, w = batch.meta[i]["input_size"]
                    # the input was resized: the untouched mask, else the transformed one unpadded
                    pm.append(x["mask"].cpu())
                    gm.append((tgt["mask_orig"] if "mask_orig" in tgt else tgt["mask"][:h, :w]).cpu())
                evaluators[name].update(pm, gm)
    results = {}
    for name, ev in evaluators.items():
        ev.sync()
        results[name] = ev.compute()
    if n_bad:
        results["n_bad"] = n_bad
    net.train(was_training)
    return results


def detection_gt(target: dict, meta: dict) -> dict:
    """A target's boxes in original pixels for the COCO evaluator, crowd regions as ``iscrowd``."""
    boxes = rescale_boxes(target["boxes"].float().cpu(), meta["input_size"], meta["orig_size"])
    labels = target["box_labels"].cpu()
    crowd = torch.zeros(len(boxes), dtype=torch.int64)
    if "crowd_boxes" in target:  # already in original pixels (data/dataset.py)
        boxes = torch.cat([boxes, target["crowd_boxes"].float().cpu()])
        labels = torch.cat([labels, target["crowd_labels"].cpu()])
        crowd = torch.cat([crowd, torch.ones(len(target["crowd_boxes"]), dtype=torch.int64)])
    return {"boxes": boxes, "box_labels": labels, "iscrowd": crowd}


def summary_score(results: dict, tasks: dict, key: str = "auto") -> float:
    """The number ``best.pt`` is chosen by: ``task.metric`` or the mean of each task's main metric."""
    if key != "auto":
        task, metric = key.split(".", 1)
        v = results.get(task, {}).get(metric)
        return float(v) if v is not None else float("-inf")
    vals = [results[n].get(main_metric(t.type, t.multilabel)) for n, t in tasks.items() if n in results]
    vals = [float(v) for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else float("-inf")
