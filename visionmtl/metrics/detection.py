"""COCO-style box detection metrics backed by pycocotools.

Predictions and ground truth are accumulated per image, the ground-truth COCO dataset is built
in memory at :meth:`CocoDetectionEvaluator.compute` time and evaluated with ``COCOeval``
(``iouType="bbox"``). Boxes are ``xyxy`` in original-image pixels on input and converted to
COCO ``xywh``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .common import dist_active, to_numpy

__all__ = ["CocoDetectionEvaluator"]

_STAT_KEYS = ("mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l")


def _plain_id(x: Any) -> Hashable:
    """Turn tensor / numpy scalars into plain Python values usable as COCO image ids."""
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, np.generic):
        x = x.item()
    return x


def _xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    out = b.copy()
    out[:, 2] = b[:, 2] - b[:, 0]
    out[:, 3] = b[:, 3] - b[:, 1]
    return out


class CocoDetectionEvaluator:
    """Streaming COCO bbox evaluator.

    Args:
        classes: class names; index = contiguous 0-based class id.
        cat_ids: optional list mapping contiguous id -> original dataset category id (for
            writing results in the dataset's own ids). Defaults to ``contiguous id + 1``.

    ``update(preds, targets, image_ids=None)`` takes per-image prediction dicts
    (``boxes`` [N,4] xyxy, ``scores`` [N], ``labels`` [N]) and target dicts (``boxes`` [M,4]
    xyxy, ``box_labels`` [M], optional ``iscrowd`` [M], optional ``areas`` [M]) in the same pixel
    coordinates. A target without ``boxes`` is not labelled for detection and the image is
    skipped. An image with ``boxes`` of shape ``[0, 4]`` is a labelled image without objects: its
    predictions are false positives. ``areas`` are the GT annotations' COCO ``area`` (for COCO
    the segmentation's pixel area), which decides the small / medium / large ranges of
    ``mAP_s``/``mAP_m``/``mAP_l``; without them a GT's area is its box area (``w * h``).

    ``compute()`` returns ``{"mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l", "AR100",
    "per_class": {"AP": {name: AP@[.5:.95]}, "AP50": {name: AP@.5}}}``. A value that COCO leaves
    undefined (no GT in that class or area range, or no images at all) is ``None``. With GT but
    no predictions the scores are 0.0.

    Image ids: pass ``image_ids`` (ints, e.g. the dataset's COCO image ids) to get results in
    those ids; otherwise sequential ids are assigned. Mixing the two is an error, and so is
    passing the same id twice on one rank.

    Distributed: :meth:`sync` gathers every rank's per-image records with
    ``all_gather_object``; afterwards every rank holds all images (explicit ids duplicated
    across ranks, e.g. by ``DistributedSampler`` padding, are kept once; automatic ids are
    renumbered) and ``compute()``, which does no communication, returns the same result on
    every rank. Calling ``compute()`` only on rank 0 is fine. Call ``sync`` once per
    evaluation round on all ranks.
    """

    iou_type = "bbox"  # COCOeval's iouType; metrics/instance.py's subclass scores "segm"

    def __init__(self, classes: Sequence[str], cat_ids: Sequence[int] | None = None):
        self.classes = list(classes)
        if not self.classes:
            raise ValueError("classes must not be empty")
        if cat_ids is None:
            cat_ids = list(range(1, len(self.classes) + 1))
        cat_ids = [int(c) for c in cat_ids]
        if len(cat_ids) != len(self.classes):
            raise ValueError(f"cat_ids has {len(cat_ids)} entries but there are {len(self.classes)} classes")
        if len(set(cat_ids)) != len(cat_ids):
            raise ValueError(f"cat_ids must be unique, got {cat_ids}")
        self.cat_ids = cat_ids
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def reset(self) -> None:
        self._records: list[dict] = []
        self._seen: set = set()
        self._auto: bool | None = None  # True: sequential ids, False: user-supplied ids

    # ------------------------------------------------------------------ update
    def _labels(self, x: Any, what: str, n: int) -> np.ndarray:
        lab = to_numpy(x).astype(np.int64).reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"{what} has {lab.shape[0]} entries but there are {n} boxes")
        if lab.size and (lab.min() < 0 or lab.max() >= self.num_classes):
            raise ValueError(f"{what} {sorted(set(lab.tolist()))} out of range [0, {self.num_classes})")
        return lab

    @staticmethod
    def _boxes(x: Any, what: str) -> np.ndarray:
        b = to_numpy(x).astype(np.float64)
        if b.size == 0:
            return np.zeros((0, 4))
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"{what} must have shape [N, 4], got {tuple(b.shape)}")
        return b

    def update(self, preds: Sequence[Mapping], targets: Sequence[Mapping],
               image_ids: Sequence[Any] | None = None) -> None:
        """Add one batch of per-image predictions and targets (see class docstring)."""
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions but {len(targets)} targets")
        if image_ids is not None and len(image_ids) != len(targets):
            raise ValueError(f"got {len(image_ids)} image_ids but {len(targets)} targets")
        auto = image_ids is None
        if self._auto is not None and self._auto != auto:
            raise ValueError("pass image_ids on every update or on none of them")
        for i, (p, t) in enumerate(zip(preds, targets)):
            if "boxes" not in t:
                continue  # not labelled for detection
            gt_boxes = self._boxes(t["boxes"], "target boxes")
            if "box_labels" not in t:
                raise ValueError("detection targets need 'box_labels' next to 'boxes'")
            gt_labels = self._labels(t["box_labels"], "target box_labels", len(gt_boxes))
            if "iscrowd" in t and t["iscrowd"] is not None:
                crowd = to_numpy(t["iscrowd"]).astype(np.int64).reshape(-1)
                if crowd.shape[0] != len(gt_boxes):
                    raise ValueError(f"iscrowd has {crowd.shape[0]} entries but there are {len(gt_boxes)} boxes")
            else:
                crowd = np.zeros(len(gt_boxes), dtype=np.int64)
            if "areas" in t and t["areas"] is not None:
                areas = to_numpy(t["areas"]).astype(np.float64).reshape(-1)
                if areas.shape[0] != len(gt_boxes):
                    raise ValueError(f"areas has {areas.shape[0]} entries but there are {len(gt_boxes)} boxes")
                if not np.all(np.isfinite(areas)) or np.any(areas < 0):
                    raise ValueError("areas must be finite and >= 0")
            else:
                areas = None
            dt_boxes = self._boxes(p.get("boxes", np.zeros((0, 4))), "predicted boxes")
            dt_scores = to_numpy(p.get("scores", np.zeros(0))).astype(np.float64).reshape(-1)
            if dt_scores.shape[0] != len(dt_boxes):
                raise ValueError(f"predicted scores has {dt_scores.shape[0]} entries but there are {len(dt_boxes)} boxes")
            dt_labels = self._labels(p.get("labels", np.zeros(0)), "predicted labels", len(dt_boxes))

            if auto:
                img_id = len(self._records) + 1
            else:
                img_id = _plain_id(image_ids[i])
                if img_id in self._seen:
                    raise ValueError(f"image id {img_id!r} was already added")
                self._seen.add(img_id)
            self._records.append({
                "image_id": img_id,
                "gt_boxes": gt_boxes, "gt_labels": gt_labels, "iscrowd": crowd, "gt_areas": areas,
                "dt_boxes": dt_boxes, "dt_scores": dt_scores, "dt_labels": dt_labels,
            })
        self._auto = auto

    # ------------------------------------------------------------------ distributed
    def sync(self) -> None:
        """Gather per-image records from all ranks (no-op without torch.distributed)."""
        if not dist_active():
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self._auto, self._records))
        modes = {mode for mode, _ in gathered if mode is not None}
        if len(modes) > 1:
            raise ValueError("some ranks passed image_ids and others did not")
        auto = modes.pop() if modes else None
        records: list[dict] = []
        seen: set = set()
        for _, recs in gathered:
            for r in recs:
                if auto:
                    r = dict(r, image_id=len(records) + 1)
                elif r["image_id"] in seen:
                    continue
                seen.add(r["image_id"])
                records.append(r)
        self._records = records
        self._seen = set() if auto else seen
        self._auto = auto

    # ------------------------------------------------------------------ COCO objects
    def _categories(self) -> list[dict]:
        return [{"id": cid, "name": name} for cid, name in zip(self.cat_ids, self.classes)]

    def coco_gt_dataset(self) -> dict:
        """The accumulated ground truth as a COCO-format dataset dict."""
        images, anns = [], []
        for r in self._records:
            images.append({"id": r["image_id"]})
            xywh = _xyxy_to_xywh(r["gt_boxes"])
            areas = r.get("gt_areas")
            if areas is None:  # no annotation areas given: box areas
                areas = xywh[:, 2] * xywh[:, 3]
            for b, lab, crowd, area in zip(xywh, r["gt_labels"], r["iscrowd"], areas):
                anns.append({
                    "id": len(anns) + 1,
                    "image_id": r["image_id"],
                    "category_id": self.cat_ids[int(lab)],
                    "bbox": [float(v) for v in b],
                    "area": float(area),
                    "iscrowd": int(crowd),
                })
        return {"images": images, "annotations": anns, "categories": self._categories()}

    def coco_gt(self):
        """The accumulated ground truth as a ``pycocotools.coco.COCO`` object."""
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.coco_gt_dataset()
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def results_json(self) -> list[dict]:
        """Accumulated predictions as a COCO results list
        (``image_id``, ``category_id``, ``bbox`` xywh, ``score``), ids as in :meth:`coco_gt`."""
        out = []
        for r in self._records:
            xywh = _xyxy_to_xywh(r["dt_boxes"])
            for b, s, lab in zip(xywh, r["dt_scores"], r["dt_labels"]):
                out.append({
                    "image_id": r["image_id"],
                    "category_id": self.cat_ids[int(lab)],
                    "bbox": [float(v) for v in b],
                    "score": float(s),
                })
        return out

    def _coco_dt(self, gt_dataset: dict):
        # Built directly rather than with COCO.loadRes, which cannot take an empty list.
        from pycocotools.coco import COCO

        anns = []
        for a in self.results_json():
            w, h = a["bbox"][2], a["bbox"][3]
            anns.append(dict(a, id=len(anns) + 1, area=w * h, iscrowd=0))
        coco = COCO()
        coco.dataset = {"images": list(gt_dataset["images"]), "annotations": anns,
                        "categories": list(gt_dataset["categories"])}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    # ------------------------------------------------------------------ compute
    def _empty_result(self) -> dict:
        out: dict[str, Any] = {k: None for k in _STAT_KEYS}
        out["AR100"] = None
        out["per_class"] = {"AP": {n: None for n in self.classes},
                            "AP50": {n: None for n in self.classes}}
        return out

    def plot(self, folder, name: str) -> list:
        """``<name>_pr_curve.png``: precision-recall at IoU 0.5 per class (after :meth:`compute`)."""
        from .plots import plot_pr_curves

        pr = getattr(self, "_pr50", None)
        if pr is None:
            return []
        return [plot_pr_curves(pr[0], pr[1], self.classes, Path(folder) / f"{name}_pr_curve.png",
                               f"{name} ({self.iou_type})")]

    def compute(self) -> dict:
        """Run COCOeval on everything accumulated so far (see class docstring)."""
        if not self._records:
            return self._empty_result()
        from pycocotools.cocoeval import COCOeval

        gt_dataset = self.coco_gt_dataset()
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = self.coco_gt()
            coco_dt = self._coco_dt(gt_dataset)
            ev = COCOeval(coco_gt, coco_dt, iouType=self.iou_type)
            ev.params.imgIds = [r["image_id"] for r in self._records]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()

        def clean(v: float) -> float | None:
            return None if v < 0 else float(v)

        stats = ev.stats
        out: dict[str, Any] = {k: clean(stats[i]) for i, k in enumerate(_STAT_KEYS)}
        out["AR100"] = clean(stats[8])

        p = ev.params
        precision = ev.eval["precision"]  # [T, R, K, A, M]
        a_all = p.areaRngLbl.index("all")
        m_100 = p.maxDets.index(100) if 100 in p.maxDets else len(p.maxDets) - 1
        t_50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
        k_of = {cid: k for k, cid in enumerate(p.catIds)}
        # the PR curves at IoU 0.5, class order of self.classes (plot)
        self._pr50 = (np.stack([precision[t_50, :, k_of[c], a_all, m_100] for c in self.cat_ids], 1),
                      np.asarray(p.recThrs))
        per_ap, per_ap50 = {}, {}
        for name, cid in zip(self.classes, self.cat_ids):
            k = k_of[cid]
            pr = precision[:, :, k, a_all, m_100]
            valid = pr > -1
            per_ap[name] = float(pr[valid].mean()) if valid.any() else None
            pr50 = pr[t_50]
            valid50 = pr50 > -1
            per_ap50[name] = float(pr50[valid50].mean()) if valid50.any() else None
        out["per_class"] = {"AP": per_ap, "AP50": per_ap50}
        return out
