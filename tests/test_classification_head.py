"""Tests for the image-level classification head: pooling modes, FPN levels, multi-class attributes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionmtl.models.heads import ClassificationHead
from visionmtl.models.build import build_model

from .test_models import BACKBONE, TASKS, S, _threads  # noqa: F401  (autouse: one intra-op thread, seed 0)


def test_classification_head_pools_fpn_levels():
    """``levels`` makes the cls head pool FPN maps: the backbone builds them even for cls alone."""
    model = build_model(BACKBONE, {"cls": {**TASKS["cls"], "levels": ["p3", "p5"]}})
    assert model.backbone.fpn is not None and {"p3", "p5"} <= set(model.backbone.levels)
    head = model.heads["cls"]
    assert head.levels == ("p3", "p5")
    fpn = BACKBONE.get("fpn_channels", 256)
    assert head.mlp[0].in_features == 2 * 2 * fpn  # avg + max per level
    out = model(torch.randn(2, 3, S, S))["cls"]["logits"]
    assert out.shape == (2, TASKS["cls"]["num_classes"])
    # a max-pooled stride-8 level sees a single hot cell that the pooled C5 path never reads
    h = ClassificationHead("cls", {"p3": 4, "c5": 4}, 2, hidden=0, pool="max", levels=["p3"])
    feats = {"p3": torch.zeros(1, 4, 8, 8), "c5": torch.zeros(1, 4, 2, 2)}
    base = h(feats)["logits"]
    feats["p3"][0, 1, 5, 6] = 3.0
    assert not torch.allclose(h(feats)["logits"], base)
    with pytest.raises(ValueError, match="no channel count"):
        ClassificationHead("cls", {"p3": 4}, 2, levels=["p4"])


def test_classification_lse_pooling_is_multiple_instance():
    """``pool="lse"``: per-position logits pooled by log-mean-exp over every level's positions."""
    h = ClassificationHead("cls", {"p3": 4, "p4": 4}, 2, hidden=0, pool="lse", levels=["p3", "p4"], lse_r=3.0)
    feats = {"p3": torch.randn(2, 4, 6, 6), "p4": torch.randn(2, 4, 3, 3)}
    per_pos = torch.cat([h.proj[lv](feats[lv]).flatten(2) for lv in ("p3", "p4")], dim=2)  # [2, 2, 45]
    expected = torch.log(torch.exp(3.0 * per_pos).mean(dim=2)) / 3.0
    torch.testing.assert_close(h(feats)["logits"], expected)
    # presence marked by one hot position anywhere is learnt from image labels alone, which
    # average pooling (the same MLP, pooled first) does not manage in the same steps
    final = {}
    for pool in ("lse", "avg"):
        torch.manual_seed(0)
        h = ClassificationHead("cls", {"p3": 3}, 2, hidden=16, pool=pool, levels=["p3"])
        opt = torch.optim.Adam(h.parameters(), 1e-2)
        for step in range(101):
            x = torch.randn(32, 3, 8, 8) * 0.1
            y = torch.randint(0, 2, (32, 2)).float()
            for i, j in (y > 0).nonzero().tolist():
                x[i, j, torch.randint(0, 8, ()), torch.randint(0, 8, ())] = 1.0
            logits = h({"p3": x})["logits"]
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
            if step == 100:  # a fresh batch, not trained on
                final[pool] = (loss.item(), ((logits > 0).float() == y).float().mean().item())
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert final["lse"][0] < 0.2 and final["lse"][1] >= 0.95, final
    assert final["avg"][0] > 0.5, final
    with pytest.raises(ValueError, match="lse_r"):
        ClassificationHead("cls", 4, 2, pool="lse", lse_r=0)


def test_classification_multiclass_attr():
    head = ClassificationHead("colour", 16, 3, multilabel=False, label_smoothing=0.1, hidden=0, attr="colour")
    raw = head({"c5": torch.randn(3, 16, 2, 2)})
    targets = [{"attrs": {"colour": 2}}, {}, {"attrs": {"colour": 0}}]
    loss = head.loss(raw, targets, torch.tensor([True, False, True]))["cls"]
    expected = nn.functional.cross_entropy(raw["logits"][[0, 2]], torch.tensor([2, 0]), label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    preds = head.predict(raw, [(S, S)] * 3)
    for p, logits in zip(preds, raw["logits"]):
        assert p["labels"].tolist() == [int(logits.argmax())]
        torch.testing.assert_close(p["probs"].sum(), torch.tensor(1.0))


def test_classification_multilabel_predict_sorted():
    head = ClassificationHead("tags", 16, 4)
    raw = {"logits": torch.tensor([[3.0, -2.0, 5.0, 0.1]])}
    p = head.predict(raw, [(S, S)])[0]
    assert p["labels"].tolist() == [2, 0, 3]
    loss = head.loss(raw, [{"labels": torch.tensor([2, 0])}], torch.tensor([True]))["cls"]
    expected = nn.functional.binary_cross_entropy_with_logits(raw["logits"], torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------------------- backbone
