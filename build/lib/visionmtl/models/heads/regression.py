"""Image-level regression head: one or more named numeric values per image (an age, a count).

Two ways to read the features:

* ``pool: avg`` / ``avgmax`` (default ``avgmax``): globally pooled levels, concatenated ->
  Linear -> ReLU -> Linear, as a classifier on a ResNet does. For values that describe the whole
  image (an age, a pose angle).
* ``pool: sum``: density regression, as crowd counting does. A 1x1-conv MLP predicts a value at
  every position of every level, and the values are summed over positions.
  A count is then a sum of per-object contributions, which stays right when objects appear in
  other places or numbers than in training. A sum over P positions gets P times the gradient a
  mean would, in the head's own weights and in the shared features; the head scales the gradient
  of its maps by 1 / P (the forward pass is unchanged), so it reaches the optimiser at a mean's
  scale (AdamW's step does not depend on it; plain SGD sees a mean's gradient). Without the
  scale, on the shapes demo (189 positions over P3-P5 of a 96-px crop) the count loss gave the
  backbone a gradient norm of 162 against detection's 1.1 and segmentation's 27; scaled only on
  the way to the backbone, the head's own weights still had a norm of 70-170 against about 2 for
  every other head together, so ``clip_grad: 10`` shrank every task's step by up to 17x and cls,
  det and seg ended at 0.990 / 0.897 / 0.818 instead of 0.997 / 0.933 / 0.856.

With ``pool: sum``, a count that the data can place (``target["points"][name]``: the centres of
the counted objects, which the COCO adapter's ``count_fields`` give after every training crop)
also supervises the map itself, as crowd counting supervises a density map with dot annotations:
the levels' maps are spread onto the finest level's grid (mass kept), each centre puts 1 in its
cell, and the loss term ``density`` is the L1 error of the local counts in windows of 1, 2 and 4
cells (summed over windows, averaged over the three sizes and the labelled maps), times
``density_weight``. A sum alone says how many objects there are but not where; on the shapes demo
it learnt a count per unit area that was 30% high at a larger test size.

Targets may be normalised: the head learns ``(y - mean) / std`` and :meth:`predict` maps back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RegressionHead"]

_LOSSES = ("smooth_l1", "l1", "mse")


class _GradScale(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


class RegressionHead(nn.Module):
    """Pooled features -> ``K`` numeric values per image.

    Args:
        task: task name (for messages).
        in_channels: ``{level: channels}`` of every level read.
        num_outputs: number of values ``K``.
        targets: the values' names (``target["values"][name]``); default ``v0, v1, ...``.
        levels: feature levels to read (default ``("c5",)``).
        pool: ``avgmax``, ``avg`` or ``sum`` (density: per-position values summed; see module doc).
        hidden: hidden width of the MLP.
        dropout: dropout after the hidden ReLU (pooled modes).
        loss: ``smooth_l1`` (Huber with ``beta``), ``l1`` or ``mse``, on normalised values.
        beta: smooth-L1 transition point (in normalised units).
        mean, std: per-value normalisation (length ``K``, or empty for none).
        strides: input pixels per cell of each level (the builder passes the backbone's); needed
            for the density term.
        density_weight: weight of the ``density`` term (``pool: sum`` and point targets; 0 = off).
    """

    def __init__(self, task: str, in_channels: Mapping[str, int], num_outputs: int,
                 targets: Sequence[str] | None = None, levels: Sequence[str] | None = None, pool: str = "avgmax",
                 hidden: int = 256, dropout: float = 0.0, loss: str = "smooth_l1", beta: float = 1.0,
                 mean: Sequence[float] = (), std: Sequence[float] = (), strides: Sequence[int] | None = None,
                 density_weight: float = 1.0) -> None:
        super().__init__()
        if num_outputs < 1:
            raise ValueError(f"task '{task}': head has zero classes")
        if pool not in ("avg", "avgmax", "sum"):
            raise ValueError(f"task '{task}': pool must be avg, avgmax or sum, got {pool!r}")
        if loss not in _LOSSES:
            raise ValueError(f"task '{task}': loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
        self.task, self.pool, self.loss_kind, self.beta = task, pool, loss, float(beta)
        if density_weight < 0:
            raise ValueError(f"task '{task}': density_weight must be >= 0, got {density_weight}")
        self.density_weight = float(density_weight)
        self.num_outputs = int(num_outputs)
        self.targets = list(targets) if targets else [f"v{i}" for i in range(self.num_outputs)]
        if len(self.targets) != self.num_outputs:
            raise ValueError(f"task '{task}': {len(self.targets)} target names for {self.num_outputs} outputs")
        self.levels = tuple(levels or ("c5",))
        missing = [lv for lv in self.levels if lv not in in_channels]
        if missing:
            raise ValueError(f"task '{task}': no channel count for levels {missing}")
        if strides is not None and len(strides) != len(self.levels):
            raise ValueError(f"task '{task}': {len(strides)} strides for {len(self.levels)} levels")
        self.strides = [int(v) for v in strides] if strides is not None else None
        for name, v in (("mean", mean), ("std", std)):
            if len(v) not in (0, self.num_outputs):
                raise ValueError(f"task '{task}': {name} has {len(v)} values for {self.num_outputs} targets")
        if any(s <= 0 for s in std):
            raise ValueError(f"task '{task}': std must be > 0, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean) or [0.0] * self.num_outputs, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std) or [1.0] * self.num_outputs, dtype=torch.float32))
        if pool == "sum":
            self.proj = nn.ModuleDict({lv: nn.Conv2d(in_channels[lv], hidden, 1) for lv in self.levels})
            self.mlp = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, self.num_outputs, 1))
            nn.init.zeros_(self.mlp[-1].weight)  # start from a count of 0 everywhere
            nn.init.zeros_(self.mlp[-1].bias)
        else:
            width = sum(in_channels[lv] for lv in self.levels) * (2 if pool == "avgmax" else 1)
            self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                     nn.Linear(hidden, self.num_outputs))

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Returns ``{"values": float [B, K]}`` in normalised units."""
        if self.pool == "sum" and torch.compiler.is_exporting():  # the gradient scale is for training only
            maps = [self.mlp(self.proj[lv](features[lv])).float() for lv in self.levels]
            return {"values": torch.cat([m.flatten(2) for m in maps], dim=2).sum(2)}
        if self.pool == "sum":
            scale = 1.0 / sum(features[lv].shape[-2] * features[lv].shape[-1] for lv in self.levels)
            maps = [_GradScale.apply(self.mlp(self.proj[lv](features[lv])).float(), scale)
                    for lv in self.levels]  # [B, K, h, w] each; the gradient of a mean (module doc)
            out = {"values": torch.cat([m.flatten(2) for m in maps], dim=2).sum(2)}
            if self.training and self.density_weight > 0 and self.strides is not None:
                out["density"] = self._on_finest(maps)
            return out
        pooled = []
        for lv in self.levels:
            x = features[lv]
            pooled.append(x.mean(dim=(2, 3)))
            if self.pool == "avgmax":
                pooled.append(x.amax(dim=(2, 3)))
        return {"values": self.mlp(torch.cat(pooled, dim=1)).float()}

    def _on_finest(self, maps: Sequence[Tensor]) -> Tensor:
        """The levels' maps summed on the finest level's grid, each coarse cell's value spread
        evenly over the fine cells it covers (the total is unchanged): ``[B, K, H0, W0]``."""
        s0 = min(self.strides)
        fine = maps[self.strides.index(s0)]
        h0, w0 = fine.shape[-2:]
        out = torch.zeros_like(fine)
        for m, s in zip(maps, self.strides):
            f = s // s0
            if f > 1:
                m = m.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)[..., :h0, :w0] / (f * f)
            out[..., : m.shape[-2], : m.shape[-1]] += m
        return out

    def _density_loss(self, dens: Tensor, targets: Sequence[Mapping], has: Tensor) -> Tensor | None:
        """L1 of local counts (windows of 1, 2, 4 cells) against the point targets; None without any."""
        b, k, h, w = dens.shape
        s0 = min(self.strides)
        want = torch.zeros_like(dens)
        labelled = torch.zeros(b, k, dtype=torch.bool)
        for i, flag in enumerate(has.tolist()):
            points = targets[i].get("points", {}) if flag else {}
            for j, name in enumerate(self.targets):
                if name not in points:
                    continue
                xy = torch.as_tensor(points[name], dtype=torch.float32, device=dens.device).reshape(-1, 2)
                ix = (xy[:, 0] / s0).floor().long().clamp(0, w - 1)
                iy = (xy[:, 1] / s0).floor().long().clamp(0, h - 1)
                want[i, j].index_put_((iy, ix), torch.ones_like(xy[:, 0]), accumulate=True)
                labelled[i, j] = True
        if not bool(labelled.any()):
            return None
        # the map sums to the normalised value (y - mean) / std: spread the offset over the cells
        want = want / self.std[:, None, None] - (self.mean / self.std)[:, None, None] / (h * w)
        sel = labelled.to(dens.device)
        err = dens.new_zeros(())
        for size in (1, 2, 4):
            d, t = (F.avg_pool2d(x, size, ceil_mode=True, divisor_override=1) if size > 1 else x
                    for x in (dens, want))
            err = err + (d - t).abs().sum((2, 3))[sel].mean()
        return err / 3

    def loss(self, raw: Mapping[str, Tensor], targets: Sequence[Mapping], has: Tensor) -> dict[str, Tensor]:
        """Regression loss over the values present in the images whose ``has`` is true.

        Targets: ``target["values"]``, ``{name: float}``; an absent name is no label for that
        value; ``target["points"]``, ``{name: float [M, 2]}``, object centres in input pixels
        (optional, density term). Returns ``{"reg": scalar}``, the mean over labelled values (0,
        attached, if none), and ``"density"`` when the raw output has a map and points are given.
        """
        pred = raw["values"].float()  # [B, K]
        y = torch.zeros_like(pred)
        present = torch.zeros_like(pred, dtype=torch.bool)
        for i, h in enumerate(has.tolist()):
            if not h:
                continue
            values = targets[i].get("values", {})
            for k, name in enumerate(self.targets):
                if name in values:
                    y[i, k] = float(values[name])
                    present[i, k] = True
        if not bool(present.any()):
            return {"reg": pred.sum() * 0}
        z = (y - self.mean) / self.std
        p, t = pred[present], z[present]
        if self.loss_kind == "l1":
            loss = F.l1_loss(p, t)
        elif self.loss_kind == "mse":
            loss = F.mse_loss(p, t)
        else:
            loss = F.smooth_l1_loss(p, t, beta=self.beta)
        out = {"reg": loss}
        if "density" in raw:
            dens = self._density_loss(raw["density"], targets, has)
            if dens is not None:
                out["density"] = self.density_weight * dens
        return out

    @torch.no_grad()
    def predict(self, raw: Mapping[str, Tensor], image_sizes: Sequence | Tensor,
                orig_sizes: Sequence | Tensor | None = None) -> list[dict[str, Tensor]]:
        """One dict per image: ``values`` float32 ``[K]`` in the targets' units."""
        return self.host_results(self.graph_outputs(raw), image_sizes, orig_sizes)

    def graph_outputs(self, raw: Mapping[str, Tensor], sizes=None, min_score=None, given=None) -> dict[str, Tensor]:
        """The exported part: ``values`` float32 ``[B, K]`` in the targets' units."""
        return {"values": raw["values"].float() * self.std + self.mean}

    def host_results(self, out: Mapping[str, Tensor], image_sizes, orig_sizes=None, min_score=None,
                     given=None) -> list[dict[str, Tensor]]:
        return [{"values": v} for v in out["values"].float()]
