"""Horizontal-flip test-time augmentation (``data.eval_flip``).

The batch runs twice, as is and mirrored left-right, and the two predictions are merged the way
MMSegmentation and MMDetection merge flip augmentation:

* classification: the logits of the two passes are averaged;
* segmentation: the class probabilities are averaged, after mirroring the second pass back;
* detection: the boxes of the second pass are mirrored back, the two sets are pooled and
  class-wise NMS (:func:`torchvision.ops.batched_nms`, the head's ``nms_thresh``) keeps at most
  the head's ``max_det``.

Mirroring happens on the padded canvas (width ``W``, a multiple of 32 and so of every output
stride), so a logit map mirrored back lines up cell for cell with the first pass, and a box
``x1, x2`` of the mirrored pass maps to ``W - x2, W - x1``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from .heads.classification import ClassificationHead
from .heads.common import hw_list, rescale_boxes
from .heads.detection import DetectionHead
from .heads.segmentation import SegmentationHead

__all__ = ["merge_flip", "predict_flip"]


def _merge_detections(a: Mapping[str, Tensor], b: Mapping[str, Tensor], width: int, size: tuple[int, int],
                      head: DetectionHead) -> dict[str, Tensor]:
    bx = b["boxes"]
    mirrored = torch.stack([width - bx[:, 2], bx[:, 1], width - bx[:, 0], bx[:, 3]], dim=1)
    boxes = torch.cat([a["boxes"], clip_boxes_to_image(mirrored, size)])
    scores = torch.cat([a["scores"], b["scores"]])
    labels = torch.cat([a["labels"], b["labels"]])
    keep = remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, head.nms_thresh)[: head.max_det]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


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
    return merge_flip(net.heads, raw, raw_m, images.shape[-1], image_sizes, orig_sizes)


def merge_flip(heads: Mapping[str, torch.nn.Module], raw: Mapping, raw_m: Mapping, width: int,
               image_sizes: Sequence | Tensor, orig_sizes: Sequence | Tensor | None = None,
               min_score: float | None = None) -> list[dict[str, dict[str, Tensor]]]:
    """Merge the raw outputs of a batch (``raw``) and of its mirror (``raw_m``) per image.

    ``width`` is the padded canvas width; the tasks are those present in ``raw``. ``min_score``
    is passed to the detection heads (see ``DetectionHead.predict``).
    """
    b = len(image_sizes)
    sizes = hw_list(image_sizes, b)
    origs = hw_list(orig_sizes, b)
    results: list[dict[str, dict[str, Tensor]]] = [{} for _ in range(b)]
    for task, head in heads.items():
        if task not in raw:
            continue
        if isinstance(head, DetectionHead):
            plain = head.predict(raw[task], sizes, min_score=min_score)
            # the mirrored image sits at the right of the canvas: decode over the full width
            mirrored = head.predict(raw_m[task], [(h, width) for h, _ in sizes], min_score=min_score)
            for i in range(b):
                det = _merge_detections(plain[i], mirrored[i], width, sizes[i], head)
                if origs is not None and origs[i] != sizes[i]:
                    det["boxes"] = clip_boxes_to_image(rescale_boxes(det["boxes"], sizes[i], origs[i]), origs[i])
                results[i][task] = det
            continue
        if isinstance(head, SegmentationHead):
            p = raw[task]["logits"].float().softmax(1) + raw_m[task]["logits"].float().flip(-1).softmax(1)
            merged = {"logits": (p / 2).clamp_min(1e-12).log()}
        elif isinstance(head, ClassificationHead):
            merged = {"logits": (raw[task]["logits"].float() + raw_m[task]["logits"].float()) / 2}
        else:
            raise TypeError(f"task '{task}': flip test-time augmentation does not know {type(head).__name__}")
        for i, r in enumerate(head.predict(merged, sizes, origs)):
            results[i][task] = r
    return results
