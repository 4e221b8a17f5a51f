"""An image-folder classification set cut from the shapes dataset: one object per image.

``make_shape_crops(shapes_dir, per_class)`` writes ``shapes_dir/crops/{train,val}/<class>/*.jpg``:
for each split, the first ``per_class`` objects of each class (in annotation order) whose
visible box is at least 16 px on each side, cropped around their box with a 25% margin and resized to
64x64. It is the third, smallest dataset of the alternating-training bias experiment
(``configs/mtl/alternating_bias.yaml``): a multi-class "which shape" task with its own images.
Deterministic: the same shapes data gives the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..files import write_image
from .errors import DataError

__all__ = ["make_shape_crops"]

CROP_SIZE = 64


def _crop(image: np.ndarray, box: list[float], margin: float = 0.25) -> np.ndarray:
    x, y, w, h = box
    cx, cy, side = x + w / 2, y + h / 2, max(w, h) * (1 + 2 * margin)
    H, W = image.shape[:2]
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x1, y1 = int(round(cx + side / 2)), int(round(cy + side / 2))
    pad = max(0, -x0, -y0, x1 - W, y1 - H)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return cv2.resize(image[y0:y1, x0:x1], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)


def make_shape_crops(shapes_dir: str | Path, per_class: int, splits: tuple[str, ...] = ("train", "val"),
                     out_dir: str | Path | None = None) -> dict[str, dict[str, int]]:
    """Write the crops; returns ``{split: {class: images written}}``."""
    root = Path(shapes_dir)
    out = Path(out_dir) if out_dir else root / "crops"
    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        ann_file = root / split / "annotations.json"
        if not ann_file.is_file():
            raise DataError(str(ann_file), "shapes annotations not found; generate the dataset first")
        coco = json.loads(ann_file.read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        files = {im["id"]: im["file_name"] for im in coco["images"]}
        done = {n: 0 for n in names.values()}
        for d in names.values():
            (out / split / d).mkdir(parents=True, exist_ok=True)
        cache: dict[int, np.ndarray] = {}
        for a in coco["annotations"]:
            name = names[a["category_id"]]
            x, y, w, h = a["bbox"]
            if done[name] >= per_class or min(w, h) < 16:
                continue
            img_id = a["image_id"]
            if img_id not in cache:
                cache = {img_id: cv2.imread(str(root / split / "images" / files[img_id]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)}
            target = out / split / name / f"{a['id']:07d}.jpg"
            write_image(target, _crop(cache[img_id], a["bbox"]), rgb=False, params=[cv2.IMWRITE_JPEG_QUALITY, 95])
            done[name] += 1
        counts[split] = done
    return counts
