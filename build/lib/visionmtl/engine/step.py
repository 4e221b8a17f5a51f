"""The training step: a plain function of explicit parts that the trainer and
``tools/benchmark.py --train`` both call (:func:`train_step`), and its backward pass for each
family of balancing method.

:func:`loss_backward` (fixed, uncertainty, DWA, RLW, smooth Tchebycheff): one forward, the
method turns the active tasks' losses into a total, one backward — the cost of joint training.

:func:`gradient_backward` (sum, GradNorm, MGDA, PCGrad, CAGrad, IMTL): per-task gradients are
taken, the method turns their Gram matrix into coefficients ``w`` and the shared part receives
``sum_t w_t g_t``; task-specific parameters (heads, adapters) receive their own task's gradient
(times the config weight, or times ``w_t`` for methods with ``scale_heads``). Where the
per-task gradients are taken is ``train.method.grad_on``:

* ``params``: gradients of every shared parameter. T backward passes through the whole network
  and T x (shared parameter count) floats of extra memory.
* ``rep``: gradients of the shared features (the backbone's outputs; MGDA-UB of Sener & Koltun).
  The backbone runs backward once, with the combined feature gradient; each task's backward
  only crosses its head. Extra memory: T x (feature elements of the batch).

Under DDP the forward bypasses DDP's reducer: the per-task parameter gradients (``params``) are
averaged across ranks before the Gram matrix is formed, or (``rep``) the Gram matrices of the
local feature gradients are summed across ranks (the features of different images are disjoint
blocks of one global vector), so every rank computes the same coefficients; the resulting
parameter gradients are then averaged across ranks. With a fp16 GradScaler the per-task
gradients are unscaled before combining and the combination is scaled back, so the scaler still
finds overflows and skips those steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.distributed as torch_dist
from torch import Tensor

from ..errors import NonFiniteLossError
from . import dist

__all__ = ["StepParts", "active_tasks", "check_finite", "flat_losses", "gradient_backward", "loss_backward",
           "task_totals", "train_step"]


@dataclass
class StepParts:
    """What one optimisation step needs, passed explicitly (the trainer and the benchmark build it).

    ``model`` is what the forward calls (the DDP wrapper or ``net``); ``net`` the plain
    ``MultiTaskModel`` (losses, parameter groups); ``method`` a balancing method
    (:mod:`visionmtl.mtl`); ``optim`` an :class:`~visionmtl.engine.optim.OptimizerSet`;
    ``scaler`` a GradScaler (disabled unless fp16); ``autocast`` a context factory; ``weights``
    the configured task weights; ``ema`` an optional :class:`~visionmtl.engine.ema.ModelEMA`.
    """

    model: torch.nn.Module
    net: Any
    method: Any
    optim: Any
    scaler: Any
    autocast: Callable[[], AbstractContextManager]
    weights: Mapping[str, float]
    grad_on: str = "params"
    clip_grad: float = 0.0
    ema: Optional[Any] = None
    iteration: int = 0  # for messages
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    memory_format: torch.memory_format = field(default=torch.contiguous_format)


def train_step(p: StepParts, batch, tasks: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """One optimisation step on ``batch`` for ``tasks``.

    Returns:
        ``(values to log, per-task loss)``: the flat log values (``loss_<task>_<term>``, extra
        losses, ``loss``, method weights ``w_<task>``) and ``{task: unweighted loss}`` of the
        active tasks (those with a label in the batch on any rank).
    """
    batch = batch.to(p.device, memory_format=p.memory_format)
    tasks = list(tasks)
    active = active_tasks(batch, tasks)
    backward = gradient_backward if p.method.needs_grads else loss_backward
    vals, per_task = backward(p, batch, tasks, active)
    task = tasks[0] if len(tasks) == 1 else None  # per-task optimisers (alternating) step only that task's
    if p.clip_grad > 0:
        p.optim.unscale(p.scaler, task)
        torch.nn.utils.clip_grad_norm_([q for q in p.net.parameters() if q.grad is not None], p.clip_grad)
    p.optim.step(p.scaler, task)
    if p.ema is not None:
        p.ema.update(p.net)
    return vals, {t: per_task[t] for t in active if t in per_task}


def task_totals(losses: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """``{task: {term: L}}`` -> ``{task: sum of its terms}`` (the unweighted task loss)."""
    return {task: sum(terms.values()) for task, terms in losses.items()}


def flat_losses(losses: Mapping[str, Mapping[str, Tensor]], extra: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Structured losses flattened for logging only: ``loss_<task>_<term>`` and the extra terms."""
    out = {f"loss_{task}_{term}": v for task, terms in losses.items() for term, v in terms.items()}
    return {**out, **extra}


def check_finite(losses: Mapping[str, Mapping[str, Tensor]], extra: Mapping[str, Tensor], total: Tensor,
                 iteration: int) -> dict[str, float]:
    """Every loss term and the total as floats (one device transfer); NonFiniteLossError names the task."""
    pairs = [(task, term, v) for task, terms in losses.items() for term, v in terms.items()]
    pairs += [(None, name, v) for name, v in extra.items()]
    values = torch.stack([v.detach().float() for *_, v in pairs] + [total.detach().float()]).tolist()
    for (task, term, _), v in zip(pairs, values):
        if not math.isfinite(v):
            what = f"task '{task}' ({term}={v})" if task is not None else f"'{term}' ({v})"
            raise NonFiniteLossError(f"non-finite loss for {what} at iteration {iteration}")
    if not math.isfinite(values[-1]):
        raise NonFiniteLossError(f"non-finite total loss at iteration {iteration}")
    out = {f"loss_{task}_{term}" if task is not None else term: v for (task, term, _), v in zip(pairs, values)}
    out["loss"] = values[-1]
    return out


def active_tasks(batch, tasks: Sequence[str]) -> list[str]:
    """The tasks of ``tasks`` that have a label somewhere in the batch (on any rank)."""
    counts = torch.stack([batch.has[t].sum() for t in tasks]).float()
    if dist.is_distributed():
        torch_dist.all_reduce(counts)
    return [t for t, c in zip(tasks, counts.tolist()) if c > 0]


def allreduce_grads(params: Sequence[Tensor]) -> None:
    """Average ``p.grad`` over ranks (a missing grad counts as zeros)."""
    if not dist.is_distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch_dist.all_reduce(flat)
    flat /= dist.world_size()
    off = 0
    for p in params:
        n = p.numel()
        p.grad = flat[off:off + n].view(p.shape).to(p.dtype).contiguous(memory_format=_fmt(p))
        off += n


def _fmt(t: Tensor):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def _weights_record(method, active: Sequence[str]) -> dict[str, float]:
    w = getattr(method, "last_weights", {}) or {}
    return {f"w_{t}": float(w[t]) for t in active if t in w}


def _task_values(losses: Mapping[str, Mapping[str, Tensor]], vals: Mapping[str, float]) -> dict[str, float]:
    """Each task's unweighted loss as a float, from the values :func:`check_finite` transferred."""
    return {task: sum(vals[f"loss_{task}_{term}"] for term in terms) for task, terms in losses.items()}


def loss_backward(p: StepParts, batch, tasks: Sequence[str], active: Sequence[str]
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Forward the selected heads, weight the active tasks' losses with ``p.method``, backward."""
    with p.autocast():
        raw = p.model(batch.images, tasks=list(tasks))
    losses = p.net.loss(raw, batch, tasks)
    extra = p.net.extra_losses()
    per_task = task_totals(losses)
    if active:
        total = p.method.total({t: per_task[t] for t in active})
    else:  # nothing labelled in this batch: a zero total that keeps the graph (DDP needs every rank to backward)
        total = sum(per_task.values())
    for v in extra.values():
        total = total + v
    vals = check_finite(losses, extra, total, p.iteration)
    p.optim.zero_grad()
    p.scaler.scale(total).backward()
    allreduce_grads(list(p.method.parameters()))
    vals.update(_weights_record(p.method, active))
    return vals, _task_values(losses, vals)


def gradient_backward(p: StepParts, batch, tasks: Sequence[str], active: Sequence[str]
                      ) -> tuple[dict[str, float], dict[str, float]]:
    """Per-task gradients -> ``p.method`` coefficients -> combined gradient on the shared part."""
    net, method = p.net, p.method
    rep = p.grad_on == "rep"
    with p.autocast():
        if rep:
            feats = net.features(batch.images)
            z = {k: f.detach().requires_grad_(True) for k, f in feats.items()}
            raw = net.forward_heads(z, tasks)
        else:
            raw = net(batch.images, tasks=list(tasks))
    losses = net.loss(raw, batch, tasks)
    extra = net.extra_losses()
    per_task = task_totals(losses)
    cfg_w = p.weights
    log_total = sum(cfg_w[t] * per_task[t].detach() for t in tasks)
    for v in extra.values():
        log_total = log_total + v.detach()
    vals = check_finite(losses, extra, log_total, p.iteration)
    p.optim.zero_grad()
    if not active:
        return vals, _task_values(losses, vals)

    scale = float(p.scaler.get_scale()) if p.scaler.is_enabled() else 1.0
    inputs = list(z.values()) if rep else net.shared_parameters()
    n_in = len(inputs)
    rows, head_grads = [], {}
    for i, t in enumerate(active):
        tp = net.task_parameters(t)
        keep = not rep and i < len(active) - 1
        gs = torch.autograd.grad(per_task[t] * scale, inputs + tp, retain_graph=keep or bool(extra), allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(x)).reshape(-1).float()
                               for g, x in zip(gs[:n_in], inputs)] or [torch.zeros(0, device=batch.images.device)])
                    / scale)
        head_grads[t] = [(p, g) for p, g in zip(tp, gs[n_in:]) if g is not None]
    grads = torch.stack(rows)  # (T, P): per-task gradients of the shared part
    del rows
    if dist.is_distributed() and not rep:
        torch_dist.all_reduce(grads)
        grads /= dist.world_size()
    finite = bool(torch.isfinite(grads).all())
    if grads.shape[1] == 0:  # the shared part is frozen (a stage): only the heads train
        w = torch.tensor([cfg_w[t] for t in active], device=grads.device)
    elif finite:
        gram = (grads @ grads.T).double()  # (T, T); no float64 copy of the (T, P) gradients
        if dist.is_distributed() and rep:
            torch_dist.all_reduce(gram)
        loss_vals = torch.stack([per_task[t].detach().double() for t in active])  # (T,)
        if dist.is_distributed():  # loss-dependent methods (GradNorm, MGDA loss+) see the global mean
            torch_dist.all_reduce(loss_vals)
            loss_vals /= dist.world_size()
        loss_vals = loss_vals.cpu()
        w = method.weights(gram, loss_vals, list(active)).to(grads.device, torch.float32)
    else:  # fp16 overflow: pass the infinities on so the GradScaler skips this step
        w = torch.ones(len(active), device=grads.device)
    combined = (w[:, None] * grads).sum(0) * scale  # (P,)
    del grads
    off = 0
    if rep:
        outs, gts = [], []
        for f in feats.values():
            n = f.numel()
            outs.append(f)
            gts.append(combined[off:off + n].view(f.shape).to(f.dtype))
            off += n
        if any(f.requires_grad for f in outs):  # not when a stage froze the backbone
            torch.autograd.backward([f for f in outs if f.requires_grad],
                                    grad_tensors=[g for f, g in zip(outs, gts) if f.requires_grad])
    else:
        for p in inputs:
            n = p.numel()
            p.grad = combined[off:off + n].view(p.shape).to(p.dtype)
            off += n
    head_w = w.tolist() if getattr(method, "scale_heads", False) else [cfg_w[t] for t in active]
    for hw, t in zip(head_w, active):
        for p, g in head_grads[t]:
            p.grad = g * hw
    if extra:
        p.scaler.scale(sum(extra.values())).backward()
    shared = net.shared_parameters()
    owned = [p for t in active for p in net.task_parameters(t)]
    allreduce_grads((shared if rep else []) + owned + list(method.parameters()))
    vals.update(_weights_record(method, active))
    return vals, _task_values(losses, vals)
