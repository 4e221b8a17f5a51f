"""Figures of an evaluation (what ``tools/eval.py`` writes beside metrics.json): confusion
matrices for classification and segmentation, precision-recall curves for detection and
instance masks. Each evaluator's ``plot(folder, name)`` calls one of these on what it holds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["plot_confusion", "plot_binary_confusions", "plot_pr_curves"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (a temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str,
                   unit: str = "images") -> Path:
    """A ``[C, C]`` count matrix (rows = ground truth, columns = prediction) normalised per row:
    each row shows where that class's {unit} went; the diagonal is its recall."""
    plt = _plt()
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    c = len(classes)
    side = min(max(4.0, 0.45 * c + 2.0), 40.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(c), classes, rotation=90 if c > 6 else 0, fontsize=8)
    ax.set_yticks(range(c), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"{title} (row-normalised; {int(m.sum())} {unit})", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_binary_confusions(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str],
                           path: str | os.PathLike, title: str, thresh: float = 0.5) -> Path:
    """Multi-label classification: one 2x2 matrix per class (present / absent against predicted at
    ``thresh``), as sklearn's ``multilabel_confusion_matrix``."""
    plt = _plt()
    pred = np.asarray(scores) >= thresh
    true = np.asarray(targets, dtype=bool)
    c = len(classes)
    cols = min(4, c)
    rows = math.ceil(c / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= c:
            ax.axis("off")
            continue
        m = np.array([[np.sum(~true[:, k] & ~pred[:, k]), np.sum(~true[:, k] & pred[:, k])],
                      [np.sum(true[:, k] & ~pred[:, k]), np.sum(true[:, k] & pred[:, k])]])
        ax.imshow(m, cmap="Blues")
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=9,
                        color="white" if m[i, j] > m.max() / 2 else "black")
        ax.set_xticks([0, 1], ["absent", "present"], fontsize=7)
        ax.set_yticks([0, 1], ["absent", "present"], fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("truth", fontsize=7)
        ax.set_title(classes[k], fontsize=9)
    fig.suptitle(f"{title} (score >= {thresh:g}; {len(true)} images)", fontsize=10)
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_pr_curves(precision: np.ndarray, recall: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
                   title: str) -> Path:
    """COCOeval's interpolated precision at IoU 0.5 (``precision`` ``[R, K]``, -1 where a class has
    no ground truth) against its recall thresholds ``recall`` ``[R]``: one curve per class, the mean
    bold, AP50 in the legend (the largest classes only when there are many)."""
    plt = _plt()
    p = np.asarray(precision, dtype=np.float64)
    valid = (p > -1).all(0)
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    ap = {k: float(p[:, k].mean()) for k in range(p.shape[1]) if valid[k]}
    shown = sorted(ap, key=lambda k: -ap[k])
    legend = len(shown) <= 12
    for k in shown:
        ax.plot(recall, p[:, k], linewidth=1.0, alpha=0.8 if legend else 0.35,
                label=f"{classes[k]} {ap[k]:.3f}" if legend else None)
    if ap:
        mean = p[:, valid].mean(1)
        ax.plot(recall, mean, color="black", linewidth=2.4, label=f"all classes, mAP50 {mean.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"{title}: precision-recall at IoU 0.5", fontsize=10)
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
