"""``build_model(cfg)``: the config's backbone and tasks -> a MultiTaskModel."""

from __future__ import annotations

import dataclasses
import difflib
import inspect

from ..config import Config, ConfigError
from .multitask import HEAD_TYPES, MultiTaskModel
from .multitask import build_model as _build

# Keys build_model fills in itself; a config may not set them under ``head`` (``levels`` it may:
# the backbone then builds exactly the levels the heads name).
_RESERVED = {"self", "task", "in_channels", "num_classes", "strides"}


def head_kwargs(name: str, task) -> dict:
    """Keyword arguments for task ``name``'s head, checked against the head's signature."""
    cls = HEAD_TYPES[task.type]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in _RESERVED]
    kw = dict(task.head)
    if task.type == "classification":
        kw.update(multilabel=task.multilabel, label_smoothing=task.label_smoothing, attr=task.attr)
    for k in task.head:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"; did you mean 'tasks.{name}.head.{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown key 'tasks.{name}.head.{k}' for a {task.type} head{hint}")
    return kw


def build_model(cfg: Config) -> MultiTaskModel:
    tasks = {}
    for name, t in cfg.tasks.items():
        tasks[name] = {"type": t.type, "num_classes": len(t.classes), **head_kwargs(name, t)}
    backbone = dataclasses.asdict(cfg.model.backbone)
    m = cfg.model
    return _build(backbone, tasks, sharing=m.sharing, soft_lambda=m.soft_lambda, adapter_reduction=m.adapter_reduction)
