"""One backbone, many heads: :class:`MultiTaskModel` and :func:`build_model`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from visionmtl.models.backbone import LEVEL_STRIDES, Backbone
from visionmtl.models.heads.classification import ClassificationHead
from visionmtl.models.heads.detection import DetectionHead
from visionmtl.models.heads.segmentation import SegmentationHead, default_levels

__all__ = ["HEAD_TYPES", "MultiTaskModel", "build_model", "head_levels"]

HEAD_TYPES: dict[str, type[nn.Module]] = {
    "classification": ClassificationHead,
    "detection": DetectionHead,
    "segmentation": SegmentationHead,
}

_DETECTION_LEVELS = ("p3", "p4", "p5", "p6", "p7")


class MultiTaskModel(nn.Module):
    """A shared :class:`Backbone` feeding one head per task (hard parameter sharing).

    Args:
        backbone: feature extractor, ``backbone(images) -> {level: Tensor}``.
        heads: task name -> head module (see ``docs/design.md`` for the head contract).
        adapters: optional task name -> module ``(features dict) -> features dict`` giving the
            task its own view of the shared features (MTAN attention, private adapters; see
            :mod:`visionmtl.mtl.sharing`). Adapters count as task-specific parameters.

    Parts are named ``"backbone"`` and the task names (a task's head and adapter) for
    :meth:`set_frozen`, which staged training uses.
    """

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module],
                 adapters: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a MultiTaskModel needs at least one task head")
        for name in heads:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"invalid task name {name!r} (non-empty, no '.')")
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))
        self.adapters = nn.ModuleDict(dict(adapters or {}))
        self._frozen: dict[str, dict[int, bool]] = {}  # part -> {id(param): requires_grad before}

    @property
    def tasks(self) -> list[str]:
        """Task names in head order."""
        return list(self.heads.keys())

    def _select(self, tasks: Sequence[str] | None) -> list[str]:
        if tasks is None:
            return self.tasks
        unknown = [t for t in tasks if t not in self.heads]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; the model has {', '.join(self.heads)}")
        return list(tasks)

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """The shared representation: ``{level: [B, C, h, w]}`` from the backbone."""
        return self.backbone(images)

    def forward_heads(self, features: Mapping[str, Tensor], tasks: Sequence[str] | None = None
                      ) -> dict[str, dict[str, Tensor]]:
        """Each selected task's head on its view of ``features`` (through its adapter, if any)."""
        out = {}
        for task in self._select(tasks):
            feats = self.adapters[task](features) if task in self.adapters else features
            out[task] = self.heads[task](feats)
        return out

    def forward(self, images: Tensor, tasks: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
        """Args: ``images`` float ``[B, 3, H, W]``; ``tasks`` a subset of heads to run (default all).

        Returns: ``{task: head raw outputs}``.
        """
        return self.forward_heads(self.features(images), tasks)

    def loss(self, raw: Mapping[str, Mapping[str, Tensor]], batch: Any,
             tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The losses of every task in ``raw`` (or of ``tasks``), merged.

        Args:
            raw: output of :meth:`forward`.
            batch: any object with ``targets`` (list of per-image dicts) and ``has``
                (``{task: bool [B]}``; a missing task counts as unlabelled everywhere).

        Returns:
            ``{"loss_<task>_<term>": scalar}`` for every task.
        """
        targets = batch.targets
        out: dict[str, Tensor] = {}
        for task in (tasks if tasks is not None else [t for t in self.heads if t in raw]):
            has = batch.has.get(task) if hasattr(batch.has, "get") else batch.has[task]
            if has is None:
                has = torch.zeros(len(targets), dtype=torch.bool)
            out.update(self.heads[task].loss(raw[task], targets, has))
        return out

    def extra_losses(self) -> dict[str, Tensor]:
        """Losses that belong to no task (soft sharing's penalty); none for hard sharing."""
        return {}

    # ------------------------------------------------------------------ parameter groups
    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]] + ([self.adapters[task]] if task in self.adapters else [])

    def part_modules(self, part: str) -> list[nn.Module]:
        if part == "backbone":
            return [self.backbone]
        if part in self.heads:
            return self.task_modules(part)
        raise KeyError(f"unknown model part '{part}'; valid: backbone, {', '.join(self.heads)}")

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters every task's loss reaches (the backbone)."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Trainable parameters only ``task``'s loss reaches (its head and adapter)."""
        return [p for m in self.task_modules(task) for p in m.parameters() if p.requires_grad]

    def set_frozen(self, parts: Sequence[str]) -> None:
        """Freeze exactly ``parts`` (``backbone``/task names): no gradients, normalisation in eval mode.

        Parts no longer listed get back the ``requires_grad`` they had before they were frozen
        (so the backbone's own ``freeze_stages``/``freeze_bn`` survive a stage change).
        """
        for part in list(self._frozen):
            if part not in parts:
                before = self._frozen.pop(part)
                for m in self.part_modules(part):
                    for p in m.parameters():
                        p.requires_grad_(before.get(id(p), p.requires_grad))
        for part in parts:
            if part not in self._frozen:
                params = [p for m in self.part_modules(part) for p in m.parameters()]
                self._frozen[part] = {id(p): p.requires_grad for p in params}
                for p in params:
                    p.requires_grad_(False)
        self.train(self.training)

    @property
    def frozen_parts(self) -> list[str]:
        return list(self._frozen)

    def train(self, mode: bool = True) -> "MultiTaskModel":
        """Set train/eval mode; frozen parts stay in eval mode (BatchNorm statistics do not move)."""
        super().train(mode)
        for part in self._frozen:
            for m in self.part_modules(part):
                m.eval()
        return self

    @torch.no_grad()
    def predict(
        self,
        raw: Mapping[str, Mapping[str, Tensor]],
        image_sizes: Sequence | Tensor,
        orig_sizes: Sequence | Tensor | None = None,
    ) -> list[dict[str, dict[str, Tensor]]]:
        """Per-image predictions of every task in ``raw``.

        Args:
            raw: output of :meth:`forward`.
            image_sizes: ``(h, w)`` valid input region per image.
            orig_sizes: optional ``(h, w)`` original image size per image.

        Returns:
            One dict per image: ``{task: head result}`` (classification ``labels``/``scores``/
            ``probs``, detection ``boxes``/``scores``/``labels``, segmentation ``mask``).
        """
        n = len(image_sizes)
        results: list[dict[str, dict[str, Tensor]]] = [{} for _ in range(n)]
        for task, head in self.heads.items():
            if task not in raw:
                continue
            for i, r in enumerate(head.predict(raw[task], image_sizes, orig_sizes)):
                results[i][task] = r
        return results


def head_levels(head_type: str, cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Backbone levels a head of ``head_type`` configured by ``cfg`` reads."""
    if head_type == "classification":
        return tuple(cfg.get("levels") or ("c5",))
    if head_type == "detection":
        return tuple(cfg.get("levels") or _DETECTION_LEVELS)
    if head_type == "segmentation":
        levels = tuple(cfg.get("levels") or default_levels(cfg.get("kind", "fpn")))
        return levels + ((cfg["detail"],) if cfg.get("detail") else ())
    raise ValueError(f"unknown head type {head_type!r}; valid: {', '.join(HEAD_TYPES)}")


def _check_kwargs(task: str, cls: type, kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in kwargs if k not in params or k in ("self", "task", "in_channels", "num_classes"))
    if unknown:
        valid = [p for p in params if p not in ("self", "task", "in_channels", "num_classes")]
        raise ValueError(f"task '{task}': unknown {cls.__name__} options {unknown}; valid: {valid}")


def build_model(backbone_kwargs: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]],
                sharing: str = "hard", soft_lambda: float = 1e-3, adapter_reduction: int = 4) -> MultiTaskModel:
    """Build a backbone with exactly the levels the heads need, and the heads on top.

    Args:
        backbone_kwargs: :class:`Backbone` keyword arguments; ``levels`` is computed from the
            heads (detection P3-P7, segmentation P2-P5 for ``fpn`` / C2+C5 for ``aspp`` plus its ``detail`` level,
            classification C5 or its ``levels``) and replaces any given value.
        tasks: task name -> ``{"type": "classification"|"detection"|"segmentation",
            "num_classes": int (or "classes": list of names), **head kwargs}``.

    Raises:
        ValueError: no tasks, an unknown type or option, or a task with fewer than 1 class.
    """
    if not tasks:
        raise ValueError("no tasks configured: a model needs at least one head")
    specs: dict[str, tuple[str, int, dict[str, Any]]] = {}
    needed: set[str] = set()
    for name, raw_cfg in tasks.items():
        cfg = dict(raw_cfg)
        head_type = cfg.pop("type", None)
        if head_type not in HEAD_TYPES:
            raise ValueError(f"task '{name}': unknown head type {head_type!r}; valid: {', '.join(HEAD_TYPES)}")
        classes = cfg.pop("classes", None)
        num_classes = cfg.pop("num_classes", None)
        if num_classes is None:
            if classes is None:
                raise ValueError(f"task '{name}': num_classes (or classes) is required")
            num_classes = len(classes)
        if int(num_classes) < 1:
            raise ValueError(f"task '{name}': head has zero classes")
        _check_kwargs(name, HEAD_TYPES[head_type], cfg)
        levels = head_levels(head_type, cfg)
        bad = [lv for lv in levels if lv not in LEVEL_STRIDES]
        if bad:
            raise ValueError(f"task '{name}': unknown feature levels {bad}; valid: {', '.join(LEVEL_STRIDES)}")
        needed.update(levels)
        specs[name] = (head_type, int(num_classes), cfg)

    bb_kwargs = dict(backbone_kwargs)
    bb_kwargs["levels"] = tuple(sorted(needed, key=lambda lv: (LEVEL_STRIDES[lv], lv)))
    backbone = Backbone(**bb_kwargs)
    if sharing not in ("hard", "soft", "mtan", "private"):
        raise ValueError(f"unknown sharing {sharing!r}; valid: hard, soft, mtan, private")

    heads: dict[str, nn.Module] = {}
    for name, (head_type, num_classes, cfg) in specs.items():
        if head_type == "classification":
            levels = head_levels(head_type, cfg)
            cfg["levels"] = levels
            heads[name] = ClassificationHead(name, {lv: backbone.out_channels[lv] for lv in levels}, num_classes, **cfg)
            continue
        read = head_levels(head_type, cfg)
        # a segmentation head's detail level is read, but passed on its own (not in ``levels``)
        levels = read[:-1] if head_type == "segmentation" and cfg.get("detail") else read
        cfg.setdefault("levels", levels)
        cfg.setdefault("strides", [backbone.strides[lv] for lv in levels])
        if head_type == "detection":
            chans = {backbone.out_channels[lv] for lv in levels}
            if len(chans) != 1:
                raise ValueError(f"task '{name}': detection levels {levels} have different channels {sorted(chans)}")
            heads[name] = DetectionHead(name, chans.pop(), num_classes, **cfg)
        else:
            heads[name] = SegmentationHead(name, {lv: backbone.out_channels[lv] for lv in read}, num_classes, **cfg)
    if sharing == "hard":
        return MultiTaskModel(backbone, heads)
    from visionmtl.mtl.sharing import SoftSharedModel, build_adapters

    if sharing == "soft":
        return SoftSharedModel(backbone, heads, soft_lambda)
    levels = {name: head_levels(spec[0], spec[2]) for name, spec in specs.items()}
    return MultiTaskModel(backbone, heads, build_adapters(sharing, backbone.out_channels, levels, adapter_reduction))
