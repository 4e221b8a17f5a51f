"""Loss-level task balancing: turn the active tasks' losses into one scalar to backpropagate.

Every step the trainer calls ``total(losses)`` with the scalar losses of the *active* tasks (those
with labels in the batch): any non-empty subset of ``tasks``, in ``tasks`` order. Per-task state
(log-variances, loss history, reference values) is kept by task name, so subsets are handled.

Scale convention: every method is scaled so that "all weights equal" gives the fixed baseline's
scale sum_t L_t, i.e. the effective weights of the T active tasks average 1 (sum to T). The
learning rate then means the same thing for every method. Only ``Fixed`` uses the config weights;
the adaptive methods replace them.

``last_weights`` holds the effective weight (d total / d L_t) applied to each active task's loss
at the last call, as plain floats for logging. ``state_dict()`` holds tensors and plain Python
values only, so it survives ``torch.save`` + ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import MethodBase


class LossWeighting(MethodBase):
    """Base class: fixed config weights, no learnable parameters, no state (see :class:`MethodBase`)."""

    needs_grads = False

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """Scalar total to backpropagate.

        Args:
            losses: active task -> scalar loss tensor (any float dtype, attached to the graph).
        Returns:
            A 0-dim float tensor; sets ``last_weights``.
        """
        raise NotImplementedError

    def _active(self, losses: dict[str, Tensor]) -> list[str]:
        if not losses:
            raise ValueError("total() needs the loss of at least one active task")
        unknown = [t for t in losses if t not in self.task_weights]
        if unknown:
            raise KeyError(f"losses for unknown tasks {unknown}; tasks are {self.tasks}")
        return list(losses)

    def _weighted(self, losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
        self.last_weights = {t: float(weights[t]) for t in losses}
        return sum(weights[t] * losses[t] for t in losses)


class Fixed(LossWeighting):
    """Fixed weighting: total = sum_t w_t L_t with the config weights."""

    name = "fixed"

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        self._active(losses)
        return self._weighted(losses, self.task_weights)


class Uncertainty(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learnable log-variance s_t per task (0-dim float32 ``nn.Parameter``, init 0):
    total = sum_t (exp(-s_t) L_t + s_t). With s = 0 this is sum_t L_t (scale convention).
    ``last_weights`` = exp(-s_t). The parameters live on the CPU and are copied (differentiably)
    to the loss's device in ``total``, so the trainer need not move them.
    """

    name = "uncertainty"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks, weights)
        self.log_vars = {t: nn.Parameter(torch.zeros((), dtype=torch.float32)) for t in self.tasks}

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        out = 0
        for t in self._active(losses):
            s = self.log_vars[t].to(losses[t].device)
            out = out + torch.exp(-s) * losses[t].float() + s
        self.last_weights = {t: math.exp(-float(self.log_vars[t].detach())) for t in losses}
        return out

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars[t] for t in self.tasks]

    def state_dict(self) -> dict:
        return {"log_vars": {t: p.detach().clone() for t, p in self.log_vars.items()}}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for t, v in state["log_vars"].items():
                self.log_vars[t].copy_(v)


class DWA(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, MTAN).

    Options:
        temperature: softmax temperature (default 2.0).

    Weights for epoch k: w_t = K exp(r_t / temp) / sum_j exp(r_j / temp) with
    r_t = L_t(k-1) / L_t(k-2) from the epoch-mean losses given to ``epoch_end``; the softmax runs
    over the K tasks that have two history values, the others get weight 1. Weights are 1 until
    two epochs have been seen. Per step, the active tasks' weights are renormalised to sum to the
    number of active tasks (a no-op when all tasks are active). A task's history is the last two
    epochs in which it was reported.
    """

    name = "dwa"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None,
                 temperature: float = 2.0) -> None:
        super().__init__(tasks, weights)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.history: dict[str, list[float]] = {t: [] for t in self.tasks}
        self.epoch_weights: dict[str, float] = {t: 1.0 for t in self.tasks}

    def epoch_end(self, mean_losses: dict[str, float]) -> None:
        for t, v in mean_losses.items():
            if t in self.history and math.isfinite(float(v)):
                self.history[t] = (self.history[t] + [float(v)])[-2:]
        ready = [t for t in self.tasks if len(self.history[t]) == 2]
        self.epoch_weights = {t: 1.0 for t in self.tasks}
        if ready:
            r = torch.tensor([self.history[t][1] / max(self.history[t][0], 1e-12) for t in ready],
                             dtype=torch.float64)
            w = len(ready) * torch.softmax(r / self.temperature, dim=0)  # (K,)
            self.epoch_weights.update(zip(ready, w.tolist()))

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        active = self._active(losses)
        raw = [self.epoch_weights[t] for t in active]
        scale = len(active) / sum(raw)
        return self._weighted(losses, {t: w * scale for t, w in zip(active, raw)})

    def state_dict(self) -> dict:
        return {"history": {t: list(h) for t, h in self.history.items()},
                "epoch_weights": dict(self.epoch_weights)}

    def load_state_dict(self, state: dict) -> None:
        self.history.update({t: [float(v) for v in h] for t, h in state["history"].items()})
        self.epoch_weights.update({t: float(w) for t, w in state["epoch_weights"].items()})


class RLW(LossWeighting):
    """Random Loss Weighting (Lin et al., TMLR 2022, "Reasonable effectiveness of random weighting").

    Options:
        seed: seed of the method's own ``torch.Generator`` (default 0).

    Each call draws z ~ N(0, I) over the T active tasks and uses w = T softmax(z) (sums to T).
    The generator state is in ``state_dict`` for exact resume.
    """

    name = "rlw"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None,
                 seed: int = 0) -> None:
        super().__init__(tasks, weights)
        self.generator = torch.Generator().manual_seed(int(seed))

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        active = self._active(losses)
        z = torch.randn(len(active), generator=self.generator, dtype=torch.float32)  # (T,)
        w = len(active) * torch.softmax(z, dim=0)
        return self._weighted(losses, dict(zip(active, w.tolist())))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class SmoothTchebycheff(LossWeighting):
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024): smooth min-max balancing.

    Options:
        mu: smoothing (default 0.5); mu -> 0 approaches max_t of the log-ratios.
        warmup_steps: calls per task spent on plain sum_t L_t while the reference (nadir) value
            r_t is accumulated as the running mean of the detached L_t (default 20).

    After a task's warm-up: l_t = log(L_t / r_t + 1e-8) and total = T mu logsumexp(l_t / mu)
    over the active tasks past warm-up (T = their number; logsumexp subtracts the max).
    Tasks still in warm-up add plain L_t. d total / d l_t = T softmax(l / mu)_t sums to T, so the
    scale convention holds in log-loss space; the effective weight on L_t, stored in
    ``last_weights``, is T softmax(l / mu)_t / (L_t + 1e-8 r_t). With warmup_steps=0 the
    reference is the first loss seen.
    """

    name = "stch"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None,
                 mu: float = 0.5, warmup_steps: int = 20) -> None:
        super().__init__(tasks, weights)
        if mu <= 0:
            raise ValueError(f"STCH mu must be > 0, got {mu}")
        self.mu = float(mu)
        self.warmup_steps = int(warmup_steps)
        self.count = {t: 0 for t in self.tasks}  # warm-up calls seen per task
        self.ref = {t: 0.0 for t in self.tasks}  # running mean of the loss during warm-up

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        active = self._active(losses)
        out, weights, ready = 0, {}, []
        for t in active:
            if self.count[t] < max(self.warmup_steps, 1):
                self.count[t] += 1
                self.ref[t] += (float(losses[t].detach()) - self.ref[t]) / self.count[t]
                if self.warmup_steps > 0:
                    out, weights[t] = out + losses[t].float(), 1.0
                    continue
            ready.append(t)
        if ready:
            ref = torch.tensor([max(self.ref[t], 1e-12) for t in ready], dtype=torch.float32)
            L = torch.stack([losses[t].float().reshape(()) for t in ready])  # (K,)
            ref = ref.to(L.device)
            ell = torch.log(L / ref + 1e-8)
            out = out + len(ready) * self.mu * torch.logsumexp(ell / self.mu, dim=0)
            d = len(ready) * torch.softmax(ell.detach() / self.mu, dim=0) / (L.detach() + 1e-8 * ref)
            weights.update(zip(ready, d.tolist()))
        self.last_weights = {t: weights[t] for t in active}
        return out

    def state_dict(self) -> dict:
        return {"count": dict(self.count), "ref": dict(self.ref)}

    def load_state_dict(self, state: dict) -> None:
        self.count.update({t: int(c) for t, c in state["count"].items()})
        self.ref.update({t: float(r) for t, r in state["ref"].items()})


WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "fixed": Fixed,
    "uncertainty": Uncertainty,
    "dwa": DWA,
    "rlw": RLW,
    "stch": SmoothTchebycheff,
}
