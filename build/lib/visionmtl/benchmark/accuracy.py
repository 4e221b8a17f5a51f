"""Accuracy of multi-task models against single-task models: each task's main metric and Δm.

One single-task model per task and the multi-task model (or any other combination of heads) are
either trained with :class:`~visionmtl.engine.trainer.Trainer` from the same config (same data,
optimiser, schedule, seed and number of epochs; only the set of heads differs) or loaded from
checkpoints, and evaluated on the config's val split with
:func:`visionmtl.engine.evaluate.evaluate`. Each task is scored by its main metric
(:func:`~visionmtl.engine.evaluate.main_metric`: classification mAP or top-1, detection mAP,
segmentation mIoU; all higher-is-better) and every multi-task combination gets
Δm (:func:`visionmtl.metrics.mtl.delta_m`) against the single-task models of its tasks.

Trained models are the weights after the last epoch (``last.pt`` in ``OUT/accuracy/<combo>/``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import Config, ConfigError, TaskConfig
from ..engine.evaluate import evaluate, lower_is_better, main_metric
from ..engine.checkpoint import load_trained
from ..engine.runtime import pick_amp, pick_device
from ..engine.trainer import Trainer
from ..metrics.mtl import delta_m, delta_m_per_task
from .combos import closure, combo_name, parse_combos, subset_config

log = logging.getLogger("visionmtl")

__all__ = [
    "SHAPES_DEFAULTS",
    "accuracy_summary",
    "ensure_shapes_data",
    "evaluate_checkpoint",
    "main_metrics",
    "parse_checkpoints",
    "run_accuracy",
    "train_and_evaluate",
]

#: Generation parameters used when a config points at a missing shapes dataset (as ``make demo``).
SHAPES_DEFAULTS: dict[str, int] = {"train": 2000, "val": 200, "size": 128, "seed": 0}

_SHAPES_ANN = re.compile(r"^(?P<root>.*shapes[^/]*)/(train|val)/annotations\.json$")


def ensure_shapes_data(cfg: Config) -> None:
    """Generate the shapes dataset when a config's ``.../shapes/{train,val}/annotations.json`` is missing.

    Uses :data:`SHAPES_DEFAULTS` (the same data as ``make demo``). Other missing files are left
    for the data loader to report.
    """
    from ..data.shapes import ensure_shapes

    roots = set()
    for d in list(cfg.data.train) + list(cfg.data.val):
        ann = str(d.args.get("ann_file", ""))
        m = _SHAPES_ANN.match(ann.replace("\\", "/"))
        if m and not Path(ann).is_file():
            roots.add(m.group("root"))
    for root in sorted(roots):
        log.info("generating the shapes dataset in %s", root)
        ensure_shapes(root, SHAPES_DEFAULTS["train"], SHAPES_DEFAULTS["val"], SHAPES_DEFAULTS["size"],
                      SHAPES_DEFAULTS["seed"])


def main_metrics(results: Mapping[str, Any], tasks: Mapping[str, TaskConfig]) -> dict[str, dict]:
    """``{task: {"metric": name, "value": float | None}}`` from :func:`evaluate` results."""
    out = {}
    for name, t in tasks.items():
        key = main_metric(t)
        value = results.get(name, {}).get(key) if isinstance(results.get(name), Mapping) else None
        out[name] = {"metric": key, "value": None if value is None else float(value)}
    return out


def _scalars(results: Mapping[str, Any]) -> dict:
    """Evaluation results without per-class tables (JSON-friendly)."""
    return {t: ({k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}
                if isinstance(m, Mapping) else m) for t, m in results.items()}


def accuracy_summary(models: Mapping[str, Mapping[str, Optional[float]]], tasks: Mapping[str, TaskConfig],
                     sources: Optional[Mapping[str, str]] = None) -> dict:
    """Per-combination metrics and Δm against the single-task models.

    Args:
        models: combination name (``"cls"``, ``"cls+det"``, ...) -> ``{task: main metric value}``.
            Single-task entries are the baselines.
        tasks: the config's tasks (metric names, and the task order).
        sources: optional combination name -> where the model came from.

    Returns:
        ``{"singles": {task: value}, "metric_names": {task: name}, "combos": {name: {"tasks",
        "metrics", "single", "delta_m", "delta_m_per_task", "source", "note"?}}}``. ``delta_m``
        is a fraction (positive: the multi-task model is better on average), 0 for single-task
        models, and None with a ``note`` when a baseline or a value is missing.
    """
    names = {t: main_metric(c) for t, c in tasks.items()}
    lower = {t: lower_is_better(c, names[t]) for t, c in tasks.items()}
    # a task's single-task model; an instance task's has its detector (combos.closure)
    singles = {t: models[combo_name(closure(tasks, (t,)))].get(t) for t in tasks
               if combo_name(closure(tasks, (t,))) in models}
    combos: dict[str, dict] = {}
    order = {t: i for i, t in enumerate(tasks)}
    for name in sorted(models, key=lambda n: (len(n.split("+")), [order.get(t, 99) for t in n.split("+")])):
        combo = name.split("+")
        metrics = {t: models[name].get(t) for t in combo}
        entry: dict[str, Any] = {"tasks": combo, "metrics": metrics,
                                 "single": {t: singles.get(t) for t in combo}, "source": (sources or {}).get(name)}
        try:
            low = {t: lower[t] for t in combo}
            entry["delta_m_per_task"] = delta_m_per_task(metrics, singles, low)
            entry["delta_m"] = delta_m(metrics, singles, low)
        except ValueError as e:
            entry["delta_m_per_task"] = {}
            entry["delta_m"] = None
            entry["note"] = str(e)
        combos[name] = entry
    return {"singles": singles, "metric_names": names, "combos": combos}


def parse_checkpoints(spec: str | Mapping[str, str] | None, tasks: Sequence[str]) -> dict[tuple[str, ...], str]:
    """``"cls=a.pt,det=b.pt,mtl=c.pt,det+seg=d.pt"`` -> ``{("cls",): "a.pt", ..., (all tasks): "c.pt"}``.

    ``mtl`` names the model with every configured task; a task name a single-task model; a
    ``+``-joined name any other combination.
    """
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, Mapping) else (
        (p.split("=", 1) if "=" in p else (None, p)) for p in (s.strip() for s in spec.split(",")) if p)
    out: dict[tuple[str, ...], str] = {}
    for key, path in items:
        if not key:
            raise ConfigError(f"--checkpoints: expected task=path, got {path!r}")
        key = key.strip()
        combo = tuple(tasks) if key == "mtl" else parse_combos([key], tasks)[0]
        if combo in out:  # one row per combination: a second path would silently replace the first
            raise ConfigError(f"--checkpoints: two checkpoints for {'+'.join(combo)} ({out[combo]} and "
                              f"{str(path).strip()}); the table has one row per head combination")
        out[combo] = str(path).strip()
    return out


def _val_loader(cfg: Config):
    from ..data.loader import build_loader

    if not cfg.data.val:
        raise ConfigError("accuracy: the config has no data.val datasets to evaluate on")
    return build_loader(cfg, "val")


def train_and_evaluate(cfg: Config, combo: Sequence[str], work_dir: str | Path, epochs: Optional[int] = None,
                       device: Optional[str] = None, threads: int = 0) -> dict:
    """Train the model with the heads of ``combo`` on the config's data and evaluate it on val.

    Every model gets the config's ``train`` section unchanged (apart from ``epochs``, ``device``
    and ``threads`` when given), so singles and multi-task models share one schedule.

    Returns:
        :func:`evaluate` results of the final weights (``{task: metrics}``).
    """
    sub = subset_config(cfg, combo)
    if epochs:
        sub.train.epochs = int(epochs)
    if device:
        sub.train.device = device
    if threads:
        sub.train.threads = int(threads)
    sub.work_dir = str(work_dir)
    trainer = Trainer(sub, str(work_dir))
    trainer.train()
    loader = trainer.val_loader if trainer.val_loader is not None else _val_loader(sub)
    return evaluate(trainer.eval_model, loader, sub.tasks, trainer.device, trainer.amp_dtype, sub.train.channels_last,
                    flip=sub.data.eval_flip)


def evaluate_checkpoint(cfg: Config, combo: Sequence[str], path: str, device: Optional[str] = None) -> dict:
    """Evaluate a trained checkpoint's heads of ``combo`` on the config's val split.

    Raises:
        ConfigError: the checkpoint lacks one of the tasks or lists its classes differently.
    """
    dev = pick_device(device or cfg.train.device)
    model, ck_cfg, _ = load_trained(path, dev)
    for t in combo:
        if t not in ck_cfg.tasks:
            raise ConfigError(f"{path}: checkpoint has no task '{t}' (it has {', '.join(ck_cfg.tasks)})")
        if list(ck_cfg.tasks[t].classes) != list(cfg.tasks[t].classes):
            raise ConfigError(f"{path}: task '{t}' classes {ck_cfg.tasks[t].classes} differ from the config's "
                              f"{cfg.tasks[t].classes}")
    sub = subset_config(cfg, combo)
    mf = torch.channels_last if sub.train.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=mf)
    return evaluate(model, _val_loader(sub), sub.tasks, dev, pick_amp(sub.train.amp, dev), sub.train.channels_last,
                    flip=sub.data.eval_flip)


def run_accuracy(cfg: Config, out_dir: str | Path, epochs: Optional[int] = None,
                 checkpoints: str | Mapping[str, str] | None = None, train: bool = True,
                 combos: Optional[Sequence[Sequence[str]]] = None, device: Optional[str] = None,
                 threads: int = 0) -> dict:
    """Single-task models for every task plus the multi-task model(s): metrics and Δm.

    Args:
        cfg: the config (data, schedule, every task).
        out_dir: training runs go to ``out_dir/accuracy/<combo>/``.
        epochs: training epochs for every model (default: the config's).
        checkpoints: ``task=path`` / ``mtl=path`` / ``a+b=path`` (string or mapping); those
            models are loaded instead of trained.
        train: train the models that have no checkpoint; when False only checkpoints are
            evaluated.
        combos: multi-task combinations to evaluate besides the singles (default: every task).
        device: ``auto``/``cpu``/``cuda`` (default: the config's ``train.device``).
        threads: torch CPU threads for training (0: the config's).

    Returns:
        :func:`accuracy_summary` plus ``"results"`` (every model's scalar metrics) and ``"epochs"``.
    """
    tasks = list(cfg.tasks)
    ckpts = parse_checkpoints(checkpoints, tasks)
    wanted: list[tuple[str, ...]] = list(dict.fromkeys(closure(cfg.tasks, (t,)) for t in tasks))
    for c in (combos if combos is not None else [tuple(tasks)]):
        c = tuple(c)
        if len(c) > 1 and c not in wanted:
            wanted.append(c)
    for c in ckpts:
        if c not in wanted:
            wanted.append(c)
    if train and any(c not in ckpts for c in wanted):
        ensure_shapes_data(cfg)
    values: dict[str, dict[str, Optional[float]]] = {}
    results: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for c in wanted:
        name = combo_name(c)
        if c in ckpts:
            log.info("accuracy: evaluating %s from %s", name, ckpts[c])
            res = evaluate_checkpoint(cfg, c, ckpts[c], device)
            sources[name] = f"checkpoint {ckpts[c]}"
        elif train:
            log.info("accuracy: training %s", name)
            res = train_and_evaluate(cfg, c, Path(out_dir) / "accuracy" / name.replace("+", "_"), epochs, device,
                                     threads)
            n_epochs = epochs or cfg.train.epochs
            sources[name] = f"trained {n_epochs} epoch{'' if n_epochs == 1 else 's'}"
        else:
            continue
        results[name] = _scalars(res)
        values[name] = {t: m["value"] for t, m in main_metrics(res, subset_config(cfg, c).tasks).items()}
    summary = accuracy_summary(values, cfg.tasks, sources)
    summary["results"] = results
    summary["epochs"] = epochs or cfg.train.epochs
    return summary
