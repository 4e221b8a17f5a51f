"""Masks as COCO run-length encoding (pycocotools), for JSON records and COCO results."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["mask_to_rle", "rle_to_mask"]


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
