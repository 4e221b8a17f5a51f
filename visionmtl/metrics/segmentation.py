"""Semantic segmentation metrics from a streaming confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .common import dist_active

__all__ = ["SegmentationEvaluator"]


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


class SegmentationEvaluator:
    """Streaming semantic-segmentation evaluator.

    Args:
        classes: class names; index = class id in the masks.
        ignore_index: ground-truth value of pixels that are not scored.

    The confusion matrix ``[C, C]`` (rows = ground truth, columns = prediction, int64) is
    accumulated with ``torch.bincount`` on the device of the masks passed to :meth:`update`.

    ``compute()`` returns ``{"mIoU", "pixel_acc", "mean_acc", "per_class": {"IoU": {...},
    "acc": {...}}}``. A class's IoU is ``None`` when it appears neither in GT nor in the
    predictions (union 0); its accuracy (recall) is ``None`` when it has no GT pixels. Such
    classes are excluded from ``mIoU`` / ``mean_acc``. With nothing counted every value is
    ``None``.

    Distributed: :meth:`sync` sums the matrix over ranks with ``all_reduce`` (moved to the
    current CUDA device for the NCCL backend), so every rank can ``compute()`` the global
    result. Call ``sync`` once per evaluation round on all ranks.
    """

    def __init__(self, classes: Sequence[str], ignore_index: int = 255):
        self.classes = list(classes)
        if not self.classes:
            raise ValueError("classes must not be empty")
        self.ignore_index = int(ignore_index)
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def reset(self) -> None:
        self._matrix: torch.Tensor | None = None

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """The ``[C, C]`` int64 matrix, rows = ground truth, columns = prediction."""
        if self._matrix is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._matrix

    @staticmethod
    def _masks(x: Any, key: str) -> list[torch.Tensor | None]:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            t = _as_tensor(x)
            if t.ndim == 2:
                return [t]
            if t.ndim == 3:
                return list(t.unbind(0))
            raise ValueError(f"masks must be [H, W] or [B, H, W], got shape {tuple(t.shape)}")
        out: list[torch.Tensor | None] = []
        for m in x:
            if isinstance(m, Mapping):
                m = m.get(key)
            out.append(None if m is None else _as_tensor(m))
        return out

    def update(self, pred_masks: Any, gt_masks: Any) -> None:
        """Add predicted and ground-truth class masks.

        Args:
            pred_masks: ``[B, H, W]`` / ``[H, W]`` tensor or array, or a list of ``[H, W]``
                masks or of prediction dicts holding ``mask``.
            gt_masks: same forms (target dicts hold ``mask``). A target dict without ``mask``
                means the image is not labelled for segmentation; it is skipped.

        Raises:
            ValueError: if a predicted mask and its ground truth differ in shape, or class ids
                are out of range.
        """
        preds = self._masks(pred_masks, "mask")
        gts = self._masks(gt_masks, "mask")
        if len(preds) != len(gts):
            raise ValueError(f"got {len(preds)} predicted masks but {len(gts)} ground-truth masks")
        c = self.num_classes
        for pred, gt in zip(preds, gts):
            if gt is None:
                continue
            if pred is None:
                raise ValueError("a ground-truth mask has no predicted mask")
            if pred.shape != gt.shape:
                raise ValueError(f"predicted mask shape {tuple(pred.shape)} does not match "
                                 f"ground-truth mask shape {tuple(gt.shape)}")
            if self._matrix is None:
                self._matrix = torch.zeros(c * c, dtype=torch.int64, device=gt.device).view(c, c)
            device = self._matrix.device
            gt = gt.to(device=device, dtype=torch.int64).reshape(-1)
            pred = pred.to(device=device, dtype=torch.int64).reshape(-1)
            valid = gt != self.ignore_index
            gt, pred = gt[valid], pred[valid]
            if gt.numel() == 0:
                continue
            lo, hi = torch.stack([torch.minimum(gt.min(), pred.min()),
                                  torch.maximum(gt.max(), pred.max())]).tolist()
            if lo < 0 or hi >= c:
                raise ValueError(f"mask values must be in [0, {c}) or {self.ignore_index} (ignore); "
                                 f"found range [{lo}, {hi}]")
            self._matrix += torch.bincount(gt * c + pred, minlength=c * c).view(c, c)

    def sync(self) -> None:
        """Sum the confusion matrix over ranks (no-op without torch.distributed)."""
        if not dist_active():
            return
        mat = self.confusion_matrix.clone()
        home = mat.device
        if dist.get_backend() == "nccl" and mat.device.type != "cuda":
            mat = mat.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(mat, op=dist.ReduceOp.SUM)
        self._matrix = mat.to(home)

    def plot(self, folder, name: str) -> list:
        """``<name>_confusion_matrix.png``: pixels of each ground-truth class by predicted class."""
        from pathlib import Path

        from .plots import plot_confusion

        return [plot_confusion(self.confusion_matrix.cpu().numpy(), self.classes,
                               Path(folder) / f"{name}_confusion_matrix.png", name, unit="pixels")]

    def compute(self) -> dict:
        """Metrics from the accumulated confusion matrix (see class docstring)."""
        m = self.confusion_matrix.detach().cpu().to(torch.float64).numpy()
        tp = np.diag(m)
        gt_count = m.sum(axis=1)
        pred_count = m.sum(axis=0)
        union = gt_count + pred_count - tp
        total = m.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt_count > 0, tp / gt_count, np.nan)

        def mean(v: np.ndarray) -> float | None:
            ok = np.isfinite(v)
            return float(v[ok].mean()) if ok.any() else None

        def opt(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        return {
            "mIoU": mean(iou),
            "pixel_acc": float(tp.sum() / total) if total > 0 else None,
            "mean_acc": mean(acc),
            "per_class": {
                "IoU": {n: opt(v) for n, v in zip(self.classes, iou)},
                "acc": {n: opt(v) for n, v in zip(self.classes, acc)},
            },
        }
