"""COCO instance-mask metrics (``iouType="segm"``) backed by pycocotools.

:class:`CocoSegmEvaluator` is :class:`~visionmtl.metrics.detection.CocoDetectionEvaluator` with a
COCO RLE beside every box: ground truth and predictions carry ``rles`` (one pycocotools RLE dict
per box, in the same original pixels), the COCO objects get ``segmentation`` entries and COCOeval
matches masks instead of boxes. Crowd regions (``iscrowd``) are RLE too and are handled as the
official protocol does (a detection on a crowd region is ignored, not a false positive). Image
ids, DDP gathering, the stat keys and per-class AP are the box evaluator's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .detection import CocoDetectionEvaluator

__all__ = ["CocoSegmEvaluator", "encode_masks"]


def encode_masks(masks: Any) -> list[dict]:
    """COCO RLEs (``counts`` bytes) of binary masks ``[N, H, W]`` (numpy or torch)."""
    if hasattr(masks, "detach"):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {tuple(masks.shape)}")
    if len(masks) == 0:
        return []
    return list(mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))))


def _check_rles(rles: Sequence, n: int, what: str) -> list:
    rles = list(rles)
    if len(rles) != n:
        raise ValueError(f"{what} has {len(rles)} masks but there are {n} boxes")
    return rles


def _areas(rles: Sequence) -> np.ndarray:
    rles = list(rles)
    return mask_utils.area(rles).astype(np.float64) if rles else np.zeros(0)


class CocoSegmEvaluator(CocoDetectionEvaluator):
    """Streaming COCO segm evaluator.

    ``update(preds, targets, image_ids=None)`` takes what the box evaluator takes, plus ``rles``
    in both: predictions ``{"boxes", "scores", "labels", "rles"}`` and targets ``{"boxes",
    "box_labels", "rles", optional "iscrowd", "areas"}``, one RLE per box (pycocotools dicts,
    ``size`` = the image's ``[h, w]``). A GT area defaults to its mask's pixel count, as COCO's
    annotation ``area`` of a segmentation is. ``compute()`` returns the same keys as the box
    evaluator, scored on masks.
    """

    iou_type = "segm"

    def update(self, preds: Sequence[Mapping], targets: Sequence[Mapping],
               image_ids: Sequence[Any] | None = None) -> None:
        labelled = [(p, t) for p, t in zip(preds, targets) if "boxes" in t]
        extra = []
        for p, t in labelled:
            gt = _check_rles(t.get("rles", ()), len(t["boxes"]), "target rles")
            dt = _check_rles(p.get("rles", ()), len(p.get("boxes", ())), "predicted rles")
            extra.append((gt, dt))
        targets = [dict(t, areas=_areas(t["rles"])) if "boxes" in t and "areas" not in t else t for t in targets]
        n0 = len(self._records)
        super().update(preds, targets, image_ids)
        for r, (gt, dt) in zip(self._records[n0:], extra):
            r["gt_rles"], r["dt_rles"] = gt, dt

    def coco_gt_dataset(self) -> dict:
        d = super().coco_gt_dataset()
        rles = [rle for r in self._records for rle in r["gt_rles"]]
        for a, rle in zip(d["annotations"], rles):
            a["segmentation"] = rle
        images = {r["image_id"]: r["gt_rles"] + r["dt_rles"] for r in self._records}
        for im in d["images"]:  # COCOeval's segm path needs each image's size
            sizes = [x["size"] for x in images[im["id"]]]
            if sizes:
                im["height"], im["width"] = int(sizes[0][0]), int(sizes[0][1])
        return d

    def results_json(self) -> list[dict]:
        out = super().results_json()
        rles = [rle for r in self._records for rle in r["dt_rles"]]
        for a, rle in zip(out, rles):
            a["segmentation"] = rle
        return out

    def _coco_dt(self, gt_dataset: dict):
        coco = super()._coco_dt(gt_dataset)
        for a in coco.dataset["annotations"]:
            a["area"] = float(mask_utils.area(a["segmentation"]))
        return coco
