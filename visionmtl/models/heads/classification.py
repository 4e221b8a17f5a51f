"""Image-level classification head (multi-label or multi-class) on globally pooled C5 features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassificationHead"]


class ClassificationHead(nn.Module):
    """Globally pooled ``c5`` -> Linear -> ReLU -> (Dropout) -> Linear.

    Args:
        task: task name, used in loss keys (``loss_<task>_cls``).
        in_channels: channels of the ``c5`` feature map.
        num_classes: number of classes ``C``.
        multilabel: ``True``: independent sigmoid per class, BCE-with-logits over multi-hot
            targets built from ``target["labels"]`` (``K >= 0`` ids). ``False``: softmax over
            classes, cross-entropy against one class id per image.
        label_smoothing: cross-entropy label smoothing (multi-class only).
        hidden: hidden width; ``0`` gives a single linear layer.
        dropout: dropout probability after the hidden ReLU.
        attr: when set, the class id is read from ``target["attrs"][attr]`` (an int) instead of
            ``target["labels"]``.
        threshold: multi-label decision threshold on sigmoid probabilities in :meth:`predict`.
        pool: ``"avg"``, ``"max"`` or ``"avgmax"`` (both, concatenated). Max pooling keeps a small
            object's evidence that averaging over the whole map dilutes, which matters for
            multi-label presence; ``avgmax`` is the default.
    """

    def __init__(
        self,
        task: str,
        in_channels: int,
        num_classes: int,
        multilabel: bool = True,
        label_smoothing: float = 0.0,
        hidden: int = 256,
        dropout: float = 0.0,
        attr: str | None = None,
        threshold: float = 0.5,
        pool: str = "avgmax",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"task '{task}': head has zero classes")
        self.task = task
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)
        self.label_smoothing = float(label_smoothing)
        self.attr = attr
        self.threshold = float(threshold)
        self.level = "c5"
        if pool not in ("avg", "max", "avgmax"):
            raise ValueError(f"task '{task}': pool must be avg, max or avgmax, got {pool!r}")
        self.pool = pool
        in_channels = in_channels * 2 if pool == "avgmax" else in_channels
        if hidden and hidden > 0:
            layers: list[nn.Module] = [nn.Linear(in_channels, hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(hidden, num_classes))
        else:
            layers = [nn.Dropout(dropout)] if dropout > 0 else []
            layers.append(nn.Linear(in_channels, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Args: ``features["c5"]`` float ``[B, in_channels, h, w]``.

        Returns: ``{"logits": [B, C]}``.
        """
        x = features[self.level]
        if self.pool == "avg":
            pooled = x.mean(dim=(2, 3))
        elif self.pool == "max":
            pooled = x.amax(dim=(2, 3))
        else:
            pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return {"logits": self.mlp(pooled)}

    def _target_ids(self, target: Mapping) -> Tensor:
        if self.attr is not None:
            value = target["attrs"][self.attr]
            return torch.as_tensor([int(value)], dtype=torch.int64)
        return torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)

    def loss(self, raw: Mapping[str, Tensor], targets: Sequence[Mapping], has: Tensor) -> dict[str, Tensor]:
        """Classification loss over images whose ``has`` is true.

        Args:
            raw: output of :meth:`forward`.
            targets: per-image target dicts (``labels`` int64 ``[K]`` or ``attrs``).
            has: bool ``[B]``.

        Returns:
            ``{"loss_<task>_cls": scalar float32}``; ``logits.sum() * 0`` when no image has the label.
        """
        logits = raw["logits"]
        key = f"loss_{self.task}_cls"
        idx = [i for i, h in enumerate(has.tolist()) if h]
        if not idx:
            return {key: logits.sum() * 0}
        sel = logits[torch.as_tensor(idx, device=logits.device)].float()
        ids = [self._target_ids(targets[i]).to(logits.device) for i in idx]
        for t in ids:
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
                raise ValueError(f"task '{self.task}': class id out of range 0..{self.num_classes - 1}: {t.tolist()}")
        if self.multilabel:
            target = torch.zeros_like(sel)
            for row, t in enumerate(ids):
                target[row, t] = 1.0
            loss = F.binary_cross_entropy_with_logits(sel, target)
        else:
            for i, t in zip(idx, ids):
                if t.numel() != 1:
                    raise ValueError(f"task '{self.task}': multi-class target of image {i} has {t.numel()} labels, expected 1")
            target = torch.cat(ids)
            loss = F.cross_entropy(sel, target, label_smoothing=self.label_smoothing)
        return {key: loss}

    @torch.no_grad()
    def predict(
        self,
        raw: Mapping[str, Tensor],
        image_sizes: Sequence | Tensor,
        orig_sizes: Sequence | Tensor | None = None,
    ) -> list[dict[str, Tensor]]:
        """Per-image results.

        Returns:
            One dict per image: ``probs`` float32 ``[C]`` (sigmoid or softmax), ``scores`` (the
            same ``[C]`` probabilities) and ``labels`` int64: multi-label -> ids with
            ``prob >= threshold`` sorted by decreasing probability; multi-class -> ``[1]`` argmax.
        """
        logits = raw["logits"].float()
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
        results = []
        for p in probs:
            if self.multilabel:
                order = torch.argsort(p, descending=True)
                labels = order[p[order] >= self.threshold]
            else:
                labels = p.argmax().reshape(1)
            results.append({"scores": p, "labels": labels.to(torch.int64), "probs": p})
        return results
