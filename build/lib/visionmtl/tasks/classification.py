"""``type: classification``: image-level classes, multi-label or multi-class, or one named attribute.

Targets: ``labels`` int64 ``[K]`` (the adapter's, or derived from boxes or the mask: the classes
present), or ``attrs[attr]`` (one class id) when the task names an ``attr``. Metrics: AP per
class and mAP (multi-label, main) or top-1 (multi-class, main). Flip TTA averages the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from .base import TaskType, check_ranges, lut, mask_lut

__all__ = ["ClassificationOptions", "ClassificationTask"]


@dataclass
class ClassificationOptions:
    multilabel: bool = True  # BCE over multi-hot labels, else softmax cross-entropy
    label_smoothing: float = 0.0  # multi-class only
    attr: Optional[str] = None  # read target["attrs"][attr] (one class id) instead of "labels"


class ClassificationTask(TaskType):
    name = "classification"
    Options = ClassificationOptions
    head_options = ("multilabel", "label_smoothing", "hidden", "dropout", "attr", "threshold", "pool", "levels",
                    "lse_r")
    target_keys = ("labels",)

    def validate(self, name, task, where) -> None:
        super().validate(name, task, where)
        if not 0.0 <= task.label_smoothing < 1.0:
            key = f"tasks.{name}.label_smoothing"
            raise ConfigError(f"{where(key)}: key '{key}' must be in [0, 1), got {task.label_smoothing}")
        check_ranges(name, task.head, {"threshold": (0.0, 1.0), "dropout": (0.0, 0.99), "hidden": (0, 65536),
                                       "lse_r": (1e-3, 1e3)}, where)

    # ------------------------------------------------------------------ model
    def head_kwargs(self, task) -> dict:
        return {**task.head, "multilabel": task.multilabel, "label_smoothing": task.label_smoothing, "attr": task.attr}

    def levels(self, head_cfg) -> tuple[str, ...]:
        return tuple(head_cfg.get("levels") or ("c5",))

    def build_head(self, name, num_outputs, kwargs, backbone):
        from ..models.heads.classification import ClassificationHead

        levels = self.levels(kwargs)
        kwargs = {**kwargs, "levels": levels}
        return ClassificationHead(name, {lv: backbone.out_channels[lv] for lv in levels}, num_outputs, **kwargs)

    def merge_flip(self, head, raw, raw_m, width, sizes, origs, min_score=None):
        merged = {"logits": (raw["logits"].float() + raw_m["logits"].float()) / 2}
        return head.predict(merged, sizes, origs)

    # ------------------------------------------------------------------ data
    def can_label(self, adapter, task) -> bool:
        if task.attr:
            return "attrs" in adapter.provides
        return bool({"labels", "box_labels", "mask"} & set(adapter.provides))

    def has_label(self, task, target) -> bool:
        if task.attr:
            return task.attr in target.get("attrs", {})
        return "labels" in target

    def mapper(self, adapter, name, task, class_map, what, drop):
        import numpy as np

        if task.attr:
            def map_attr(raw: dict, geometric: bool, out: dict) -> None:
                if task.attr in raw.get("attrs", {}):
                    out.setdefault("attrs", {})[task.attr] = raw["attrs"][task.attr]
            return map_attr
        native = list(adapter.classes)
        mask_native = list(getattr(adapter, "mask_classes", native))
        # image labels: from the adapter, else derived from boxes or the mask (classes present)
        for source, names in (("labels", native), ("box_labels", native), ("mask", mask_native)):
            if source in adapter.provides:
                break
        else:
            raise ConfigError(f"{what}: the adapter provides no image labels, boxes or masks to derive them from")
        # derived labels may include classes the task does not list (e.g. background)
        table = lut(names, task.classes, class_map, what, ignore_missing=drop or source == "mask")
        # labels that follow boxes or the mask are re-derived after a cropping augmentation
        geom = source if source != "labels" else getattr(adapter, "labels_follow", None)
        if geom not in ("box_labels", "mask") or geom not in adapter.provides:
            geom = None
        geom_box = lut(native, task.classes, class_map, what, True) if geom == "box_labels" else None
        geom_mask = mask_lut(mask_native, task.classes, class_map, what, True) if geom == "mask" else None

        def map_labels(raw: dict, geometric: bool, out: dict) -> None:
            if geometric and geom is not None and geom in raw:
                # what the transform needs to re-derive the labels from the part left in view
                if geom == "box_labels" and "boxes" in raw:
                    ids = np.asarray(raw["box_labels"], np.int64).reshape(-1)
                    out["label_boxes"] = np.asarray(raw["boxes"], np.float32).reshape(-1, 4)
                    out["label_box_ids"] = geom_box[ids] if ids.size else np.zeros(0, np.int64)
                elif geom == "mask":
                    out["label_mask"] = geom_mask[raw["mask"]]
            if source in raw:
                src = np.asarray(raw[source]).reshape(-1)
                if source == "mask":
                    src = np.unique(src)
                    src = src[src < len(table)]
                ids = table[src.astype(np.int64)] if src.size else np.zeros(0, np.int64)
                out["labels"] = np.unique(ids[ids >= 0]).astype(np.int64)
        return map_labels

    # ------------------------------------------------------------------ evaluation
    def metrics(self, task) -> dict[str, bool]:
        return {"mAP": False, "top1": False} if task.multilabel else {"top1": False, "mAP": False}

    def evaluator(self, task):
        from ..metrics.classification import ClassificationEvaluator

        return ClassificationEvaluator(task.classes, multilabel=task.multilabel)

    def update(self, evaluator, task, preds, targets, metas) -> None:
        import torch

        scores = torch.stack([p["scores"] for p in preds]).float().cpu()
        labels = [torch.as_tensor([t["attrs"][task.attr]]) if task.attr else t["labels"] for t in targets]
        evaluator.update(scores, labels)

    # ------------------------------------------------------------------ results
    def to_numpy(self, task, pred, conf) -> dict:
        return {"probs": pred["probs"].float().cpu().numpy(), "scores": pred["scores"].float().cpu().numpy(),
                "labels": pred["labels"].cpu().numpy()}

    def record(self, task, result, save_mask) -> dict:
        import numpy as np

        names = _namer(task.classes)
        probs = np.asarray(result["probs"], np.float64).reshape(-1)
        labels = np.asarray(result["labels"], np.int64).reshape(-1)
        return {"type": self.name, "labels": [names(int(c)) for c in labels], "label_ids": labels.tolist(),
                "probs": {names(i): round(float(p), 4) for i, p in enumerate(probs)}}

    def draw(self, img, name, task, result, score_thresh, top_k: int = 3):
        import numpy as np

        probs = _np(result["probs"] if "probs" in result else result["scores"]).reshape(-1)
        names = _namer(task.classes)
        order = np.argsort(-probs)[:top_k]
        return img, [f"{name}: " + ", ".join(f"{names(int(i))} {probs[i]:.2f}" for i in order)]

    def draw_target(self, img, name, task, target):
        if task.attr:
            if task.attr in target.get("attrs", {}):
                return img, [f"{name}: {task.classes[target['attrs'][task.attr]]}"]
            return img, []
        if "labels" not in target:
            return img, []
        return img, [f"{name}: " + (", ".join(task.classes[i] for i in target["labels"].tolist()) or "(none)")]

    def synthetic_target(self, task, target, imgsz, generator) -> None:
        import torch

        n = len(task.classes)
        if task.attr:
            target.setdefault("attrs", {})[task.attr] = int(torch.randint(n, (1,), generator=generator))
        else:
            k = 1 if not task.multilabel else int(torch.randint(1, min(2, n) + 1, (1,), generator=generator))
            target["labels"] = torch.randperm(n, generator=generator)[:k].to(torch.int64)


def _namer(classes):
    classes = list(classes)
    return lambda c: classes[c] if 0 <= c < len(classes) else str(c)


def _np(x):
    import numpy as np

    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
