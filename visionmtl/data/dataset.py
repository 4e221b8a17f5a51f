"""TaskDataset: one adapter seen through the configured tasks.

It maps the adapter's native class ids into each task's class list (by name, or through the
dataset's ``class_map``), keeps only the keys of the tasks the dataset labels (partial labels:
an unlabelled task has no key), derives image-level labels from boxes or masks where the adapter
has none, applies the transform and enforces the bad-sample policy.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ConfigError, DatasetConfig, TaskConfig
from .base import BaseAdapter
from .errors import DataError

log = logging.getLogger(__name__)

# Which target keys carry each task type's label.
TASK_KEYS = {"detection": ("boxes", "box_labels"), "segmentation": ("mask",), "classification": ("labels",)}


def has_label(task: TaskConfig, target: dict) -> bool:
    """Whether ``target`` carries a label for ``task`` (a missing key means unlabelled)."""
    if task.type == "classification" and task.attr:
        return task.attr in target.get("attrs", {})
    return TASK_KEYS[task.type][0] in target


def can_label(adapter: BaseAdapter, task: TaskConfig) -> bool:
    if task.type == "classification":
        return bool(task.attr and "attrs" in adapter.provides) or bool({"labels", "box_labels", "mask"} & set(adapter.provides))
    return all(k in adapter.provides for k in TASK_KEYS[task.type])


def _lut(native: list[str], task_classes: list[str], class_map: dict, what: str, ignore_missing: bool) -> np.ndarray:
    """Native id -> task id lookup table; -1 where the class is mapped to null (ignored)."""
    index = {c: i for i, c in enumerate(task_classes)}
    lut = np.full(max(len(native), 1), -1, np.int64)
    for i, name in enumerate(native):
        target = class_map.get(name, name)
        if target is None:
            continue
        if target not in index:
            if ignore_missing:
                continue
            close = difflib.get_close_matches(str(target), task_classes, n=1)
            hint = f" (closest: '{close[0]}')" if close else ""
            raise ConfigError(
                f"{what}: class '{target}' is not in the task's class list{hint}; "
                "add it to the task's classes or map it with class_map (null to ignore)"
            )
        lut[i] = index[target]
    return lut


class TaskDataset(Dataset):
    """Wrap an adapter: class mapping, task filtering, transforms and the bad-sample policy.

    ``self[i]`` returns ``{"image": float32 [3,H,W], "target": dict, "meta": dict}``, or ``None``
    for a bad sample when ``on_bad_sample == "skip"`` (collate drops and counts it).
    """

    def __init__(self, adapter: BaseAdapter, tasks: dict[str, TaskConfig], labels_tasks: list[str],
                 transform=None, class_map: Optional[dict] = None, on_bad_sample: str = "error",
                 name: str = "", unmapped: str = "error", limit: int = 0):
        self.adapter = adapter
        self.limit = int(limit)
        self.name = name or type(adapter).__name__
        self.transform = transform
        self.on_bad_sample = on_bad_sample
        self.tasks = {t: tasks[t] for t in labels_tasks}
        class_map = class_map or {}
        drop = unmapped == "ignore"
        what = f"dataset '{self.name}'"
        native = list(adapter.classes)
        mask_native = list(getattr(adapter, "mask_classes", native))
        self.box_lut = self.mask_lut = self.label_lut = self.geom_lut = None
        self.label_source: Optional[str] = None
        self.label_geom: Optional[str] = None  # "box_labels" | "mask" when image labels follow them
        for tname, t in self.tasks.items():
            w = f"{what}, task '{tname}'"
            if t.type == "detection":
                self._require(adapter, ("boxes", "box_labels"), tname)
                self.box_lut = _lut(native, t.classes, class_map, w, ignore_missing=drop)
            elif t.type == "segmentation":
                self._require(adapter, ("mask",), tname)
                lut = _lut(mask_native, t.classes, class_map, w, ignore_missing=drop)
                self.mask_lut = np.full(256, 255, np.uint8)
                self.mask_lut[: len(lut)] = np.where(lut >= 0, lut, 255).astype(np.uint8)
            elif t.attr is None:
                # image labels: from the adapter, else derived from boxes or the mask
                for src, names in (("labels", native), ("box_labels", native), ("mask", mask_native)):
                    if src in adapter.provides:
                        self.label_source = src
                        # derived labels may include classes the cls task does not list (e.g. background)
                        self.label_lut = _lut(names, t.classes, class_map, w, ignore_missing=drop or src == "mask")
                        break
                else:
                    raise ConfigError(f"{w}: the adapter provides no image labels, boxes or masks to derive them from")
                # labels that follow boxes or the mask are re-derived after a cropping augmentation
                geom = self.label_source if self.label_source != "labels" else getattr(adapter, "labels_follow", None)
                if geom in ("box_labels", "mask") and geom in adapter.provides:
                    self.label_geom = geom
                    if geom == "box_labels":
                        self.geom_lut = _lut(native, t.classes, class_map, w, ignore_missing=True)
                    else:
                        lut = _lut(mask_native, t.classes, class_map, w, ignore_missing=True)
                        self.geom_lut = np.full(256, 255, np.uint8)
                        self.geom_lut[: len(lut)] = np.where(lut >= 0, lut, 255).astype(np.uint8)
        self._bad_count = 0

    @staticmethod
    def _require(adapter: BaseAdapter, keys: tuple, task: str) -> None:
        missing = [k for k in keys if k not in adapter.provides]
        if missing:
            raise ConfigError(f"{type(adapter).__name__} cannot label task '{task}' (it provides {list(adapter.provides)})")

    def __len__(self) -> int:
        return min(len(self.adapter), self.limit) if self.limit > 0 else len(self.adapter)

    def map_target(self, raw: dict, geometric: bool = False) -> dict:
        """Native ids -> task ids, keeping only the keys of the labelled tasks.

        With ``geometric`` (a training transform follows), image labels that follow boxes or the
        mask also get what the transform needs to re-derive them from the part left in view:
        ``label_boxes`` [N,4] with ``label_box_ids`` [N] (cls ids, -1 unlisted), or
        ``label_mask`` (cls id per pixel, 255 none). See data/transforms.py.
        """
        out: dict = {}
        if geometric and self.label_geom is not None and self.label_geom in raw:
            if self.label_geom == "box_labels" and "boxes" in raw:
                ids = np.asarray(raw["box_labels"], np.int64).reshape(-1)
                out["label_boxes"] = np.asarray(raw["boxes"], np.float32).reshape(-1, 4)
                out["label_box_ids"] = self.geom_lut[ids] if ids.size else np.zeros(0, np.int64)
            elif self.label_geom == "mask":
                out["label_mask"] = self.geom_lut[raw["mask"]]
        if self.box_lut is not None and "boxes" in raw:
            ids = self.box_lut[np.asarray(raw["box_labels"], np.int64)] if len(raw["box_labels"]) else np.zeros(0, np.int64)
            keep = ids >= 0
            out["boxes"] = np.asarray(raw["boxes"], np.float32).reshape(-1, 4)[keep]
            out["box_labels"] = ids[keep]
            if not geometric and "crowd_boxes" in raw:  # evaluation only, in original pixels
                ids = self.box_lut[np.asarray(raw["crowd_labels"], np.int64)]
                out["crowd_boxes"] = torch.as_tensor(np.asarray(raw["crowd_boxes"], np.float32).reshape(-1, 4)[ids >= 0])
                out["crowd_labels"] = torch.as_tensor(ids[ids >= 0])
        if self.mask_lut is not None and "mask" in raw:
            out["mask"] = self.mask_lut[raw["mask"]]
        if self.label_lut is not None and self.label_source in raw:
            src = np.asarray(raw[self.label_source]).reshape(-1)
            if self.label_source == "mask":
                src = np.unique(src)
                src = src[src < len(self.label_lut)]
            ids = self.label_lut[src.astype(np.int64)] if src.size else np.zeros(0, np.int64)
            out["labels"] = np.unique(ids[ids >= 0]).astype(np.int64)
        attrs = {t.attr: raw["attrs"][t.attr] for t in self.tasks.values()
                 if t.type == "classification" and t.attr and t.attr in raw.get("attrs", {})}
        if attrs:
            out["attrs"] = attrs
        return out

    def load(self, i: int, geometric: bool = False) -> tuple[np.ndarray, dict]:
        """Untransformed image and mapped target (for browsing and evaluation)."""
        image, raw = self.adapter.load(i)
        if "mask" in raw and raw["mask"].shape[:2] != image.shape[:2]:
            raise DataError(self.adapter.path(i), f"mask size {raw['mask'].shape[:2]} differs from image size {image.shape[:2]}")
        return image, self.map_target(raw, geometric)

    def __getitem__(self, i: int) -> Optional[dict]:
        return self.get(i)

    def get(self, i: int, seed: Optional[int] = None) -> Optional[dict]:
        """Sample ``i``; ``seed`` fixes its augmentation (see data/sampler.py)."""
        try:
            image, target = self.load(i, geometric=bool(getattr(self.transform, "train", False)))
            orig_size = image.shape[:2]
            if self.transform is not None:
                image, target = self.transform(image, target, seed)
            else:
                image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        except DataError as e:
            if self.on_bad_sample == "skip":
                log.warning("skipping bad sample: %s", e)
                return None
            raise
        except Exception as e:  # never die inside a worker without the file name
            path = self.adapter.path(i)
            if self.on_bad_sample == "skip":
                log.warning("skipping bad sample: %s: %s", path, e)
                return None
            raise DataError(path, f"{type(e).__name__}: {e}") from e
        meta = {"path": self.adapter.path(i), "dataset": self.name, "index": i,
                "image_id": getattr(self.adapter, "image_id", lambda j: j)(i),
                "orig_size": tuple(int(s) for s in orig_size), "input_size": tuple(int(s) for s in image.shape[-2:])}
        return {"image": image, "target": target, "meta": meta}


# --------------------------------------------------------------------------------------------
# Building adapters from config
# --------------------------------------------------------------------------------------------
def adapter_types() -> dict:
    from .coco import CocoAdapter
    from .folder import CsvLabelsAdapter, ImageFolderAdapter
    from .masks import MaskFolderAdapter

    return {"coco": CocoAdapter, "masks": MaskFolderAdapter, "folder": ImageFolderAdapter, "csv": CsvLabelsAdapter}


def build_adapter(d: DatasetConfig, where: str = "") -> BaseAdapter:
    types = adapter_types()
    if d.type not in types:
        close = difflib.get_close_matches(d.type, list(types), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown dataset type '{d.type}' (valid: {', '.join(types)}){hint}")
    cls = types[d.type]
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p != "self"]
    for k in d.args:
        if k not in params:
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{where}: unknown key '{k}' for dataset type '{d.type}'{hint}")
    try:
        return cls(**d.args)
    except TypeError as e:
        raise ConfigError(f"{where}: dataset type '{d.type}': {e}") from None


def build_datasets(cfg, split: str, transform=None) -> list[TaskDataset]:
    """The TaskDatasets of ``cfg.data.<split>`` (a list; several may be mixed in one loader)."""
    out = []
    for i, d in enumerate(getattr(cfg.data, split)):
        where = f"data.{split}.{i}" + (f" ({d.name})" if d.name else "")
        adapter = build_adapter(d, where)
        if len(adapter) == 0:
            raise DataError(str(d.args), "dataset is empty")
        tasks = d.tasks or [n for n, t in cfg.tasks.items() if can_label(adapter, t)]
        out.append(TaskDataset(adapter, cfg.tasks, tasks, transform, d.class_map,
                               cfg.data.on_bad_sample, d.name or f"{split}{i}", d.unmapped, d.limit))
    if not out:
        raise ConfigError(f"data.{split}: no datasets configured")
    return out
