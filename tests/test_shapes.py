"""The synthetic shapes dataset: determinism, COCO validity, mask/annotation consistency, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from visionmtl.data import shapes
from visionmtl.data.shapes import (
    SHAPE_CLASSES,
    ensure_shapes,
    image_rng,
    make_shapes,
    render_image,
)
from visionmtl.rle import mask_to_segmentation, segmentation_to_mask

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "make_shapes.py"


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


@pytest.fixture(scope="module")
def rendered():
    """60 images of 96 px rendered directly (no files)."""
    return [render_image(image_rng(0, "train", i), 96) for i in range(60)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    summary = make_shapes(out, train=20, val=4, size=96, seed=1)
    return out, summary


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    make_shapes(tmp_path / "a", train=5, val=2, size=64, seed=7)
    make_shapes(tmp_path / "b", train=5, val=2, size=64, seed=7)
    make_shapes(tmp_path / "c", train=5, val=2, size=64, seed=8)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert "train/annotations.json" in a and "val/images/000001.jpg" in a
    assert len([k for k in a if k.endswith(".jpg")]) == 7
    assert a == b
    assert a["train/annotations.json"] != c["train/annotations.json"]
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))


def test_worker_pool_gives_the_same_files(tmp_path):
    make_shapes(tmp_path / "serial", train=4, val=0, size=48, seed=3, workers=0)
    make_shapes(tmp_path / "pool", train=4, val=0, size=48, seed=3, workers=2)
    assert _files(tmp_path / "serial") == _files(tmp_path / "pool")


def test_splits_are_independent_streams():
    img_train, _ = render_image(image_rng(0, "train", 0), 64)
    img_val, _ = render_image(image_rng(0, "val", 0), 64)
    img_again, _ = render_image(image_rng(0, "train", 0), 64)
    assert np.array_equal(img_train, img_again)
    assert not np.array_equal(img_train, img_val)


# ----------------------------------------------------------------------------- COCO files


def test_coco_files_load_and_describe_visible_pixels(dataset):
    out, summary = dataset
    for split, n in (("train", 20), ("val", 4)):
        coco = COCO(str(out / split / "annotations.json"))
        assert len(coco.imgs) == n == summary["splits"][split]["images"]
        cats = coco.loadCats(coco.getCatIds())
        assert [c["name"] for c in cats] == SHAPE_CLASSES
        assert [c["id"] for c in cats] == list(range(1, len(SHAPE_CLASSES) + 1))
        assert {c["supercategory"] for c in cats} == {"shape"}
        assert len(coco.anns) == summary["splits"][split]["objects"]

        for img_id, info in coco.imgs.items():
            image = cv2.imread(str(out / split / "images" / info["file_name"]))
            assert image is not None and image.shape == (info["height"], info["width"], 3) == (96, 96, 3)
            union = np.zeros((96, 96), np.int32)
            for ann in coco.imgToAnns[img_id]:
                assert ann["iscrowd"] == 0
                m = coco.annToMask(ann).astype(bool)
                union += m
                ys, xs = np.nonzero(m)
                assert ann["area"] == m.sum() >= shapes.MIN_VISIBLE_PIXELS
                # The bbox is the tight box of the decoded segmentation.
                x, y, w, h = ann["bbox"]
                assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert union.max() <= 1, "visible parts of instances must not overlap"


def test_summary_matches_files(dataset):
    out, summary = dataset
    data = json.loads((out / "train" / "annotations.json").read_text())
    per_class = {name: 0 for name in SHAPE_CLASSES}
    for ann in data["annotations"]:
        per_class[SHAPE_CLASSES[ann["category_id"] - 1]] += 1
    assert per_class == summary["splits"]["train"]["per_class"]
    assert sum(summary["splits"]["train"]["objects_per_image"]) == 20
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    assert json.loads((out / "meta.json").read_text())["seed"] == 1


# ----------------------------------------------------------------------------- rendering


def test_segmentation_reproduces_visible_mask(rendered):
    n_poly = n_total = 0
    for _, instances in rendered:
        for inst in instances:
            ys, xs = np.nonzero(inst.mask)
            if max(np.ptp(xs), np.ptp(ys)) + 1 < 8:
                continue
            seg = mask_to_segmentation(inst.mask)
            decoded = segmentation_to_mask(seg, *inst.mask.shape)
            assert _iou(decoded, inst.mask) >= 0.9
            assert np.array_equal(decoded, inst.mask)  # exact, in fact
            n_total += 1
            n_poly += isinstance(seg, list)
    assert n_total > 100
    assert n_poly >= 0.9 * n_total, "polygons should be the rule, RLE the exception"


def test_mask_to_segmentation_special_cases():
    h = w = 40
    square = np.zeros((h, w), bool)
    square[10:20, 5:15] = True
    seg = mask_to_segmentation(square)
    assert isinstance(seg, list) and len(seg) == 1
    assert sorted(zip(seg[0][0::2], seg[0][1::2])) == [(5, 10), (5, 20), (15, 10), (15, 20)]

    two_parts = square.copy()
    two_parts[30:35, 30:38] = True
    seg = mask_to_segmentation(two_parts)
    assert isinstance(seg, list) and len(seg) == 2
    assert np.array_equal(segmentation_to_mask(seg, h, w), two_parts)

    with_hole = square.copy()
    with_hole[13:16, 8:11] = False
    seg = mask_to_segmentation(with_hole)
    assert isinstance(seg, dict) and isinstance(seg["counts"], str)
    assert np.array_equal(segmentation_to_mask(seg, h, w), with_hole)

    pixel = np.zeros((h, w), bool)
    pixel[3, 4] = True
    assert np.array_equal(segmentation_to_mask(mask_to_segmentation(pixel), h, w), pixel)


def test_object_statistics(rendered):
    counts = [len(instances) for _, instances in rendered]
    assert all(0 <= c <= shapes.MAX_OBJECTS for c in counts)
    assert counts.count(0) >= 1
    assert max(counts) >= 6
    labels = {inst.label for _, instances in rendered for inst in instances}
    assert labels == set(range(len(SHAPE_CLASSES)))
    extents = []
    for _, instances in rendered:
        for inst in instances:
            ys, xs = np.nonzero(inst.mask)
            extents.append(max(np.ptp(xs), np.ptp(ys)) + 1)
    extents = np.array(extents)
    assert extents.min() <= 12 and extents.max() >= 0.4 * 96
    assert np.mean(extents < 12) < 0.2, "tiny objects should be a minority"


def test_instances_are_valid_and_visible(rendered):
    for image, instances in rendered:
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        occupied = np.zeros((96, 96), np.int32)
        for inst in instances:
            assert inst.mask.shape == (96, 96) and inst.mask.dtype == bool
            assert inst.name == SHAPE_CLASSES[inst.label]
            assert inst.area >= shapes.MIN_VISIBLE_PIXELS
            assert inst.area >= shapes.MIN_VISIBLE_FRACTION * inst.full_area
            occupied += inst.mask
        assert occupied.max() <= 1


def test_background_is_textured_and_objects_stand_out(rendered):
    contrasts = []
    for image, instances in rendered:
        img = image.astype(np.float32)
        objects = np.zeros(image.shape[:2], bool)
        for inst in instances:
            objects |= inst.mask
        background = ~objects
        assert img[background].std(axis=0).max() > 4.0  # not a flat colour
        for inst in instances:
            if inst.area < 60:
                continue
            ring = cv2.dilate(inst.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & background
            if ring.sum() < 20:
                continue
            contrasts.append(np.linalg.norm(img[inst.mask].mean(0) - img[ring].mean(0)))
    assert np.median(contrasts) > 40


def test_occlusion_happens(rendered):
    occluded = sum(inst.area < inst.full_area for _, instances in rendered for inst in instances)
    assert occluded >= 5


# ----------------------------------------------------------------------------- ensure / validation


def test_ensure_shapes_generates_once_and_on_change(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    assert ensure_shapes(out, 3, 1, 48, 0) == out
    first = _files(out)
    assert (out / "meta.json").is_file()

    calls = []
    real = shapes.make_shapes
    monkeypatch.setattr(shapes, "make_shapes", lambda *a, **k: calls.append(a) or real(*a, **k))
    ensure_shapes(out, 3, 1, 48, 0)
    assert calls == [] and _files(out) == first

    ensure_shapes(out, 2, 1, 48, 0)  # fewer images: regenerated, stale image removed
    assert len(calls) == 1
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == ["000000.jpg", "000001.jpg"]

    (out / "val" / "annotations.json").unlink()
    ensure_shapes(out, 2, 1, 48, 0)
    assert len(calls) == 2 and (out / "val" / "annotations.json").is_file()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train=1, val=1, size=31, seed=0), "size"),
        (dict(train=-1, val=1, size=64, seed=0), ">= 0"),
        (dict(train=1, val=-2, size=64, seed=0), ">= 0"),
    ],
)
def test_make_shapes_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes(tmp_path / "x", **kwargs)


def test_make_shapes_rejects_file_as_output(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a directory")
    with pytest.raises(ValueError, match="not a directory"):
        make_shapes(target, 1, 1, 64, 0)


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def test_cli_generates_dataset(tmp_path):
    out = tmp_path / "cli"
    res = _cli("--out", str(out), "--train", "3", "--val", "1", "--size", "32", "--seed", "4")
    assert res.returncode == 0, res.stderr
    assert "train: 3 images" in res.stdout and "objects per image" in res.stdout
    names = sorted(p.name for p in (out / "train" / "images").iterdir())
    assert names == ["000000.jpg", "000001.jpg", "000002.jpg"]
    coco = json.loads((out / "val" / "annotations.json").read_text())
    assert [img["file_name"] for img in coco["images"]] == ["000000.jpg"]
    res = _cli("--out", str(out), "--train", "3", "--val", "1", "--size", "32", "--seed", "4", "--if-missing")
    assert res.returncode == 0 and "up to date" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "16"], "--size"),
        (["--train", "-1"], "--train"),
        (["--val", "abc"], "--val"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, args, message):
    res = _cli("--out", str(tmp_path / "x"), *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert not (tmp_path / "x").exists()


def test_cli_rejects_file_as_output(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    res = _cli("--out", str(target))
    assert res.returncode == 2 and "not a directory" in res.stderr


def test_shape_crops_make_an_image_folder_set(shapes_dir, tmp_path):
    from visionmtl.data.errors import DataError
    from visionmtl.data.folder import ImageFolderAdapter
    from visionmtl.data.shape_crops import CROP_SIZE, make_shape_crops

    counts = make_shape_crops(shapes_dir, 3, out_dir=tmp_path / "crops")
    assert set(counts) == {"train", "val"}
    assert all(0 < n <= 3 for n in counts["train"].values())
    ds = ImageFolderAdapter(tmp_path / "crops" / "train", classes=["circle", "square", "triangle", "star"])
    assert len(ds) == sum(counts["train"].values())
    image, target = ds.load(0)
    assert image.shape == (CROP_SIZE, CROP_SIZE, 3) and target["labels"].tolist() == [0]
    first = sorted((tmp_path / "crops" / "train").rglob("*.jpg"))
    make_shape_crops(shapes_dir, 3, out_dir=tmp_path / "again")
    again = sorted((tmp_path / "again" / "train").rglob("*.jpg"))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]  # deterministic
    with pytest.raises(DataError, match="annotations.json"):
        make_shape_crops(tmp_path / "nowhere", 3)


def test_dataset_limit_uses_the_first_images(shapes_dir, tmp_path):
    from tests.test_engine import tiny_cfg
    from visionmtl.data.loader import build_dataset

    cfg = tiny_cfg(shapes_dir, tmp_path)
    full = build_dataset(cfg, "train")
    cfg.data.train[0].limit = 5
    part = build_dataset(cfg, "train")
    assert len(full) == 48 and len(part) == 5
    assert part[(0, 4)]["meta"]["path"] == full[(0, 4)]["meta"]["path"]
