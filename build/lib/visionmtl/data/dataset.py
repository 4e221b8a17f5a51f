"""TaskDataset: one adapter seen through the configured tasks.

It maps the adapter's native class ids into each task's class list (by name, or through the
dataset's ``class_map``), keeps only the keys of the tasks the dataset labels (partial labels:
an unlabelled task has no key), derives image-level labels from boxes or masks where the adapter
has none, applies the transform and enforces the bad-sample policy.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DatasetConfig, TaskConfig
from ..errors import ConfigError, DataError
from ..tasks import spec
from .base import BaseAdapter
from .formats import check_adapter_args

log = logging.getLogger(__name__)


def has_label(task: TaskConfig, target: dict) -> bool:
    """Whether ``target`` carries a label for ``task`` (a missing key means unlabelled)."""
    return spec(task).has_label(task, target)


def can_label(adapter: BaseAdapter, task: TaskConfig) -> bool:
    return spec(task).can_label(adapter, task)


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
        # one mapper per labelled task, from its type's spec: native ids -> the task's ids
        self.mappers = [spec(t).mapper(adapter, tname, t, class_map, f"{what}, task '{tname}'", drop)
                        for tname, t in self.tasks.items()]
        self._bad_count = 0

    def __len__(self) -> int:
        return min(len(self.adapter), self.limit) if self.limit > 0 else len(self.adapter)

    def map_target(self, raw: dict, geometric: bool = False) -> dict:
        """Native ids -> task ids, keeping only the keys of the labelled tasks (each task's spec).

        With ``geometric`` (a training transform follows), labels or values derived from the
        boxes or the mask also get what the transform needs to re-derive them from the part left
        in view (``label_boxes``/``label_box_ids``, ``label_mask``, ``count_points``; see
        data/transforms.py).
        """
        out: dict = {}
        for m in self.mappers:
            m(raw, geometric, out)
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
def build_adapter(d: DatasetConfig, where: str = "") -> BaseAdapter:
    cls = check_adapter_args(d.type, d.args, where)
    try:
        return cls(**d.args)
    except (TypeError, ValueError) as e:  # a bad argument value (ConfigError too): one line naming the entry
        raise ConfigError(f"{where}: dataset type '{d.type}': {e}") from None


def report_problems(adapter: BaseAdapter, where: str) -> dict:
    """Log what the adapter dropped or changed while reading its annotations (never silently)."""
    st = adapter.stats()
    source = getattr(adapter, "ann_file", None) or getattr(adapter, "csv_file", None) or ""
    parts = []
    if st.get("degenerate_boxes"):
        parts.append(f"dropped {st['degenerate_boxes']} boxes smaller than min_box_size "
                     f"({getattr(adapter, 'min_box_size', 1.0):g} px)")
    if st.get("clipped_boxes"):
        parts.append(f"clipped {st['clipped_boxes']} boxes that reached past their image")
    if st.get("images_left_without_boxes"):
        parts.append(f"{st['images_left_without_boxes']} images have annotated objects but no box left "
                     "(their mask and labels still show them)")
    if st.get("short_polygons"):
        parts.append(f"skipped {st['short_polygons']} polygons with fewer than 3 points")
    if parts:
        log.warning("%s%s: %s", where, f" ({source})" if source else "", "; ".join(parts))
    return st


def build_datasets(cfg, split: str, transform=None) -> list[TaskDataset]:
    """The TaskDatasets of ``cfg.data.<split>`` (a list; several may be mixed in one loader)."""
    out = []
    for i, d in enumerate(getattr(cfg.data, split)):
        where = f"data.{split}.{i}" + (f" ({d.name})" if d.name else "")
        adapter = build_adapter(d, where)
        if len(adapter) == 0:
            raise DataError(str(d.args), "dataset is empty")
        report_problems(adapter, where)
        tasks = d.tasks or [n for n, t in cfg.tasks.items() if can_label(adapter, t)]
        out.append(TaskDataset(adapter, cfg.tasks, tasks, transform, d.class_map,
                               cfg.data.on_bad_sample, d.name or f"{split}{i}", d.unmapped, d.limit))
    if not out:
        raise ConfigError(f"data.{split}: no datasets configured")
    if split == "train":  # a head no training image labels never learns: never silently
        for name, t in cfg.tasks.items():
            if any(name in ds.tasks for ds in out):
                continue
            have = "; ".join(f"data.train.{i} ({type(ds.adapter).__name__}) gives {list(ds.adapter.provides)}"
                             for i, ds in enumerate(out))
            msg = f"data.train: no training dataset labels task '{name}' (type {t.type}): {have}"
            if any(d.tasks for d in cfg.data.train):  # the config chose the datasets' tasks: its head is kept as it is
                log.warning("%s; its head will not learn", msg)
            else:  # every dataset was asked for every task it can label, and none can label this one
                raise ConfigError(msg)
    return out
