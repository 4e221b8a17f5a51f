"""Tests for the backbone, the multi-task model and its heads (tiny CPU sizes); DetectionHead is in test_detection_head.py."""

from __future__ import annotations

import itertools
import math
import os
import urllib.error
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import box_iou

from visionmtl.models.backbone import Backbone, LastLevelConvs, WeightsError
from visionmtl.models.heads import SegmentationHead
from visionmtl.models.build import build_model
from visionmtl.models.multitask import MultiTaskModel
from visionmtl.tasks import TASK_TYPES

S = 64
TASKS = {
    "cls": {"type": "classification", "num_classes": 3, "hidden": 32},
    "det": {"type": "detection", "num_classes": 3, "channels": 32},
    "seg": {"type": "segmentation", "num_classes": 4, "channels": 32},
}
BACKBONE = {"name": "resnet18", "fpn_channels": 32}


@pytest.fixture(autouse=True)
def _threads():
    # one intra-op thread: on shared/oversubscribed CPUs OpenMP spin-waiting makes 2 threads far slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def _targets(b: int = 2, size: int = S) -> list[dict]:
    out = []
    for i in range(b):
        boxes = torch.tensor([[4.0 + i, 6.0, 30.0, 28.0], [34.0, 30.0, 60.0, 62.0]])
        mask = torch.zeros(size, size, dtype=torch.int64)
        mask[6:28, 4:30] = 1
        mask[30:62, 34:60] = 2
        mask[:, -2:] = 255
        out.append({"boxes": boxes, "box_labels": torch.tensor([0, 2]), "mask": mask, "labels": torch.tensor([0, 2])})
    return out


def _batch(model: MultiTaskModel, targets: list[dict], has: list[bool] | None = None) -> SimpleNamespace:
    has = has if has is not None else [True] * len(targets)
    return SimpleNamespace(targets=targets, has={t: torch.tensor(has) for t in model.heads})


def _expected_loss_keys(tasks: dict) -> set[str]:
    terms = {"classification": ("cls",), "detection": ("cls", "box", "ctr"), "segmentation": ("ce",)}
    return {(name, term) for name, cfg in tasks.items() for term in terms[cfg["type"]]}


# ---------------------------------------------------------------------------- model / combos
COMBOS = [c for r in (1, 2, 3) for c in itertools.combinations(TASKS, r)]


@pytest.mark.parametrize("names", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_every_head_combination(names):
    tasks = {n: TASKS[n] for n in names}
    model = build_model(BACKBONE, tasks)
    images = torch.randn(2, 3, S, S)
    targets = _targets()

    model.train()
    raw_train = model(images)
    losses = model.loss(raw_train, _batch(model, targets))
    losses = {(t, k): v for t, terms in losses.items() for k, v in terms.items()}
    assert set(losses) == _expected_loss_keys(tasks)
    for v in losses.values():
        assert v.ndim == 0 and torch.isfinite(v)
    sum(losses.values()).backward()

    model.eval()
    with torch.no_grad():
        raw_eval = model(images)
    assert raw_eval.keys() == raw_train.keys()
    for task in raw_eval:
        assert raw_eval[task].keys() == raw_train[task].keys()
        for k in raw_eval[task]:
            assert raw_eval[task][k].shape == raw_train[task][k].shape

    preds = model.predict(raw_eval, [(S, S), (48, 40)], orig_sizes=[(S, S), (96, 80)])
    assert len(preds) == 2
    for i, p in enumerate(preds):
        assert set(p) == set(names)
        if "cls" in p:
            assert p["cls"]["probs"].shape == (3,) and p["cls"]["scores"].shape == (3,)
            assert p["cls"]["labels"].dtype == torch.int64
        if "det" in p:
            d = p["det"]
            assert d["boxes"].dtype == torch.float32 and d["boxes"].ndim == 2 and d["boxes"].shape[1] == 4
            assert d["scores"].shape == d["labels"].shape == (d["boxes"].shape[0],)
            assert d["labels"].dtype == torch.int64
            assert d["boxes"].shape[0] <= 100
        if "seg" in p:
            assert p["seg"]["mask"].dtype == torch.int64
            assert p["seg"]["mask"].shape == ((S, S), (96, 80))[i]

    # levels built are exactly the ones the heads need
    levels = set(model.backbone.levels)
    expected = {"c5"}
    if "det" in names:
        expected |= {"p3", "p4", "p5", "p6", "p7"}
    if "seg" in names:
        expected |= {"p2", "p3", "p4", "p5"}
    assert levels == expected


def test_classification_only_model_has_no_fpn():
    model = build_model(BACKBONE, {"cls": TASKS["cls"]})
    assert model.backbone.fpn is None
    assert model.backbone.levels == ("c5",)
    assert not any("fpn" in n for n, _ in model.named_parameters())
    with_fpn = build_model(BACKBONE, {"det": TASKS["det"]})
    assert any("fpn" in n for n, _ in with_fpn.named_parameters())


def test_build_model_errors():
    with pytest.raises(ValueError, match="task 'x': head has zero classes"):
        build_model(BACKBONE, {"x": {"type": "detection", "num_classes": 0}})
    with pytest.raises(ValueError, match="task 'y': head has zero classes"):
        build_model(BACKBONE, {"y": {"type": "classification", "classes": []}})
    with pytest.raises(ValueError):
        build_model(BACKBONE, {})
    with pytest.raises(ValueError, match=r"unknown task type .keypoints. \(known: classification, detection, segmentation"):
        build_model(BACKBONE, {"x": {"type": "keypoints", "num_classes": 2}})
    with pytest.raises(ValueError, match=r"unknown key .tasks.x.head.bogus. for a detection head"):
        build_model(BACKBONE, {"x": {"type": "detection", "num_classes": 2, "bogus": 1}})
    assert {"classification", "detection", "segmentation"} <= set(TASK_TYPES)


def test_aspp_segmentation_needs_no_fpn():
    model = build_model(BACKBONE, {"seg": {"type": "segmentation", "num_classes": 3, "kind": "aspp", "channels": 32}})
    assert model.backbone.fpn is None
    model.train()
    raw = model(torch.randn(1, 3, S, S))  # batch of 1 trains (GroupNorm in ASPP)
    assert raw["seg"]["logits"].shape == (1, 3, S // 4, S // 4)
    loss = model.loss(raw, _batch(model, _targets(1)))["seg"]["ce"]
    assert torch.isfinite(loss)


def test_missing_has_entry_counts_as_unlabelled():
    model = build_model(BACKBONE, {"cls": TASKS["cls"]})
    raw = model(torch.randn(2, 3, S, S))
    losses = model.loss(raw, SimpleNamespace(targets=[{}, {}], has={}))
    assert losses["cls"]["cls"].item() == 0.0


# ---------------------------------------------------------------------------- seg / cls
def test_segmentation_loss_and_predict():
    head = SegmentationHead("seg", 16, 4, channels=16)
    feats = {f"p{k}": torch.randn(2, 16, S // 2**k, S // 2**k) for k in range(2, 6)}
    raw = head(feats)
    assert raw["logits"].shape == (2, 4, S // 4, S // 4)
    targets = _targets()
    loss = head.loss(raw, targets, torch.tensor([True, False]))["ce"]
    assert torch.isfinite(loss) and loss.item() > 0
    ignored = [{"mask": torch.full((S, S), 255)}] * 2
    assert head.loss(raw, ignored, torch.tensor([True, True]))["ce"].item() == 0.0
    assert head.loss(raw, [{}, {}], torch.tensor([False, False]))["ce"].item() == 0.0
    preds = head.predict(raw, torch.tensor([[S, S], [40, 50]]), orig_sizes=[(S // 2, S // 2), (80, 100)])
    assert preds[0]["mask"].shape == (S // 2, S // 2) and preds[1]["mask"].shape == (80, 100)
    assert preds[1]["mask"].dtype == torch.int64 and preds[1]["mask"].max() < 4


def test_backbone_strides_channels_and_shapes():
    bb = Backbone("resnet18", levels=("p2", "p3", "p4", "p5", "p6", "p7"), fpn_channels=32)
    assert bb.strides == {"c5": 32, "p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert bb.out_channels == {"c5": 512, **{f"p{k}": 32 for k in range(2, 8)}}
    feats = bb(torch.randn(1, 3, 128, 96))
    assert set(feats) == set(bb.strides)
    for k, f in feats.items():
        assert f.shape == (1, bb.out_channels[k], math.ceil(128 / bb.strides[k]), math.ceil(96 / bb.strides[k]))
    bb50 = Backbone("resnet50", levels=("c5",))
    assert bb50.out_channels == {"c5": 2048} and bb50.fpn is None
    assert Backbone("resnet18", levels=("c2", "c5")).out_channels == {"c2": 64, "c5": 512}
    with pytest.raises(ValueError, match="resnet18"):
        Backbone("vgg16")


def test_backbone_three_stages_builds_no_layer4():
    bb = Backbone("resnet18", levels=("p2", "p3", "p4", "p5", "p6", "p7"), fpn_channels=16, num_stages=3)
    assert not hasattr(bb.body, "layer4") and not any("layer4" in n for n, _ in bb.named_parameters())
    assert bb.strides == {"c4": 16, **{f"p{k}": 2 ** k for k in range(2, 8)}}
    assert bb.out_channels == {"c4": 256, **{f"p{k}": 16 for k in range(2, 8)}}
    feats = bb(torch.randn(1, 3, 128, 96))
    assert set(feats) == set(bb.strides)
    for k, f in feats.items():
        assert f.shape == (1, bb.out_channels[k], math.ceil(128 / bb.strides[k]), math.ceil(96 / bb.strides[k]))
    # P5-P7 are a chain of stride-2 convs on P4; the FPN itself reads C2-C4
    assert isinstance(bb.fpn.extra_blocks, LastLevelConvs) and bb.fpn.extra_blocks.names == ("p5", "p6", "p7")
    assert len(bb.fpn.inner_blocks) == 3
    # only the levels asked for: P5 alone needs one conv, P4 none
    assert Backbone("resnet18", levels=("p3", "p4", "p5"), num_stages=3).fpn.extra_blocks.names == ("p5",)
    assert Backbone("resnet18", levels=("p3", "p4"), num_stages=3).fpn.extra_blocks is None
    four = Backbone("resnet18", levels=("p3", "p4", "p5"), fpn_channels=16)
    three = Backbone("resnet18", levels=("p3", "p4", "p5"), fpn_channels=16, num_stages=3)
    assert sum(p.numel() for p in three.parameters()) < 0.3 * sum(p.numel() for p in four.parameters())
    with pytest.raises(ValueError, match=r"\['c5'\].*model.backbone.num_stages is 3"):
        Backbone("resnet18", levels=("p3", "c5"), num_stages=3)
    with pytest.raises(ValueError, match="num_stages must be 3 or 4"):
        Backbone("resnet18", num_stages=5)


def test_backbone_freeze_bn_keeps_running_stats():
    bb = Backbone("resnet18", levels=("p3",), fpn_channels=16, freeze_bn=True)
    bb.train()
    bns = [m for m in bb.body.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    bb(torch.randn(2, 3, S, S) * 3 + 1)
    for m, (mean, var) in zip(bns, before):
        assert not m.training
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert not any(p.requires_grad for p in m.parameters())
    assert bb.fpn.training
    # without freezing the statistics do move
    free = Backbone("resnet18", levels=("c5",))
    free.train()
    mean = free.body.bn1.running_mean.clone()
    free(torch.randn(2, 3, S, S) * 3 + 1)
    assert not torch.equal(free.body.bn1.running_mean, mean)


@pytest.mark.parametrize("k,frozen", [(0, []), (1, ["conv1", "bn1"]), (2, ["conv1", "bn1", "layer1"]), (5, ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"])])
def test_backbone_freeze_stages(k, frozen):
    bb = Backbone("resnet18", levels=("c5",), freeze_stages=k)
    bb.train()
    for name, p in bb.body.named_parameters():
        top = name.split(".")[0]
        assert p.requires_grad == (top not in frozen), name
    for name, m in bb.body.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == (name.split(".")[0] not in frozen), name


def test_backbone_weights_path_roundtrip(tmp_path):
    ref = torchvision.models.resnet18()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, path)
    bb = Backbone("resnet18", weights=str(path), levels=("c5",))
    own = bb.body.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    raw_path = tmp_path / "raw.pth"
    torch.save({"backbone." + k: v for k, v in ref.state_dict().items()}, raw_path)
    bb2 = Backbone("resnet18", weights=str(raw_path), levels=("c5",))
    assert torch.equal(bb2.body.conv1.weight, ref.conv1.weight)

    nomatch = tmp_path / "nomatch.pth"
    torch.save({"foo.weight": torch.zeros(3)}, nomatch)
    with pytest.raises(WeightsError, match="no parameter names match"):
        Backbone("resnet18", weights=str(nomatch), levels=("c5",))
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=str(missing)):
        Backbone("resnet18", weights=str(missing), levels=("c5",))


def test_backbone_imagenet_offline_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    filename = os.path.basename(torchvision.models.get_model_weights("resnet18").DEFAULT.url)
    expected = os.path.join(str(tmp_path), "checkpoints", filename)
    with pytest.raises(WeightsError) as info:
        Backbone("resnet18", weights="imagenet", levels=("c5",))
    msg = str(info.value)
    assert expected in msg
    assert "could not download https://" in msg and "weights: /path/to/file.pth" in msg


# ---------------------------------------------------------------------------- autocast
def test_autocast_bf16_channels_last():
    model = build_model(BACKBONE, TASKS)
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, S, S).contiguous(memory_format=torch.channels_last)
    batch = _batch(model, _targets())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model(images)
        losses = {f"{t}.{k}": v for t, terms in model.loss(raw, batch).items() for k, v in terms.items()}
    assert raw["det"]["cls_logits"].dtype == torch.bfloat16
    for k, v in losses.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
    sum(losses.values()).backward()
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model.predict(model(images), [(S, S)] * 2)
    assert preds[0]["det"]["boxes"].dtype == torch.float32
    assert preds[0]["seg"]["mask"].shape == (S, S)


# ---------------------------------------------------------------------------- overfit
def _synthetic(size: int) -> tuple[torch.Tensor, list[dict]]:
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]) * 2
    layouts = [[(6, 6, 30, 34, 0), (36, 30, 60, 58, 1)], [(12, 12, 50, 32, 2), (6, 38, 30, 60, 0)]]
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for rects in layouts:
        img = torch.randn(3, size, size, generator=g) * 0.5
        mask = torch.zeros(size, size, dtype=torch.int64)
        for x1, y1, x2, y2, c in rects:
            img[:, y1:y2, x1:x2] = colours[c][:, None, None]
            mask[y1:y2, x1:x2] = c + 1
        images.append(img)
        labels = [r[4] for r in rects]
        targets.append(
            {
                "boxes": torch.tensor([r[:4] for r in rects], dtype=torch.float32),
                "box_labels": torch.tensor(labels),
                "mask": mask,
                "labels": torch.tensor(sorted(set(labels))),
            }
        )
    return torch.stack(images), targets


def test_tiny_overfit():
    images, targets = _synthetic(S)
    model = build_model(
        BACKBONE,
        {
            "cls": {"type": "classification", "num_classes": 3, "hidden": 32},
            "det": {"type": "detection", "num_classes": 3, "channels": 32},
            "seg": {"type": "segmentation", "num_classes": 4, "channels": 32},
        },
    )
    batch = _batch(model, targets)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    for _ in range(60):
        losses = model.loss(model(images), batch)
        opt.zero_grad()
        sum(v for terms in losses.values() for v in terms.values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        preds = model.predict(model(images), [(S, S)] * 2)
    for p, t in zip(preds, targets):
        det = p["det"]
        iou = box_iou(t["boxes"], det["boxes"]) * (t["box_labels"][:, None] == det["labels"][None, :])
        assert (iou.amax(dim=1) > 0.5).all(), iou.amax(dim=1)
        assert (p["seg"]["mask"] == t["mask"]).float().mean() > 0.9
        assert p["cls"]["labels"].sort().values.tolist() == t["labels"].tolist()
