"""Drawing: boxes with class names and scores, a mask overlay with a colour legend, image labels.

All functions take and return HxWx3 uint8 RGB arrays and draw with OpenCV.
"""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np


def palette(n: int, seed: int = 3) -> np.ndarray:
    """``n`` distinct RGB colours (uint8 [n,3]); stable for a given ``n``."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 179, rng.uniform(170, 255, n), rng.uniform(190, 255, n)], 1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def _text(img: np.ndarray, text: str, org: tuple[int, int], color, scale: float = 0.45) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    y = max(y, h + base)
    cv2.rectangle(img, (x, y - h - base), (x + w + 2, y + 1), tuple(int(c) for c in color), -1)
    lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    cv2.putText(img, text, (x + 1, y - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0) if lum > 140 else (255, 255, 255), 1, cv2.LINE_AA)


def draw_boxes(img: np.ndarray, boxes, labels, classes: Sequence[str], scores=None, track_ids=None,
               colors: Optional[np.ndarray] = None) -> np.ndarray:
    """Rectangles with ``name score`` (and ``#id`` when tracking) labels."""
    colors = palette(len(classes)) if colors is None else colors
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    thick = max(1, round(max(img.shape[:2]) / 400))
    for i, (b, c) in enumerate(zip(boxes, labels)):
        col = tuple(int(v) for v in colors[c % len(colors)])
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(img, (x1, y1), (x2, y2), col, thick)
        text = classes[c] if c < len(classes) else str(c)
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        if track_ids is not None:
            text = f"#{int(track_ids[i])} " + text
        _text(img, text, (x1, y1 - 2), col)
    return img


def draw_mask(img: np.ndarray, mask, classes: Sequence[str], alpha: float = 0.45, legend: bool = True,
              skip: Sequence[int] = (0,), colors: Optional[np.ndarray] = None) -> np.ndarray:
    """Blend a class-index mask over the image; 255 and ids in ``skip`` (background) stay clear."""
    mask = np.asarray(mask)
    if mask.shape[:2] != img.shape[:2]:
        mask = cv2.resize(mask.astype(np.uint8), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    colors = palette(len(classes), seed=11) if colors is None else colors
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = colors
    show = (mask != 255) & ~np.isin(mask, list(skip))
    color = lut[np.clip(mask, 0, 255).astype(np.uint8)]
    out = img.copy()
    out[show] = (img[show] * (1 - alpha) + color[show] * alpha).astype(np.uint8)
    if legend:
        present = [int(c) for c in np.unique(mask[show])]
        y = out.shape[0] - 4
        for c in reversed(present):
            _text(out, classes[c] if c < len(classes) else str(c), (out.shape[1] - 8 * max(len(classes[c]) if c < len(classes) else 3, 3) - 10, y), lut[c])
            y -= 16
    return out


def draw_labels(img: np.ndarray, names: Sequence[str], probs: Optional[Sequence[float]] = None,
                title: str = "", top_k: int = 5) -> np.ndarray:
    """Write image-level labels (top-k by probability when ``probs`` is given) at the top left."""
    lines = []
    if probs is not None:
        order = np.argsort(-np.asarray(probs))[:top_k]
        lines = [f"{names[i]} {float(probs[i]):.2f}" for i in order]
    else:
        lines = list(names)
    if title:
        lines = [title] + lines
    for k, line in enumerate(lines):
        _text(img, line, (2, 16 + 16 * k), (30, 30, 30))
    return img


def draw_result(img: np.ndarray, result: dict, tasks: dict, score_thresh: float = 0.3, top_k: int = 3) -> np.ndarray:
    """Draw every head's output of one prediction ``{task: {...}}`` over ``img`` (original pixels)."""
    out = img.copy()
    for name, t in tasks.items():
        r = result.get(name)
        if r is None:
            continue
        if t.type == "segmentation":
            out = draw_mask(out, _np(r["mask"]), t.classes)
    for name, t in tasks.items():
        r = result.get(name)
        if r is not None and t.type == "detection":
            keep = _np(r["scores"]) >= score_thresh
            out = draw_boxes(out, _np(r["boxes"])[keep], _np(r["labels"])[keep], t.classes, _np(r["scores"])[keep],
                             _np(r["track_ids"])[keep] if "track_ids" in r else None)
    y_title = []
    for name, t in tasks.items():
        r = result.get(name)
        if r is not None and t.type == "classification":
            y_title.append((name, _np(r["scores"])))
    for k, (name, probs) in enumerate(y_title):
        classes = tasks[name].classes
        order = np.argsort(-probs)[:top_k]
        text = f"{name}: " + ", ".join(f"{classes[i]} {probs[i]:.2f}" for i in order)
        _text(out, text, (2, 16 + 16 * k), (30, 30, 30))
    return out


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
