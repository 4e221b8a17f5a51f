"""Gradient-level multi-task methods, defined purely in Gram space.

Every method maps the T x T Gram matrix of the active tasks' gradients, G_ij = <g_i, g_j>
(float64), and their detached losses to coefficients w (float64 [T]): the combined gradient is
sum_t w_t g_t. So one code path serves gradients of all shared parameters and of the shared
features, and under DDP the Gram matrix can be summed across ranks. Active tasks are any
non-empty subset of ``tasks``, in ``tasks`` order; per-task state is kept by task name.

Scale convention: every method is scaled so that "all weights equal" gives the fixed baseline's
scale sum_t g_t, i.e. the coefficients of the T active tasks average 1 (sum to T), so the
learning rate means the same thing for every method. Only ``Sum`` uses the config weights.

``GradientMethod.weights`` is the public entry point: it drops tasks whose gradient is zero or
non-finite (weight 0), applies the optional per-task gradient clipping, calls the subclass's
``combine`` and guarantees a finite result. ``state_dict()`` holds tensors and plain Python
values only, so it survives ``torch.save`` + ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from .base import MethodBase

_F64 = torch.float64
_MIN_SQ_NORM = 1e-30  # a task whose squared gradient norm is below this counts as zero


def gram(grads: Tensor) -> Tensor:
    """Gram matrix of per-task gradients.

    Args:
        grads: [T, P] (or [T, ...], flattened) gradients, any float dtype and device.
    Returns:
        float64 [T, T] tensor G_ij = <g_i, g_j> on the same device.
    """
    g = grads.reshape(grads.shape[0], -1).to(_F64)  # (T, P)
    return g @ g.T


class GradientMethod(MethodBase):
    """Base class: turns a Gram matrix into combination coefficients (see :class:`MethodBase`).

    Args:
        tasks: ordered names of all tasks.
        weights: fixed per-task weights from the config (default 1.0 each).
        task_grad_clip: if > 0, each g_t is first scaled by s_t = min(1, clip / ||g_t||).
    """

    needs_grads = True

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None,
                 task_grad_clip: float = 0.0) -> None:
        super().__init__(tasks, weights)
        if task_grad_clip < 0:
            raise ValueError(f"task_grad_clip must be >= 0, got {task_grad_clip}")
        self.task_grad_clip = float(task_grad_clip)

    def weights(self, gram: Tensor, losses: Tensor, tasks: list[str]) -> Tensor:
        """Coefficients to apply to the *unclipped* task gradients.

        Args:
            gram: [T, T] Gram matrix of the active tasks' gradients (any float dtype/device).
            losses: [T] detached loss values of the active tasks.
            tasks: the T active task names, in ``tasks`` order.
        Returns:
            float64 [T] tensor w on ``gram``'s device, always finite; tasks with a zero or
            non-finite gradient get 0. Sets ``last_weights``.
        """
        T = len(tasks)
        if T == 0 or tuple(gram.shape) != (T, T):
            raise ValueError(f"gram must be [T, T] for T={T} active tasks, got {tuple(gram.shape)}")
        if any(t not in self.task_weights for t in tasks):
            raise KeyError(f"unknown tasks in {tasks}; tasks are {self.tasks}")
        G = gram.detach().to("cpu", _F64)
        L = losses.detach().to("cpu", _F64).reshape(T)
        ok = torch.isfinite(G).all(dim=1) & (G.diagonal() > _MIN_SQ_NORM)  # (T,) bool
        w = torch.zeros(T, dtype=_F64)
        if ok.any():
            idx = ok.nonzero().flatten()
            sub = G[idx][:, idx]  # (K, K)
            s = torch.ones(len(idx), dtype=_F64)
            if self.task_grad_clip > 0:
                s = (self.task_grad_clip / sub.diagonal().sqrt()).clamp(max=1.0)
            sub = s[:, None] * sub * s[None, :]
            names = [tasks[i] for i in idx.tolist()]
            c = self.combine(sub, L[idx], names).detach().to("cpu", _F64).reshape(-1)
            if c.numel() != len(idx) or not torch.isfinite(c).all():
                c = torch.tensor([self.task_weights[t] for t in names], dtype=_F64)
            w[idx] = c * s
        self.last_weights = dict(zip(tasks, w.tolist()))
        return w.to(gram.device)

    def combine(self, gram: Tensor, losses: Tensor, tasks: list[str]) -> Tensor:
        """Subclass hook: float64 [K, K] Gram (positive diagonal, clipped) -> float64 [K]."""
        raise NotImplementedError


class Sum(GradientMethod):
    """Plain weighted sum, w_t = config weight (with ``task_grad_clip``, and as the cost reference)."""

    name = "sum"

    def combine(self, gram: Tensor, losses: Tensor, tasks: list[str]) -> Tensor:
        return torch.tensor([self.task_weights[t] for t in tasks], dtype=_F64)


def _min_norm_2(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """argmin over gamma in [0, 1] of |gamma v1 + (1 - gamma) v2|^2 -> (gamma, min squared norm)."""
    if v12 >= v11:
        return 1.0, v11
    if v12 >= v22:
        return 0.0, v22
    gamma = (v22 - v12) / (v11 + v22 - 2.0 * v12)
    return gamma, v22 + gamma * (v12 - v22)


def min_norm_alpha(gram: Tensor, max_iter: int = 250, tol: float = 1e-6) -> Tensor:
    """Min-norm point of the convex hull of vectors given by their float64 [T, T] Gram matrix.

    Frank-Wolfe solver of Sener & Koltun (2018): start from the best pair (exact line search),
    then move toward the vertex with the smallest inner product with the current point.
    Returns float64 [T] convex weights (non-negative, sum to 1).
    """
    T = gram.shape[0]
    if T == 1:
        return torch.ones(1, dtype=_F64)
    G = gram.detach().to("cpu", _F64).tolist()
    best = None
    for i in range(T):
        for j in range(i + 1, T):
            gamma, cost = _min_norm_2(G[i][i], G[i][j], G[j][j])
            if best is None or cost < best[0]:
                best = (cost, i, j, gamma)
    _, i, j, gamma = best
    A = gram.detach().to("cpu", _F64).numpy()
    alpha = np.zeros(T)
    alpha[i], alpha[j] = gamma, 1.0 - gamma
    for _ in range(max_iter if T > 2 else 0):
        Ga = A @ alpha  # (T,)
        t = int(Ga.argmin())
        gamma, _ = _min_norm_2(float(alpha @ Ga), float(Ga[t]), G[t][t])
        new = gamma * alpha
        new[t] += 1.0 - gamma
        done = float(np.abs(new - alpha).sum()) < tol
        alpha = new
        if done:
            break
    return torch.from_numpy(alpha)


class MGDA(GradientMethod):
    """Multiple-gradient descent (Sener & Koltun, NeurIPS 2018); MGDA-UB with ``grad_on: rep``.

    Options:
        normalize: gradient normaliser n_t: "none" 1, "l2" ||g_t||, "loss" L_t,
            "loss+" L_t ||g_t|| (default "l2").
        max_iter, tol: Frank-Wolfe iterations (250) and stopping tolerance on alpha (1e-6).

    Finds convex weights alpha (attribute ``alpha``, float64 [T]) of the min-norm point of the
    normalised gradients g_t / n_t, and applies w_t = T alpha_t / n_t * mean_t(n_t): the direction
    of the normalised problem at the scale of the average task gradient, times T (scale
    convention). With normalize="none", w = T alpha.
    """

    name = "mgda"
    NORMALIZERS = ("none", "l2", "loss", "loss+")

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None,
                 task_grad_clip: float = 0.0, normalize: str = "l2", max_iter: int = 250,
                 tol: float = 1e-6) -> None:
        super().__init__(tasks, weights, task_grad_clip)
        if normalize not in self.NORMALIZERS:
            raise ValueError(f"MGDA normalize must be one of {self.NORMALIZERS}, got {normalize!r}")
        self.normalize, self.max_iter, self.tol = normalize, int(max_iter), float(tol)
        self.alpha = torch.ones(0, dtype=_F64)

    def combine(self, gram: Tensor, losses: Tensor, tasks: list[str]) -> Tensor:
        T = len(tasks)
        norms = gram.diagonal().sqrt()
        n = {"none": torch.ones(T, dtype=_F64), "l2": norms, "loss": losses,
             "loss+": losses * norms}[self.normalize].clamp(min=1e-12)  # (T,)
        self.alpha = min_norm_alpha(gram / (n[:, None] * n[None, :]), self.max_iter, self.tol)
        return T * self.alpha / n * n.mean()


class PCGrad(GradientMethod):
    """Projecting conflicting gradients (Yu et al., NeurIPS 2020).

    Options:
        seed: seed of the method's own ``torch.Generator`` for the projection order (default 0).

    For each task i, g_i' starts at g_i and, for j in a random order of the other tasks, loses its
    component along g_j when <g_i', g_j> < 0. Combined = sum_i g_i'. Computed on coefficient
    vectors a_i (g_i' = sum_k a_ik g_k, so <g_i', g_j> = a_i . G[:, j]); returns sum_i a_i.
    """

    name = "pcgrad"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None,
                 task_grad_clip: float = 0.0, seed: int = 0) -> None:
        super().__init__(tasks, weights, task_grad_clip)
        self.generator = torch.Generator().manual_seed(int(seed))

    def combine(self, gram: Tensor, losses: Tensor, tasks: list[str]) -> Tensor:
        T = len(tasks)
        A = torch.eye(T, dtype=_F64)  # row i: coefficients of g_i'
        for i in range(T):
            for j in torch.randperm(T, generator=self.generator).tolist():
                if j == i:
                    continue
                dot = A[i] @ gram[:, j]
                if dot < 0:
                    A[i, j] -= dot / gram[j, j]
        return A.sum(dim=0)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class CAGrad(GradientMethod):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    Options:
        alpha: radius of the ball around the mean gradient g0, c = alpha ||g0|| (default 0.5).
        rescale: 0 none, 1 divide by (1 + alpha^2) (default), 2 divide by (1 + alpha).

    Minimises x^T G b + c sqrt(x^T G x + 1e-8) over the simplex (b = 1/T, SLSQP from uniform;
    solved on G / mean(diag G), which leaves the minimiser unchanged), then
    d = g0 + c / ||g_x|| g_x with g_x = sum_t x_t g_t. Returns T times d's coefficients (g0 is the
    mean, the fixed baseline the sum).
    """

    name = "cagrad"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None,
                 task_grad_clip: float = 0.0, alpha: float = 0.5, rescale: int = 1) -> None:
        super().__init__(tasks, weights, task_grad_clip)
        if rescale not in (0, 1, 2):
            raise ValueError(f"CAGrad rescale must be 0, 1 or 2, got {rescale}")
        self.alpha, self.rescale = float(alpha), int(rescale)

    def combine(self, gram: Tensor, losses: Tensor, tasks: list[str]) -> Tensor:
        T = len(tasks)
        A = (gram / gram.diagonal().mean()).numpy()  # (T, T), scale-free
        b = np.full(T, 1.0 / T)
        c = self.alpha * math.sqrt(max(float(A.mean()), 0.0))
        x = np.ones(T) if T == 1 else b.copy()
        if T > 1 and c > 0:
            Ab = A @ b
            res = minimize(
                lambda x: x @ Ab + c * math.sqrt(max(x @ A @ x, 0.0) + 1e-8), b,
                jac=lambda x: Ab + c * (A @ x) / math.sqrt(max(x @ A @ x, 0.0) + 1e-8),
                method="SLSQP", bounds=[(0.0, 1.0)] * T,
                constraints=({"type": "eq", "fun": lambda x: 1.0 - x.sum(), "jac": lambda x: -np.ones(T)},))
            if np.all(np.isfinite(res.x)) and np.clip(res.x, 0, 1).sum() > 0:
                x = np.clip(res.x, 0.0, 1.0)
                x = x / x.sum()
        lam = c / (math.sqrt(max(float(x @ A @ x), 0.0)) + 1e-8)
        d = b + lam * x
        d = d / {0: 1.0, 1: 1.0 + self.alpha ** 2, 2: 1.0 + self.alpha}[self.rescale]
        return torch.from_numpy(T * d).to(_F64)


class IMTL(GradientMethod):
    """Impartial MTL, gradient part IMTL-G (Liu et al., ICLR 2021).

    Built instead of Nash-MTL, whose solver needs a convex-optimisation package (cvxpy) outside
    our stack. With u_t = g_t / ||g_t||, D rows g_1 - g_t and U rows u_1 - u_t (t = 2..T):
    alpha_{2..T} = (g_1 U^T)(D U^T)^+, alpha_1 = 1 - sum alpha_{2..T}; the combination
    sum_t alpha_t g_t has equal projections onto every u_t. All inner products come from G
    (<g_i, u_j> = G_ij / sqrt(G_jj)); a pseudo-inverse handles singular cases. Returns T alpha.
    """

    name = "imtl"

    def combine(self, gram: Tensor, losses: Tensor, tasks: list[str]) -> Tensor:
        T = len(tasks)
        if T == 1:
            return torch.ones(1, dtype=_F64)
        M = gram / gram.diagonal().sqrt()[None, :]  # (T, T): M_ij = <g_i, u_j>
        g1U = M[0, 0] - M[0, 1:]  # (T-1,)
        DU = M[0, 0] - M[0, 1:][None, :] - M[1:, 0][:, None] + M[1:, 1:]  # (T-1, T-1)
        rest = g1U @ torch.linalg.pinv(DU, rtol=1e-10)
        return T * torch.cat([(1.0 - rest.sum()).reshape(1), rest])


class GradNorm(GradientMethod):
    """GradNorm (Chen et al., ICML 2018): learn weights that equalise weighted gradient norms.

    Options:
        alpha: restoring-force strength (default 1.5).
        lr: step size of the weight update (default 0.025).

    Keeps weights w (float64, 1 per task). Each call, with n_t = sqrt(G_tt) (norm at the shared
    layer the trainer chose) and L_t(0) the first loss seen per task: G_w = w n,
    r_t = (L_t / L_t(0)) / mean(L / L(0)), target = mean(G_w) r^alpha (constant); one step
    w <- w - lr sign(G_w - target) n / mean(n) (the gradient of sum |G_w - target| in w, divided by
    the mean norm so that the step does not depend on the gradients' scale, which differs between
    parameter and feature gradients), clamp >= 1e-3, renormalise the active weights to sum to the
    number of active tasks. Returns the weights used for *this* step's gradient, i.e. those
    before the update (as in the paper); they are renormalised over the active tasks first.
    """

    name = "gradnorm"
    scale_heads = True  # the learnt weights scale the whole task loss, heads included (as in the paper)

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None,
                 task_grad_clip: float = 0.0, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(tasks, weights, task_grad_clip)
        self.alpha, self.lr, self.task_w = float(alpha), float(lr), torch.ones(len(self.tasks), dtype=_F64)
        self.initial_loss: dict[str, float] = {}

    def combine(self, gram: Tensor, losses: Tensor, tasks: list[str]) -> Tensor:
        T = len(tasks)
        idx = torch.tensor([self.tasks.index(t) for t in tasks])
        used = self.task_w[idx] * T / self.task_w[idx].sum()  # (T,)
        for t, v in zip(tasks, losses.tolist()):
            if t not in self.initial_loss and math.isfinite(v):
                self.initial_loss[t] = v
        n = gram.diagonal().sqrt()
        gw = used * n
        l0 = torch.tensor([self.initial_loss.get(t, math.nan) for t in tasks], dtype=_F64)
        ratio = losses / l0.clamp(min=1e-12)
        r = (ratio / ratio.mean()) ** self.alpha
        if not torch.isfinite(r).all():
            r = torch.ones(T, dtype=_F64)
        target = gw.mean() * r
        step = n / n.mean().clamp(min=1e-30)  # d|G_w - target|/dw = sign * n, made scale-free
        new = (used - self.lr * torch.sign(gw - target) * step).clamp(min=1e-3)
        self.task_w[idx] = new * T / new.sum()
        return used

    def state_dict(self) -> dict:
        return {"task_w": self.task_w.clone(), "initial_loss": dict(self.initial_loss)}

    def load_state_dict(self, state: dict) -> None:
        self.task_w.copy_(state["task_w"])
        self.initial_loss = {t: float(v) for t, v in state["initial_loss"].items()}


GRADIENT_METHODS: dict[str, type[GradientMethod]] = {
    "sum": Sum,
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "imtl": IMTL,
    "gradnorm": GradNorm,
}
