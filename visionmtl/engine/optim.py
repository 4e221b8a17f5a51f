"""Optimiser with no weight decay on norms and biases; warmup then cosine/step/constant schedule."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..config import TrainConfig

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm, nn.BatchNorm1d)


def param_groups(model: nn.Module, weight_decay: float, only: set[int] | None = None) -> list[dict]:
    """Two groups: weights with decay; norm parameters, biases and scalars without.

    ``only``: ids of the parameters to include (default: every trainable parameter).
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen or (only is not None and id(p) not in only):
                continue
            seen.add(id(p))
            if isinstance(module, NORM_TYPES) or name == "bias" or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, extra_params: list | None = None,
                    only: set[int] | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW over :func:`param_groups`, with torch's fused kernels where they apply.

    PyTorch's default on the CPU is the per-parameter loop, a sizeable share of a small model's
    step; the fused kernel is an order of magnitude faster (docs/results.md, "Measurements behind
    design choices"). Where fused is unsupported (a device or dtype), the multi-tensor (foreach)
    version is used.
    """
    groups = param_groups(model, cfg.weight_decay, only)
    if extra_params:
        groups.append({"params": list(extra_params), "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        cls, kw = torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        cls, kw = torch.optim.AdamW, dict(lr=cfg.lr, betas=(0.9, 0.999))
    try:
        return cls(groups, **kw, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups, **kw, foreach=True)


def lr_factor(it: int, total: int, iters_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier on the base lr at iteration ``it`` (0-based) of ``total``."""
    if cfg.warmup_iters > 0 and it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if cfg.schedule == "cosine":
        t = min(it / max(total, 1), 1.0)
        main = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    elif cfg.schedule == "step":
        epoch = it // max(iters_per_epoch, 1)
        main = cfg.gamma ** sum(epoch >= s for s in cfg.steps)
    else:
        main = 1.0
    return warm * main


def build_scheduler(opt: torch.optim.Optimizer, total: int, iters_per_epoch: int, cfg: TrainConfig):
    """A per-iteration LambdaLR."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, iters_per_epoch, cfg))


class OptimizerSet:
    """One optimiser (the usual case) or one per task (alternating training's classic form).

    ``step(scaler, task)`` steps the optimiser of ``task`` (or the only one); every scheduler
    steps every iteration, so learning rates follow global progress. ``state_dict()`` of a single
    optimiser is that optimiser's own state dict (the checkpoint format of one-optimiser runs).
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], total: int, iters_per_epoch: int,
                 cfg: TrainConfig):
        self.optimizers = optimizers
        self.schedulers = {k: build_scheduler(o, total, iters_per_epoch, cfg) for k, o in optimizers.items()}
        self.single = len(optimizers) == 1

    def pick(self, task: str | None = None) -> list[torch.optim.Optimizer]:
        if self.single or task is None:
            return list(self.optimizers.values())
        return [self.optimizers[task]]

    def zero_grad(self) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=True)

    def unscale(self, scaler, task: str | None = None) -> None:
        for o in self.pick(task):
            scaler.unscale_(o)

    def step(self, scaler, task: str | None = None) -> None:
        for o in self.pick(task):
            scaler.step(o)
        scaler.update()
        with warnings.catch_warnings():  # per-task optimisers that sat out this step still follow the schedule
            warnings.simplefilter("ignore", UserWarning)
            for s in self.schedulers.values():
                s.step()

    @property
    def lr(self) -> float:
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def state_dict(self) -> tuple[dict, dict]:
        if self.single:
            (o,), (s,) = self.optimizers.values(), self.schedulers.values()
            return o.state_dict(), s.state_dict()
        return ({"per_task": {k: o.state_dict() for k, o in self.optimizers.items()}},
                {"per_task": {k: s.state_dict() for k, s in self.schedulers.items()}})

    def load_state_dict(self, opt_state: dict, sched_state: dict) -> None:
        if self.single:
            (o,), (s,) = self.optimizers.values(), self.schedulers.values()
            o.load_state_dict(opt_state)
            s.load_state_dict(sched_state)
            return
        for k in self.optimizers:
            self.optimizers[k].load_state_dict(opt_state["per_task"][k])
            self.schedulers[k].load_state_dict(sched_state["per_task"][k])
