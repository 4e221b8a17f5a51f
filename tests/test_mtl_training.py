"""Training strategies through the real Trainer: every method, gradient paths, alternating
training, staged freezing, soft/MTAN/private sharing, DDP with gradient methods."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.test_engine import read_jsonl, tiny_cfg, torchrun
from visionmtl.config import ConfigError, config_from_dict, load_config
from visionmtl.engine.trainer import Trainer, load_trained
from visionmtl.mtl.alternating import draw_tasks, task_probabilities
from visionmtl.mtl.gradient import GRADIENT_METHODS
from visionmtl.mtl.methods import METHOD_NAMES
from visionmtl.engine.step import gradient_backward, loss_backward
from visionmtl.mtl.weighting import WEIGHTINGS

METHOD_CASES = [(n, "params") for n in sorted(WEIGHTINGS)] + \
    [(n, g) for n in sorted(GRADIENT_METHODS) for g in ("params", "rep")]


def small_cfg(shapes_dir: Path, work: Path, tasks=("cls", "det", "seg"), **train):
    cfg = tiny_cfg(shapes_dir, work, tasks=tasks, **train)
    cfg.data.batch_size = 4
    cfg.data.val = []
    return cfg


@pytest.mark.parametrize("name,grad_on", METHOD_CASES, ids=[f"{n}-{g}" for n, g in METHOD_CASES])
def test_every_method_trains(shapes_dir, tmp_path, name, grad_on):
    """Finite total, per-task weights logged every step, a step changes the parameters."""
    cfg = small_cfg(shapes_dir, tmp_path, epochs=1, max_iters=2, log_interval=1)
    cfg.train.method.name = name
    cfg.train.method.grad_on = grad_on
    trainer = Trainer(cfg)
    before = {k: p.detach().clone() for k, p in trainer.net.named_parameters()}
    trainer.train()
    assert len(trainer.history) == 2
    for h in trainer.history:
        assert torch.isfinite(torch.tensor(h["loss"]))
        assert {"w_cls", "w_det", "w_seg"} <= set(h), h
    records = read_jsonl(tmp_path / "metrics.jsonl", "train")
    assert all("w_det" in r for r in records)
    after = dict(trainer.net.named_parameters())
    for key in ("backbone.body.conv1.weight", "heads.cls.mlp.0.weight", "heads.seg.classifier.weight"):
        assert not torch.equal(before[key], after[key]), (name, key)
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in optimised for p in trainer.method.parameters())  # e.g. uncertainty's log-variances


def _grads(trainer: Trainer, batch, backward) -> dict[str, torch.Tensor]:
    tasks = list(trainer.cfg.tasks)
    backward(trainer.step_parts(), batch.to(trainer.device), tasks, tasks)
    return {k: p.grad.detach().clone() for k, p in trainer.net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("grad_on", ["params", "rep"])
def test_gradient_path_sum_equals_joint_backward(shapes_dir, tmp_path, grad_on):
    """method 'sum' through per-task gradients gives exactly the joint Σ Lₜ gradient."""
    cfg = small_cfg(shapes_dir, tmp_path)
    cfg.model.backbone.freeze_bn = True  # identical forward passes (no batch-statistics update)
    joint = Trainer(cfg)
    batch = next(iter(joint.train_loader))
    ref = _grads(joint, batch, loss_backward)
    cfg2 = copy.deepcopy(cfg)
    cfg2.train.method.name, cfg2.train.method.grad_on = "sum", grad_on
    grad = Trainer(cfg2)
    grad.net.load_state_dict(joint.net.state_dict())
    got = _grads(grad, batch, gradient_backward)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6, msg=k)


def test_gradient_method_under_bf16_autocast(shapes_dir, tmp_path):
    cfg = small_cfg(shapes_dir, tmp_path, epochs=1, max_iters=1, amp="bf16")
    cfg.train.method.name, cfg.train.method.grad_on = "pcgrad", "rep"
    trainer = Trainer(cfg)
    assert trainer.amp_dtype == torch.bfloat16
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.history[0]["loss"]))


def test_dwa_gets_epoch_losses_from_the_trainer(shapes_dir, tmp_path):
    cfg = small_cfg(shapes_dir, tmp_path, tasks=("cls", "seg"), epochs=3, log_interval=1)
    cfg.data.train[0].limit = 8  # 2 steps per epoch
    cfg.train.method.name = "dwa"
    trainer = Trainer(cfg)
    trainer.train()
    first = trainer.history[0]
    last = trainer.history[-1]
    assert first["w_cls"] == first["w_seg"] == 1.0
    assert last["w_cls"] != 1.0 and abs(last["w_cls"] + last["w_seg"] - 2.0) < 1e-6


# --------------------------------------------------------------------------------- alternating
def test_task_probabilities_and_draws():
    sizes = {"det": 900, "seg": 90, "cls": 10}
    prop = task_probabilities("proportional", sizes)
    assert prop == pytest.approx({"det": 0.9, "seg": 0.09, "cls": 0.01})
    temp = task_probabilities("temperature", sizes, temperature=2.0)
    assert temp["det"] < prop["det"] and temp["cls"] > prop["cls"]
    assert task_probabilities("temperature", sizes, temperature=1.0) == pytest.approx(prop)
    assert task_probabilities("uniform", sizes) == pytest.approx({t: 1 / 3 for t in sizes})
    assert draw_tasks("round_robin", sizes, 5, 0, 0) == ["det", "seg", "cls", "det", "seg"]
    draws = draw_tasks("proportional", sizes, 20000, seed=0, epoch=0)
    assert draws.count("det") / 20000 == pytest.approx(0.9, abs=0.01)
    assert draws == draw_tasks("proportional", sizes, 20000, seed=0, epoch=0)  # seeded
    assert draws != draw_tasks("proportional", sizes, 20000, seed=0, epoch=1)


def _two_dataset_cfg(shapes_dir: Path, work: Path, **train):
    """det+cls from the shapes set (48 images), seg from a 16-image 'second dataset' (the val split)."""
    cfg = small_cfg(shapes_dir, work, **train)
    tree = cfg.to_dict()
    first = tree["data"]["train"][0]
    first["tasks"] = ["cls", "det"]
    second = copy.deepcopy(first)
    second.update(name="segset", tasks=["seg"], ann_file=str(shapes_dir / "val" / "annotations.json"),
                  img_dir=str(shapes_dir / "val" / "images"))
    tree["data"]["train"] = [first, second]
    tree["train"]["mode"] = "alternating"
    return config_from_dict(tree)


@pytest.mark.parametrize("optimizers", ["shared", "per_task"])
def test_alternating_training_counts_steps_per_task(shapes_dir, tmp_path, optimizers):
    cfg = _two_dataset_cfg(shapes_dir, tmp_path, epochs=1)
    cfg.train.alternating.order = "proportional"
    cfg.train.alternating.optimizers = optimizers
    trainer = Trainer(cfg)
    # cls and det read the 48-image set (12 batches each), seg the 16-image set (4 batches)
    assert trainer.iters_per_epoch == 12 + 12 + 4
    trainer.train()
    steps, images = trainer.task_steps, trainer.task_images
    assert sum(steps.values()) == 28
    assert steps["seg"] < steps["cls"] and steps["seg"] < steps["det"]
    assert images["seg"] == 4 * steps["seg"]
    for h in trainer.history:  # one task's loss per step
        assert sum(k.startswith("loss_") and k != "loss" for k in h) in (1, 3)  # cls: 1 term, det: 3 terms
    rec = read_jsonl(tmp_path / "metrics.jsonl", "tasks")[-1]
    assert rec["steps"] == steps and rec["images"] == images
    if optimizers == "per_task":
        assert set(trainer.optim.optimizers) == {"cls", "det", "seg"}
        shared = {id(p) for p in trainer.net.shared_parameters()}
        for t, opt in trainer.optim.optimizers.items():
            ids = {id(p) for g in opt.param_groups for p in g["params"]}
            assert shared <= ids  # every task's optimiser steps the shared backbone
            assert not ids & {id(p) for u in trainer.cfg.tasks if u != t for p in trainer.net.task_parameters(u)}


def test_alternating_resume_is_exact(shapes_dir, tmp_path):
    full = Trainer(_two_dataset_cfg(shapes_dir, tmp_path / "full", epochs=2))
    full.train()
    part = Trainer(_two_dataset_cfg(shapes_dir, tmp_path / "part", epochs=2))
    part.train(max_epochs=1)
    n1 = part.iter
    resumed = Trainer(_two_dataset_cfg(shapes_dir, tmp_path / "part", epochs=2), resume=True)
    assert resumed.task_steps == part.task_steps
    resumed.train()
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history[n1:]], rel=1e-5)


# ----------------------------------------------------------------------------------- stages
def test_staged_training_freezes_parts(shapes_dir, tmp_path):
    """seg first with the backbone frozen; then det only with backbone and seg frozen; then everything."""
    cfg = small_cfg(shapes_dir, tmp_path, epochs=3)
    cfg.data.train[0].limit = 8
    tree = cfg.to_dict()
    tree["model"]["backbone"]["freeze_stages"] = 1  # the backbone's own freezing must survive the stages
    tree["train"]["stages"] = [{"epochs": 1, "tasks": ["seg"], "freeze": ["backbone"], "name": "seg first"},
                               {"epochs": 1, "tasks": ["det"], "freeze": ["backbone", "seg"]},
                               {"epochs": 1}]
    trainer = Trainer(config_from_dict(tree))
    net = trainer.net
    running = lambda: {k: v.clone() for k, v in net.backbone.state_dict().items() if "running" in k}
    bn = running()
    seg_w = net.heads["seg"].classifier.weight.detach().clone()

    trainer.train(max_epochs=1)  # stage 1
    assert trainer.stage_tasks == ["seg"]
    for k, v in running().items():
        assert torch.equal(v, bn[k]), f"frozen BatchNorm statistic {k} changed"
    assert not torch.equal(net.heads["seg"].classifier.weight, seg_w)
    assert {k.split("_")[1] for h in trainer.history for k in h if k.startswith("loss_")} == {"seg"}

    # stage 2: det only, backbone and seg frozen -> seg predictions cannot change (YOLOP #204/#226)
    batch = next(iter(trainer.train_loader))
    net.eval()
    with torch.no_grad():
        seg_before = net(batch.images, tasks=["seg"])["seg"]["logits"].clone()
    n1 = len(trainer.history)
    trainer.train(max_epochs=1)
    assert trainer.stage_tasks == ["det"]
    assert {k.split("_")[1] for h in trainer.history[n1:] for k in h if k.startswith("loss_")} == {"det"}
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(batch.images, tasks=["seg"])["seg"]["logits"], seg_before)
    for k, v in running().items():
        assert torch.equal(v, bn[k]), k

    trainer.train()  # stage 3: everything trains again, except what freeze_stages froze for good
    assert trainer.stage_tasks == ["cls", "det", "seg"] and net.frozen_parts == []
    assert not net.backbone.body.conv1.weight.requires_grad
    assert net.backbone.body.layer1[0].conv1.weight.requires_grad
    assert any(not torch.equal(v, bn[k]) for k, v in running().items())


def test_stage_unfreeze_restores_requires_grad(shapes_dir, tmp_path):
    cfg = small_cfg(shapes_dir, tmp_path)
    cfg.model.backbone.freeze_stages = 1
    net = Trainer(cfg).net
    net.set_frozen(["backbone", "seg"])
    assert not any(p.requires_grad for p in net.backbone.parameters())
    net.train()
    assert not net.heads["seg"].training and net.heads["det"].training
    net.set_frozen([])
    assert not net.backbone.body.conv1.weight.requires_grad  # freeze_stages=1 survives
    assert net.backbone.body.layer1[0].conv1.weight.requires_grad
    assert all(p.requires_grad for p in net.heads["seg"].parameters())


# ---------------------------------------------------------------------------------- sharing
@pytest.mark.parametrize("sharing", ["soft", "mtan", "private"])
def test_sharing_variants_train_save_and_load(shapes_dir, tmp_path, sharing):
    cfg = small_cfg(shapes_dir, tmp_path, epochs=1, max_iters=2, log_interval=1)
    cfg.model.sharing = sharing
    trainer = Trainer(cfg)
    net = trainer.net
    if sharing == "soft":
        assert len(net.backbones) == 3 and net.shared_parameters() == []
        assert float(net.extra_losses()["reg_soft"].detach()) < 1e-9  # identical initial backbones
    else:
        assert set(net.adapters) == {"cls", "det", "seg"}
    trainer.train()
    if sharing == "soft":
        assert all("reg_soft" in h for h in trainer.history)
        assert float(net.extra_losses()["reg_soft"].detach()) > 0.0  # the backbones moved apart
    model, _, _ = load_trained(str(tmp_path / "last.pt"))
    batch = next(iter(trainer.train_loader))
    net.eval()
    with torch.no_grad():
        a, b = net(batch.images), model(batch.images)
    torch.testing.assert_close(a["seg"]["logits"], b["seg"]["logits"])
    preds = model.predict(b, [m["input_size"] for m in batch.meta])
    assert set(preds[0]) == {"cls", "det", "seg"}


def test_private_adapters_start_as_hard_sharing(shapes_dir, tmp_path):
    cfg = small_cfg(shapes_dir, tmp_path)
    torch.manual_seed(0)
    hard = Trainer(cfg).net.eval()
    cfg.model.sharing = "private"
    private = Trainer(cfg).net.eval()
    private.load_state_dict({**private.state_dict(), **hard.state_dict()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(private(x)["seg"]["logits"], hard(x)["seg"]["logits"])


def test_soft_penalty_pulls_backbones_together(shapes_dir, tmp_path):
    cfg = small_cfg(shapes_dir, tmp_path, tasks=("cls", "seg"))
    cfg.model.sharing, cfg.model.soft_lambda = "soft", 1.0
    net = Trainer(cfg).net
    with torch.no_grad():
        net.backbones["cls"].body.conv1.weight.add_(0.1)
    pen = net.extra_losses()["reg_soft"]
    n = net.backbones["cls"].body.conv1.weight.numel()
    assert float(pen.detach()) == pytest.approx(n * 0.01, rel=1e-4)
    pen.backward()
    g = net.backbones["cls"].body.conv1.weight.grad
    torch.testing.assert_close(g, torch.full_like(g, 0.2))  # d/dθ_i of ||θ_i - θ_j||² = 2(θ_i - θ_j)


# ---------------------------------------------------------------------------------- config
@pytest.mark.parametrize("sets,match", [
    (["train.method.name=pcgrd"], "did you mean 'pcgrad'"),
    (["train.method.name=cagrad", "train.method.args={alpah: 0.4}"], "train.method.args.alpah.*alpha"),
    (["train.method.name=pcgrad", "train.mode=alternating"], "alternating trains one task per step"),
    (["train.method.name=mgda", "model.sharing=soft"], "needs shared parameters"),
    (["train.method.task_grad_clip=1.0"], "needs per-task gradients"),
    (["model.sharing=cross"], "model.sharing"),
    (["train.stages=[{epochs: 1, freeze: [neck]}]"], "unknown part 'neck'"),
    (["train.stages=[{epochs: 99}]"], "train.stages' lasts 99 epochs"),
])
def test_strategy_config_errors(shapes_dir, tmp_path, sets, match):
    from visionmtl.config import save_config

    path = tmp_path / "c.yaml"
    save_config(small_cfg(shapes_dir, tmp_path), path)
    with pytest.raises(ConfigError, match=match):
        cfg = load_config(path, sets)
        Trainer(cfg)  # method arguments are checked when the method is built


def test_method_names_cover_the_issue():
    assert {"fixed", "uncertainty", "dwa", "gradnorm", "rlw", "stch", "mgda", "pcgrad", "cagrad", "imtl"} <= set(METHOD_NAMES)


# ------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_engine import tiny_cfg
from visionmtl.engine.trainer import Trainer
from visionmtl.engine import dist
out = {{}}
for name, grad_on in (("pcgrad", "params"), ("mgda", "rep")):
    cfg = tiny_cfg(Path({shapes!r}), Path({work!r}) / name, tasks=("cls", "seg"), epochs=1, max_iters=2,
                   warmup_iters=0, optimizer="sgd", lr=0.05)
    cfg.data.batch_size = {bs}
    cfg.data.val = []
    cfg.model.backbone.freeze_bn = True
    cfg.train.method.name, cfg.train.method.grad_on = name, grad_on
    t = Trainer(cfg)
    t.train()
    out[name] = {{k: v.detach().clone() for k, v in t.net.state_dict().items()}}
if dist.rank() == 0:
    torch.save(out, {out!r})
dist.cleanup()
"""


def test_ddp_gradient_methods_match_single_process(shapes_dir, tmp_path):
    """PCGrad (parameter gradients) and MGDA-UB (feature gradients): 2 ranks x 4 == 1 x 8 images."""
    single = torchrun(DDP_SCRIPT, shapes_dir, tmp_path, 1, 8, "single", port=28500)
    ddp = torchrun(DDP_SCRIPT, shapes_dir, tmp_path, 2, 4, "ddp", port=28500)
    for method in single:
        worst = max(((k, (single[method][k].float() - ddp[method][k].float()).abs().max().item())
                     for k in single[method] if single[method][k].is_floating_point()), key=lambda kv: kv[1])
        assert worst[1] < 1e-4, (method, worst)


@pytest.mark.parametrize("name,grad_on", [("pcgrad", "params"), ("mgda", "rep")])
def test_gradient_method_with_a_frozen_backbone_stage(shapes_dir, tmp_path, name, grad_on):
    cfg = small_cfg(shapes_dir, tmp_path, epochs=1)
    cfg.data.train[0].limit = 8
    tree = cfg.to_dict()
    tree["train"]["stages"] = [{"epochs": 1, "freeze": ["backbone"]}]
    tree["train"]["method"] = {"name": name, "grad_on": grad_on}
    trainer = Trainer(config_from_dict(tree))
    bb = {k: v.clone() for k, v in trainer.net.backbone.state_dict().items()}
    head = trainer.net.heads["det"].centerness.weight.detach().clone()
    trainer.train()
    assert all(torch.equal(v, bb[k]) for k, v in trainer.net.backbone.state_dict().items())
    assert len(trainer.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.history)
    assert not torch.equal(trainer.net.heads["det"].centerness.weight, head)
