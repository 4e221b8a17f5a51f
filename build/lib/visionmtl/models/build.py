"""Building models: a backbone with exactly the levels the heads read, and each task's head
from its type's spec (:mod:`visionmtl.tasks`).

``build_model(cfg)`` takes a :class:`~visionmtl.config.Config`; ``build_model(backbone_kwargs,
tasks)`` takes plain dicts (``{name: {"type": ..., "num_classes" or "classes": ..., **head
kwargs}}``), which tests and notebooks use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..config import Config
from ..errors import ConfigError
from ..tasks import spec
from .backbone import LEVEL_STRIDES, Backbone
from .multitask import MultiTaskModel
from .sharing import SoftSharedModel, build_adapters

__all__ = ["build_model", "build_multitask"]


def build_multitask(backbone_kwargs: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]],
                    sharing: str = "hard", soft_lambda: float = 1e-3, adapter_reduction: int = 4) -> MultiTaskModel:
    """Build a backbone with exactly the levels the heads need, and the heads on top.

    Args:
        backbone_kwargs: :class:`Backbone` keyword arguments; ``levels`` is computed from the
            heads (each spec's ``levels``: detection P3-P7, segmentation P2-P5 or C2+C5 plus its
            ``detail`` level, classification C5 or its ``levels``) and replaces any given value.
        tasks: task name -> ``{"type": <task type>, "num_classes": int (or "classes": list of
            names), **head kwargs}``.

    Raises:
        ValueError (ConfigError for unknown types and keys): no tasks, an unknown type or
        option, or a task with fewer than 1 output.
    """
    if not tasks:
        raise ValueError("no tasks configured: a model needs at least one head")
    if sharing not in ("hard", "soft", "mtan", "private"):
        raise ValueError(f"unknown sharing {sharing!r}; valid: hard, soft, mtan, private")
    plans: dict[str, tuple[Any, int, dict[str, Any], tuple[str, ...]]] = {}
    needed: set[str] = set()
    for name, raw_cfg in tasks.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"invalid task name {name!r} (non-empty, no '.')")
        cfg = dict(raw_cfg)
        kind = spec(cfg.pop("type", None))
        classes = cfg.pop("classes", None)
        num = cfg.pop("num_classes", None)
        if num is None:
            if classes is None:
                raise ValueError(f"task '{name}': num_classes (or classes) is required")
            num = len(classes)
        if int(num) < 1:
            raise ValueError(f"task '{name}': head has zero classes")
        _check_head_kwargs(name, kind, cfg)
        levels = kind.levels(cfg)
        bad = [lv for lv in levels if lv not in LEVEL_STRIDES]
        if bad:
            raise ValueError(f"task '{name}': unknown feature levels {bad}; valid: {', '.join(LEVEL_STRIDES)}")
        needed.update(levels)
        plans[name] = (kind, int(num), cfg, levels)

    bb_kwargs = dict(backbone_kwargs)
    bb_kwargs["levels"] = tuple(sorted(needed, key=lambda lv: (LEVEL_STRIDES[lv], lv)))
    backbone = Backbone(**bb_kwargs)
    heads: dict[str, nn.Module] = {name: kind.build_head(name, num, cfg, backbone)
                                   for name, (kind, num, cfg, _) in plans.items()}
    if sharing == "hard":
        model = MultiTaskModel(backbone, heads)
    elif sharing == "soft":
        model = SoftSharedModel(backbone, heads, soft_lambda)
    else:
        levels = {name: plan[3] for name, plan in plans.items()}
        model = MultiTaskModel(backbone, heads, build_adapters(sharing, backbone.out_channels, levels, adapter_reduction))
    model.task_types = {name: plan[0].name for name, plan in plans.items()}  # for flip TTA and tools
    return model


def _check_head_kwargs(name: str, kind, cfg: Mapping[str, Any]) -> None:
    from ..tasks.base import check_head_keys

    check_head_keys(name, kind, {k: v for k, v in cfg.items() if k != "in_channels"}, lambda key: f"task '{name}'")
    reserved = sorted(k for k in cfg if k in ("task", "in_channels", "num_classes", "strides"))
    if reserved:
        raise ValueError(f"task '{name}': {reserved} are set by the builder, not the config")


def build_model(cfg: Config | Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]] | None = None,
                **kwargs: Any) -> MultiTaskModel:
    """The model of a config, or (with ``tasks``) of plain backbone and task dicts (:func:`build_multitask`)."""
    if tasks is not None:
        return build_multitask(cfg, tasks, **kwargs)
    plain = {}
    for name, t in cfg.tasks.items():
        kind = spec(t)
        plain[name] = {"type": t.type, "num_classes": len(kind.outputs(t)), **kind.head_kwargs(t)}
    m = cfg.model
    try:
        return build_multitask(dataclasses.asdict(m.backbone), plain, sharing=m.sharing, soft_lambda=m.soft_lambda,
                               adapter_reduction=m.adapter_reduction)
    except ConfigError:
        raise
    except ValueError as e:  # a combination of model keys that cannot be built: one line naming them
        raise ConfigError(f"model: {e}") from None
