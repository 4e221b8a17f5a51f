"""``type: segmentation``: a semantic class per pixel.

Targets: ``mask`` uint8 ``[H,W]`` (255 = ignore), padded with 255 to the batch canvas; the
evaluation transform keeps a mask it resized as ``mask_orig`` so scores are taken at the
original resolution. Metrics: mIoU (main), pixel and mean accuracy, per-class IoU. Flip TTA
averages the class probabilities after mirroring the second pass back.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import TaskType, check_ranges, mask_lut, require

__all__ = ["SegmentationTask"]


class SegmentationTask(TaskType):
    name = "segmentation"
    head_options = ("levels", "channels", "kind", "ignore_index", "atrous_rates", "detail", "detail_channels",
                    "region_loss", "region_weight", "ohem_thresh", "ohem_min_kept", "class_weight")
    target_keys = ("mask",)
    single = True
    draw_layer = 0

    def validate(self, name, task, where) -> None:
        super().validate(name, task, where)
        check_ranges(name, task.head, {"channels": (1, 4096), "region_weight": (0.0, 1e3), "ohem_thresh": (0.0, 1.0),
                                       "ohem_min_kept": (0.0, 1.0), "ignore_index": (0, 255)}, where)
        cw = task.head.get("class_weight")
        if cw is not None:
            key = f"tasks.{name}.head.class_weight"
            ok = isinstance(cw, (list, tuple)) and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in cw)
            if not ok or len(cw) != len(task.classes):
                raise ConfigError(f"{where(key)}: key '{key}' must list {len(task.classes)} positive numbers, one per class "
                                  f"({', '.join(task.classes[:4])}{', ...' if len(task.classes) > 4 else ''}), got {cw!r}")

    # ------------------------------------------------------------------ model
    def levels(self, head_cfg) -> tuple[str, ...]:
        from ..models.heads.segmentation import default_levels

        levels = tuple(head_cfg.get("levels") or default_levels(head_cfg.get("kind", "fpn")))
        return levels + ((head_cfg["detail"],) if head_cfg.get("detail") else ())

    def build_head(self, name, num_outputs, kwargs, backbone):
        from ..models.heads.segmentation import SegmentationHead

        read = self.levels(kwargs)
        # the detail level is read, but passed on its own (not in ``levels``)
        levels = read[:-1] if kwargs.get("detail") else read
        kwargs = {"levels": levels, "strides": [backbone.strides[lv] for lv in levels], **kwargs}
        return SegmentationHead(name, {lv: backbone.out_channels[lv] for lv in read}, num_outputs, **kwargs)

    def merge_flip(self, head, raw, raw_m, width, sizes, origs, min_score=None):
        p = raw["logits"].float().softmax(1) + raw_m["logits"].float().flip(-1).softmax(1)
        return head.predict({"logits": (p / 2).clamp_min(1e-12).log()}, sizes, origs)

    # ------------------------------------------------------------------ data
    def mapper(self, adapter, name, task, class_map, what, drop):
        require(adapter, self.target_keys, name)
        native = list(getattr(adapter, "mask_classes", adapter.classes))
        table = mask_lut(native, task.classes, class_map, what, ignore_missing=drop)

        def map_mask(raw: dict, geometric: bool, out: dict) -> None:
            if "mask" in raw:
                out["mask"] = table[raw["mask"]]
        return map_mask

    def collate(self, target, size) -> None:
        import torch.nn.functional as F

        if "mask" in target:
            m = target["mask"]
            target["mask"] = F.pad(m, (0, size[1] - m.shape[1], 0, size[0] - m.shape[0]), value=255)

    # ------------------------------------------------------------------ evaluation
    def metrics(self, task) -> dict[str, bool]:
        return {"mIoU": False, "pixel_acc": False, "mean_acc": False}

    def evaluator(self, task):
        from ..metrics.segmentation import SegmentationEvaluator

        return SegmentationEvaluator(task.classes, ignore_index=255)

    def update(self, evaluator, task, preds, targets, metas) -> None:
        pm, gm = [], []
        for p, t, m in zip(preds, targets, metas):
            h, w = m["input_size"]
            # the input was resized: the untouched mask, else the transformed one unpadded
            pm.append(p["mask"].cpu())
            gm.append((t["mask_orig"] if "mask_orig" in t else t["mask"][:h, :w]).cpu())
        evaluator.update(pm, gm)

    # ------------------------------------------------------------------ results
    def to_numpy(self, task, pred, conf) -> dict:
        import torch

        m = pred["mask"]
        return {"mask": (m.to(torch.uint8) if len(task.classes) <= 255 else m).cpu().numpy()}

    def record(self, task, result, save_mask) -> dict:
        import numpy as np

        from ..rle import mask_to_rle

        mask = np.asarray(result["mask"])
        out = {"type": self.name, "size": [int(mask.shape[0]), int(mask.shape[1])]}
        path = save_mask(mask)
        if path is not None:
            out["png"] = path
        else:
            out["segments"] = mask_to_rle(mask, list(task.classes))
        return out

    def draw(self, img, name, task, result, score_thresh):
        from ..draw import draw_mask, to_numpy

        return draw_mask(img, to_numpy(result["mask"]), task.classes), []

    def draw_target(self, img, name, task, target):
        from ..draw import draw_mask

        if "mask" not in target:
            return img, []
        return draw_mask(img, target["mask"].numpy(), task.classes), []

    def synthetic_target(self, task, target, imgsz, generator) -> None:
        import torch
        from torch import nn

        cells = max(imgsz // 16, 1)
        low = torch.randint(len(task.classes), (1, 1, cells, cells), generator=generator).float()
        target["mask"] = nn.functional.interpolate(low, size=(imgsz, imgsz), mode="nearest")[0, 0].to(torch.int64)
