"""TaskDataset, transforms, collate and loaders: partial labels, mixing, augmentation, bad samples."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from visionmtl.config import AugmentConfig, ConfigError, config_from_dict
from visionmtl.data.collate import Collate
from visionmtl.data.errors import DataError
from visionmtl.data.loader import build_dataset, build_loader
from visionmtl.data.transforms import build_transforms

from .conftest import real_data

CAMVID = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]


def coco_names() -> list[str]:
    import json

    d = json.loads((real_data("coco128") / "annotations/instances.json").read_text())
    return [c["name"] for c in sorted(d["categories"], key=lambda c: c["id"])]


def make_folder(root, classes=("cat", "dog"), n=3, size=(40, 50)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / c / f"{i}.jpg"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return root


def mixed_cfg(tmp_path, **data):
    coco = real_data("coco128")
    camvid = real_data("camvid")
    folder = make_folder(tmp_path / "pets")
    names = coco_names()
    tree = {
        "tasks": {
            "cls": {"type": "classification", "classes": names},
            "det": {"type": "detection", "classes": names},
            "seg": {"type": "segmentation", "classes": CAMVID},
        },
        "data": {
            "img_size": 128, "batch_size": 6, "workers": 0,
            "train": [
                {"type": "coco", "name": "coco128", "tasks": ["cls", "det"],
                 "ann_file": str(coco / "annotations/instances.json"), "img_dir": str(coco / "images")},
                {"type": "masks", "name": "camvid", "tasks": ["seg"], "img_dir": str(camvid / "val"),
                 "mask_dir": str(camvid / "valannot"), "classes": CAMVID, "ignore_ids": [11]},
                {"type": "folder", "name": "pets", "tasks": ["cls"], "root": str(folder)},
            ],
            **data,
        },
    }
    return config_from_dict(tree)


def test_mixed_batch_partial_labels(tmp_path):
    cfg = mixed_cfg(tmp_path)
    ds = build_dataset(cfg, "train")
    assert [len(p) for p in ds.parts] == [128, 101, 6]
    # one image from each dataset in one batch
    samples = [ds[(0, 0)], ds[(0, 128)], ds[(0, 128 + 101)], ds[(0, 5)]]
    batch = Collate(cfg.tasks)(samples)
    assert batch.images.shape[0] == 4 and batch.images.dtype == torch.float32 and samples[0]["image"].dtype == torch.uint8
    assert batch.images.shape[2] % 32 == 0 and batch.images.shape[3] % 32 == 0
    assert batch.has["cls"].tolist() == [True, False, True, True]
    assert batch.has["det"].tolist() == [True, False, False, True]
    assert batch.has["seg"].tolist() == [False, True, False, False]
    coco_t, cam_t, pet_t = batch.targets[0], batch.targets[1], batch.targets[2]
    assert set(coco_t) == {"boxes", "box_labels", "labels"}  # no mask: COCO labels cls+det here
    assert set(cam_t) == {"mask"}
    assert set(pet_t) == {"labels"}
    assert cam_t["mask"].shape == batch.images.shape[2:]
    assert coco_t["box_labels"].dtype == torch.int64 and pet_t["labels"].dtype == torch.int64
    # the pets folder maps 'cat'/'dog' into the COCO class list by name
    names = cfg.tasks["cls"].classes
    assert names[int(pet_t["labels"][0])] in ("cat", "dog")
    assert [m["dataset"] for m in batch.meta] == ["coco128", "camvid", "pets", "coco128"]


def test_class_map_and_unmapped_ignore(tmp_path):
    """COCO masks mapped into CamVid's classes: person -> Pedestrian, car -> Car, the rest ignored."""
    coco = real_data("coco128")
    tree = {
        "tasks": {"seg": {"type": "segmentation", "classes": CAMVID}},
        "data": {"img_size": 128, "workers": 0, "train": [
            {"type": "coco", "tasks": ["seg"], "ann_file": str(coco / "annotations/instances.json"),
             "img_dir": str(coco / "images"), "unmapped": "ignore",
             "class_map": {"person": "Pedestrian", "car": "Car", "bicycle": "Bicyclist"}}]},
    }
    cfg = config_from_dict(tree)
    part = build_dataset(cfg, "train").parts[0]
    values = set()
    for i in range(20):
        values |= set(np.unique(part.load(i)[1]["mask"]).tolist())
    assert values <= {CAMVID.index("Pedestrian"), CAMVID.index("Car"), CAMVID.index("Bicyclist"), 255}
    assert CAMVID.index("Pedestrian") in values
    tree["data"]["train"][0]["unmapped"] = "error"
    with pytest.raises(ConfigError, match="not in the task's class list"):
        build_dataset(config_from_dict(tree), "train")


def test_transforms_keep_boxes_and_mask_in_step():
    """A box drawn as a filled rectangle in the mask stays on the same pixels through augmentation."""
    aug = AugmentConfig(scale=[0.6, 1.4], hflip=0.5, color_jitter=0.3)
    tf = build_transforms(64, aug, train=True)
    img = np.zeros((80, 120, 3), np.uint8)
    mask = np.zeros((80, 120), np.uint8)
    mask[20:50, 30:90] = 1
    target = {"boxes": np.array([[30, 20, 90, 50], [0, 0, 4, 4]], np.float32), "box_labels": np.array([1, 2]),
              "mask": mask, "labels": np.array([1])}
    dropped = 0
    for seed in range(30):
        out_img, t = tf(img, target, seed)
        assert out_img.shape == (3, 64, 64) and out_img.dtype == torch.uint8 and t["mask"].shape == (64, 64)
        assert t["box_labels"].dtype == torch.int64 and len(t["boxes"]) == len(t["box_labels"])
        dropped += len(t["boxes"]) < 2
        for b, c in zip(t["boxes"], t["box_labels"]):
            if c != 1:
                continue
            ys, xs = torch.nonzero(t["mask"] == 1, as_tuple=True)
            mask_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert torch.allclose(b, mask_box, atol=1.5), (b, mask_box)  # box and mask moved together
    assert dropped > 0  # boxes that leave the crop are dropped with their labels
    # the same seed gives the same augmentation
    a, ta = tf(img, target, 7)
    b, tb = tf(img, target, 7)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


def test_loader_epoch_determinism_and_workers(shapes_dir):
    tree = {
        "tasks": {"det": {"type": "detection", "classes": ["circle", "square", "triangle", "star"]}},
        "data": {"img_size": 64, "batch_size": 8, "workers": 0, "train": [
            {"type": "coco", "ann_file": str(shapes_dir / "train/annotations.json"),
             "img_dir": str(shapes_dir / "train/images")}]},
    }
    cfg = config_from_dict(tree)
    l0 = build_loader(cfg, "train")
    l2 = build_loader(cfg, "train", workers=2)
    for loader in (l0, l2):
        loader.sampler.set_epoch(3)
    b0, b2 = next(iter(l0)), next(iter(l2))
    assert torch.equal(b0.images, b2.images)  # same stream whatever the worker count
    l0.sampler.set_epoch(4)
    assert not torch.equal(next(iter(l0)).images, b0.images)


def test_bad_sample_skip_is_counted(tmp_path, shapes_dir):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(shapes_dir / "train", root)
    victim = sorted((root / "images").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated
    tree = {
        "tasks": {"det": {"type": "detection", "classes": ["circle", "square", "triangle", "star"]}},
        "data": {"img_size": 64, "batch_size": 64, "workers": 0, "train": [
            {"type": "coco", "ann_file": str(root / "annotations.json"), "img_dir": str(root / "images")}]},
    }
    cfg = config_from_dict(tree)
    loader = build_loader(cfg, "train", shuffle=False)
    with pytest.raises(DataError, match=victim.name):
        next(iter(loader))
    cfg.data.on_bad_sample = "skip"
    loader = build_loader(cfg, "train", shuffle=False)
    batch = next(iter(loader))
    assert batch.n_bad == 1 and len(batch) == 47


def test_camvid_pixel_counts():
    from visionmtl.data.masks import MaskFolderAdapter

    camvid = real_data("camvid")
    for split, n in (("train", 367), ("val", 101)):
        a = MaskFolderAdapter(camvid / split, camvid / f"{split}annot", CAMVID, ignore_ids=[11])
        assert len(a) == n
        counts = a.pixel_counts()
        print(split, dict(zip(CAMVID, counts.tolist())))
        assert counts.sum() > 0.9 * n * 360 * 480 * 0.9


def shapes_cfg(shapes_dir):
    tree = {
        "tasks": {"cls": {"type": "classification", "classes": ["circle", "square", "triangle", "star"]},
                  "det": {"type": "detection", "classes": ["circle", "square", "triangle", "star"]},
                  "seg": {"type": "segmentation", "classes": ["background", "circle", "square", "triangle", "star"]}},
        "data": {"img_size": 64, "batch_size": 4, "workers": 0, "train": [
            {"type": "coco", "ann_file": str(shapes_dir / "train/annotations.json"),
             "img_dir": str(shapes_dir / "train/images")}]},
    }
    return config_from_dict(tree)


def test_browse_dataset_draws_augmented_samples(shapes_dir, tmp_path):
    from visionmtl.data.browse import browse

    paths = browse(shapes_cfg(shapes_dir), "train", 3, str(tmp_path / "browse"))
    assert len(paths) == 3
    img = cv2.imread(str(paths[0]))
    assert img is not None and img.shape == (64, 64, 3)


def test_benchmark_data_reports_speed(shapes_dir):
    from visionmtl.data.speed import loader_speed, stage_profile

    cfg = shapes_cfg(shapes_dir)
    assert loader_speed(cfg, workers=0, batches=3, warmup=1) > 0
    prof = stage_profile(cfg, n=8)
    assert prof.pop("bad") == 0
    assert set(prof) == {"decode", "annotations", "augment", "collate"} and all(v >= 0 for v in prof.values())


def test_usable_workers_leave_the_compute_threads_their_cores(monkeypatch):
    from visionmtl.data.loader import usable_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert usable_workers(2, world=1, cuda=False) == 0  # 2 cores, 2 compute threads: load inline
    assert usable_workers(2, world=1, cuda=True) == 2  # the GPU computes: every core loads data
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert usable_workers(2, world=1, cuda=False) == 1
    assert usable_workers(2, world=2, cuda=False) == 0  # one core per rank, used by its thread
    assert usable_workers(0, world=1, cuda=False) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert usable_workers(4, world=1, cuda=False) == 4
    assert usable_workers(12, world=1, cuda=False) == 8


def test_eval_img_size_sets_val_input_and_is_validated(shapes_dir):
    ds = [{"type": "coco", "ann_file": str(shapes_dir / "train/annotations.json"), "img_dir": str(shapes_dir / "train/images")}]
    tree = {
        "tasks": {"det": {"type": "detection", "classes": ["circle", "square", "triangle", "star"]}},
        "data": {"img_size": 64, "eval_img_size": 96, "batch_size": 2, "workers": 0, "train": ds, "val": ds},
    }
    cfg = config_from_dict(tree)
    assert cfg.data.eval_size == 96
    assert next(iter(build_loader(cfg, "train"))).images.shape[-2:] == (64, 64)
    val = next(iter(build_loader(cfg, "val", shuffle=False)))
    assert val.images.shape[-2:] == (96, 96)
    # boxes are in the resized input; meta keeps the original size to map predictions back
    assert max(val.meta[0]["input_size"]) == 96
    # inference defaults to the evaluation size; an explicit imgsz (--imgsz) wins
    from visionmtl.inference.predictor import Predictor
    from visionmtl.models.build import build_model

    model = build_model(cfg)
    assert Predictor(model, cfg).imgsz == 96 and Predictor(model, cfg, imgsz=64).imgsz == 64
    tree["data"]["eval_img_size"] = 0
    cfg = config_from_dict(tree)
    assert cfg.data.eval_size == 64 and Predictor(model, cfg).imgsz == 64
    tree["data"]["eval_img_size"] = 80
    with pytest.raises(ConfigError, match="data.eval_img_size.*multiple of 32, got 80"):
        config_from_dict(tree)


def test_eval_transform_keeps_the_original_mask_when_it_resizes():
    img = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 5:50] = 2
    _, t = build_transforms(32, AugmentConfig(), train=False)(img, {"mask": mask})
    assert t["mask"].shape == (21, 32) and torch.equal(t["mask_orig"], torch.from_numpy(mask))
    _, same = build_transforms(64, AugmentConfig(), train=False)(img, {"mask": mask})  # longest side 60 -> 64
    _, kept = build_transforms(60, AugmentConfig(), train=False)(img, {"mask": mask})  # no resize: no copy
    assert "mask_orig" in same and "mask_orig" not in kept
    _, tr = build_transforms(32, AugmentConfig(), train=True)(img, {"mask": mask}, 0)
    assert "mask_orig" not in tr


def test_crop_size_and_labels_follow_what_stays_in_view(shapes_dir, tmp_path):
    """Training crops: a shape cut out of view leaves the image labels; evaluation keeps them all."""
    tf = build_transforms(64, AugmentConfig(scale=[1.0, 1.0], hflip=0, color_jitter=0, saturation=0, hue=0,
                                            crop_size=32), train=True)
    img = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[2:12, 2:12], mask[50:60, 50:60] = 1, 2
    boxes = np.array([[2, 2, 12, 12], [50, 50, 60, 60]], np.float32)
    seen = set()
    for seed in range(40):
        target = {"boxes": boxes, "box_labels": np.array([0, 1]), "labels": np.array([0, 1]),
                  "label_boxes": boxes, "label_box_ids": np.array([0, 1])}
        out, t = tf(img, target, seed)
        assert out.shape == (3, 32, 32) and set(t) == {"boxes", "box_labels", "labels"}
        assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == sorted(set(t["box_labels"].tolist()))
        seen.add(tuple(t["labels"].tolist()))
        _, tm = tf(img, {"mask": mask, "labels": np.array([1, 2]), "label_mask": mask}, seed)
        assert set(tm) == {"mask", "labels"}
        assert tm["labels"].tolist() == sorted(set(tm["mask"].unique().tolist()) - {255})
    assert {(), (0,), (1,)} <= seen  # both shapes are cut out by some crops, and none keeps both
    # through the dataset: COCO labels follow the boxes that survive a training crop, not an eval resize
    ds = [{"type": "coco", "ann_file": str(shapes_dir / "train/annotations.json"), "img_dir": str(shapes_dir / "train/images")}]
    names = ["circle", "square", "triangle", "star"]
    tree = {"tasks": {"cls": {"type": "classification", "classes": names, "multilabel": True},
                      "det": {"type": "detection", "classes": names}},
            "data": {"img_size": 64, "batch_size": 2, "workers": 0, "train": ds, "val": ds,
                     "augment": {"crop_size": 32}}}
    train, val = (build_dataset(config_from_dict(tree), s).parts[0] for s in ("train", "val"))
    assert "label_boxes" in train.map_target(train.adapter.load(0)[1], geometric=True)  # labels follow boxes
    dropped = 0
    for i in range(len(train)):
        t = train.get(i, seed=i)["target"]
        assert set(t["labels"].tolist()) == set(t["box_labels"].tolist())
        full = set(train.load(i)[1]["labels"].tolist())
        dropped += set(t["labels"].tolist()) < full
        assert set(val.get(i)["target"]["labels"].tolist()) == full
    assert dropped > 0
    # labels derived from a mask follow it (cls classes in another order, no background)
    for d in ("img", "ann"):
        (tmp_path / d).mkdir()
    for i in range(6):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), img)
        cv2.imwrite(str(tmp_path / "ann" / f"{i}.png"), mask)
    masks = [{"type": "masks", "img_dir": str(tmp_path / "img"), "mask_dir": str(tmp_path / "ann"),
              "classes": ["bg", "a", "b"]}]
    tree = {"tasks": {"cls": {"type": "classification", "classes": ["b", "a"], "multilabel": True},
                      "seg": {"type": "segmentation", "classes": ["bg", "a", "b"]}},
            "data": {"img_size": 64, "batch_size": 2, "workers": 0, "train": masks, "augment": {"crop_size": 32}}}
    part = build_dataset(config_from_dict(tree), "train").parts[0]
    assert "label_mask" in part.map_target(part.adapter.load(0)[1], geometric=True)  # labels follow the mask
    for i in range(6):
        t = part.get(i, seed=i)["target"]
        present = set(t["mask"].unique().tolist())
        assert set(t["labels"].tolist()) == {k for k, v in ((0, 2), (1, 1)) if v in present}
    with pytest.raises(ConfigError, match="data.augment.crop_size.*multiple of 32, got 40"):
        config_from_dict({**tree, "data": {**tree["data"], "augment": {"crop_size": 40}}})
