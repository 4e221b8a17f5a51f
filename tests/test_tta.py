"""Tests for horizontal-flip test-time augmentation (visionmtl/models/tta.py)."""

from __future__ import annotations

import torch

from visionmtl.models.build import build_model
from visionmtl.models.tta import predict_flip

from .test_models import BACKBONE, S, TASKS, _threads  # noqa: F401  (autouse: one intra-op thread, seed 0)


def _model() -> torch.nn.Module:
    tasks = {k: dict(v) for k, v in TASKS.items()}
    tasks["det"].update(score_thresh=0.0, levels=["p3", "p4", "p5"])  # an untrained detector still gives boxes
    return build_model(BACKBONE, tasks).eval()


def _mirror(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def _sorted(det: dict) -> torch.Tensor:
    rows = torch.cat([det["boxes"], det["scores"][:, None], det["labels"][:, None].float()], dim=1)
    return rows[torch.argsort(det["scores"], descending=True, stable=True)]


def test_flip_tta_is_mirror_equivariant():
    """TTA of the mirrored image is the mirror of TTA of the image: catches a wrong flip-back."""
    model = _model()
    x = torch.randn(2, 3, S, S)
    a = predict_flip(model, x, [(S, S)] * 2)
    b = predict_flip(model, x.flip(-1), [(S, S)] * 2)
    plain = model.predict(model(x), [(S, S)] * 2)
    for ra, rb, rp in zip(a, b, plain):
        assert torch.equal(ra["seg"]["mask"], rb["seg"]["mask"].flip(-1))
        assert torch.allclose(ra["cls"]["probs"], rb["cls"]["probs"], atol=1e-6)
        da, db = _sorted(ra["det"]), _sorted({**rb["det"], "boxes": _mirror(rb["det"]["boxes"], S)})
        assert da.shape[0] > 0 and da.shape == db.shape
        assert torch.allclose(da, db, atol=1e-4)
        # the merge really pools both passes: different from the plain prediction
        assert not torch.equal(ra["seg"]["mask"], rp["seg"]["mask"]) or not torch.allclose(ra["cls"]["probs"], rp["cls"]["probs"])
        assert ra["det"]["boxes"].shape[0] <= model.heads["det"].max_det


def test_flip_tta_padded_image_and_original_size():
    """A narrow image padded on the right: boxes stay in its region and map to original pixels."""
    model = _model()
    x = torch.randn(1, 3, S, S)
    x[..., 40:] = 0  # padding right of a 64x40 valid region
    res = predict_flip(model, x, [(S, 40)], orig_sizes=[(128, 80)])[0]
    assert res["seg"]["mask"].shape == (128, 80)
    boxes = res["det"]["boxes"]
    assert boxes.shape[0] > 0
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 80 and boxes[:, 3].max() <= 128
