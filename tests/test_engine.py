"""Trainer: learning, partial labels, resume exactness, non-finite losses, checkpoints, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visionmtl.config import Config, config_from_dict
from visionmtl.engine.checkpoint import CheckpointError, load_checkpoint
from visionmtl.engine.trainer import NonFiniteLossError, Trainer, load_trained

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ["circle", "square", "triangle", "star"]


def tiny_cfg(shapes_dir: Path, work_dir: Path, tasks=("cls", "det", "seg"), **train) -> Config:
    all_tasks = {
        "cls": {"type": "classification", "classes": SHAPES},
        "det": {"type": "detection", "classes": SHAPES, "head": {"num_convs": 1}},
        "seg": {"type": "segmentation", "classes": ["background"] + SHAPES, "head": {"channels": 32}},
    }
    ds = lambda split: [{"type": "coco", "ann_file": str(shapes_dir / split / "annotations.json"),
                         "img_dir": str(shapes_dir / split / "images")}]
    tree = {
        "tasks": {t: all_tasks[t] for t in tasks},
        "model": {"backbone": {"name": "resnet18", "fpn_channels": 32}},
        "data": {"img_size": 64, "batch_size": 8, "workers": 0, "train": ds("train"), "val": ds("val"),
                 "augment": {"scale": [1.0, 1.0], "hflip": 0.5, "color_jitter": 0.0, "hue": 0.0, "saturation": 0.0}},
        "train": {"epochs": 2, "lr": 0.003, "warmup_iters": 5, "log_interval": 1, "amp": "off", "seed": 0,
                  "channels_last": False, **train},
        "work_dir": str(work_dir),
    }
    return config_from_dict(tree)


def read_jsonl(path: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == kind]


def test_learning_all_losses_fall_and_detection_finds_objects(tmp_path_factory, tmp_path):
    """Through the real Trainer: 8 shapes images, 60 steps; all losses fall and objects are found."""
    from visionmtl.data.shapes import make_shapes

    data = tmp_path_factory.mktemp("shapes8")
    make_shapes(data, train=8, val=4, size=64, seed=1)
    cfg = tiny_cfg(data, tmp_path, epochs=60, eval_interval=60, lr=0.004, warmup_iters=10)
    cfg.data.val = cfg.data.train  # capacity: can it learn its own images
    cfg.data.augment.hflip = 0.0
    trainer = Trainer(cfg)
    metrics = trainer.train()
    hist = trainer.history
    for key in ("loss_cls_cls", "loss_det_cls", "loss_det_box", "loss_seg_ce"):
        first = sum(h[key] for h in hist[:5]) / 5
        last = sum(h[key] for h in hist[-5:]) / 5
        assert last < 0.7 * first, (key, first, last)
    assert metrics["det"]["mAP50"] > 0.5, metrics["det"]
    assert metrics["seg"]["mIoU"] > 0.5, metrics["seg"]
    assert metrics["cls"]["mAP"] > 0.8, metrics["cls"]
    # outputs: checkpoints, resolved config, logs, curves
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "loss_curves.png", "metric_curves.png"):
        assert (tmp_path / name).is_file(), name
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "iteration", "rng", "config", "classes"} <= set(ckpt)
    model, cfg2, _ = load_trained(str(tmp_path / "last.pt"))
    assert list(cfg2.tasks) == ["cls", "det", "seg"]


def test_resume_reproduces_uninterrupted_losses(shapes_dir, tmp_path):
    full = Trainer(tiny_cfg(shapes_dir, tmp_path / "full", epochs=2))
    full.train()
    part = Trainer(tiny_cfg(shapes_dir, tmp_path / "part", epochs=2))
    part.train(max_epochs=1)  # "interrupted" after epoch 1
    n1 = part.iter
    resumed = Trainer(tiny_cfg(shapes_dir, tmp_path / "part", epochs=2), resume=True)
    assert resumed.epoch == 1 and resumed.iter == n1
    resumed.train()
    expect = [h["loss"] for h in full.history[n1:]]
    got = [h["loss"] for h in resumed.history]
    assert len(got) == len(expect) > 0
    assert got == pytest.approx(expect, rel=1e-5, abs=1e-6)


def test_non_finite_loss_names_task_and_iteration(shapes_dir, tmp_path):
    trainer = Trainer(tiny_cfg(shapes_dir, tmp_path, tasks=("cls", "seg")))
    head = trainer.net.heads["seg"]
    orig = head.loss

    def bad_loss(raw, targets, has):
        out = orig(raw, targets, has)
        return {k: v * float("nan") for k, v in out.items()}

    head.loss = bad_loss
    with pytest.raises(NonFiniteLossError, match=r"task 'seg'.*iteration 0"):
        trainer.train()


def test_partial_labels_give_zero_gradient(shapes_dir, tmp_path):
    """A batch where no image has a seg label: the seg head gets no gradient, the loss is finite."""
    trainer = Trainer(tiny_cfg(shapes_dir, tmp_path))
    batch = next(iter(trainer.train_loader))
    batch.has["seg"][:] = False
    for t in batch.targets:
        t.pop("mask", None)
    trainer.net.zero_grad()
    raw = trainer.net(batch.images)
    losses = trainer.net.loss(raw, batch)
    assert losses["seg"]["ce"].item() == 0.0
    total = sum(v for terms in losses.values() for v in terms.values())
    assert math.isfinite(total.item())
    total.backward()
    seg_grads = [p.grad for p in trainer.net.heads["seg"].parameters()]
    assert all(g is None or g.abs().max() == 0 for g in seg_grads)
    det_grads = [p.grad for p in trainer.net.heads["det"].parameters() if p.grad is not None]
    assert any(g.abs().max() > 0 for g in det_grads)


def test_checkpoint_errors(tmp_path, shapes_dir):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def run_tool(*args, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, **kw)


def write_cfg(cfg, path: Path) -> Path:
    from visionmtl.config import save_config

    save_config(cfg, path)
    return path


def test_cli_bad_input_one_line_errors(tmp_path, shapes_dir):
    cfg = tiny_cfg(shapes_dir, tmp_path / "run", tasks=("cls",), epochs=1)
    good = write_cfg(cfg, tmp_path / "good.yaml")
    # unknown config key
    r = run_tool("tools/train.py", str(good), "--set", "train.lrr=0.1")
    assert r.returncode == 2 and "train.lrr" in r.stderr and "Traceback" not in r.stderr
    # a head with zero classes
    r = run_tool("tools/train.py", str(good), "--set", "tasks.cls.classes=[]")
    assert r.returncode == 2 and "zero classes" in r.stderr and "Traceback" not in r.stderr
    # weights: imagenet offline
    r = run_tool("tools/train.py", str(good), "--set", "model.backbone.weights=imagenet",
                 env={"TORCH_HOME": str(tmp_path / "torch_home")})  # an empty cache: must download
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "checkpoints" in r.stderr and ".pth" in r.stderr, r.stderr
    # a checkpoint from another config
    r = run_tool("tools/train.py", str(good), "--set", "train.max_iters=2", "train.eval_interval=100")
    assert r.returncode == 0, r.stderr
    other = tiny_cfg(shapes_dir, tmp_path / "run2", tasks=("cls", "seg"))
    other_path = write_cfg(other, tmp_path / "other.yaml")
    r = run_tool("tools/eval.py", str(other_path), str(tmp_path / "run" / "last.pt"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "last.pt" in r.stderr, r.stderr
    # and the matching config evaluates, printing the fixed keys
    r = run_tool("tools/eval.py", str(good), str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    assert "mAP" in json.loads((tmp_path / "m" / "metrics.json").read_text())["cls"]


DDP_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
from tests.test_engine import tiny_cfg
from visionmtl.engine.trainer import Trainer
from visionmtl.engine import dist
from pathlib import Path
# SGD: parameters move linearly with the averaged gradient. (Adam's normalised steps turn
# float-rounding differences in near-zero gradients into lr-sized parameter differences.)
cfg = tiny_cfg(Path({shapes!r}), Path({work!r}), tasks=("cls", "seg"), epochs=1, max_iters=3, warmup_iters=0,
               optimizer="sgd", lr=0.05)
cfg.data.batch_size = {bs}
cfg.data.val = []
cfg.model.backbone.freeze_bn = True
t = Trainer(cfg)
t.train()
if t.main:
    torch.save({{k: v.detach().clone() for k, v in t.net.state_dict().items()}}, {out!r})
dist.cleanup()
"""


def torchrun(template: str, shapes_dir: Path, tmp_path: Path, nproc: int, bs: int, name: str, port: int = 29500):
    """Run ``template`` (formatted with root/shapes/work/bs/out) under torchrun; load what rank 0 saved."""
    script, out = tmp_path / f"{name}.py", tmp_path / f"{name}.pt"
    script.write_text(template.format(root=str(ROOT), shapes=str(shapes_dir), work=str(tmp_path / name), bs=bs,
                                      out=str(out)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(port + nproc + os.getpid() % 500), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_ddp_gloo_matches_single_process(shapes_dir, tmp_path):
    """2 CPU processes x 4 images == 1 process x 8 images (same global batch)."""
    single = torchrun(DDP_SCRIPT, shapes_dir, tmp_path, 1, 8, "single")
    ddp = torchrun(DDP_SCRIPT, shapes_dir, tmp_path, 2, 4, "ddp")
    diffs = [(k, (single[k].float() - ddp[k].float()).abs().max().item()) for k in single if single[k].is_floating_point()]
    worst = max(diffs, key=lambda kv: kv[1])
    assert worst[1] < 1e-4, worst


def test_optimizer_is_fused_and_matches_the_reference_update():
    """build_optimizer picks torch's fused kernel (the CPU default loop was ~13x slower), which must
    give the same update as the plain loop, weight-decay groups included."""
    import copy

    from visionmtl.config import TrainConfig
    from visionmtl.engine.optim import build_optimizer

    torch.manual_seed(0)
    # (no conv bias before the BatchNorm: its gradient is rounding noise, which Adam amplifies)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    for name in ("adamw", "sgd"):
        cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.1)
        fused_model, ref_model = copy.deepcopy(model), copy.deepcopy(model)
        fused = build_optimizer(fused_model, cfg)
        assert fused.defaults.get("fused") is True
        groups = [{"params": [dict(ref_model.named_parameters())[n] for n in names], "weight_decay": g["weight_decay"]}
                  for g, names in zip(fused.param_groups, _group_names(fused_model, fused))]
        kw = dict(momentum=cfg.momentum, nesterov=cfg.momentum > 0) if name == "sgd" else {}
        ref = type(fused)(groups, lr=0.01, foreach=False, **kw)
        for _ in range(5):
            x = torch.randn(4, 3, 6, 6)
            for m, opt in ((fused_model, fused), (ref_model, ref)):
                opt.zero_grad()
                m(x).pow(2).sum().backward()
                opt.step()
        for a, b in zip(fused_model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _group_names(model, opt):
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
