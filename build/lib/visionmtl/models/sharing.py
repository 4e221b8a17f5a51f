"""Parameter sharing beyond one backbone with task heads.

* **soft** (:class:`SoftSharedModel`, Duong et al. 2015): every task has its own backbone (all
  start from the same initial weights) and ``soft_lambda * sum_{i<j} ||theta_i - theta_j||^2``
  over corresponding parameters pulls them together; the penalty is added to the total loss as
  ``reg_soft`` (unweighted, logged). Cost: T backbones' compute and memory.
* **mtan** (:class:`TaskAttention`, after MTAN, Liu et al. 2019): each task multiplies every
  pyramid level it reads by its own sigmoid attention mask computed from that level
  (1x1 conv -> GroupNorm -> ReLU -> 1x1 conv -> sigmoid), so each head sees its own view of
  the shared features. The masks start near 1 (zero last-layer weights, bias 3), i.e. training
  starts from hard sharing.
* **private** (:class:`PrivateAdapter`, shared-private / residual adapters, Rebuffi et al.
  2017): each task adds a small residual bottleneck (1x1 -> 3x3 -> 1x1, zero-initialised last
  layer) to every level it reads: private capacity beside the shared backbone.

Adapters are task-specific parameters: gradient methods treat them like heads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .heads.common import group_norm
from .multitask import MultiTaskModel

__all__ = ["PrivateAdapter", "SoftSharedModel", "TaskAttention", "build_adapters", "soft_penalty"]


def _hidden(channels: int, reduction: int) -> int:
    return max(8, channels // max(reduction, 1))


class TaskAttention(nn.Module):
    """One task's attention masks over the levels it reads: ``f * sigmoid(g(f))`` per level.

    Args:
        channels: level -> channels of that level.
        reduction: hidden channels = channels // reduction.
    """

    def __init__(self, channels: Mapping[str, int], reduction: int = 4) -> None:
        super().__init__()
        self.masks = nn.ModuleDict()
        for lv, c in channels.items():
            h = _hidden(c, reduction)
            last = nn.Conv2d(h, c, 1)
            nn.init.zeros_(last.weight)
            nn.init.constant_(last.bias, 3.0)
            self.masks[lv] = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), group_norm(h), nn.ReLU(inplace=True), last)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = dict(features)
        for lv, g in self.masks.items():
            f = features[lv]
            out[lv] = f * torch.sigmoid(g(f))
        return out


class PrivateAdapter(nn.Module):
    """One task's residual bottleneck adapters: ``f + a(f)`` on every level it reads."""

    def __init__(self, channels: Mapping[str, int], reduction: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict()
        for lv, c in channels.items():
            h = _hidden(c, reduction)
            last = nn.Conv2d(h, c, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.blocks[lv] = nn.Sequential(
                nn.Conv2d(c, h, 1, bias=False), group_norm(h), nn.ReLU(inplace=True),
                nn.Conv2d(h, h, 3, padding=1, bias=False), group_norm(h), nn.ReLU(inplace=True), last)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = dict(features)
        for lv, block in self.blocks.items():
            out[lv] = features[lv] + block(features[lv])
        return out


def build_adapters(kind: str, out_channels: Mapping[str, int], levels: Mapping[str, Sequence[str]],
                   reduction: int = 4) -> dict[str, nn.Module]:
    """One adapter per task over the levels its head reads (``kind``: ``mtan`` or ``private``)."""
    cls = {"mtan": TaskAttention, "private": PrivateAdapter}.get(kind)
    if cls is None:
        raise ValueError(f"no adapters for sharing {kind!r}; valid: mtan, private")
    return {task: cls({lv: out_channels[lv] for lv in lvs}, reduction) for task, lvs in levels.items()}


def soft_penalty(backbones: Sequence[nn.Module]) -> Tensor:
    """``sum_{i<j} sum_p ||theta_i,p - theta_j,p||^2`` over the trainable parameters of identical backbones.

    Uses ``sum_{i<j} ||x_i - x_j||^2 = T sum_i ||x_i - mean(x)||^2`` (one pass per parameter,
    without the cancellation of the ``T sum ||x_i||^2 - ||sum x_i||^2`` form).
    """
    named = [dict(b.named_parameters()) for b in backbones]
    total = None
    for name, p0 in named[0].items():
        ps = [n[name] for n in named]
        if not any(p.requires_grad for p in ps):
            continue
        x = torch.stack([p.float() for p in ps])  # (T, *shape)
        term = len(ps) * (x - x.mean(0, keepdim=True)).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


class SoftSharedModel(MultiTaskModel):
    """Soft parameter sharing: one backbone per task (same initial weights) and an L2 tie between them.

    Every backbone is built with the union of the levels the heads need, so every parameter has
    a partner in every other backbone. ``extra_losses()`` returns ``{"reg_soft": lambda * penalty}``.
    """

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module], soft_lambda: float = 1e-3) -> None:
        super().__init__(backbone, heads)
        del self.backbone
        self.backbones = nn.ModuleDict({t: copy.deepcopy(backbone) for t in heads})
        self.soft_lambda = float(soft_lambda)

    @property
    def backbone(self) -> nn.Module:  # the first task's backbone (channels/strides are the same for all)
        return self.backbones[self.tasks[0]]

    def features(self, images: Tensor) -> dict[str, Tensor]:
        raise RuntimeError("soft sharing has no shared representation: every task has its own backbone")

    def forward(self, images: Tensor, tasks: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
        return {t: self.heads[t](self.backbones[t](images)) for t in self._select(tasks)}

    def extra_losses(self) -> dict[str, Tensor]:
        if self.soft_lambda <= 0 or len(self.backbones) < 2:
            return {}
        return {"reg_soft": self.soft_lambda * soft_penalty(list(self.backbones.values()))}

    def task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]]

    def part_modules(self, part: str) -> list[nn.Module]:
        if part == "backbone":
            return list(self.backbones.values())
        return super().part_modules(part)

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        mods = [self.backbones[task], self.heads[task]]
        return [p for m in mods for p in m.parameters() if p.requires_grad]
