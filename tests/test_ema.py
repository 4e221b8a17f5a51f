"""EMA of the weights (train.ema_decay): the averaging rule, checkpoints, resume and inference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from visionmtl.config import ConfigError
from visionmtl.engine.checkpoint import load_checkpoint
from visionmtl.engine.ema import ModelEMA
from visionmtl.engine.evaluate import evaluate
from visionmtl.engine.trainer import Trainer, load_trained
from tests.test_engine import read_jsonl, tiny_cfg


def test_ema_follows_the_ramped_average_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    expect = None
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(4, 3))  # moves the BatchNorm statistics and num_batches_tracked
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if expect is None:  # the first update copies
            expect = state
        else:
            d = 0.9 * (1 - math.exp(-n / 2.0))
            assert ema.decay_at(n) == pytest.approx(d)
            expect = {k: (d * expect[k] + (1 - d) * v) if v.is_floating_point() else v for k, v in state.items()}
        ema.update(model)
    got = ema.state_dict()
    for k, v in expect.items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert got["1.num_batches_tracked"].item() == 5
    assert ema.updates == 5
    assert not any(p.requires_grad for p in ema.module.parameters())
    # the average differs from the last weights
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_bad_ema_decay_names_the_key(shapes_dir, tmp_path, decay):
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        tiny_cfg(shapes_dir, tmp_path, ema_decay=decay)


def test_ema_is_validated_checkpointed_resumed_and_deployed(shapes_dir, tmp_path):
    kw = dict(tasks=("cls", "seg"), epochs=2, ema_decay=0.8, ema_tau=1.0)
    full = Trainer(tiny_cfg(shapes_dir, tmp_path / "full", **kw))
    full.train()
    assert full.eval_model is full.ema.module
    ckpt = load_checkpoint(tmp_path / "full" / "last.pt")
    assert ckpt["ema_updates"] == full.iter > 0
    # validation ran on the average, not on the raw weights
    logged = read_jsonl(tmp_path / "full" / "metrics.jsonl", "val")[-1]["seg"]["mIoU"]
    on = lambda m: evaluate(m, full.val_loader, full.cfg.tasks, full.device, None, False)["seg"]["mIoU"]
    assert on(full.ema.module) == pytest.approx(logged)
    assert on(full.net) != pytest.approx(logged)
    model, _, _ = load_trained(str(tmp_path / "full" / "last.pt"))
    key = "backbone.body.conv1.weight"
    assert torch.equal(model.state_dict()[key], ckpt["ema"][key])
    assert not torch.equal(ckpt["ema"][key], ckpt["model"][key])

    part = Trainer(tiny_cfg(shapes_dir, tmp_path / "part", **kw))
    part.train(max_epochs=1)
    resumed = Trainer(tiny_cfg(shapes_dir, tmp_path / "part", **kw), resume=True)
    assert resumed.ema.updates == part.iter
    resumed.train()
    got, want = resumed.ema.state_dict(), full.ema.state_dict()
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), rtol=1e-4, atol=1e-5), k
