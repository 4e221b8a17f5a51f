"""The task-type contract: everything the package needs to know about one kind of task.

A task type (classification, detection, segmentation, regression, ...) is one :class:`TaskType`
subclass in its own module of this package, listed once in ``visionmtl/tasks/__init__.py``.
The rest of the package looks the spec up by ``task.type`` (:func:`visionmtl.tasks.spec`) and
never compares type names: config validation, the model builder, the dataset's target mapping,
collate, evaluation, the predictor, JSON records, drawing, flip TTA and the benchmark's
synthetic batches all call the methods below.

Importing a spec is cheap (no torch): ``load_config`` validates a whole config with the specs
before anything heavy is imported, so a typo fails in well under a second. Heads, evaluators
and drawing are imported inside the methods that use them.

A new type is a head (``visionmtl/models/heads/``), a spec module here, and one line in
``visionmtl/tasks/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from ..errors import ConfigError

__all__ = ["NoOptions", "TaskType", "check_head_keys", "check_ranges", "lut"]


@dataclasses.dataclass
class NoOptions:
    """A type with no task-level keys of its own."""


class TaskType:
    """One kind of task. Subclasses set the class attributes and override what differs.

    Class attributes:
        name: the ``type:`` value in a config.
        Options: dataclass of the type's own task-level keys (written flat beside ``type`` and
            ``classes`` in YAML; read as ``task.<key>``).
        head_options: keys valid under ``tasks.<name>.head`` (the head's keyword arguments; a
            test checks them against the head's signature).
        target_keys: per-image target keys this type reads; the first one's presence means
            "labelled" unless :meth:`has_label` says otherwise.
        uses_classes: ``classes`` is required (and names the outputs).
        single: at most one task of this type per model (its target keys are not namespaced).
        trackable: results are boxes that the video pipeline's tracker follows.
        gives_boxes: results are per-object boxes another task can build on (an instance task
            segments a detection task's boxes: :meth:`check_links`).
        coco_iou_type: the COCO results type its :meth:`coco_results` writes (``bbox``,
            ``segm``), or None.
        draw_layer: drawing order in :func:`visionmtl.inference.draw.draw_result`
            (0 masks, 1 boxes, 2 text lines).
    """

    name: str = ""
    Options: type = NoOptions
    head_options: tuple[str, ...] = ()
    target_keys: tuple[str, ...] = ()
    uses_classes: bool = True
    single: bool = False
    trackable: bool = False
    gives_boxes: bool = False
    coco_iou_type: Optional[str] = None
    draw_layer: int = 2

    # ------------------------------------------------------------------ config
    def outputs(self, task) -> list[str]:
        """Names of the head's outputs (class names; regression: target names)."""
        return list(task.classes)

    def validate(self, name: str, task, where: Callable[[str], str]) -> None:
        """Raise a one-line ConfigError for a task of this type that cannot work.

        ``where(key)`` gives the file that set ``key`` (for the message).
        """
        key = f"tasks.{name}.classes"
        if self.uses_classes:
            if len(task.classes) == 0:
                raise ConfigError(f"{where(key)}: task '{name}': head has zero classes")
            if len(set(task.classes)) != len(task.classes):
                dup = sorted({c for c in task.classes if task.classes.count(c) > 1})
                raise ConfigError(f"{where(key)}: task '{name}' lists classes twice: {dup}")
        check_head_keys(name, self, task.head, where)

    def check_links(self, name: str, task, tasks: Mapping[str, Any], where: Callable[[str], str]) -> None:
        """Checks against the config's other tasks (``tasks``: name -> task), after every task's
        :meth:`validate`; may fill defaults that depend on them. Raise a one-line ConfigError."""

    def links(self, task) -> list[str]:
        """Names of the tasks this one cannot work without (after :meth:`check_links`): an
        instance task's detection task. A benchmark's head combination keeps them together."""
        return []

    # ------------------------------------------------------------------ model
    def head_kwargs(self, task) -> dict[str, Any]:
        """Keyword arguments for the head from the task config (``head`` plus type options)."""
        return dict(task.head)

    def levels(self, head_cfg: Mapping[str, Any]) -> tuple[str, ...]:
        """Backbone levels the head reads, given its keyword arguments."""
        raise NotImplementedError

    def build_head(self, name: str, num_outputs: int, kwargs: dict[str, Any], backbone):
        """The head module on ``backbone`` (``out_channels``, ``strides``)."""
        raise NotImplementedError

    def predict(self, head, raw: Mapping, sizes, origs, min_score: Optional[float] = None,
                given: Optional[Sequence[Mapping]] = None) -> list[dict]:
        """Decode a batch's raw outputs (``min_score``: the predictor's confidence threshold).

        ``given``: for a head that decodes on another task's results (its ``after`` attribute
        names that task; :func:`visionmtl.models.multitask.predict_order`), those results per image.
        """
        return head.predict(raw, sizes, origs)

    def merge_flip(self, head, raw: Mapping, raw_m: Mapping, width: int, sizes, origs,
                   min_score: Optional[float] = None) -> list[dict]:
        """Per-image results merged over a batch and its horizontal mirror (models/tta.py)."""
        raise TypeError(f"flip test-time augmentation is not defined for {self.name} tasks")

    # ------------------------------------------------------------------ data
    def can_label(self, adapter, task) -> bool:
        """Whether ``adapter`` can give this task labels (used when a dataset lists no tasks)."""
        return all(k in adapter.provides for k in self.target_keys)

    def has_label(self, task, target: Mapping) -> bool:
        """Whether a per-image target carries this task's label (an absent key = unlabelled)."""
        return self.target_keys[0] in target

    def mapper(self, adapter, name, task, class_map: Mapping, what: str, drop: bool) -> Callable[[dict, bool, dict], None]:
        """A function ``(raw target, geometric, out)`` that writes this task's keys into ``out``.

        It maps the adapter's native class ids into the task's (by name or ``class_map``);
        ``geometric`` is true when a training transform follows. Raise ConfigError when the
        adapter cannot label the task.
        """
        raise NotImplementedError

    def collate(self, target: dict, size: tuple[int, int]) -> None:
        """Pad this type's keys of one target in place to the batch canvas ``size`` (h, w)."""

    # ------------------------------------------------------------------ evaluation
    def metrics(self, task) -> dict[str, bool]:
        """Scalar metrics reported for the task, main metric first: name -> lower is better."""
        raise NotImplementedError

    def main_metric(self, task) -> str:
        return next(iter(self.metrics(task)))

    def log_metrics(self, task) -> list[str]:
        """The metrics shown in the epoch line."""
        return [self.main_metric(task)]

    def evaluator(self, task):
        raise NotImplementedError

    def update(self, evaluator, task, preds: Sequence[Mapping], targets: Sequence[Mapping],
               metas: Sequence[Mapping]) -> None:
        """Add the predictions (original pixels) and targets of the images labelled for the task."""
        raise NotImplementedError

    # ------------------------------------------------------------------ results
    def to_numpy(self, task, pred: Mapping, conf: float) -> dict:
        """A predictor result: numpy arrays (detections at ``score >= conf``)."""
        return {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                for k, v in pred.items()}

    def record(self, task, result: Mapping, save_mask: Callable[[Any], Optional[str]]) -> dict:
        """The JSON-serialisable record of one result. ``save_mask(array)`` writes a PNG when the
        writer asked for PNG masks and returns its relative path (else None)."""
        raise NotImplementedError

    def coco_results(self, task, image_id: int, result: Mapping) -> list[dict]:
        """COCO results of one image (``--save-json`` on image sets), for types with a ``coco_iou_type``."""
        return []

    def draw(self, img, name: str, task, result: Mapping, score_thresh: float):
        """Draw a result over ``img`` (RGB uint8, original pixels): ``(image, text lines)``."""
        return img, []

    def draw_target(self, img, name: str, task, target: Mapping):
        """Draw a (transformed) ground-truth target (``tools/browse_dataset.py``): ``(image, text lines)``."""
        return img, []

    def synthetic_target(self, task, target: dict, imgsz: int, generator) -> None:
        """Fill a random label for this task into ``target`` (benchmarks and tests)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
def check_head_keys(name: str, spec: TaskType, head: Mapping, where: Callable[[str], str]) -> None:
    """One ConfigError for a key under ``tasks.<name>.head`` that the type's head does not take."""
    valid = list(spec.head_options)
    for k in head:
        if k not in valid:
            key = f"tasks.{name}.head.{k}"
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"; did you mean 'tasks.{name}.head.{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{where(key)}: unknown key '{key}' for a {spec.name} head{hint}")


def check_ranges(name: str, head: Mapping, ranges: Mapping[str, tuple[float, float]], where: Callable[[str], str]) -> None:
    """One ConfigError for a numeric head key outside its closed range ``(lo, hi)``."""
    for k, (lo, hi) in ranges.items():
        if k not in head:
            continue
        v = head[k]
        key = f"tasks.{name}.head.{k}"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ConfigError(f"{where(key)}: key '{key}' must be a number in [{lo:g}, {hi:g}], got {v!r}")


def lut(native: Sequence[str], task_classes: Sequence[str], class_map: Mapping, what: str, ignore_missing: bool):
    """Native id -> task id lookup table (int64 numpy); -1 where the class is mapped to null (ignored)."""
    import numpy as np

    index = {c: i for i, c in enumerate(task_classes)}
    table = np.full(max(len(native), 1), -1, np.int64)
    for i, name in enumerate(native):
        target = class_map.get(name, name)
        if target is None:
            continue
        if target not in index:
            if ignore_missing:
                continue
            close = difflib.get_close_matches(str(target), list(task_classes), n=1)
            hint = f" (closest: '{close[0]}')" if close else ""
            raise ConfigError(f"{what}: class '{target}' is not in the task's class list{hint}; "
                              "add it to the task's classes or map it with class_map (null to ignore)")
        table[i] = index[target]
    return table


def mask_lut(native: Sequence[str], task_classes: Sequence[str], class_map: Mapping, what: str, ignore_missing: bool):
    """uint8 [256] table: native mask value -> task class id, 255 (ignore) where unmapped."""
    import numpy as np

    table = lut(native, task_classes, class_map, what, ignore_missing)
    out = np.full(256, 255, np.uint8)
    out[: len(table)] = np.where(table >= 0, table, 255).astype(np.uint8)
    return out


def require(adapter, keys: Sequence[str], task: str) -> None:
    missing = [k for k in keys if k not in adapter.provides]
    if missing:
        raise ConfigError(f"{type(adapter).__name__} cannot label task '{task}' (it provides {list(adapter.provides)})")
