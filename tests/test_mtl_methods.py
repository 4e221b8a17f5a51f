"""Loss weightings and Gram-space gradient methods on tiny seeded toy problems (CPU only)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from visionmtl.mtl.gradient import GRADIENT_METHODS, MGDA, gram
from visionmtl.mtl.weighting import WEIGHTINGS

TASKS = ["cls", "det", "seg"]


def toy_losses(x: torch.Tensor, tasks: list[str] = TASKS) -> dict[str, torch.Tensor]:
    """L_t = mean((A_t x - b_t)^2) with fixed seeded A_t [5, 4], b_t [5]."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, t in enumerate(TASKS):
        A, b = torch.randn(5, 4, generator=g) * (i + 1), torch.randn(5, generator=g)
        if t in tasks:
            out[t] = ((A @ x - b) ** 2).mean()
    return out


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --- loss weightings ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
@pytest.mark.parametrize("active", [TASKS, ["cls", "seg"]])
def test_weighting_step(name: str, active: list[str]):
    method = WEIGHTINGS[name](TASKS, {"det": 2.0})
    assert method.name == name and method.needs_grads is False
    x = torch.nn.Parameter(torch.linspace(-1, 1, 4))
    opt = torch.optim.SGD([x, *method.parameters()], lr=0.01)
    for step in range(3):
        losses = toy_losses(x, active)
        total = method.total(losses)
        assert total.dim() == 0 and torch.isfinite(total)
        assert list(method.last_weights) == active
        assert all(isinstance(w, float) and math.isfinite(w) for w in method.last_weights.values())
        opt.zero_grad()
        total.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        before = x.detach().clone()
        opt.step()
        assert not torch.equal(before, x.detach())
        method.epoch_end({t: float(v.detach()) for t, v in losses.items()})
    assert roundtrip(method.state_dict()) is not None


def test_fixed_uses_config_weights():
    method = WEIGHTINGS["fixed"](TASKS, {"det": 2.0})
    losses = {t: torch.tensor(float(i + 1)) for i, t in enumerate(TASKS)}
    assert float(method.total(losses)) == pytest.approx(1 + 2 * 2 + 3)


def test_uncertainty_parameters_learn():
    method = WEIGHTINGS["uncertainty"](TASKS)
    params = method.parameters()
    assert len(params) == 3
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params)
    losses = {t: torch.tensor(float(i + 2)) for i, t in enumerate(TASKS)}
    assert float(method.total(losses).detach()) == pytest.approx(9.0)  # s = 0 -> sum of losses
    assert method.last_weights == {t: 1.0 for t in TASKS}
    opt = torch.optim.SGD(params, lr=0.1)
    method.total(losses).backward()
    opt.step()
    assert all(float(p.detach()) > 0.0 for p in params)  # d/ds (e^-s L + s) = 1 - L < 0 for L > 1
    method.total(losses)
    assert method.last_weights["seg"] < method.last_weights["cls"] < 1.0
    fresh = WEIGHTINGS["uncertainty"](TASKS)
    fresh.load_state_dict(roundtrip(method.state_dict()))
    assert [float(p.detach()) for p in fresh.parameters()] == [float(p.detach()) for p in params]


def test_dwa_weights():
    method = WEIGHTINGS["dwa"](["a", "b"], temperature=2.0)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    method.total(losses)
    assert method.last_weights == {"a": 1.0, "b": 1.0}
    method.epoch_end({"a": 1.0, "b": 1.0})
    method.total(losses)
    assert method.last_weights == {"a": 1.0, "b": 1.0}
    method.epoch_end({"a": 0.5, "b": 1.0})  # a fell, b flat
    method.total(losses)
    w = method.last_weights
    assert w["b"] > w["a"] and w["a"] + w["b"] == pytest.approx(2.0)
    fresh = WEIGHTINGS["dwa"](["a", "b"])
    fresh.load_state_dict(roundtrip(method.state_dict()))
    fresh.total(losses)
    assert fresh.last_weights == w


def test_rlw_resume_is_exact():
    method = WEIGHTINGS["rlw"](TASKS, seed=3)
    losses = {t: torch.tensor(1.0) for t in TASKS}
    method.total(losses)
    assert sum(method.last_weights.values()) == pytest.approx(3.0)
    fresh = WEIGHTINGS["rlw"](TASKS, seed=99)
    fresh.load_state_dict(roundtrip(method.state_dict()))
    method.total(losses)
    fresh.total(losses)
    assert fresh.last_weights == method.last_weights


def test_stch_gradient_matches_last_weights():
    method = WEIGHTINGS["stch"](TASKS, mu=0.5, warmup_steps=2)
    x = torch.nn.Parameter(torch.linspace(-1, 1, 4))
    for _ in range(2):  # warm-up: plain sum
        losses = toy_losses(x)
        assert float(method.total(losses).detach()) == pytest.approx(float(sum(losses.values()).detach()))
        assert method.last_weights == {t: 1.0 for t in TASKS}
    losses = {t: v.detach().requires_grad_(True) for t, v in toy_losses(x * 0.5).items()}
    total = method.total(losses)
    total.backward()
    for t in TASKS:
        assert float(losses[t].grad) == pytest.approx(method.last_weights[t], rel=1e-5)
    ell = torch.stack([torch.log(losses[t].detach() / method.ref[t] + 1e-8) for t in TASKS])
    assert float(total.detach()) == pytest.approx(float(3 * 0.5 * torch.logsumexp(ell / 0.5, 0)), rel=1e-5)


# --- gradient methods --------------------------------------------------------------------------

def grads_and_losses(T: int = 3, P: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, P, generator=g), torch.rand(T, generator=g) + 0.5


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_gradient_method_step(name: str):
    method = GRADIENT_METHODS[name](TASKS, {"det": 2.0})
    assert method.name == name and method.needs_grads is True
    g, losses = grads_and_losses()
    for active in (TASKS, ["cls", "seg"], ["det"]):
        idx = [TASKS.index(t) for t in active]
        w = method.weights(gram(g[idx]), losses[idx], active)
        assert w.shape == (len(active),) and w.dtype == torch.float64 and torch.isfinite(w).all()
        assert list(method.last_weights) == active
        assert all(isinstance(v, float) for v in method.last_weights.values())
        p = torch.nn.Parameter(torch.zeros(7))
        p.grad = (w[:, None] * g[idx].double()).sum(0).float()
        torch.optim.SGD([p], lr=0.1).step()
        assert p.detach().abs().sum() > 0
    zero = g.clone()
    zero[1] = 0.0
    w = method.weights(gram(zero), losses, TASKS)
    assert torch.isfinite(w).all() and w[1] == 0.0
    nan = g.clone()
    nan[2, 0] = float("nan")
    assert torch.isfinite(method.weights(gram(nan), losses, TASKS)).all()
    state = roundtrip(method.state_dict())
    GRADIENT_METHODS[name](TASKS).load_state_dict(state)


def test_gram_helper():
    g = torch.randn(3, 2, 5, dtype=torch.float16)
    G = gram(g)
    assert G.shape == (3, 3) and G.dtype == torch.float64
    assert torch.allclose(G, G.T)


def test_pcgrad_conflicts():
    method = GRADIENT_METHODS["pcgrad"](["a", "b"])
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # <g1, g2> = -1
    d = method.weights(gram(g), torch.ones(2), ["a", "b"]) @ g
    assert (g @ d >= -1e-12).all()
    method3 = GRADIENT_METHODS["pcgrad"](TASKS)
    g3, losses = grads_and_losses()
    assert torch.isfinite(method3.weights(gram(g3), losses, TASKS)).all()
    aligned = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.3, 0.0, 1.0]])  # all dots > 0
    assert torch.allclose(method3.weights(gram(aligned), losses, TASKS), torch.ones(3, dtype=torch.float64))


def test_pcgrad_resume_is_exact():
    method = GRADIENT_METHODS["pcgrad"](TASKS, seed=5)
    g, losses = grads_and_losses(seed=1)
    method.weights(gram(g), losses, TASKS)
    fresh = GRADIENT_METHODS["pcgrad"](TASKS, seed=0)
    fresh.load_state_dict(roundtrip(method.state_dict()))
    for seed in range(2, 5):
        g, losses = grads_and_losses(seed=seed)
        assert torch.equal(method.weights(gram(g), losses, TASKS), fresh.weights(gram(g), losses, TASKS))


@pytest.mark.parametrize("normalize", MGDA.NORMALIZERS)
def test_mgda_alpha_on_simplex(normalize: str):
    method = MGDA(TASKS + ["depth"], normalize=normalize)
    for seed in range(4):
        g, losses = grads_and_losses(T=4, P=3 + seed, seed=seed)
        method.weights(gram(g), losses, TASKS + ["depth"])
        assert float(method.alpha.sum()) == pytest.approx(1.0) and (method.alpha >= 0).all()


def test_mgda_known_solutions():
    method = MGDA(["a", "b"], normalize="none")
    method.weights(gram(torch.eye(2)), torch.ones(2), ["a", "b"])
    assert torch.allclose(method.alpha, torch.tensor([0.5, 0.5], dtype=torch.float64))
    g1 = torch.tensor([1.0, 2.0, -1.0])
    w = method.weights(gram(torch.stack([g1, 2 * g1])), torch.ones(2), ["a", "b"])
    assert torch.allclose(method.alpha, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(w, torch.tensor([2.0, 0.0], dtype=torch.float64))  # T * alpha


def test_cagrad():
    g, losses = grads_and_losses(seed=2)
    w = GRADIENT_METHODS["cagrad"](TASKS, alpha=0.0).weights(gram(g), losses, TASKS)
    assert torch.allclose(w, torch.ones(3, dtype=torch.float64), atol=1e-6)
    w = GRADIENT_METHODS["cagrad"](TASKS, alpha=0.5).weights(gram(g), losses, TASKS)
    assert float((w @ g.double()) @ g.double().mean(0)) >= 0


def test_imtl_equal_projections():
    method = GRADIENT_METHODS["imtl"](TASKS + ["depth"])
    for seed in range(3):
        g, losses = grads_and_losses(T=4, P=9, seed=seed)
        g = g.double() * torch.tensor([1.0, 3.0, 0.2, 10.0], dtype=torch.float64)[:, None]
        d = method.weights(gram(g), losses, TASKS + ["depth"]) @ g
        proj = (g / g.norm(dim=1, keepdim=True)) @ d
        assert torch.allclose(proj, proj.mean().expand(4), rtol=1e-6, atol=1e-8)


def test_gradnorm_balances_gradient_norms():
    method = GRADIENT_METHODS["gradnorm"](["small", "big"], alpha=1.5, lr=0.025)
    g = torch.tensor([[1.0, 0.0], [0.0, 10.0]])
    for _ in range(20):
        method.weights(gram(g), torch.tensor([1.0, 1.0]), ["small", "big"])
    w = method.last_weights
    assert w["big"] < w["small"]
    assert float(method.task_w.sum()) == pytest.approx(2.0)
    fresh = GRADIENT_METHODS["gradnorm"](["small", "big"])
    fresh.load_state_dict(roundtrip(method.state_dict()))
    assert torch.equal(fresh.task_w, method.task_w)


def test_task_grad_clip():
    g, losses = grads_and_losses(seed=3)
    g[0] *= 1e4
    clip = 1.0
    w = GRADIENT_METHODS["sum"](TASKS, task_grad_clip=clip).weights(gram(g), losses, TASKS)
    norms = g.double().norm(dim=1)
    assert (w * norms <= clip + 1e-9).all()
    assert float(w[0] * norms[0]) == pytest.approx(clip)
