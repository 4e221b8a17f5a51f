"""Do two predictors answer the same? (an exported model against its checkpoint)

:func:`compare_results` matches two predictors' per-image results task by task:

* detections (and instances) as sets: each detection of ``a`` must have one of ``b`` with the same
  label, every box coordinate within ``box_tol`` px and the score within ``score_tol`` (two
  detections whose scores differ by less than fp32 noise may swap places, so order is not
  compared); instance masks of matched detections must be identical pixel for pixel, up to
  ``mask_tol`` of the pixels (a probability within fp32 noise of the 0.5 threshold);
* segmentation label maps identical;
* classification scores within ``score_tol`` and the same labels;
* other values within ``score_tol``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["compare_results"]


def _match(a: Mapping, b: Mapping, box_tol: float, score_tol: float) -> list[int]:
    """For each detection of ``a``, the index of its match in ``b`` (-1: none)."""
    used = np.zeros(len(b["scores"]), bool)
    out = []
    for i in range(len(a["scores"])):
        ok = (~used & (b["labels"] == a["labels"][i]) & (np.abs(b["scores"] - a["scores"][i]) <= score_tol)
              & (np.abs(b["boxes"] - a["boxes"][i]).max(1, initial=0) <= box_tol))
        j = int(np.argmax(ok)) if ok.any() else -1
        if j >= 0:
            used[j] = True
        out.append(j)
    return out


def compare_results(a: Sequence[Mapping], b: Sequence[Mapping], box_tol: float = 1e-3, score_tol: float = 1e-4,
                    mask_tol: float = 1e-4) -> dict:
    """Counts of what was compared and what differed, over lists of per-image results."""
    r = {"images": len(a), "boxes": 0, "unmatched_boxes": 0, "max_box_diff": 0.0, "max_score_diff": 0.0,
         "masks": 0, "mask_pixels": 0, "mask_pixels_differing": 0, "seg_pixels": 0, "seg_pixels_differing": 0,
         "cls_differing": 0, "values_max_diff": 0.0}
    for ra, rb in zip(a, b):
        for task, x in ra.items():
            y = rb[task]
            if "boxes" in x:
                r["boxes"] += len(x["boxes"]) + max(0, len(y["boxes"]) - len(x["boxes"]))
                m = _match(x, y, box_tol, score_tol)
                r["unmatched_boxes"] += sum(j < 0 for j in m) + max(0, len(y["boxes"]) - len(x["boxes"]))
                for i, j in enumerate(m):
                    if j < 0:
                        continue
                    r["max_box_diff"] = max(r["max_box_diff"], float(np.abs(x["boxes"][i] - y["boxes"][j]).max()))
                    r["max_score_diff"] = max(r["max_score_diff"], float(abs(x["scores"][i] - y["scores"][j])))
                    if "masks" in x:
                        r["masks"] += 1
                        r["mask_pixels"] += x["masks"][i].size
                        r["mask_pixels_differing"] += int((x["masks"][i] != y["masks"][j]).sum())
            elif "mask" in x:
                r["seg_pixels"] += x["mask"].size
                r["seg_pixels_differing"] += int((x["mask"] != y["mask"]).sum()) if x["mask"].shape == y["mask"].shape \
                    else x["mask"].size
            elif "probs" in x:
                r["max_score_diff"] = max(r["max_score_diff"], float(np.abs(x["probs"] - y["probs"]).max()))
                r["cls_differing"] += int(not np.array_equal(x["labels"], y["labels"]))
            elif "values" in x:
                r["values_max_diff"] = max(r["values_max_diff"], float(np.abs(x["values"] - y["values"]).max()))
    r["same"] = (r["unmatched_boxes"] == 0 and r["seg_pixels_differing"] == 0 and r["cls_differing"] == 0
                 and r["max_score_diff"] <= score_tol and r["values_max_diff"] <= score_tol
                 and r["mask_pixels_differing"] <= mask_tol * max(1, r["mask_pixels"]))
    return r
