"""Optimiser with no weight decay on norms and biases; warmup then cosine/step/constant schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm, nn.BatchNorm1d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; norm parameters, biases and scalars without."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
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


def build_optimizer(model: nn.Module, cfg: TrainConfig, extra_params: list | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if extra_params:
        groups.append({"params": list(extra_params), "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


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
