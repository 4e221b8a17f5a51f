"""Masks as COCO run-length encoding (pycocotools), for JSON records and COCO results, and the exact
COCO ``segmentation`` codec (pixel-outline polygons, else RLE) the generated datasets write."""

from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["mask_to_rle", "rle_to_mask", "mask_to_segmentation", "segmentation_to_mask"]


def mask_to_rle(mask: np.ndarray, classes: Sequence[str], skip: Sequence[int] = ()) -> list[dict]:
    """One COCO RLE per class present in a class-index mask (``counts`` as str)."""
    mask = np.asarray(mask)
    counts = np.bincount(mask.reshape(-1).astype(np.int64), minlength=1)
    fmask = np.asfortranarray(mask)  # comparisons keep the column-major layout pycocotools needs
    out = []
    for c in np.flatnonzero(counts):
        c = int(c)
        if c in skip or c == 255:
            continue
        rle = mask_utils.encode((fmask == c).view(np.uint8))
        out.append({"label": classes[c] if c < len(classes) else str(c), "label_id": c, "area": int(counts[c]),
                    "rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}})
    return out


def rle_to_mask(segments: Sequence[Mapping], size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """Rebuild a class-index mask ``[h, w]`` from :func:`mask_to_rle` segments."""
    mask = np.full(size, fill, np.uint8)
    for s in segments:
        m = mask_utils.decode({"size": list(s["rle"]["size"]), "counts": s["rle"]["counts"].encode("ascii")})
        mask[m.astype(bool)] = s["label_id"]
    return mask


def _rasterise(polygons: list[list[int]], h: int, w: int) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], h, w))
    return mask_utils.decode(rle).astype(bool)


def _edge_polygons(crop: np.ndarray) -> list[np.ndarray] | None:
    """Outer boundaries of ``crop`` (uint8 0/1) as polygons on pixel edges, None if it has holes.

    The mask is traced at twice the resolution and the points snapped to pixel corners, which
    gives the exact pixel outline (pycocotools treats pixel i as [i, i+1)).
    """
    up = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    if np.any(hierarchy[0][:, 3] >= 0):
        return None  # a hole: polygons cannot describe it
    polygons = []
    for c in contours:
        pts = np.floor(c.reshape(-1, 2) / 2.0 + 0.5).astype(np.int32)
        keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)  # drop repeated corners
        pts = pts[keep] if keep.any() else pts[:1]
        polygons.append(pts)
    return polygons


def mask_to_segmentation(mask: np.ndarray) -> list[list[int]] | dict:
    """COCO segmentation that decodes (with pycocotools) to exactly ``mask``.

    Polygons tracing the pixel outline (vertices on pixel corners) where they are exact;
    compressed RLE ``{"size": [h, w], "counts": str}`` for masks with holes or
    shapes polygons cannot reproduce.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys):
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.uint8)
        crop[1:-1, 1:-1] = mask[y0:y1, x0:x1]
        polygons = _edge_polygons(crop)
        if polygons and all(len(p) >= 3 for p in polygons):
            flat = [p.reshape(-1).tolist() for p in polygons]
            # Touching corners and similar corner cases can trace ambiguously: verify.
            if np.array_equal(_rasterise(flat, *crop.shape), crop.astype(bool)):
                offset = np.array([x0 - 1, y0 - 1])
                return [(p + offset).reshape(-1).tolist() for p in polygons]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


def segmentation_to_mask(segmentation: list | dict, h: int, w: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons or RLE) to an HxW bool mask."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((h, w), bool)
        return _rasterise(segmentation, h, w)
    rle = dict(segmentation)
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)
