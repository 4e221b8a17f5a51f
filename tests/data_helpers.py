"""Tiny on-disk fixtures for data tests: images, masks, COCO JSON, CSV."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def write_image(path: str | Path, h: int = 16, w: int = 20, color=(10, 120, 230)) -> Path:
    """Write a solid-colour RGB image (format from the suffix) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = color[::-1]  # cv2 writes BGR
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write a single-channel uint8 PNG mask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8))
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


def truncate_file(path: str | Path, keep: float = 0.5) -> Path:
    """Cut a file down to a fraction of its bytes (a download that stopped half way)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def square(x: float, y: float, s: float) -> list[float]:
    """A square polygon ``[x1, y1, x2, y2, ...]`` with top-left corner (x, y) and side s."""
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def coco_dict(images, annotations, categories) -> dict:
    """A minimal COCO instances dict.

    ``images``: list of ``(id, file_name, width, height)``;
    ``annotations``: list of dicts with at least ``image_id``, ``category_id``, ``bbox``
    (ids and ``iscrowd`` filled in when missing);
    ``categories``: list of ``(id, name)``.
    """
    anns = []
    for j, a in enumerate(annotations, start=1):
        a = dict(a)
        a.setdefault("id", j)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
        anns.append(a)
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": anns,
        "categories": [{"id": i, "name": n, "supercategory": "thing"} for i, n in categories],
    }


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path
