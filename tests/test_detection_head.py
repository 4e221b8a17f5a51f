"""DetectionHead: losses on empty and unlabelled images, level assignment, decoding, NMS input."""

from __future__ import annotations

import math

import pytest
import torch

from visionmtl.models.heads import DetectionHead

from .test_models import S, _targets, _threads  # noqa: F401  (autouse: one intra-op thread, seed 0)


def _det_head(**kw) -> DetectionHead:
    return DetectionHead("det", 16, 3, channels=16, **kw)


def _det_features(b: int, size: int, channels: int = 16) -> dict[str, torch.Tensor]:
    return {f"p{k}": torch.randn(b, channels, math.ceil(size / 2**k), math.ceil(size / 2**k)) for k in range(3, 8)}


def test_detection_empty_image_loss():
    head = _det_head()
    raw = head(_det_features(2, S))
    empty = {"boxes": torch.zeros(0, 4), "box_labels": torch.zeros(0, dtype=torch.int64)}
    losses = head.loss(raw, [empty, empty], torch.tensor([True, True]))
    assert set(losses) == {"cls", "box", "ctr"}
    assert torch.isfinite(losses["cls"]) and losses["cls"].item() > 0
    assert losses["box"].item() == 0.0 and losses["ctr"].item() == 0.0
    assert losses["box"].requires_grad
    sum(losses.values()).backward()


def test_detection_unlabelled_images_contribute_nothing():
    head = _det_head()
    feats = _det_features(2, S)
    raw = head(feats)
    good = _targets(1)[0]
    garbage = {"boxes": torch.tensor([[0.0, 0.0, 60.0, 60.0]]), "box_labels": torch.tensor([1])}
    mixed = head.loss(raw, [good, garbage], torch.tensor([True, False]))
    only = head.loss({k: (v[:1] if k in ("cls_logits", "box_regression", "centerness") else v) for k, v in raw.items()}, [good], torch.tensor([True]))
    for k in only:
        torch.testing.assert_close(mixed[k], only[k])
    assert mixed["box"].item() > 0

    # no image labelled: all losses exactly 0, zero gradient, graph still connected
    head.zero_grad()
    raw = head(feats)
    none = head.loss(raw, [{}, {}], torch.tensor([False, False]))
    assert all(v.item() == 0.0 for v in none.values())
    sum(none.values()).backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None for g in grads[:2])
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def _level_of(head: DetectionHead, sizes: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


@pytest.mark.parametrize(
    "box,levels",
    [
        ((100.0, 100.0, 120.0, 120.0), {0}),  # 20 px -> P3
        ((150.0, 150.0, 350.0, 350.0), {1, 2}),  # 200 px: max(l,t,r,b) ~100-148 -> P4 and P5
        ((100.0, 100.0, 400.0, 400.0), {2}),  # 300 px -> P5
        ((0.0, 0.0, 512.0, 512.0), {3}),  # 512 px -> P6
    ],
)
def test_detection_assignment_levels(box, levels):
    head = _det_head()
    size = 512
    shapes = [(math.ceil(size / s), math.ceil(size / s)) for s in head.strides]
    points = head.points(shapes, torch.device("cpu"))
    sizes = [h * w for h, w in shapes]
    labels, reg = head.assign(points, sizes, torch.tensor([box]), torch.tensor([2]))
    pos = labels >= 0
    assert pos.any()
    assert set(labels[pos].tolist()) == {2}
    assert set(_level_of(head, sizes)[pos].tolist()) == levels
    x1, y1, x2, y2 = box
    p = points[pos]
    assert ((p[:, 0] > x1) & (p[:, 0] < x2) & (p[:, 1] > y1) & (p[:, 1] < y2)).all()
    # regression targets reproduce the box
    decoded = torch.cat([p - reg[pos][:, :2], p + reg[pos][:, 2:]], dim=1)
    torch.testing.assert_close(decoded, torch.tensor([box]).expand_as(decoded))
    # centre sampling: positives within radius * stride of the centre
    stride = torch.tensor(head.strides, dtype=torch.float32)[_level_of(head, sizes)[pos]]
    centre = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2])
    assert ((p - centre).abs().amax(dim=1) < head.center_sampling_radius * stride).all()


def test_detection_size_ranges_and_ambiguity():
    head = _det_head()
    assert head.size_ranges == ((-1, 64), (64, 128), (128, 256), (256, 512), (512, math.inf))
    shapes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    points = head.points(shapes, torch.device("cpu"))
    sizes = [h * w for h, w in shapes]
    # a small box inside a large one at the same level: shared points take the smaller box
    boxes = torch.tensor([[0.0, 0.0, 60.0, 60.0], [16.0, 16.0, 40.0, 40.0]])
    labels, _ = head.assign(points, sizes, boxes, torch.tensor([0, 1]))
    in_small = (points[:, 0] > 16) & (points[:, 0] < 40) & (points[:, 1] > 16) & (points[:, 1] < 40) & (labels >= 0)
    assert in_small.any() and (labels[in_small] == 1).all()
    empty_labels, _ = head.assign(points, sizes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert (empty_labels == -1).all()


def test_detection_predict_scales_to_orig_sizes():
    head = _det_head(score_thresh=0.0)
    head.eval()
    with torch.no_grad():
        raw = head(_det_features(2, S))
    plain = head.predict(raw, [(S, S), (S, S)])
    scaled = head.predict(raw, [(S, S), (S, S)], orig_sizes=[(2 * S, 2 * S), (2 * S, 2 * S)])
    for a, b in zip(plain, scaled):
        assert a["boxes"].shape[0] > 0
        assert a["boxes"].dtype == torch.float32 and a["labels"].dtype == torch.int64
        assert (a["boxes"] >= 0).all() and (a["boxes"] <= S).all()
        torch.testing.assert_close(b["boxes"], a["boxes"] * 2)
        torch.testing.assert_close(b["scores"], a["scores"])
    # anisotropic: (h, w) 64x32 input region -> 32x128 original
    aniso = head.predict(raw, [(S, 32), (S, 32)], orig_sizes=[(32, 128), (32, 128)])[0]
    clipped = head.predict(raw, [(S, 32), (S, 32)])[0]
    expected = clipped["boxes"] * torch.tensor([4.0, 0.5, 4.0, 0.5])
    torch.testing.assert_close(aniso["boxes"], expected)


def test_detection_min_score_before_nms_equals_filtering_after(monkeypatch):
    """Inference's confidence threshold applied before NMS gives what filtering the output gives."""
    import visionmtl.models.heads.detection as det

    nms_inputs = []

    def counting_nms(boxes, *a):
        nms_inputs.append(len(boxes))
        return nms(boxes, *a)

    nms = det.nms
    monkeypatch.setattr(det, "nms", counting_nms)
    head = _det_head(score_thresh=0.0, max_det=1000)
    head.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        raw = head(_det_features(2, S))
    full = head.predict(raw, [(S, S), (S, 48)])
    n_full = sum(nms_inputs)
    suppressed = 0
    for q in (0.3, 0.6, 0.9):
        thr = float(torch.quantile(torch.cat([f["scores"] for f in full]), q))
        nms_inputs.clear()
        fast = head.predict(raw, [(S, S), (S, 48)], min_score=thr)
        assert sum(nms_inputs) < n_full * (1 - q) + 50  # the low candidates never reach NMS
        for f, g in zip(full, fast):
            keep = f["scores"] >= thr
            assert g["boxes"].shape[0] == int(keep.sum()) > 0
            torch.testing.assert_close(g["boxes"], f["boxes"][keep])
            torch.testing.assert_close(g["scores"], f["scores"][keep])
            assert torch.equal(g["labels"], f["labels"][keep])
        # NMS did suppress candidates above the threshold, so the equality is not vacuous
        flat = torch.sigmoid(raw["cls_logits"]) * torch.sigmoid(raw["centerness"])[..., None]
        suppressed += int((flat.sqrt() >= thr).sum()) - sum(int((f["scores"] >= thr).sum()) for f in full)
    assert suppressed > 0
    # a min_score below score_thresh changes nothing
    low = _det_head(score_thresh=0.5)
    low.load_state_dict(head.state_dict())
    low.eval()
    for a, b in zip(low.predict(raw, [(S, S)] * 2), low.predict(raw, [(S, S)] * 2, min_score=0.1)):
        assert torch.equal(a["scores"], b["scores"])


def _per_image_reference(head, raw, sizes, min_score=None):
    """The per-image decoding (threshold, per-level top-k, clip, small boxes, torchvision's
    batched_nms, max_det) that the batched graph_outputs replaced."""
    from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

    prob = (torch.sigmoid(raw["cls_logits"]) * torch.sigmoid(raw["centerness"])[..., None]).sqrt()
    c = prob.shape[2]
    thresh = max(head.score_thresh, min_score or 0.0)
    out = []
    for i, (h, w) in enumerate(sizes):
        boxes, scores, labels, start = [], [], [], 0
        for n in raw["level_sizes"].tolist():
            flat = prob[i, start:start + n].reshape(-1)
            cand = (flat > thresh).nonzero().squeeze(1)
            if cand.numel() > head.topk_candidates:
                cand = cand[flat[cand].topk(head.topk_candidates).indices]
            p = cand // c + start
            reg = raw["box_regression"][i, p]
            pts = raw["points"][p]
            boxes.append(torch.cat([pts - reg[:, :2], pts + reg[:, 2:]], 1))
            scores.append(flat[cand])
            labels.append(cand % c)
            start += n
        b, s, l = clip_boxes_to_image(torch.cat(boxes), (h, w)), torch.cat(scores), torch.cat(labels)
        keep = remove_small_boxes(b, 1e-2)
        b, s, l = b[keep], s[keep], l[keep]
        keep = batched_nms(b, s, l, head.nms_thresh)[: head.max_det]
        out.append((b[keep], s[keep], l[keep]))
    return out


def test_batched_decoding_equals_the_per_image_reference():
    """graph_outputs decodes the whole batch at once (top-k before the threshold, one NMS with
    class and image offsets, max_det by rank): the per-image algorithm's detections, image by image."""
    head = _det_head(score_thresh=0.05, max_det=30, topk_candidates=40)
    head.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        raw = head(_det_features(3, S))
    sizes = [(S, S), (S, 40), (30, S)]
    prob = (torch.sigmoid(raw["cls_logits"]) * torch.sigmoid(raw["centerness"])[..., None]).sqrt()
    for min_score in (None, float(prob.quantile(0.9))):
        got = head.predict(raw, sizes, min_score=min_score)
        for g, (b, s, l) in zip(got, _per_image_reference(head, raw, sizes, min_score)):
            assert len(g["boxes"]) == len(b) > 0
            torch.testing.assert_close(g["boxes"], b)
            torch.testing.assert_close(g["scores"], s)
            assert torch.equal(g["labels"], l)
