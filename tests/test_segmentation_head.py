"""Tests for the segmentation head's stride-2 detail decoder (``detail: c1``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from visionmtl.models.backbone import Backbone
from visionmtl.models.heads import SegmentationHead
from visionmtl.models.heads.segmentation import lovasz_softmax, soft_dice
from visionmtl.models.build import build_model

from .test_models import BACKBONE, S, _threads  # noqa: F401  (autouse: one intra-op thread, seed 0)


def _seg_model(detail: str | None) -> torch.nn.Module:
    seg = {"type": "segmentation", "num_classes": 2, "channels": 16}
    if detail:
        seg["detail"] = detail
    return build_model({"name": "resnet18", "fpn_channels": 16}, {"seg": seg})


def test_backbone_stem_level():
    bb = Backbone("resnet18", levels=("c1", "p2", "p3"), fpn_channels=16)
    assert bb.strides["c1"] == 2 and bb.out_channels["c1"] == 64
    feats = bb(torch.randn(1, 3, S, S))
    assert feats["c1"].shape == (1, 64, S // 2, S // 2)


def test_detail_decoder_shapes_loss_and_gradient():
    model = build_model(BACKBONE, {"seg": {"type": "segmentation", "num_classes": 4, "channels": 32, "detail": "c1"}})
    head = model.heads["seg"]
    assert "c1" in model.backbone.levels and head.levels == ("p2", "p3", "p4", "p5") and head.out_stride == 2
    model.train()
    raw = model(torch.randn(2, 3, S, S))
    assert raw["seg"]["logits"].shape == (2, 4, S // 2, S // 2)
    masks = torch.randint(0, 4, (2, S, S))
    batch = SimpleNamespace(targets=[{"mask": m} for m in masks], has={"seg": torch.tensor([True, True])})
    loss = model.loss(raw, batch)["seg"]["ce"]
    loss.backward()
    assert torch.isfinite(loss)
    # the stem feeds the head directly: its projection and conv1 both get gradient
    assert head.detail_proj[0].weight.grad.abs().sum() > 0
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    preds = model.predict(raw, [(S, S), (40, 50)], orig_sizes=[(S, S), (80, 100)])
    assert preds[0]["seg"]["mask"].shape == (S, S) and preds[1]["seg"]["mask"].shape == (80, 100)


def test_detail_level_must_be_finer():
    with pytest.raises(ValueError, match="detail level 'c2'.*finer"):
        SegmentationHead("seg", {"p2": 16, "p3": 16, "c2": 64}, 3, levels=("p2", "p3"), detail="c2")


def _stripes(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2-pixel vertical stripes at a random even phase: visible in the image, the class of each pixel.

    Even phases put every stripe on one stride-2 cell. At an odd phase each cell straddles two
    stripes and, with a period of two cells, bilinear up-sampling gives both pixels of a cell the
    same logits: no stride-2 decoder could draw it, and test accuracy would hang on how many odd
    phases the test batch happened to draw.
    """
    cols = torch.arange(S)
    masks, images = [], []
    for _ in range(n):
        phase = 2 * int(torch.randint(0, 2, ()))
        m = (((cols + phase) // 2) % 2).expand(S, S)
        masks.append(m)
        images.append((m.float() * 2 - 1).expand(3, S, S) + 0.1 * torch.randn(3, S, S))
    return torch.stack(images), torch.stack(masks).long()


def _fit_stripes(detail: str | None, steps: int = 30) -> float:
    torch.manual_seed(0)
    model = _seg_model(detail)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    for _ in range(steps):
        x, m = _stripes(4)
        batch = SimpleNamespace(targets=[{"mask": v} for v in m], has={"seg": torch.ones(4, dtype=torch.bool)})
        loss = model.loss(model(x), batch)["seg"]["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, m = _stripes(4)
    with torch.no_grad():
        pred = torch.stack([p["seg"]["mask"] for p in model.predict(model(x), [(S, S)] * 4)])
    return (pred == m).float().mean().item()


def test_detail_decoder_resolves_what_stride_4_cannot():
    """2-px stripes change class twice per 4 px: bilinear stride-4 logits cannot draw them."""
    coarse, fine = _fit_stripes(None), _fit_stripes("c1")
    assert coarse < 0.85, coarse
    assert fine > 0.95, fine


def test_lovasz_of_hard_prediction_is_one_minus_miou():
    """On one-hot probabilities the Lovasz extension equals the set function: 1 - mIoU (present classes)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (500,), generator=g)
    labels[labels == 3] = 2  # class 3 absent: not averaged
    pred = labels.clone()
    pred[:150] = (pred[:150] + 1) % 4
    probs = torch.nn.functional.one_hot(pred, 4).float()
    ious = [((pred == c) & (labels == c)).sum() / ((pred == c) | (labels == c)).sum() for c in range(3)]
    assert lovasz_softmax(probs, labels).item() == pytest.approx(1 - torch.stack(ious).mean().item(), abs=1e-6)
    exact = torch.nn.functional.one_hot(labels, 4).float()
    assert lovasz_softmax(exact, labels).item() == 0 and soft_dice(exact, labels).item() == pytest.approx(0, abs=1e-6)
    # a worse prediction scores a larger dice loss
    assert soft_dice(probs, labels) > soft_dice(0.5 * probs + 0.5 * exact, labels)


@pytest.mark.parametrize("region", ["lovasz", "dice"])
def test_region_loss_terms_ignore_and_gradient(region):
    head = SegmentationHead("seg", 8, 3, levels=("p2",), channels=8, region_loss=region, region_weight=0.5)
    feats = {"p2": torch.randn(2, 8, 4, 4, requires_grad=True)}
    raw = head(feats)
    masks = torch.randint(0, 3, (2, 16, 16))
    out = head.loss(raw, [{"mask": m} for m in masks], torch.tensor([True, True]))
    assert set(out) == {"ce", region}
    out[region].backward()
    assert feats["p2"].grad.abs().sum() > 0
    # ignored pixels do not count: flipping their labels to 255 or to another class ...
    ignored = masks.clone()
    ignored[:, :8] = 255
    a = head.loss(raw, [{"mask": m} for m in ignored], torch.tensor([True, True]))[region]
    probs = torch.nn.functional.interpolate(raw["logits"], size=(16, 16), mode="bilinear").softmax(1)
    keep = ignored != 255
    ref = (lovasz_softmax if region == "lovasz" else soft_dice)(probs.permute(0, 2, 3, 1)[keep], ignored[keep])
    assert a.item() == pytest.approx(0.5 * ref.item(), rel=1e-5)
    # ... and a batch without labels gives zeros for both terms
    none = head.loss(raw, [{"mask": m} for m in masks], torch.tensor([False, False]))
    assert all(v.item() == 0 for v in none.values()) and set(none) == set(out)


def test_region_loss_unknown_name():
    with pytest.raises(ValueError, match="unknown region_loss 'iou'.*lovasz"):
        SegmentationHead("seg", 8, 3, levels=("p2",), region_loss="iou")


def test_ohem_keeps_the_hard_pixels_and_at_least_min_kept():
    """OHEM cross-entropy: pixels whose true-class probability is <= the threshold, or the
    ``ohem_min_kept`` hardest when fewer are; ignored pixels never; easy pixels get no gradient."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16) * 3
    masks = torch.randint(0, 3, (2, 16, 16))
    masks[0, :4] = 255
    targets = [{"mask": m} for m in masks]
    has = torch.tensor([True, True])
    valid = masks != 255
    ce = torch.nn.functional.cross_entropy(logits, masks, ignore_index=255, reduction="none")
    p_true = (-ce).exp()
    for thresh, min_kept in [(0.7, 0.05), (0.01, 0.6)]:
        head = SegmentationHead("seg", 8, 3, levels=["p2"], strides=[1], channels=8,
                                ohem_thresh=thresh, ohem_min_kept=min_kept)
        x = logits.clone().requires_grad_(True)
        loss = head.loss({"logits": x}, targets, has)["ce"]
        below = valid & (p_true <= thresh)
        k = int(min_kept * valid.sum().item() + 0.999)
        if below.sum() >= k:
            want, chosen = ce[below].mean(), below
        else:  # too few under the threshold: the k hardest
            kth = ce[valid].topk(k).values.min()
            chosen = valid & (ce >= kth)
            want = ce[chosen].mean()
        assert 0 < chosen.sum() < valid.sum()
        assert loss.item() == pytest.approx(want.item(), rel=1e-5)
        loss.backward()
        g = x.grad.abs().sum(1)
        assert (g[~chosen] == 0).all() and (g[chosen] > 0).all()
    plain = SegmentationHead("seg", 8, 3, levels=["p2"], strides=[1], channels=8)
    assert plain.loss({"logits": logits}, targets, has)["ce"].item() == pytest.approx(ce[valid].mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="ohem_thresh"):
        SegmentationHead("seg", 8, 3, ohem_thresh=1.5)


def test_class_weight_weights_each_pixel_by_its_true_class():
    """``class_weight``: the weighted mean of torch's CE, plain or over OHEM's hard pixels (chosen
    by the unweighted probability); a heavier class gets a larger share of the gradient."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16) * 3
    masks = torch.randint(0, 3, (2, 16, 16))
    masks[1, :5] = 255
    targets, has = [{"mask": m} for m in masks], torch.tensor([True, True])
    w = torch.tensor([0.2, 1.0, 3.0])
    head = SegmentationHead("seg", 8, 3, levels=["p2"], strides=[1], channels=8, class_weight=w.tolist())
    want = torch.nn.functional.cross_entropy(logits, masks, weight=w, ignore_index=255)
    assert head.loss({"logits": logits}, targets, has)["ce"].item() == pytest.approx(want.item(), rel=1e-5)
    unweighted = torch.nn.functional.cross_entropy(logits, masks, ignore_index=255)
    assert abs(want.item() - unweighted.item()) > 1e-3  # the weights change the loss

    ohem = SegmentationHead("seg", 8, 3, levels=["p2"], strides=[1], channels=8, ohem_thresh=0.7,
                            ohem_min_kept=0.05, class_weight=w.tolist())
    ce = torch.nn.functional.cross_entropy(logits, masks, ignore_index=255, reduction="none")
    hard = (masks != 255) & ((-ce).exp() <= 0.7)
    assert hard.sum() > 0.05 * (masks != 255).sum()  # enough under the threshold: exactly those count
    wp = w[masks[hard]]
    x = logits.clone().requires_grad_(True)
    loss = ohem.loss({"logits": x}, targets, has)["ce"]
    assert loss.item() == pytest.approx(((wp * ce[hard]).sum() / wp.sum()).item(), rel=1e-5)
    loss.backward()
    g = x.grad.abs().sum(1)
    assert (g[~hard] == 0).all()
    assert g[hard & (masks == 2)].mean() > 5 * g[hard & (masks == 0)].mean()  # weight 3 against 0.2
    void = [{"mask": torch.full((16, 16), 255)}] * 2  # every pixel ignored: 0, not NaN
    assert head.loss({"logits": logits}, void, has)["ce"].item() == 0
    assert "class_weight" not in head.state_dict()  # checkpoints load into heads with other weights
    for bad in ([1.0, 2.0], [1.0, 0.0, 1.0]):
        with pytest.raises(ValueError, match="class_weight needs 3 positive numbers"):
            SegmentationHead("seg", 8, 3, class_weight=bad)


def test_class_weight_config_names_the_key():
    from visionmtl.config import ConfigError, config_from_dict

    task = {"type": "segmentation", "classes": ["road", "car", "sky"]}
    cfg = config_from_dict({"tasks": {"seg": {**task, "head": {"class_weight": [1, 2, 3]}}}})
    assert cfg.tasks["seg"].head["class_weight"] == [1, 2, 3]
    for bad in ([1, 2], [1, -1, 2], "heavy"):
        with pytest.raises(ConfigError, match=r"tasks\.seg\.head\.class_weight.*3 positive numbers.*road, car, sky"):
            config_from_dict({"tasks": {"seg": {**task, "head": {"class_weight": bad}}}})


@pytest.mark.parametrize("classes", [5, 300])
def test_predict_upsamples_the_label_map_to_larger_originals(classes):
    """Frames larger than the input get the input-size arg-max, nearest-resized (uint8 or not)."""
    head = SegmentationHead("seg", {"p2": 8, "p3": 8}, classes, channels=8, levels=("p2", "p3"))
    raw = {"logits": torch.randn(1, classes, 8, 12)}  # a 32x48 input at stride 4, 30x45 valid
    small = head.predict(raw, [(30, 45)])[0]["mask"]
    big = head.predict(raw, [(30, 45)], orig_sizes=[(97, 143)])[0]["mask"]
    assert big.dtype == torch.int64 and big.shape == (97, 143)
    expected = torch.nn.functional.interpolate(small[None, None].float(), size=(97, 143), mode="nearest-exact")
    assert torch.equal(big, expected[0, 0].long())
    assert classes == 5 or int(big.max()) > 255  # ids above uint8's range survive
