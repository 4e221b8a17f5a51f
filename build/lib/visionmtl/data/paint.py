"""Semantic masks from instance polygons: pycocotools rasterisation, painted largest first.

Shared by the adapters that read polygons (COCO JSON, YOLO label files), so that the same
polygons give the same mask whatever file they came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["paint_largest_first", "polygons_to_rle"]


def polygons_to_rle(polygons: Sequence[Sequence[float]], h: int, w: int) -> dict:
    """One COCO RLE for the union of ``polygons`` (each ``[x1, y1, x2, y2, ...]`` in pixels, at
    least 3 points) on an ``h`` x ``w`` image, rasterised by pycocotools as COCO does."""
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], h, w)
    return rles[0] if len(rles) == 1 else mask_utils.merge(rles)


def paint_largest_first(mask: np.ndarray, rles: list, values: Sequence[int]) -> None:
    """Paint instance ``rles`` into ``mask`` (uint8 ``[h, w]``, in place) with ``values``.

    Instances are painted in order of decreasing pixel area (stable for ties), so a smaller
    instance ends up on top of a larger one it overlaps. Each is painted only inside its own
    box: N small copies rather than N full images.
    """
    if not rles:
        return
    h, w = mask.shape
    areas = mask_utils.area(rles)
    order = np.argsort(-areas.astype(np.int64), kind="stable")  # largest first
    decoded = mask_utils.decode(rles)  # (h, w, N) uint8
    boxes = mask_utils.toBbox(rles)  # (N, 4) xywh of each instance's pixels
    for j in order:
        x, y, bw, bh = boxes[j]
        x1, y1 = int(x), int(y)
        x2, y2 = min(int(np.ceil(x + bw)) + 1, w), min(int(np.ceil(y + bh)) + 1, h)
        np.putmask(mask[y1:y2, x1:x2], decoded[y1:y2, x1:x2, j], values[j])
