"""One backbone, many heads: :class:`MultiTaskModel` (built by :mod:`visionmtl.models.build`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .heads.common import hw_list

__all__ = ["MultiTaskModel", "decode_outputs", "given_results", "graph_outputs", "predict_order"]


def predict_order(heads: Mapping[str, nn.Module], tasks: Sequence[str]) -> list[str]:
    """``tasks`` ordered so that a head which decodes on another task's results (its ``after``
    attribute names that task, e.g. instance masks on a detector's boxes) comes after that task.

    Raises:
        ValueError: such a head's task is not among ``tasks``.
    """
    tasks = list(tasks)
    first = [t for t in tasks if not getattr(heads[t], "after", None)]
    for t in tasks:
        after = getattr(heads[t], "after", None)
        if after and after not in first:
            raise ValueError(f"task '{t}' decodes on the results of task '{after}', which is not being predicted")
    return first + [t for t in tasks if t not in first]


def given_results(head: nn.Module, results: Sequence[Mapping]) -> dict:
    """The ``given=`` keyword of ``head.predict``: the per-image results of the task its ``after``
    names (``results``: one ``{task: result}`` per image), or nothing for a head that needs none."""
    after = getattr(head, "after", None)
    return {"given": [r[after] for r in results]} if after else {}


def graph_outputs(model: nn.Module, raw: Mapping[str, Mapping[str, Tensor]], sizes: Tensor,
                  min_score: float | Tensor | None = None) -> dict[str, dict[str, Tensor]]:
    """``{task: head.graph_outputs(...)}`` for the tasks in ``raw``, each after the task it decodes on."""
    out: dict[str, dict[str, Tensor]] = {}
    for task in predict_order(model.heads, list(raw)):
        head = model.heads[task]
        after = getattr(head, "after", None)
        out[task] = head.graph_outputs(raw[task], sizes, min_score=min_score, given=out.get(after) if after else None)
    return out


def decode_outputs(heads: Mapping[str, nn.Module], out: Mapping[str, Mapping[str, Tensor]], image_sizes: Sequence,
                   orig_sizes: Sequence | None = None, min_score: float | None = None) -> list[dict[str, dict]]:
    """Per-image results ``[{task: result}]`` from graph outputs (a model's or an exported file's)."""
    results: list[dict[str, dict]] = [{} for _ in range(len(image_sizes))]
    for task in predict_order(heads, list(out)):
        head = heads[task]
        after = getattr(head, "after", None)
        given = [r[after] for r in results] if after else None
        for i, r in enumerate(head.host_results(out[task], image_sizes, orig_sizes, min_score=min_score, given=given)):
            results[i][task] = r
    return results


class MultiTaskModel(nn.Module):
    """A shared :class:`Backbone` feeding one head per task (hard parameter sharing).

    Args:
        backbone: feature extractor, ``backbone(images) -> {level: Tensor}``.
        heads: task name -> head module (see ``docs/design.md`` for the head contract).
        adapters: optional task name -> module ``(features dict) -> features dict`` giving the
            task its own view of the shared features (MTAN attention, private adapters; see
            :mod:`visionmtl.models.sharing`). Adapters count as task-specific parameters.

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
        self.task_types: dict[str, str] = {}  # task -> type name (set by models/build.py)
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
             tasks: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
        """The losses of every task in ``raw`` (or of ``tasks``), kept per task.

        Args:
            raw: output of :meth:`forward`.
            batch: any object with ``targets`` (list of per-image dicts) and ``has``
                (``{task: bool [B]}``; a missing task counts as unlabelled everywhere).

        Returns:
            ``{task: {term: scalar}}``: each head's loss terms (e.g. ``{"det": {"cls": ...,
            "box": ..., "ctr": ...}}``), exactly 0 (still attached) for a task no image labels.
        """
        targets = batch.targets
        out: dict[str, dict[str, Tensor]] = {}
        for task in (tasks if tasks is not None else [t for t in self.heads if t in raw]):
            has = batch.has.get(task) if hasattr(batch.has, "get") else batch.has[task]
            if has is None:
                has = torch.zeros(len(targets), dtype=torch.bool)
            out[task] = dict(self.heads[task].loss(raw[task], targets, has))
        return out

    def extra_losses(self) -> dict[str, Tensor]:
        """Losses that belong to no task, ``{name: scalar}`` (soft sharing's penalty); none for hard sharing."""
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
        """Per-image predictions of every task in ``raw``: each head's ``graph_outputs`` (the part an
        exported graph holds), then its ``host_results`` (:func:`decode_outputs`), as the
        ``Predictor`` decodes.

        Args:
            raw: output of :meth:`forward`.
            image_sizes: ``(h, w)`` valid input region per image.
            orig_sizes: optional ``(h, w)`` original image size per image.

        Returns:
            One dict per image: ``{task: head result}`` (classification ``labels``/``scores``/
            ``probs``, detection ``boxes``/``scores``/``labels``, segmentation ``mask``).
        """
        sizes = torch.as_tensor(hw_list(image_sizes, len(image_sizes)), dtype=torch.int64)
        present = {t: raw[t] for t in self.heads if t in raw}
        return decode_outputs(self.heads, graph_outputs(self, present, sizes), image_sizes, orig_sizes)
