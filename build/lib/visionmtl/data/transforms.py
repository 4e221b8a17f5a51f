"""albumentations pipelines that keep boxes, box labels and masks in step with the image.

Train: longest side to ``img_size``, random rescale, pad and random crop back to ``img_size``
(or to ``augment.crop_size``),
horizontal flip, brightness/contrast and hue/saturation jitter. Eval: longest side to
``img_size`` (collate pads to a multiple of 32, bottom/right, so predictions map back by one
scale factor); when that resizes a mask, the original one is kept as ``mask_orig`` so
segmentation is scored at the original resolution. Boxes that leave the crop are dropped
together with their labels.

Images stay uint8 here; collate normalises the whole batch in one vectorised step, which costs
a fraction of albumentations' per-image ``Normalize`` (see tools/benchmark_data.py).
"""

from __future__ import annotations

from typing import Optional

import albumentations as A
import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.ops import roi_align

from ..config import AugmentConfig

BBOX_PARAMS = dict(format="pascal_voc", label_fields=["box_labels"], min_area=1.0, min_visibility=0.0, clip=True)
# object centres of counted values travel as keypoints; one that leaves the view is dropped
POINT_PARAMS = dict(format="xy", label_fields=["point_ids"], remove_invisible=True)


def build_transforms(img_size: int, aug: AugmentConfig, train: bool) -> "Transform":
    ops: list = [A.LongestMaxSize(max_size=img_size, interpolation=cv2.INTER_LINEAR)]
    if train:
        lo, hi = aug.scale
        if (lo, hi) != (1.0, 1.0):
            ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), p=1.0))
        if aug.crop:
            fill = tuple(int(round(255 * m)) for m in aug.mean)  # normalises to 0
            size = aug.crop_size or img_size
            ops += [
                A.PadIfNeeded(size, size, position="random", border_mode=cv2.BORDER_CONSTANT,
                              fill=fill, fill_mask=255),
                A.RandomCrop(size, size),
            ]
        if aug.hflip > 0:
            ops.append(A.HorizontalFlip(p=aug.hflip))
        if aug.color_jitter > 0:  # lookup-table based: ~40x cheaper than ColorJitter
            ops.append(A.RandomBrightnessContrast(aug.color_jitter, aug.color_jitter, p=0.8))
        if aug.hue > 0 or aug.saturation > 0:
            ops.append(A.HueSaturationValue(hue_shift_limit=int(round(aug.hue * 180)),
                                            sat_shift_limit=int(round(aug.saturation * 255)), val_shift_limit=0,
                                            p=aug.hsv_p))
    return Transform(A.Compose(ops, bbox_params=A.BboxParams(**BBOX_PARAMS), keypoint_params=A.KeypointParams(**POINT_PARAMS)),
                     keep_orig_mask=not train, train=train)


class Transform:
    """Apply an albumentations pipeline to ``(image, target)`` and return torch tensors.

    Returns ``(image uint8 [3,H,W], target)`` with ``boxes`` float32 [N,4], ``box_labels``
    int64 [N] (albumentations hands labels back as floats), ``mask`` uint8 [H,W] (255 = ignore; heads cast on device), ``labels``
    int64 [K]; keys absent from the input stay absent. With ``keep_orig_mask``, a mask the
    pipeline resized is also returned untouched as ``mask_orig`` uint8 [h0, w0].

    Image labels that follow the instances (``label_boxes`` with ``label_box_ids``, or
    ``label_mask``; data/dataset.py adds them for training) are re-derived from what is left in
    view: ``labels`` becomes the classes of the boxes that survive the crop, or of the pixels
    that do, so a crop that cuts a shape out no longer claims it.

    Values that count objects are re-counted from what is left in view: ``count_points``
    (``dict[str, float32 [N,2]]``, added for training by the regression spec's mapper) gives, per
    value name, the centres of the objects it counts. They go through the pipeline as keypoints;
    an object counts while its centre stays in view (a sliver of a shape cut by the crop does
    not), ``values[name]`` becomes the float number of surviving centres (a new ``values`` dict;
    the name is set even if the input ``values`` lacked it, so pass points only for values the
    image has) and ``points[name]`` their float32 ``[M,2]`` positions in the output image, the
    density supervision of a counting head. Other ``values`` pass through unchanged.

    Instances (``instance_rles`` with ``instance_boxes``/``instance_labels``, added for training
    by the instance spec's mapper) are decoded here and only here, travel as albumentations
    ``masks`` with their boxes in the one box set, and come back as ``instance_boxes``,
    ``instance_labels`` and ``instance_masks`` uint8 ``[K, M, M]`` (each mask resampled into its
    box, ``M`` = ``instance_crop``); an instance whose box leaves the view is dropped. The helper
    keys (``label_boxes``, ``label_box_ids``, ``label_mask``, ``count_points``, ``instance_rles``,
    ``instance_crop``) never appear in the output.
    """

    def __init__(self, compose: A.Compose, keep_orig_mask: bool = False, train: bool = False):
        self.compose = compose
        self.keep_orig_mask = keep_orig_mask
        self.train = train

    def __call__(self, image: np.ndarray, target: dict, seed: Optional[int] = None) -> tuple[torch.Tensor, dict]:
        if seed is not None:
            self.compose.set_random_seed(seed)
        has_boxes = "boxes" in target
        # one box set through albumentations: the task's boxes, then the label-deriving ones,
        # then each value's count boxes; each box carries its row index, so survivors map back
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4) if has_boxes else np.zeros((0, 4), np.float32)
        box_labels = np.asarray(target.get("box_labels", np.zeros(0)), np.int64).reshape(-1)
        n = len(boxes)
        parts = [boxes]
        if "label_boxes" in target:
            parts.append(np.asarray(target["label_boxes"], np.float32).reshape(-1, 4))
        n_label = sum(len(p) for p in parts)  # rows [n, n_label) are the label boxes
        has_inst = "instance_rles" in target
        if has_inst:  # rows [n_label, n_label + K) are the instances' boxes
            parts.append(np.asarray(target["instance_boxes"], np.float32).reshape(-1, 4))
        boxes = np.concatenate(parts) if len(parts) > 1 else boxes
        point_rows: dict[str, tuple[int, int]] = {}  # value name -> its keypoint rows [start, stop)
        points, start = [np.zeros((0, 2), np.float32)], 0
        for name, p in target.get("count_points", {}).items():
            points.append(np.asarray(p, np.float32).reshape(-1, 2))
            point_rows[name] = (start, start + len(points[-1]))
            start += len(points[-1])
        points = np.concatenate(points)
        kw = {"image": image, "bboxes": boxes, "box_labels": np.arange(len(boxes), dtype=np.int64),
              "keypoints": points, "point_ids": np.arange(len(points), dtype=np.int64)}
        if "mask" in target:
            kw["mask"] = target["mask"]
        masks = [target["label_mask"]] if "label_mask" in target else []
        first_inst = len(masks)  # instance j's mask is masks[first_inst + j]
        if has_inst and len(target["instance_rles"]):
            decoded = mask_utils.decode(list(target["instance_rles"]))  # [H, W, K], only here
            masks += [decoded[:, :, j] for j in range(decoded.shape[2])]
        if masks:
            kw["masks"] = masks
        out = self.compose(**kw)
        helpers = ("boxes", "box_labels", "mask", "label_boxes", "label_box_ids", "label_mask", "count_points") + \
            (("instance_rles", "instance_boxes", "instance_labels", "instance_crop") if has_inst else ())
        new = {k: v for k, v in target.items() if k not in helpers}
        img = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        idx = np.asarray(out["box_labels"]).astype(np.int64).reshape(-1)
        if has_boxes:
            keep = idx < n
            new["boxes"] = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)[keep])
            new["box_labels"] = torch.as_tensor(box_labels[idx[keep]])
        if "label_boxes" in target:
            ids = np.asarray(target["label_box_ids"], np.int64).reshape(-1)[idx[(idx >= n) & (idx < n_label)] - n]
            new["labels"] = np.unique(ids[ids >= 0])
        if point_rows:
            new["values"], new["points"] = dict(target.get("values", {})), {}
            pid = np.asarray(out["point_ids"], np.int64).reshape(-1)
            xy = np.asarray(out["keypoints"], np.float32).reshape(-1, 2)[:, :2]
            for name, (start, stop) in point_rows.items():
                kept = (pid >= start) & (pid < stop)
                new["values"][name] = float(np.count_nonzero(kept))
                new["points"][name] = torch.from_numpy(np.ascontiguousarray(xy[kept]))
        if has_inst:
            sel = (idx >= n_label) & (idx < n_label + len(target["instance_rles"]))
            kept = idx[sel] - n_label
            inst_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)[sel]
            new["instance_boxes"] = torch.as_tensor(inst_boxes)
            new["instance_labels"] = torch.as_tensor(np.asarray(target["instance_labels"], np.int64).reshape(-1)[kept])
            new["instance_masks"] = _box_masks([out["masks"][first_inst + j] for j in kept], inst_boxes,
                                               int(target.get("instance_crop", 28)))
        if "label_mask" in target:
            vals = np.unique(np.asarray(out["masks"][0]))
            new["labels"] = vals[vals != 255].astype(np.int64)
        if "mask" in target:
            new["mask"] = torch.from_numpy(np.ascontiguousarray(out["mask"], dtype=np.uint8))
            if self.keep_orig_mask and new["mask"].shape != target["mask"].shape[:2]:
                new["mask_orig"] = torch.from_numpy(np.ascontiguousarray(target["mask"], dtype=np.uint8))
        if "labels" in new:
            new["labels"] = torch.as_tensor(np.asarray(new["labels"], np.int64).reshape(-1))
        return img, new


def _box_masks(masks: list, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Each instance's (transformed) mask resampled into its box: uint8 ``[K, size, size]``.

    RoIAlign of the full mask on the box (``aligned=True``: pixel centres at +0.5, the convention
    the head's ``paste_masks`` inverts), thresholded at 0.5, as Mask R-CNN builds its targets;
    padding a crop added (255) is background.
    """
    if not masks:
        return torch.zeros((0, size, size), dtype=torch.uint8)
    full = torch.from_numpy(np.stack([np.asarray(m) == 1 for m in masks])).float()[:, None]
    rois = torch.cat([torch.arange(len(masks), dtype=torch.float32)[:, None], torch.from_numpy(boxes)], 1)
    return (roi_align(full, rois, size, 1.0, sampling_ratio=2, aligned=True)[:, 0] >= 0.5).to(torch.uint8)
