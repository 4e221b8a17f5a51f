"""Horizontal-flip test-time augmentation (``data.eval_flip``).

The batch runs twice, as is and mirrored left-right, and the two predictions are merged the way
MMSegmentation and MMDetection merge flip augmentation:

* classification: the logits of the two passes are averaged;
* segmentation: the class probabilities are averaged, after mirroring the second pass back;
* detection: the boxes of the second pass are mirrored back, the two sets are pooled and
  class-wise NMS (:func:`torchvision.ops.batched_nms`, the head's ``nms_thresh``) keeps at most
  the head's ``max_det``;
* a task that decodes on another's results (instance masks on the detector's boxes) decodes the
  first pass on the merged results.

Mirroring happens on the padded canvas (width ``W``, a multiple of 32 and so of every output
stride), so a logit map mirrored back lines up cell for cell with the first pass, and a box
``x1, x2`` of the mirrored pass maps to ``W - x2, W - x1``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..tasks import spec
from .heads.common import hw_list
from .multitask import given_results, predict_order

__all__ = ["merge_flip", "predict_flip"]


@torch.no_grad()
def predict_flip(net: torch.nn.Module, images: Tensor, image_sizes: Sequence | Tensor,
                 forward: Callable[[Tensor], Mapping] | None = None,
                 orig_sizes: Sequence | Tensor | None = None) -> list[dict[str, dict[str, Tensor]]]:
    """Predictions of ``net`` merged over ``images`` and their horizontal mirror.

    Args:
        net: a multi-task model (``heads``, ``predict``).
        images: float ``[B, 3, H, W]``, padded bottom/right, the valid region of image ``i``
            being ``image_sizes[i]``.
        image_sizes: ``(h, w)`` per image.
        forward: runs the model (default ``net``), e.g. wrapped in autocast.
        orig_sizes: optional ``(h, w)`` per image in original pixels, as for ``net.predict``.

    Returns:
        The same structure as ``net.predict(raw, image_sizes, orig_sizes)``.
    """
    forward = forward or net
    raw, raw_m = forward(images), forward(images.flip(-1))
    return merge_flip(net.heads, raw, raw_m, images.shape[-1], image_sizes, orig_sizes, types=net.task_types)


def merge_flip(heads: Mapping[str, torch.nn.Module], raw: Mapping, raw_m: Mapping, width: int,
               image_sizes: Sequence | Tensor, orig_sizes: Sequence | Tensor | None = None,
               min_score: float | None = None, types: Mapping[str, str] | None = None
               ) -> list[dict[str, dict[str, Tensor]]]:
    """Merge the raw outputs of a batch (``raw``) and of its mirror (``raw_m``) per image.

    ``width`` is the padded canvas width; the tasks are those present in ``raw``; each task's
    type spec merges its own outputs (``types``: task -> type name, as ``model.task_types``
    records them). ``min_score`` is passed to the detection heads (``DetectionHead.predict``).
    """
    if types is None:
        raise TypeError("merge_flip needs types: task -> type name (model.task_types)")
    b = len(image_sizes)
    sizes = hw_list(image_sizes, b)
    origs = hw_list(orig_sizes, b)
    results: list[dict[str, dict[str, Tensor]]] = [{} for _ in range(b)]
    for task in predict_order(heads, [t for t in heads if t in raw]):
        head, kind = heads[task], spec(types[task])
        given = given_results(head, results)
        if given:  # decodes on another task's merged results, from the first pass
            merged = kind.predict(head, raw[task], sizes, origs, min_score, **given)
        else:
            merged = kind.merge_flip(head, raw[task], raw_m[task], width, sizes, origs, min_score)
        for i, r in enumerate(merged):
            results[i][task] = r
    return results
