"""``type: instance``: one mask per object, on the boxes of a detection task.

Config::

    tasks:
      det:  {type: detection, classes: [circle, square, triangle]}
      inst:
        type: instance
        detection: det            # the detection task whose boxes it segments (default: the only one)
        head: {kind: roi}         # roi (Mask R-CNN) | proto (YOLACT prototypes)

``classes`` may be left out: they are the detection task's (they must be the same list).

Adapter output (original pixels; the adapter lists ``instances`` in ``provides``):
``instance_rles`` (one pycocotools RLE per object: compact, never a full-image mask per object
held per sample), ``instance_boxes`` float32 ``[N,4]`` xyxy, ``instance_labels`` int64 ``[N]``,
optional ``instance_areas`` (annotation areas), and crowd regions as ``instance_crowd_rles`` /
``instance_crowd_labels``. For training the mapper hands the RLEs to the transform, which decodes
them only there, moves them with the image (albumentations ``masks``: crops, flips, rescales) and
returns ``instance_boxes``, ``instance_labels`` and ``instance_masks`` uint8 ``[N, M, M]`` (each
mask resampled into its box, ``M`` = the head's ``mask_size``); an object the crop cuts out of
view is dropped with its box. For evaluation the RLEs stay as they are (``eval_instance_*``) and
pycocotools scores ``segm`` mAP in original pixels, crowd regions ignored as COCOeval does.
Predictions: the detections (``boxes``, ``scores``, ``labels``) with ``masks`` uint8 ``[N, h, w]``.
Flip TTA decodes the masks of the merged detections on the first pass (models/tta.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .base import TaskType, check_ranges, lut

__all__ = ["InstanceOptions", "InstanceTask"]

_LEVELS = ("p2", "p3", "p4", "p5")


@dataclass
class InstanceOptions:
    detection: str = ""  # the detection task whose boxes the masks are predicted on ("" = the only one)


class InstanceTask(TaskType):
    name = "instance"
    Options = InstanceOptions
    head_options = ("detection", "levels", "kind", "mask_size", "roi_size", "channels", "num_convs", "num_protos",
                    "class_agnostic", "mask_thresh", "sampling_ratio")
    target_keys = ("instance_labels",)
    single = True
    trackable = False
    coco_iou_type = "segm"
    draw_layer = 0

    # ------------------------------------------------------------------ config
    def validate(self, name, task, where) -> None:
        if task.classes:
            super().validate(name, task, where)
        else:
            from .base import check_head_keys

            check_head_keys(name, self, task.head, where)
        head = task.head
        if "kind" in head and head["kind"] not in ("roi", "proto"):
            key = f"tasks.{name}.head.kind"
            raise ConfigError(f"{where(key)}: key '{key}' must be roi or proto, got {head['kind']!r}")
        check_ranges(name, head, {"mask_size": (4, 128), "roi_size": (2, 64), "channels": (1, 1024),
                                  "num_convs": (0, 8), "num_protos": (1, 256), "mask_thresh": (0.0, 1.0),
                                  "sampling_ratio": (0, 8)}, where)

    def check_links(self, name, task, tasks, where) -> None:
        """The detection task named (or the only one) exists; classes default to and must equal its."""
        from . import spec

        key = f"tasks.{name}.detection"
        boxes = [n for n, t in tasks.items() if spec(t).gives_boxes]
        if not task.detection:
            if len(boxes) != 1:
                found = f"found {boxes}" if boxes else "there is none"
                raise ConfigError(f"{where(key)}: key '{key}': instance task '{name}' needs a detection task to segment the "
                                  f"boxes of; name it in '{key}' ({found})")
            task.options.detection = boxes[0]
        elif task.detection not in boxes:
            raise ConfigError(f"{where(key)}: key '{key}': instance task '{name}' names detection task '{task.detection}', "
                              f"which is not a detection task of this config (detection tasks: {boxes or 'none'})")
        det = tasks[task.detection]
        if not task.classes:
            task.classes = list(det.classes)
        elif list(task.classes) != list(det.classes):
            raise ConfigError(f"{where(f'tasks.{name}.classes')}: instance task '{name}' must have the classes of "
                              f"detection task '{task.detection}' in the same order (or leave 'classes' out)")

    def links(self, task) -> list[str]:
        return [task.detection] if task.detection else []

    # ------------------------------------------------------------------ model
    def head_kwargs(self, task):
        return {**task.head, "detection": task.detection}

    def levels(self, head_cfg) -> tuple[str, ...]:
        return tuple(head_cfg.get("levels") or _LEVELS)

    def build_head(self, name, num_outputs, kwargs, backbone):
        from ..models.heads.instance import InstanceHead

        levels = self.levels(kwargs)
        chans = {backbone.out_channels[lv] for lv in levels}
        if len(chans) != 1:
            raise ValueError(f"task '{name}': instance levels {levels} have different channels {sorted(chans)}")
        kwargs = {**kwargs, "levels": levels, "strides": [backbone.strides[lv] for lv in levels]}
        return InstanceHead(name, chans.pop(), num_outputs, **kwargs)

    def predict(self, head, raw, sizes, origs, min_score=None, given=None):
        return head.predict(raw, sizes, origs, given=given)

    # ------------------------------------------------------------------ data
    def can_label(self, adapter, task) -> bool:
        return "instances" in adapter.provides

    def mapper(self, adapter, name, task, class_map, what, drop):
        import numpy as np
        import torch

        if "instances" not in adapter.provides:
            source = getattr(adapter, "ann_file", None) or getattr(adapter, "root", None) or type(adapter).__name__
            raise ConfigError(f"{what}: {source} has no instance masks (polygons or RLE per object) to label "
                              f"instance task '{name}'")
        table = lut(list(adapter.classes), task.classes, class_map, what, ignore_missing=drop)
        size = int(task.head.get("mask_size", 28))

        def map_instances(raw: dict, geometric: bool, out: dict) -> None:
            if "instance_rles" not in raw:
                return
            labels = np.asarray(raw["instance_labels"], np.int64).reshape(-1)
            ids = table[labels] if len(labels) else np.zeros(0, np.int64)
            keep = np.flatnonzero(ids >= 0)
            rles = [raw["instance_rles"][k] for k in keep]
            boxes = np.asarray(raw["instance_boxes"], np.float32).reshape(-1, 4)[keep]
            out["instance_labels"] = ids[keep]
            if geometric:  # the transform decodes, moves and resamples the masks into their boxes
                out["instance_boxes"], out["instance_rles"], out["instance_crop"] = boxes, rles, size
                return
            out["instance_labels"] = torch.as_tensor(ids[keep])
            out["eval_instance_boxes"] = torch.as_tensor(boxes)
            out["eval_instance_rles"] = rles
            if "instance_areas" in raw:
                out["eval_instance_areas"] = torch.as_tensor(np.asarray(raw["instance_areas"], np.float64)[keep])
            if raw.get("instance_crowd_rles"):
                cids = table[np.asarray(raw["instance_crowd_labels"], np.int64).reshape(-1)]
                out["instance_crowd_rles"] = [r for r, c in zip(raw["instance_crowd_rles"], cids) if c >= 0]
                out["instance_crowd_labels"] = torch.as_tensor(cids[cids >= 0])
        return map_instances

    # ------------------------------------------------------------------ evaluation
    def metrics(self, task) -> dict[str, bool]:
        return {"mAP": False, "mAP50": False, "mAP75": False}

    def log_metrics(self, task) -> list[str]:
        return ["mAP", "mAP50"]

    def evaluator(self, task):
        from ..metrics.instance import CocoSegmEvaluator

        return CocoSegmEvaluator(task.classes)

    def update(self, evaluator, task, preds, targets, metas) -> None:
        from ..metrics.instance import encode_masks

        pd = [{"boxes": p["boxes"].float().cpu(), "scores": p["scores"].float().cpu(), "labels": p["labels"].cpu(),
               "rles": encode_masks(p["masks"])} for p in preds]
        evaluator.update(pd, [instance_gt(t, m) for t, m in zip(targets, metas)])

    # ------------------------------------------------------------------ results
    def to_numpy(self, task, pred, conf) -> dict:
        keep = pred["scores"] >= conf
        return {"boxes": pred["boxes"][keep].float().cpu().numpy(), "scores": pred["scores"][keep].float().cpu().numpy(),
                "labels": pred["labels"][keep].cpu().numpy(), "masks": pred["masks"][keep].cpu().numpy()}

    def record(self, task, result, save_mask) -> dict:
        import numpy as np

        from .detection import DetectionTask

        out = DetectionTask.record(self, task, result, save_mask)
        masks = np.asarray(result["masks"])
        out["size"] = [int(v) for v in masks.shape[1:]]
        out["masks"] = [_rle_json(r) for r in _encode(masks)]
        return out

    def coco_results(self, task, image_id, result):
        import numpy as np

        from .detection import DetectionTask

        out = DetectionTask.coco_results(self, task, image_id, result)
        for r, rle in zip(out, _encode(np.asarray(result["masks"]))):
            r["segmentation"] = _rle_json(rle)
        return out

    def draw(self, img, name, task, result, score_thresh):
        from ..draw import draw_instances, to_numpy

        keep = to_numpy(result["scores"]) >= score_thresh
        tids = to_numpy(result["track_ids"])[keep] if "track_ids" in result else None
        return draw_instances(img, to_numpy(result["masks"])[keep], tids), []

    def draw_target(self, img, name, task, target):
        import torch
        from ..models.heads.instance import paste_masks

        from ..draw import draw_instances

        if "instance_masks" not in target or not len(target["instance_masks"]):
            return img, []
        m = paste_masks(target["instance_masks"].float(), target["instance_boxes"].float(), img.shape[:2])
        return draw_instances(img, (m >= 0.5).to(torch.uint8).numpy()), []

    def synthetic_target(self, task, target, imgsz, generator, max_boxes: int = 4) -> None:
        import torch

        from .detection import DetectionTask

        box = {}
        DetectionTask.synthetic_target(self, task, box, imgsz, generator, max_boxes)
        size = int(task.head.get("mask_size", 28))
        target["instance_boxes"], target["instance_labels"] = box["boxes"], box["box_labels"]
        target["instance_masks"] = (torch.rand(len(box["boxes"]), size, size, generator=generator) > 0.5).to(torch.uint8)


def instance_gt(target: dict, meta: dict) -> dict:
    """A target's instances in original pixels for :class:`CocoSegmEvaluator`, crowd regions as
    ``iscrowd`` (their boxes from their masks).

    The mapper's ``eval_instance_*`` (RLEs as the annotation gave them) when the target has them,
    else the transformed ``instance_boxes``/``instance_masks`` pasted back into original pixels.
    """
    import numpy as np
    import torch
    from pycocotools import mask as mask_utils

    labels = target["instance_labels"].cpu()
    if "eval_instance_rles" in target:
        boxes = target["eval_instance_boxes"].float().cpu()
        rles = list(target["eval_instance_rles"])
    else:
        from ..models.heads.instance import paste_masks

        from ..metrics.instance import encode_masks
        from ..models.heads.common import rescale_boxes

        orig = tuple(int(v) for v in meta["orig_size"])
        boxes = rescale_boxes(target["instance_boxes"].float().cpu(), meta["input_size"], orig)
        masks = target["instance_masks"].cpu().float()
        pasted = paste_masks(masks, boxes, orig) >= 0.5 if len(masks) else masks
        rles = encode_masks(pasted.reshape(-1, *orig)) if len(masks) else []
    crowd = torch.zeros(len(boxes), dtype=torch.int64)
    areas = target["eval_instance_areas"].double().cpu() if "eval_instance_areas" in target else None
    if target.get("instance_crowd_rles"):
        cr = list(target["instance_crowd_rles"])
        xywh = torch.as_tensor(mask_utils.toBbox(cr), dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([boxes, torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)])
        labels = torch.cat([labels, target["instance_crowd_labels"].cpu()])
        crowd = torch.cat([crowd, torch.ones(len(cr), dtype=torch.int64)])
        rles += cr
        if areas is not None:
            areas = torch.cat([areas, torch.as_tensor(mask_utils.area(cr).astype(np.float64))])
    out = {"boxes": boxes, "box_labels": labels, "iscrowd": crowd, "rles": rles}
    if areas is not None:
        out["areas"] = areas
    return out


def _encode(masks) -> list:
    from ..metrics.instance import encode_masks

    return encode_masks(masks)


def _rle_json(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
