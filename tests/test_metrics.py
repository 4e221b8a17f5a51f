"""Tests for visionmtl.metrics: classification AP/top-k, COCO detection, segmentation, Δm."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

import numpy as np
import pytest
import torch

from visionmtl.metrics import (
    ClassificationEvaluator,
    CocoDetectionEvaluator,
    SegmentationEvaluator,
    average_precision,
    delta_m,
    delta_m_per_task,
)


# --------------------------------------------------------------------------- classification
def brute_force_ap(scores: np.ndarray, y: np.ndarray) -> float:
    """Literal sum over distinct thresholds of (R_n - R_{n-1}) * P_n."""
    npos = int(y.sum())
    if npos == 0:
        return float("nan")
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        sel = scores >= t
        tp = int((y & sel).sum())
        p = tp / int(sel.sum())
        r = tp / npos
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def test_ap_hand_examples():
    # sklearn.metrics.average_precision_score([1, 0, 1, 0], [.9, .8, .7, .6]) == 5/6
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # A tie forms one threshold: the positive at 0.5 gets precision 1/3, not 1/2.
    assert average_precision(np.array([0.9, 0.5, 0.5]), np.array([0, 1, 0])) == pytest.approx(1 / 3)
    assert average_precision(np.array([0.9, 0.5, 0.5]), np.array([0, 0, 1])) == pytest.approx(1 / 3)


def test_ap_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(5):
        n, c = 37, 6
        scores = rng.integers(0, 5, size=(n, c)) / 4.0  # heavy ties
        y = rng.random((n, c)) < 0.3
        y[:, 0] = False  # a class with no positives
        y[0, 1] = True
        got = average_precision(scores, y)
        want = np.array([brute_force_ap(scores[:, k], y[:, k]) for k in range(c)])
        assert np.isnan(got[0]) and np.isnan(want[0])
        np.testing.assert_allclose(got[1:], want[1:], rtol=1e-12)

        # Same numbers through the evaluator, fed in two batches of torch tensors.
        names = [f"c{k}" for k in range(c)]
        ev = ClassificationEvaluator(names, multilabel=True)
        labels = [torch.as_tensor(np.flatnonzero(row), dtype=torch.int64) for row in y]
        s = torch.as_tensor(scores, dtype=torch.float32)
        ev.update(s[:20], labels[:20])
        ev.update(s[20:].numpy(), labels[20:])
        res = ev.compute()
        assert res["per_class"]["AP"]["c0"] is None
        assert res["mAP"] == pytest.approx(float(np.mean(want[1:])))
        for k in range(1, c):
            assert res["per_class"]["AP"][f"c{k}"] == pytest.approx(want[k])


def test_multilabel_perfect_scores_give_map_one():
    ev = ClassificationEvaluator(["a", "b", "c"], multilabel=True)
    labels = [torch.tensor([0, 2]), torch.tensor([], dtype=torch.int64), torch.tensor([1])]
    scores = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.3, 0.1], [0.1, 0.7, 0.2]])
    ev.update(scores, labels)
    res = ev.compute()
    assert res["mAP"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in res["per_class"]["AP"].values())
    ev.reset()
    assert ev.compute()["mAP"] is None


def test_multiclass_top1_top5_and_per_class_acc():
    ev = ClassificationEvaluator(["a", "b", "c"], multilabel=False)
    scores = torch.tensor([[0.7, 0.2, 0.1],   # a  correct
                           [0.1, 0.8, 0.1],   # b  correct
                           [0.5, 0.15, 0.35], # b  wrong (top-1 a)
                           [0.1, 0.2, 0.7]])  # c  correct
    labels = [torch.tensor([0]), torch.tensor([1]), torch.tensor([1]), torch.tensor(2)]
    ev.update(scores, labels)
    res = ev.compute()
    assert res["top1"] == pytest.approx(0.75)
    assert "top5" not in res
    assert res["per_class"]["acc"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    # one-vs-rest AP: a and c rank their positive first -> 1; b ranks its positives
    # .8 first and .15 last of four -> (1 + 2/4) / 2
    assert res["per_class"]["AP"]["a"] == pytest.approx(1.0)
    assert res["per_class"]["AP"]["b"] == pytest.approx(0.75)
    assert res["per_class"]["AP"]["c"] == pytest.approx(1.0)
    assert res["mAP"] == pytest.approx((1 + 0.75 + 1) / 3)


def test_multiclass_top5_dicts_and_unlabelled_images():
    names = [f"c{k}" for k in range(6)]
    ev = ClassificationEvaluator(names, multilabel=False)
    probs = torch.tensor([[0.30, 0.25, 0.20, 0.15, 0.06, 0.04],
                          [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],
                          [0.30, 0.25, 0.20, 0.15, 0.06, 0.04]])
    preds = [{"probs": p} for p in probs]
    targets = [{"labels": torch.tensor([4])}, {"labels": torch.tensor([5])}, {}]  # last: no label
    ev.update(preds, targets)
    res = ev.compute()
    assert res["top1"] == 0.0
    assert res["top5"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ev.update(probs[:1], [torch.tensor([0, 1])])  # multi-class needs exactly one id
    with pytest.raises(ValueError):
        ev.update(probs[:1], [torch.tensor([9])])


# --------------------------------------------------------------------------- detection
CLASSES = ["cat", "dog"]


def _det(boxes, labels, scores=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels, dtype=torch.int64)
    if scores is None:
        return {"boxes": boxes, "box_labels": labels}
    return {"boxes": boxes, "labels": labels, "scores": torch.tensor(scores, dtype=torch.float32)}


def _gt_set():
    return [
        _det([[10, 10, 110, 110], [200, 50, 300, 130]], [0, 1]),
        _det([[20, 30, 220, 180]], [1]),
        _det([[0, 0, 60, 80], [100, 100, 180, 160], [300, 300, 400, 420]], [0, 0, 1]),
    ]


def _perfect_preds(gts):
    # Distinct scores, so the ranking (and COCO's AP) does not depend on image order.
    out = []
    for i, t in enumerate(gts):
        n = len(t["boxes"])
        out.append({"boxes": t["boxes"].clone(), "labels": t["box_labels"].clone(),
                    "scores": 0.9 - 0.1 * i - 0.01 * torch.arange(n, dtype=torch.float32)})
    return out


def test_detection_perfect_predictions():
    gts = _gt_set()
    ev = CocoDetectionEvaluator(CLASSES)
    ev.update(_perfect_preds(gts[:2]), gts[:2])
    ev.update(_perfect_preds(gts[2:]), gts[2:])
    # An image with neither GT nor predictions is fine.
    ev.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}],
              [_det(np.zeros((0, 4)), [])])
    res = ev.compute()
    for k in ("mAP", "mAP50", "mAP75", "AR100"):
        assert res[k] == pytest.approx(1.0), k
    assert res["per_class"]["AP"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert res["per_class"]["AP50"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_detection_shifted_predictions():
    # Three 100x100 cats. Exact hit; shift by half a box (IoU 1/3: a miss at every threshold);
    # shift by a fifth of a box (IoU 2/3: a hit only up to IoU 0.65).
    gts = [_det([[0, 0, 100, 100]], [0]) for _ in range(3)]
    preds = [_det([[0, 0, 100, 100]], [0], [0.9]),
             _det([[50, 0, 150, 100]], [0], [0.8]),
             _det([[20, 0, 120, 100]], [0], [0.7])]
    ev = CocoDetectionEvaluator(CLASSES)
    ev.update(preds, gts)
    res = ev.compute()
    assert res["mAP50"] < 1.0
    assert res["mAP"] < res["mAP50"]
    assert res["mAP75"] < res["mAP50"]
    assert res["per_class"]["AP"]["dog"] is None  # no dog GT

    # Shifting every box by half a box loses everything.
    ev = CocoDetectionEvaluator(CLASSES)
    ev.update([_det([[50, 0, 150, 100]], [0], [0.9])] * 3, gts)
    res = ev.compute()
    assert res["mAP50"] == 0.0 and res["mAP"] == 0.0


def test_detection_missing_class_gets_zero_ap():
    gts = _gt_set()
    preds = []
    for t in gts:
        keep = t["box_labels"] == 0  # never predict dogs
        preds.append({"boxes": t["boxes"][keep], "labels": t["box_labels"][keep],
                      "scores": torch.full((int(keep.sum()),), 0.9)})
    ev = CocoDetectionEvaluator(CLASSES)
    ev.update(preds, gts)
    res = ev.compute()
    assert res["per_class"]["AP"]["cat"] == pytest.approx(1.0)
    assert res["per_class"]["AP"]["dog"] == 0.0
    assert res["per_class"]["AP50"]["dog"] == 0.0
    assert res["mAP"] == pytest.approx(0.5)


def test_detection_empty_predictions_and_no_images():
    gts = _gt_set()
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
             for _ in gts]
    ev = CocoDetectionEvaluator(CLASSES)
    ev.update(empty, gts)
    res = ev.compute()
    assert res["mAP"] == 0.0 and res["mAP50"] == 0.0 and res["AR100"] == 0.0
    assert res["per_class"]["AP"] == {"cat": 0.0, "dog": 0.0}
    assert ev.results_json() == []

    assert CocoDetectionEvaluator(CLASSES).compute()["mAP"] is None


def test_detection_false_positive_on_image_without_gt_lowers_precision():
    gt = [_det([[10, 10, 110, 110]], [0])]
    tp = [_det([[10, 10, 110, 110]], [0], [0.5])]
    ev = CocoDetectionEvaluator(CLASSES)
    ev.update(tp, gt)
    assert ev.compute()["mAP"] == pytest.approx(1.0)
    # A labelled image with no objects, where a confident cat is predicted.
    ev.update([_det([[0, 0, 50, 50]], [0], [0.9])], [_det(np.zeros((0, 4)), [])])
    res = ev.compute()
    assert res["mAP"] == pytest.approx(0.5)  # precision is 1/2 at every recall level
    # An image that is not labelled for detection (no "boxes") is skipped entirely.
    ev.update([_det([[0, 0, 50, 50]], [0], [0.99])], [{"labels": torch.tensor([1])}])
    assert ev.compute()["mAP"] == pytest.approx(0.5)


def test_detection_results_json_round_trips_through_loadres():
    from pycocotools.cocoeval import COCOeval

    gts = _gt_set()
    preds = _perfect_preds(gts)
    preds[1]["boxes"] = preds[1]["boxes"] + 15.0  # make it imperfect
    preds[2]["scores"] = torch.tensor([0.3, 0.8, 0.6])
    ev = CocoDetectionEvaluator(CLASSES, cat_ids=[17, 18])
    ev.update(preds, gts, image_ids=[42, 7, torch.tensor(1000)])
    res = ev.compute()

    results = ev.results_json()
    assert len(results) == 6
    assert {r["image_id"] for r in results} == {42, 7, 1000}
    assert {r["category_id"] for r in results} == {17, 18}
    first = results[0]
    assert first["image_id"] == 42 and first["category_id"] == 17
    assert first["bbox"] == pytest.approx([10.0, 10.0, 100.0, 100.0]) and first["score"] == pytest.approx(0.9)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = ev.coco_gt()
        coco_dt = coco_gt.loadRes(ev.results_json())
        e = COCOeval(coco_gt, coco_dt, iouType="bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    assert len(coco_dt.getAnnIds()) == 6
    assert e.stats[0] == pytest.approx(res["mAP"])
    assert e.stats[1] == pytest.approx(res["mAP50"])
    assert 0.0 < res["mAP"] < 1.0

    with pytest.raises(ValueError):
        ev.update(preds[:1], gts[:1], image_ids=[42])  # duplicate id
    with pytest.raises(ValueError):
        ev.update(preds[:1], gts[:1])  # mixing automatic and explicit ids


# --------------------------------------------------------------------------- segmentation
SEG_CLASSES = ["road", "car", "person", "unused"]
GT = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [2, 2, 0]])


def test_segmentation_known_confusion_matrix():
    ev = SegmentationEvaluator(SEG_CLASSES)
    ev.update(PRED[None], GT[None])
    expected = torch.tensor([[1, 1, 0, 0],
                             [0, 1, 1, 0],
                             [0, 0, 1, 0],
                             [0, 0, 0, 0]])
    assert torch.equal(ev.confusion_matrix, expected)
    res = ev.compute()
    iou = res["per_class"]["IoU"]
    assert iou["road"] == pytest.approx(1 / 2)
    assert iou["car"] == pytest.approx(1 / 3)
    assert iou["person"] == pytest.approx(1 / 2)
    assert iou["unused"] is None
    assert res["mIoU"] == pytest.approx(4 / 9)
    assert res["pixel_acc"] == pytest.approx(3 / 5)
    assert res["per_class"]["acc"] == {"road": 0.5, "car": 0.5, "person": 1.0, "unused": None}
    assert res["mean_acc"] == pytest.approx(2 / 3)

    # numpy inputs and list-of-dict inputs accumulate identically
    ev2 = SegmentationEvaluator(SEG_CLASSES)
    ev2.update([PRED.numpy()], [GT.numpy()])
    ev2.update([{"mask": PRED}, {"mask": PRED}], [{"mask": GT}, {"labels": torch.tensor([0])}])
    assert torch.equal(ev2.confusion_matrix, 2 * expected)


def test_segmentation_ignore_index():
    ev = SegmentationEvaluator(SEG_CLASSES)
    other = PRED.clone()
    other[1, 2] = 3  # the pixel at the ignored position predicts another class
    ev.update(other, GT)
    ev.update(torch.zeros(2, 3, dtype=torch.int64), torch.full((2, 3), 255))
    assert int(ev.confusion_matrix.sum()) == 5
    assert ev.compute()["per_class"]["IoU"]["unused"] is None

    ev = SegmentationEvaluator(SEG_CLASSES, ignore_index=0)
    ev.update(PRED, GT.clamp(max=3))  # 255 -> 3 so it is a real class here
    assert int(ev.confusion_matrix.sum()) == 4  # the two road pixels are ignored


def test_segmentation_errors():
    ev = SegmentationEvaluator(SEG_CLASSES)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        ev.update([PRED], [GT.T.contiguous()])
    with pytest.raises(ValueError, match="range"):
        ev.update(torch.full((2, 3), 7), GT)
    assert SegmentationEvaluator(SEG_CLASSES).compute()["mIoU"] is None


# --------------------------------------------------------------------------- delta_m
def test_delta_m_hand_computed():
    mtl = {"seg_mIoU": 0.63, "depth_rmse": 0.55}
    single = {"seg_mIoU": 0.60, "depth_rmse": 0.50}
    per = delta_m_per_task(mtl, single, {"depth_rmse"})
    assert per["seg_mIoU"] == pytest.approx(0.05)
    assert per["depth_rmse"] == pytest.approx(-0.10)
    assert delta_m(mtl, single, {"depth_rmse"}) == pytest.approx(-0.025)
    assert delta_m(mtl, single, {"depth_rmse": True, "seg_mIoU": False}) == pytest.approx(-0.025)
    assert delta_m(mtl, single) == pytest.approx(0.075)


def test_delta_m_errors():
    with pytest.raises(ValueError, match="missing"):
        delta_m({"a": 1.0, "b": 2.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="0"):
        delta_m({"a": 1.0}, {"a": 0.0})
    with pytest.raises(ValueError):
        delta_m({"a": 1.0}, {"a": 1.0}, {"typo"})


# --------------------------------------------------------------------------- distributed sync
def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gts = _gt_set()
        preds = _perfect_preds(gts)
        preds[1]["boxes"] = preds[1]["boxes"] + 15.0
        det = CocoDetectionEvaluator(CLASSES)
        seg = SegmentationEvaluator(SEG_CLASSES)
        cls = ClassificationEvaluator(["a", "b", "c"], multilabel=True)
        scores = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.6, 0.5], [0.2, 0.7, 0.4], [0.5, 0.5, 0.5]])
        labels = [torch.tensor([0]), torch.tensor([2]), torch.tensor([1, 2]), torch.tensor([0])]
        idx = list(range(rank, len(gts), world))
        det.update([preds[i] for i in idx], [gts[i] for i in idx])
        seg.update(PRED if rank == 0 else GT.clamp(max=2), GT)
        cls.update(scores[rank::world], labels[rank::world])
        for ev in (det, seg, cls):
            ev.sync()
        torch.save({"det": det.compute(), "seg": seg.confusion_matrix, "cls": cls.compute()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_across_two_processes():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dist_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        outs = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(2)]

    gts = _gt_set()
    preds = _perfect_preds(gts)
    preds[1]["boxes"] = preds[1]["boxes"] + 15.0
    det = CocoDetectionEvaluator(CLASSES)
    det.update(preds, gts)
    seg = SegmentationEvaluator(SEG_CLASSES)
    seg.update(torch.stack([PRED, GT.clamp(max=2)]), torch.stack([GT, GT]))
    cls = ClassificationEvaluator(["a", "b", "c"], multilabel=True)
    cls.update(torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.6, 0.5], [0.2, 0.7, 0.4], [0.5, 0.5, 0.5]]),
               [torch.tensor([0]), torch.tensor([2]), torch.tensor([1, 2]), torch.tensor([0])])
    for out in outs:
        assert out["det"]["mAP"] == pytest.approx(det.compute()["mAP"])
        assert out["det"]["per_class"] == det.compute()["per_class"]
        assert torch.equal(out["seg"], seg.confusion_matrix)
        assert out["cls"]["mAP"] == pytest.approx(cls.compute()["mAP"])


def test_crowd_regions_reach_cocoeval_at_evaluation_only(tmp_path):
    """COCO crowd boxes ride in eval targets (original pixels, not in training ones) and a
    detection on a crowd region is ignored by COCOeval, not counted as a false positive."""
    from tests.data_helpers import coco_dict, square, write_image, write_json
    from visionmtl.config import config_from_dict
    from visionmtl.data.loader import build_dataset
    from visionmtl.engine.evaluate import detection_gt

    write_image(tmp_path / "img" / "a.png", h=60, w=80)
    anns = [{"image_id": 1, "category_id": 1, "bbox": [40, 10, 30, 30], "segmentation": [square(40, 10, 30)]},
            {"image_id": 1, "category_id": 1, "bbox": [2, 20, 30, 30], "iscrowd": 1,
             "segmentation": {"size": [60, 80], "counts": [60 * 2 + 20, 30] + [30, 30] * 29 + [60 * 80 - 60 * 31 - 50]}}]
    write_json(tmp_path / "ann.json", coco_dict([(1, "a.png", 80, 60)], anns, [(1, "cat"), (2, "dog")]))
    ds = [{"type": "coco", "ann_file": str(tmp_path / "ann.json"), "img_dir": str(tmp_path / "img")}]
    tree = {"tasks": {"det": {"type": "detection", "classes": ["cat", "dog"]}},
            "data": {"img_size": 32, "batch_size": 1, "workers": 0, "train": ds, "val": ds}}
    cfg = config_from_dict(tree)
    val = build_dataset(cfg, "val").parts[0].get(0)
    assert "crowd_boxes" not in build_dataset(cfg, "train").parts[0].get(0, seed=0)["target"]
    t, meta = val["target"], val["meta"]
    assert meta["input_size"] == (24, 32) and t["crowd_labels"].tolist() == [0]
    torch.testing.assert_close(t["crowd_boxes"], torch.tensor([[2.0, 20.0, 32.0, 50.0]]))  # original pixels
    gt = detection_gt(t, meta)
    torch.testing.assert_close(gt["boxes"], torch.tensor([[40.0, 10.0, 70.0, 40.0], [2.0, 20.0, 32.0, 50.0]]), atol=0.5, rtol=0)
    assert gt["iscrowd"].tolist() == [0, 1] and gt["box_labels"].tolist() == [0, 0]
    # a confident "cat" on the crowd region: ignored with the crowd box, a false positive without
    pred = {"boxes": torch.tensor([[40.0, 10.0, 70.0, 40.0], [4.0, 22.0, 30.0, 48.0]]),
            "scores": torch.tensor([0.6, 0.9]), "labels": torch.tensor([0, 0])}
    aps = []
    for g in (gt, {k: v[:1] for k, v in gt.items()}):
        ev = CocoDetectionEvaluator(["cat", "dog"])
        ev.update([pred], [g])
        aps.append(ev.compute()["mAP50"])
    assert aps[0] == pytest.approx(1.0) and aps[1] == pytest.approx(0.5, abs=0.01)
