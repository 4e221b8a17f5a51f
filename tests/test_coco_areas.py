"""Detection metrics through the project's evaluation path agree with pycocotools on the original JSON.

COCO's small / medium / large split uses each annotation's ``area`` field (the segmentation's
pixel area), not its box area. The ground truth goes the way evaluation takes it (CocoAdapter ->
TaskDataset with the eval transform at a size other than the original, so boxes are rescaled ->
collate -> the detection spec's ``update`` / ``detection_gt``), the predictions are the
annotations jittered plus false positives (seeded), and every number the evaluator reports is
compared with ``COCOeval`` run directly on the original annotation file.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visionmtl.config import config_from_dict
from visionmtl.data.loader import build_dataset, build_loader
from visionmtl.metrics.detection import CocoDetectionEvaluator
from visionmtl.tasks import spec
from visionmtl.tasks.detection import detection_gt

from .conftest import real_data

STATS = ("mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l")


def _f32(x) -> np.ndarray:
    """float32-representable values: the spec's ``update`` casts predictions to float32."""
    return np.asarray(x, np.float32).astype(np.float64)


def make_predictions(coco: dict, seed: int) -> dict[int, list[dict]]:
    """Per image id, COCO-style detections (``bbox`` xywh, ``category_id``, ``score``): most
    annotations jittered (a few with the wrong class), some missed, random false positives,
    and a detection on each crowd region."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(c["id"] for c in coco["categories"])
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}

    def add(image_id, x1, y1, x2, y2, cat):
        x1, y1, x2, y2 = _f32([x1, y1, x2, y2])
        if x2 - x1 > 0 and y2 - y1 > 0:
            by_image[image_id].append({"image_id": image_id, "category_id": int(cat),
                                       "bbox": [x1, y1, x2 - x1, y2 - y1],
                                       "score": float(_f32(rng.uniform(0.01, 1.0)))})

    for a in coco["annotations"]:
        if rng.random() < 0.15:  # missed
            continue
        x, y, w, h = a["bbox"]
        cx, cy = x + w / 2 + rng.normal(0, 0.08) * w, y + h / 2 + rng.normal(0, 0.08) * h
        w, h = w * np.exp(rng.normal(0, 0.12)), h * np.exp(rng.normal(0, 0.12))
        cat = a["category_id"] if rng.random() < 0.9 else rng.choice(cat_ids)
        add(a["image_id"], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cat)
    for image_id, (W, H) in sizes.items():
        for _ in range(rng.poisson(1.5)):  # false positives of all sizes
            w, h = W * rng.uniform(0.01, 0.6), H * rng.uniform(0.01, 0.6)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            add(image_id, x, y, x + w, y + h, rng.choice(cat_ids))
    return by_image


def reference(ann_file: Path, results: list[dict]) -> dict:
    """pycocotools on the original annotation file: the stats and per-class AP / AP50."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {k: float(ev.stats[i]) if ev.stats[i] >= 0 else None for i, k in enumerate(STATS)}  # -1: undefined
    pr = ev.eval["precision"][:, :, :, 0, 2]  # [T, R, K], area "all", maxDets 100
    per_ap, per_ap50 = {}, {}
    for k, cid in enumerate(ev.params.catIds):
        name = gt.cats[cid]["name"]
        valid = pr[:, :, k] > -1
        per_ap[name] = float(pr[:, :, k][valid].mean()) if valid.any() else None
        valid50 = pr[0, :, k] > -1
        per_ap50[name] = float(pr[0, :, k][valid50].mean()) if valid50.any() else None
    out["per_class"] = {"AP": per_ap, "AP50": per_ap50}
    return out


def project(ann_file: Path, img_dir: Path, eval_size: int, preds: dict[int, list[dict]]) -> dict:
    """The evaluator fed through the project's path (adapter -> dataset -> eval transform ->
    collate -> the detection spec's ``update``), with the same predictions."""
    coco = json.loads(Path(ann_file).read_text())
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    classes = [c["name"] for c in cats]
    task_id = {c["id"]: k for k, c in enumerate(cats)}
    ds = [{"type": "coco", "ann_file": str(ann_file), "img_dir": str(img_dir), "provides": ["boxes", "box_labels"]}]
    cfg = config_from_dict({
        "tasks": {"det": {"type": "detection", "classes": classes}},
        "data": {"img_size": eval_size, "batch_size": 8, "workers": 0, "train": ds, "val": ds},
    })
    task = cfg.tasks["det"]
    ev = spec(task).evaluator(task)
    loader = build_loader(cfg, "val", build_dataset(cfg, "val"), shuffle=False, workers=0)
    n_images = resized = 0
    for batch in loader:
        pd = []
        for m in batch.meta:
            n_images += 1
            resized += tuple(m["input_size"]) != tuple(m["orig_size"])
            dets = preds[m["image_id"]]
            xywh = np.asarray([d["bbox"] for d in dets], np.float64).reshape(-1, 4)
            pd.append({"boxes": torch.as_tensor(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)),
                       "scores": torch.tensor([d["score"] for d in dets], dtype=torch.float64),
                       "labels": torch.tensor([task_id[d["category_id"]] for d in dets], dtype=torch.int64)})
        spec(task).update(ev, task, pd, batch.targets, batch.meta)
    assert n_images == len(coco["images"]) and resized == n_images  # every image, every one rescaled
    return ev.compute()


def compare(ann_file: Path, img_dir: Path, eval_size: int, seed: int = 0) -> tuple[dict, dict]:
    coco = json.loads(Path(ann_file).read_text())
    preds = make_predictions(coco, seed)
    ours = project(ann_file, img_dir, eval_size, preds)
    ref = reference(ann_file, [d for dets in preds.values() for d in dets])
    return ours, ref


def assert_same(ours: dict, ref: dict) -> None:
    for k in STATS:
        if ref[k] is None:
            assert ours[k] is None, (k, ours[k])
        else:
            assert ours[k] == pytest.approx(ref[k], abs=1e-6), (k, ours[k], ref[k])
    for which in ("AP", "AP50"):
        assert set(ours["per_class"][which]) == set(ref["per_class"][which])
        for name, v in ref["per_class"][which].items():
            got = ours["per_class"][which][name]
            if v is None:
                assert got is None, (which, name, got)
            else:
                assert got == pytest.approx(v, abs=1e-6), (which, name, got, v)


# ====================================================================== shapes (generated)
@pytest.fixture(scope="module")
def shapes128(tmp_path_factory) -> Path:
    """The first 48 images of the demo's val split (128 px; the session's 64-px ``shapes_dir``
    has only small objects, so it cannot tell segmentation areas from box areas)."""
    from visionmtl.data.shapes import make_shapes

    out = tmp_path_factory.mktemp("shapes128")
    make_shapes(out, train=0, val=48, size=128, seed=0)
    return out / "val"


def _size_range(area: float) -> int:
    return 0 if area <= 32**2 else 1 if area <= 96**2 else 2


def test_shapes_val_metrics_match_pycocotools(shapes128):
    ann = json.loads((shapes128 / "annotations.json").read_text())
    # objects whose segmentation area puts them in another COCO size range than their box area:
    # the case box areas got wrong
    moved = [a for a in ann["annotations"] if _size_range(a["area"]) != _size_range(a["bbox"][2] * a["bbox"][3])]
    assert len(moved) >= 10
    ours, ref = compare(shapes128 / "annotations.json", shapes128 / "images", eval_size=96)
    assert_same(ours, ref)
    assert ours["mAP_s"] is not None and ours["mAP_m"] is not None


# ====================================================================== COCO128 (real data)
def test_coco128_metrics_match_pycocotools():
    root = real_data("coco128")
    # at 320 px (half size) the eval transform drops a 1.8x1.9 px box; the ground truth keeps it
    ours, ref = compare(root / "annotations" / "instances.json", root / "images", eval_size=320)
    assert_same(ours, ref)
    assert all(ours[k] is not None for k in STATS)


# ====================================================================== details
def test_tiny_boxes_survive_downscaling_in_evaluation(tmp_path):
    """A box the eval transform drops (under 1 px² after downscaling) stays in the ground truth,
    in original pixels, with its annotation's area; training targets carry none of this."""
    from tests.data_helpers import coco_dict, square, write_image, write_json

    write_image(tmp_path / "img" / "a.png", h=256, w=512)
    crowd_rle = [256 * 300 + 100, 50] + [206, 50] * 49 + [256 * 512 - 256 * 349 - 150]  # x 300-350, y 100-150
    anns = [{"image_id": 1, "category_id": 1, "bbox": [100, 50, 60, 40], "segmentation": [square(100, 50, 40)],
             "area": 1600.0},
            {"image_id": 1, "category_id": 2, "bbox": [10, 10, 1.5, 1.5], "segmentation": [], "area": 2.0},
            {"image_id": 1, "category_id": 2, "bbox": [300, 100, 50, 50], "iscrowd": 1, "area": 1234.5,
             "segmentation": {"size": [256, 512], "counts": crowd_rle}}]
    write_json(tmp_path / "ann.json", coco_dict([(1, "a.png", 512, 256)], anns, [(1, "cat"), (2, "dog")]))
    ds = [{"type": "coco", "ann_file": str(tmp_path / "ann.json"), "img_dir": str(tmp_path / "img")}]
    cfg = config_from_dict({"tasks": {"det": {"type": "detection", "classes": ["cat", "dog"]}},
                            "data": {"img_size": 128, "batch_size": 1, "workers": 0, "train": ds, "val": ds}})
    adapter_target = build_dataset(cfg, "val").parts[0].adapter.load(0)[1]
    np.testing.assert_allclose(adapter_target["box_areas"], [1600.0, 2.0])
    np.testing.assert_allclose(adapter_target["crowd_areas"], [1234.5])
    assert "eval_boxes" not in build_dataset(cfg, "train").parts[0].get(0, seed=0)["target"]
    s = build_dataset(cfg, "val").parts[0].get(0)
    t, meta = s["target"], s["meta"]
    assert meta["input_size"] == (64, 128)
    assert len(t["boxes"]) == 1  # the 1.5 px box is 0.375 px wide at 128 px: albumentations drops it
    gt = detection_gt(t, meta)
    torch.testing.assert_close(gt["boxes"], torch.tensor([[100.0, 50.0, 160.0, 90.0], [10.0, 10.0, 11.5, 11.5],
                                                          [300.0, 100.0, 350.0, 150.0]]))
    assert gt["box_labels"].tolist() == [0, 1, 1] and gt["iscrowd"].tolist() == [0, 0, 1]
    torch.testing.assert_close(gt["areas"], torch.tensor([1600.0, 2.0, 1234.5], dtype=torch.float64))


def test_evaluator_uses_given_areas_and_falls_back_to_box_area():
    """``areas`` decide the COCO size range; without them the box area does (as before)."""
    box = torch.tensor([[0.0, 0.0, 40.0, 40.0]])  # box area 1600: medium
    pred = {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    ev = CocoDetectionEvaluator(["a"])
    ev.update([pred], [{"boxes": box, "box_labels": torch.tensor([0])}])
    r = ev.compute()
    assert r["mAP_m"] == pytest.approx(1.0) and r["mAP_s"] is None
    ev = CocoDetectionEvaluator(["a"])
    ev.update([pred], [{"boxes": box, "box_labels": torch.tensor([0]), "areas": torch.tensor([700.0])}])
    r = ev.compute()
    assert r["mAP_s"] == pytest.approx(1.0) and r["mAP_m"] is None
    assert ev.coco_gt_dataset()["annotations"][0]["area"] == 700.0
    with pytest.raises(ValueError, match="areas"):
        ev.update([pred], [{"boxes": box, "box_labels": torch.tensor([0]), "areas": torch.tensor([1.0, 2.0])}])
