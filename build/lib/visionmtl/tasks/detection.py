"""``type: detection``: boxes with classes (an FCOS head on the pyramid).

Targets: ``boxes`` float32 ``[N,4]`` xyxy pixels and ``box_labels`` int64 ``[N]`` (``N = 0``:
labelled, no objects); COCO crowd regions ride along as ``crowd_boxes``/``crowd_labels`` in
original pixels for evaluation only. Evaluation targets also keep the mapped boxes untouched by
the transform, ``eval_boxes``/``eval_labels`` (original pixels; the eval resize can drop a box
under 1 px², and these still hold it), with ``eval_areas`` when the adapter gives annotation
areas (COCO ``box_areas``; ``crowd_areas`` for the crowd regions), so COCOeval's small / medium /
large split uses the annotations' areas. Metrics: pycocotools bbox mAP (main), mAP50, mAP75 and
per-class AP, in original pixels. Flip TTA mirrors the second pass's boxes back, pools both sets
and runs class-wise NMS.
"""

from __future__ import annotations

from .base import TaskType, check_ranges, lut, require

__all__ = ["DetectionTask", "detection_gt"]

_LEVELS = ("p3", "p4", "p5", "p6", "p7")


class DetectionTask(TaskType):
    name = "detection"
    head_options = ("levels", "num_convs", "channels", "norm", "center_sampling_radius", "focal_alpha",
                    "focal_gamma", "prior_prob", "score_thresh", "nms_thresh", "topk_candidates", "max_det",
                    "box_loss_weight", "quality")
    target_keys = ("boxes", "box_labels")
    single = True
    trackable = True
    gives_boxes = True
    coco_iou_type = "bbox"
    draw_layer = 1

    def validate(self, name, task, where) -> None:
        super().validate(name, task, where)
        check_ranges(name, task.head, {"score_thresh": (0.0, 1.0), "nms_thresh": (0.0, 1.0), "focal_alpha": (0.0, 1.0),
                                       "prior_prob": (1e-6, 1 - 1e-6), "focal_gamma": (0.0, 10.0),
                                       "topk_candidates": (1, 1e9), "max_det": (1, 1e9), "num_convs": (0, 16),
                                       "channels": (1, 4096), "center_sampling_radius": (0.0, 100.0)}, where)

    # ------------------------------------------------------------------ model
    def levels(self, head_cfg) -> tuple[str, ...]:
        return tuple(head_cfg.get("levels") or _LEVELS)

    def build_head(self, name, num_outputs, kwargs, backbone):
        from ..models.heads.detection import DetectionHead

        levels = self.levels(kwargs)
        kwargs = {"levels": levels, "strides": [backbone.strides[lv] for lv in levels], **kwargs}
        chans = {backbone.out_channels[lv] for lv in levels}
        if len(chans) != 1:
            raise ValueError(f"task '{name}': detection levels {levels} have different channels {sorted(chans)}")
        return DetectionHead(name, chans.pop(), num_outputs, **kwargs)

    def predict(self, head, raw, sizes, origs, min_score=None, given=None):
        return head.predict(raw, sizes, origs, min_score=min_score)

    def merge_flip(self, head, raw, raw_m, width, sizes, origs, min_score=None):
        from torchvision.ops import clip_boxes_to_image

        from ..models.heads.common import rescale_boxes

        plain = head.predict(raw, sizes, min_score=min_score)
        # the mirrored image sits at the right of the canvas: decode over the full width
        mirrored = head.predict(raw_m, [(h, width) for h, _ in sizes], min_score=min_score)
        out = []
        for i, (a, b) in enumerate(zip(plain, mirrored)):
            det = _merge(a, b, width, sizes[i], head)
            if origs is not None and tuple(origs[i]) != tuple(sizes[i]):
                det["boxes"] = clip_boxes_to_image(rescale_boxes(det["boxes"], sizes[i], origs[i]), origs[i])
            out.append(det)
        return out

    # ------------------------------------------------------------------ data
    def mapper(self, adapter, name, task, class_map, what, drop):
        import numpy as np
        import torch

        require(adapter, self.target_keys, name)
        table = lut(list(adapter.classes), task.classes, class_map, what, ignore_missing=drop)

        def map_boxes(raw: dict, geometric: bool, out: dict) -> None:
            if "boxes" not in raw:
                return
            ids = table[np.asarray(raw["box_labels"], np.int64)] if len(raw["box_labels"]) else np.zeros(0, np.int64)
            keep = ids >= 0
            out["boxes"] = np.asarray(raw["boxes"], np.float32).reshape(-1, 4)[keep]
            out["box_labels"] = ids[keep]
            if geometric:  # training: the transform may crop boxes away; nothing for evaluation
                return
            # evaluation only, as torch tensors (the transform passes them through untouched):
            # the ground truth in original pixels, every box of it, with the annotations' areas
            out["eval_boxes"] = torch.as_tensor(out["boxes"].copy())
            out["eval_labels"] = torch.as_tensor(out["box_labels"].copy())
            if "box_areas" in raw:
                out["eval_areas"] = torch.as_tensor(_areas(raw["box_areas"], len(keep), "box_areas")[keep])
            if "crowd_boxes" in raw:
                ids = table[np.asarray(raw["crowd_labels"], np.int64)]
                out["crowd_boxes"] = torch.as_tensor(np.asarray(raw["crowd_boxes"], np.float32).reshape(-1, 4)[ids >= 0])
                out["crowd_labels"] = torch.as_tensor(ids[ids >= 0])
                if "crowd_areas" in raw:
                    out["crowd_areas"] = torch.as_tensor(_areas(raw["crowd_areas"], len(ids), "crowd_areas")[ids >= 0])
        return map_boxes

    # ------------------------------------------------------------------ evaluation
    def metrics(self, task) -> dict[str, bool]:
        return {"mAP": False, "mAP50": False, "mAP75": False}

    def log_metrics(self, task) -> list[str]:
        return ["mAP", "mAP50"]

    def evaluator(self, task):
        from ..metrics.detection import CocoDetectionEvaluator

        return CocoDetectionEvaluator(task.classes)

    def update(self, evaluator, task, preds, targets, metas) -> None:
        pd = [{"boxes": p["boxes"].float().cpu(), "scores": p["scores"].float().cpu(), "labels": p["labels"].cpu()}
              for p in preds]
        evaluator.update(pd, [detection_gt(t, m) for t, m in zip(targets, metas)])

    # ------------------------------------------------------------------ results
    def to_numpy(self, task, pred, conf) -> dict:
        keep = pred["scores"] >= conf
        return {"boxes": pred["boxes"][keep].float().cpu().numpy(), "scores": pred["scores"][keep].float().cpu().numpy(),
                "labels": pred["labels"][keep].cpu().numpy()}

    def record(self, task, result, save_mask) -> dict:
        import numpy as np

        classes = list(task.classes)
        labels = np.asarray(result["labels"], np.int64).reshape(-1)
        out = {"type": self.name, "boxes": _round(np.asarray(result["boxes"]).reshape(-1, 4)),
               "scores": _round(result["scores"], 4),
               "labels": [classes[c] if 0 <= c < len(classes) else str(c) for c in labels.tolist()],
               "label_ids": labels.tolist()}
        if "track_ids" in result:
            out["track_ids"] = np.asarray(result["track_ids"], np.int64).reshape(-1).tolist()
        return out

    def coco_results(self, task, image_id, result):
        import numpy as np

        out = []
        boxes = np.asarray(result["boxes"], np.float64).reshape(-1, 4)
        for b, s, c in zip(boxes, np.asarray(result["scores"]).reshape(-1), np.asarray(result["labels"]).reshape(-1)):
            out.append({"image_id": int(image_id), "category_id": int(c) + 1,
                        "bbox": [round(float(b[0]), 2), round(float(b[1]), 2),
                                 round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)],
                        "score": round(float(s), 5)})
        return out

    def draw(self, img, name, task, result, score_thresh):
        from ..draw import draw_boxes, to_numpy

        keep = to_numpy(result["scores"]) >= score_thresh
        tids = to_numpy(result["track_ids"])[keep] if "track_ids" in result else None
        return draw_boxes(img, to_numpy(result["boxes"])[keep], to_numpy(result["labels"])[keep], task.classes,
                          to_numpy(result["scores"])[keep], tids), []

    def draw_target(self, img, name, task, target):
        from ..draw import draw_boxes

        if "boxes" not in target:
            return img, []
        return draw_boxes(img, target["boxes"].numpy(), target["box_labels"].numpy(), task.classes), []

    def synthetic_target(self, task, target, imgsz, generator, max_boxes: int = 4) -> None:
        import torch

        n = int(torch.randint(1, max_boxes + 1, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * (imgsz - 8)
        wh = 8 + torch.rand(n, 2, generator=generator) * (imgsz / 2)
        x2y2 = torch.minimum(xy + wh, torch.full_like(xy, float(imgsz)))
        target["boxes"] = torch.cat([xy, x2y2], dim=1).to(torch.float32)
        target["box_labels"] = torch.randint(len(task.classes), (n,), generator=generator, dtype=torch.int64)


def detection_gt(target: dict, meta: dict) -> dict:
    """A target's boxes in original pixels for the COCO evaluator, crowd regions as ``iscrowd``.

    The mapper's ``eval_boxes``/``eval_labels`` (original pixels, untouched by the transform)
    when the target has them, else ``boxes`` scaled back from the network input. With
    ``eval_areas`` (annotation areas, original pixels) the result also has ``areas`` float64,
    one per box (a crowd region without ``crowd_areas`` gets its box area); without them the
    evaluator uses box areas.
    """
    import torch

    from ..models.heads.common import rescale_boxes

    if "eval_boxes" in target:  # already in original pixels (mapper above)
        boxes, labels = target["eval_boxes"].float().cpu(), target["eval_labels"].cpu()
    else:
        boxes = rescale_boxes(target["boxes"].float().cpu(), meta["input_size"], meta["orig_size"])
        labels = target["box_labels"].cpu()
    areas = target["eval_areas"].double().cpu() if "eval_areas" in target and "eval_boxes" in target else None
    if areas is not None and len(areas) != len(boxes):
        raise ValueError(f"eval_areas has {len(areas)} entries but there are {len(boxes)} eval_boxes")
    crowd = torch.zeros(len(boxes), dtype=torch.int64)
    if "crowd_boxes" in target:  # already in original pixels (mapper above)
        cb = target["crowd_boxes"].float().cpu()
        boxes = torch.cat([boxes, cb])
        labels = torch.cat([labels, target["crowd_labels"].cpu()])
        crowd = torch.cat([crowd, torch.ones(len(cb), dtype=torch.int64)])
        if areas is not None:
            ca = target["crowd_areas"].double().cpu() if "crowd_areas" in target else \
                ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1])).double()
            areas = torch.cat([areas, ca])
    out = {"boxes": boxes, "box_labels": labels, "iscrowd": crowd}
    if areas is not None:
        out["areas"] = areas
    return out


def _areas(values, n: int, what: str):
    """An adapter's per-box areas as float64 ``[n]``."""
    import numpy as np

    a = np.asarray(values, np.float64).reshape(-1)
    if len(a) != n:
        raise ValueError(f"{what} has {len(a)} entries but there are {n} boxes")
    return a


def _merge(a, b, width, size, head) -> dict:
    """Pool a pass's detections with its mirror's (mirrored back), then class-wise NMS."""
    import torch
    from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

    bx = b["boxes"]
    mirrored = torch.stack([width - bx[:, 2], bx[:, 1], width - bx[:, 0], bx[:, 3]], dim=1)
    boxes = torch.cat([a["boxes"], clip_boxes_to_image(mirrored, size)])
    scores = torch.cat([a["scores"], b["scores"]])
    labels = torch.cat([a["labels"], b["labels"]])
    keep = remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, head.nms_thresh)[: head.max_det]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def _round(values, nd: int = 2) -> list:
    import numpy as np

    return np.round(np.asarray(values, np.float64), nd).tolist()
