"""Exponential moving average of the model's weights (``train.ema_decay``).

Validation, ``best.pt`` and inference use the average; training continues on the raw weights.
The averaging is :class:`torch.optim.swa_utils.AveragedModel` over parameters and buffers (so
BatchNorm's running statistics are averaged too), with a decay that ramps up from 0 as in
Ultralytics' ``ModelEMA``: ``decay * (1 - exp(-updates / tau))``. Early in a run from random init
the average therefore follows the weights closely, instead of dragging the random start along.
Integer buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .checkpoint import load_model_state


class ModelEMA:
    """EMA of ``model``; call :meth:`update` after every optimiser step.

    Args:
        model: the (unwrapped) model being trained.
        decay: the decay once ramped up, in ``(0, 1)``; the average spans about ``1 / (1 - decay)``
            steps.
        tau: ramp length in updates (``decay`` is reached to within 1/e after ``tau``); 0 = no ramp.
    """

    def __init__(self, model: nn.Module, decay: float, tau: float = 0.0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        if tau < 0:
            raise ValueError(f"train.ema_tau must be >= 0, got {tau}")
        self.decay, self.tau = float(decay), float(tau)
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.requires_grad_(False)
        self.module.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class and state-dict keys as the trained one)."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def decay_at(self, updates: int) -> float:
        """The decay applied at update number ``updates`` (the first update copies the weights)."""
        return self.decay * (1.0 - math.exp(-updates / self.tau)) if self.tau > 0 else self.decay

    @torch.no_grad()
    def _average(self, ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(ema, current, 1.0 - self.decay_at(int(n_averaged)))
        else:
            torch._foreach_copy_(ema, current)

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict, updates: int, path: str = "checkpoint") -> None:
        """Restore the average (a mismatch raises :class:`CheckpointError` naming ``path``)."""
        load_model_state(self.module, state, path)
        self.averaged.n_averaged.fill_(int(updates))
