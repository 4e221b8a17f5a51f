"""Image-level classification metrics (multi-class and multi-label).

The evaluator follows the common streaming interface used by every evaluator in
:mod:`visionmtl.metrics`::

    ev = ClassificationEvaluator(classes, multilabel=True)
    for batch in loader:
        ev.update(scores, labels)      # scores [B, C] probabilities, labels list of int64 tensors
    ev.sync()                          # no-op unless torch.distributed is initialised
    result = ev.compute()

Average precision is computed exactly as scikit-learn's ``average_precision_score``:
``AP = sum_n (R_n - R_{n-1}) * P_n`` over the distinct score thresholds ``n`` (descending),
with no interpolation. Tied scores form a single threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist

from .common import dist_active, to_numpy

__all__ = ["ClassificationEvaluator", "average_precision"]


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-column average precision, vectorised over columns.

    Args:
        scores: ``[N, C]`` (or ``[N]``) real-valued scores, higher = more confident.
        targets: same shape, truthy where the sample is a positive for that column.

    Returns:
        float64 array ``[C]`` (or a 0-d array for 1-D input); ``nan`` for columns without
        positives.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` where ``n`` runs over distinct thresholds in decreasing
    order. Equivalently, every positive contributes the precision measured at the *end* of its
    tie group, divided by the number of positives; that form is what is computed here.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(targets).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores shape {s.shape} and targets shape {y.shape} differ")
    squeeze = s.ndim == 1
    if squeeze:
        s, y = s[:, None], y[:, None]
    if s.ndim != 2:
        raise ValueError(f"expected 1-D or 2-D scores, got shape {s.shape}")
    n, c = s.shape
    npos = y.sum(axis=0)
    if n == 0:
        ap = np.full(c, np.nan)
        return ap[0] if squeeze else ap
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=0)
    y_sorted = np.take_along_axis(y, order, axis=0)
    tp = np.cumsum(y_sorted, axis=0)
    precision = tp / np.arange(1, n + 1, dtype=np.float64)[:, None]
    # Index of the last element of each tie group, for every position.
    is_end = np.ones((n, c), dtype=bool)
    is_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    rows = np.broadcast_to(np.arange(n)[:, None], (n, c))
    end_idx = np.where(is_end, rows, n)
    group_end = np.minimum.accumulate(end_idx[::-1], axis=0)[::-1]
    prec_at_end = np.take_along_axis(precision, group_end, axis=0)
    total = (prec_at_end * y_sorted).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(npos > 0, total / np.maximum(npos, 1), np.nan)
    return ap[0] if squeeze else ap


def _opt(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


class ClassificationEvaluator:
    """Streaming evaluator for image-level classification.

    Args:
        classes: class names; index = contiguous class id.
        multilabel: ``True`` for multi-label (each image has ``K >= 0`` positive classes),
            ``False`` for multi-class (exactly one class per image).

    ``compute()`` returns

    * multi-label: ``{"mAP": float | None, "per_class": {"AP": {name: float | None}}}``
      (classes without positives are ``None`` and excluded from the mean);
    * multi-class: ``{"top1", "top5" (only if C >= 5), "mAP" (one-vs-rest),
      "per_class": {"acc": {name: ...}, "AP": {name: ...}}}`` where per-class accuracy is
      the top-1 recall of that class (``None`` if the class never occurs).

    With no images seen, every value is ``None``.

    Distributed: :meth:`sync` all-gathers the accumulated scores and labels (in rank order)
    with ``all_gather_object``, after which every rank holds the full set and ``compute()``
    (which does no communication) gives the same answer on every rank; calling it on rank 0
    only is equally valid. Call ``sync`` once per evaluation round, on all ranks. Samples
    duplicated by ``DistributedSampler`` padding are counted twice.
    """

    def __init__(self, classes: Sequence[str], multilabel: bool):
        self.classes = list(classes)
        if not self.classes:
            raise ValueError("classes must not be empty")
        self.multilabel = bool(multilabel)
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []  # multi-label: bool [B, C]; multi-class: int64 [B]

    # ------------------------------------------------------------------ update
    def _scores_array(self, scores: Any) -> np.ndarray:
        if isinstance(scores, (list, tuple)):
            rows = []
            for p in scores:
                if isinstance(p, Mapping):
                    if "probs" not in p:
                        raise ValueError("classification prediction dicts need a 'probs' entry "
                                         f"of shape [C]; got keys {sorted(p)}")
                    p = p["probs"]
                rows.append(to_numpy(p).astype(np.float64).reshape(-1))
            s = np.stack(rows) if rows else np.zeros((0, self.num_classes))
        else:
            s = to_numpy(scores).astype(np.float64)
        if s.ndim != 2 or s.shape[1] != self.num_classes:
            raise ValueError(f"scores must have shape [B, {self.num_classes}], got {tuple(s.shape)}")
        if not np.all(np.isfinite(s)):
            raise ValueError("scores contain NaN or infinite values")
        return s

    def update(self, scores: Any, labels: Sequence[Any]) -> None:
        """Add a batch.

        Args:
            scores: ``[B, C]`` float probabilities (tensor or array), or a list of ``B``
                prediction dicts each holding ``probs`` of shape ``[C]``.
            labels: ``B`` int64 tensors/arrays of class ids (multi-label: ``K >= 0`` ids,
                multi-class: exactly one), or target dicts with a ``labels`` entry. A target
                dict without ``labels`` means the image is not labelled for this task and the
                image is skipped.
        """
        s = self._scores_array(scores)
        if len(labels) != s.shape[0]:
            raise ValueError(f"got {s.shape[0]} score rows but {len(labels)} labels")
        keep: list[int] = []
        tgt: list[Any] = []
        for i, lab in enumerate(labels):
            if isinstance(lab, Mapping):
                if "labels" not in lab:
                    continue
                lab = lab["labels"]
            ids = to_numpy(lab).astype(np.int64).reshape(-1)
            if ids.size and (ids.min() < 0 or ids.max() >= self.num_classes):
                raise ValueError(f"label ids {ids.tolist()} out of range [0, {self.num_classes})")
            if self.multilabel:
                row = np.zeros(self.num_classes, dtype=bool)
                row[ids] = True
                tgt.append(row)
            else:
                if ids.size != 1:
                    raise ValueError(f"multi-class targets need exactly one label per image, got {ids.tolist()}")
                tgt.append(ids[0])
            keep.append(i)
        if not keep:
            return
        self._scores.append(s[keep])
        if self.multilabel:
            self._targets.append(np.stack(tgt))
        else:
            self._targets.append(np.asarray(tgt, dtype=np.int64))

    # ------------------------------------------------------------------ state
    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.num_classes
        if self._scores:
            return np.concatenate(self._scores), np.concatenate(self._targets)
        empty_t = np.zeros((0, c), dtype=bool) if self.multilabel else np.zeros(0, dtype=np.int64)
        return np.zeros((0, c)), empty_t

    def sync(self) -> None:
        """All-gather the accumulated state across ranks (no-op without torch.distributed)."""
        if not dist_active():
            return
        state = self._state()
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        self._scores = [g[0] for g in gathered]
        self._targets = [g[1] for g in gathered]

    def plot(self, folder, name: str) -> list:
        """``<name>_confusion_matrix.png``: true class by top-1 class (multi-class), or a 2x2
        present / absent matrix per class at score 0.5 (multi-label)."""
        from pathlib import Path

        from .plots import plot_binary_confusions, plot_confusion

        scores, targets = self._state()
        path = Path(folder) / f"{name}_confusion_matrix.png"
        if self.multilabel:
            return [plot_binary_confusions(scores, targets, self.classes, path, name)]
        c = self.num_classes
        m = np.zeros((c, c), np.int64)
        if len(scores):
            np.add.at(m, (targets, scores.argmax(1)), 1)
        return [plot_confusion(m, self.classes, path, name)]

    # ------------------------------------------------------------------ compute
    def compute(self) -> dict:
        scores, targets = self._state()
        names = self.classes
        n, c = scores.shape
        if self.multilabel:
            onehot = targets
        else:
            onehot = np.zeros((n, c), dtype=bool)
            onehot[np.arange(n), targets] = True
        ap = average_precision(scores, onehot)
        valid = np.isfinite(ap)
        m_ap = float(ap[valid].mean()) if valid.any() else None
        per_ap = {name: _opt(v) for name, v in zip(names, ap)}
        if self.multilabel:
            return {"mAP": m_ap, "per_class": {"AP": per_ap}}

        out: dict[str, Any] = {}
        if n:
            order = np.argsort(-scores, axis=1, kind="stable")
            hit_rank = np.argmax(order == targets[:, None], axis=1)
            out["top1"] = float((hit_rank < 1).mean())
            if c >= 5:
                out["top5"] = float((hit_rank < 5).mean())
            correct = hit_rank == 0
            count = np.bincount(targets, minlength=c)
            right = np.bincount(targets, weights=correct.astype(np.float64), minlength=c)
            acc = {name: (float(right[k] / count[k]) if count[k] else None)
                   for k, name in enumerate(names)}
        else:
            out["top1"] = None
            if c >= 5:
                out["top5"] = None
            acc = {name: None for name in names}
        out["mAP"] = m_ap
        out["per_class"] = {"acc": acc, "AP": per_ap}
        return out
