"""Head combinations of a config: naming, parsing, the config and model of one, and a synthetic batch."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..config import Config, ConfigError
from ..data.collate import Batch
from ..models.build import build_model
from ..models.multitask import MultiTaskModel
from ..tasks import spec

# --------------------------------------------------------------------------------------------
# Combinations and configs
# --------------------------------------------------------------------------------------------
def combo_name(combo: Sequence[str]) -> str:
    """``("cls", "det")`` -> ``"cls+det"``."""
    return "+".join(combo)


def all_combos(tasks: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``tasks``, by size then in task order (7 for 3 tasks)."""
    tasks = list(tasks)
    return [c for k in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, k)]


def closure(tasks: Mapping[str, Any], combo: Sequence[str]) -> tuple[str, ...]:
    """``combo`` plus the tasks its tasks cannot work without (an instance task's detection
    task), in the order of ``tasks`` (a config's ``tasks``): the smallest model that runs those heads."""
    names = set(combo)
    todo = list(combo)
    while todo:
        t = todo.pop()
        for dep in spec(tasks[t]).links(tasks[t]):
            if dep not in names:
                names.add(dep)
                todo.append(dep)
    return tuple(t for t in tasks if t in names)


def parse_combos(spec: Any, tasks: Sequence[str], cfg: Config | None = None) -> list[tuple[str, ...]]:
    """Resolve a combination spec against the configured task names.

    Args:
        spec: ``"all"``, ``"cls,det+seg"``, or a sequence of ``"a+b"`` strings / task tuples.
        tasks: task names in config order.

        cfg: the config, to keep linked tasks together (:func:`closure`): ``"all"`` leaves out a
            combination without them, and naming one is an error.

    Returns:
        Combinations as tuples in config order, without duplicates, in the order given.

    Raises:
        ConfigError: an unknown task name, an empty combination, a combination missing a task
        one of its tasks needs, or nothing selected.
    """
    tasks = list(tasks)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return [c for c in all_combos(tasks) if cfg is None or closure(cfg.tasks, c) == c]
    items = [s for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[tuple[str, ...]] = []
    for item in items:
        names = [n.strip() for n in item.split("+")] if isinstance(item, str) else [str(n).strip() for n in item]
        names = [n for n in names if n]
        if not names:
            raise ConfigError(f"--combos: empty combination in {spec!r}")
        unknown = [n for n in names if n not in tasks]
        if unknown:
            raise ConfigError(f"--combos: unknown task(s) {unknown}; configured tasks: {', '.join(tasks)}")
        combo = tuple(t for t in tasks if t in names)
        if cfg is not None and closure(cfg.tasks, combo) != combo:
            missing = [t for t in closure(cfg.tasks, combo) if t not in combo]
            raise ConfigError(f"--combos: {combo_name(combo)} needs {', '.join(missing)} (write "
                              f"{combo_name(closure(cfg.tasks, combo))})")
        if combo not in out:
            out.append(combo)
    if not out:
        raise ConfigError(f"--combos: nothing selected by {spec!r}")
    return out


def subset_config(cfg: Config, tasks: Sequence[str]) -> Config:
    """A deep copy of ``cfg`` keeping only ``tasks``; dataset task lists are restricted to them and
    a dataset left with none is dropped."""
    missing = [t for t in tasks if t not in cfg.tasks]
    if missing:
        raise ConfigError(f"unknown task(s) {missing}; configured tasks: {', '.join(cfg.tasks)}")
    sub = copy.deepcopy(cfg)
    sub.tasks = {n: t for n, t in sub.tasks.items() if n in tasks}
    for split in ("train", "val"):
        kept = []
        for d in getattr(sub.data, split):
            if d.tasks:
                d.tasks = [t for t in d.tasks if t in tasks]
                if not d.tasks:  # an empty list would mean "every task it can": drop the dataset
                    continue
            kept.append(d)
        setattr(sub.data, split, kept)
    return sub


def build_combo_model(cfg: Config, combo: Sequence[str], seed: int = 0) -> MultiTaskModel:
    """The config's model with only the heads of ``combo`` (weights seeded, backbone weights as configured)."""
    torch.manual_seed(seed)
    return build_model(subset_config(cfg, combo))


# --------------------------------------------------------------------------------------------
# Synthetic input
# --------------------------------------------------------------------------------------------
def synthetic_batch(cfg: Config, batch: int, imgsz: int, seed: int = 0) -> Batch:
    """A seeded batch with labels for every task of ``cfg`` (``has`` all true).

    Images are standard-normal ``[B, 3, imgsz, imgsz]`` (roughly what normalisation produces);
    each task's spec draws its label (classification 1-2 random labels, detection 1-4 random
    boxes at least 8 px wide, segmentation a blocky random mask, regression random values).
    """
    if imgsz < 32 or imgsz % 32:
        raise ConfigError(f"--imgsz must be a positive multiple of 32, got {imgsz}")
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, imgsz, imgsz, generator=g)
    targets: list[dict] = [{} for _ in range(batch)]
    for name, t in cfg.tasks.items():
        for tgt in targets:
            spec(t).synthetic_target(t, tgt, imgsz, g)
    has = {name: torch.ones(batch, dtype=torch.bool) for name in cfg.tasks}
    meta = [{"path": "<synthetic>", "image_id": i, "dataset": "synthetic", "orig_size": (imgsz, imgsz),
             "input_size": (imgsz, imgsz)} for i in range(batch)]
    return Batch(images, targets, has, meta)
