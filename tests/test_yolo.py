"""YOLO layout (``type: yolo``) on synthetic trees: labels, polygons, the data YAML, bad input,
end to end. The round trip from real COCO128 is in ``test_yolo_coco128.py``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from tests.data_helpers import coco_dict, write_image, write_json
from tests.test_bad_input import _assert_one_line, _call
from visionmtl.config import config_from_dict
from visionmtl.data.coco import CocoAdapter
from visionmtl.data.dataset import report_problems
from visionmtl.data.errors import DataError
from visionmtl.data.yolo import YoloAdapter, label_path
from visionmtl.data.yolo_convert import coco_to_yolo
from visionmtl.errors import ConfigError


SHAPES = ["circle", "square", "triangle", "star"]


# ====================================================================== synthetic YOLO trees
def _tree(tmp_path: Path, labels: dict, names=("cat", "dog"), size=(40, 30), split="train", extra: dict | None = None,
          suffix=".png") -> Path:
    """``images/<split>/<stem><suffix>`` (w x h), ``labels/<split>/<stem>.txt`` (None: no file), data.yaml."""
    w, h = size
    for stem, text in labels.items():
        write_image(tmp_path / "images" / split / f"{stem}{suffix}", h=h, w=w)
        if text is not None:
            lp = tmp_path / "labels" / split / f"{stem}.txt"
            lp.parent.mkdir(parents=True, exist_ok=True)
            lp.write_text(text)
    data = {"path": str(tmp_path), split: f"images/{split}", "names": list(names), **(extra or {})}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "data.yaml"


def test_label_path_mirrors_the_images_folder():
    assert label_path("/d/images/train/a.jpg") == "/d/labels/train/a.txt"
    assert label_path("/d/images/x/images/b.v1.png") == "/d/images/x/labels/b.v1.txt"  # the last images/
    assert label_path("/d/pics/c.jpg") == "/d/pics/c.txt"  # no images/ folder: beside the image


def test_boxes_denormalise_exactly_and_polygons_paint_like_coco(tmp_path):
    yml = _tree(tmp_path / "box", {"a": "1 0.5 0.5 0.5 0.2\n0 0.125 0.1 0.25 0.2\n"})
    a = YoloAdapter(data=yml)
    assert a.classes == ["cat", "dog"] and a.provides == ("boxes", "box_labels", "labels")
    _, t = a.load(0)
    np.testing.assert_allclose(t["boxes"], [[10, 12, 30, 18], [0, 0, 10, 6]], atol=1e-5)
    assert t["box_labels"].tolist() == [1, 0] and t["labels"].tolist() == [0, 1]
    # polygons: a big cat square and a small dog square on it (written first); dog ends on top
    big = "0 0 0 0.75 0 0.75 0.9375 0 0.9375"  # 30 x 30 at the origin of a 40 x 32 image
    small = "1 0.25 0.3125 0.45 0.3125 0.45 0.5625 0.25 0.5625"  # x 10..18, y 10..18
    b = YoloAdapter(data=_tree(tmp_path / "poly", {"a": f"{small}\n{big}\n"}, size=(40, 32)))
    assert b.provides[-2:] == ("mask", "instances") and b.mask_classes == ["background", "cat", "dog"]
    _, t = b.load(0)
    m = t["mask"]
    assert m[14, 14] == 2 and m[4, 4] == 1 and m[25, 25] == 1 and m[5, 35] == 0
    np.testing.assert_allclose(t["boxes"], [[10, 10, 18, 18], [0, 0, 30, 30]], atol=1e-4)  # polygon bounds
    # the same polygons through the COCO adapter paint the same mask
    from tests.data_helpers import coco_dict, square, write_json

    ann = write_json(tmp_path / "ann.json", coco_dict(
        [(1, "a.png", 40, 32)],
        [{"image_id": 1, "category_id": 2, "bbox": [10, 10, 8, 8], "segmentation": [square(10, 10, 8)]},
         {"image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30], "segmentation": [square(0, 0, 30)]}],
        [(1, "cat"), (2, "dog")]))
    _, tc = CocoAdapter(ann, tmp_path / "poly" / "images" / "train").load(0)
    assert np.array_equal(tc["mask"], m)
    # background=None: unlabelled pixels are ignore, classes keep their ids
    c = YoloAdapter(data=tmp_path / "poly" / "data.yaml", background=None)
    assert c.mask_classes == ["cat", "dog"] and c.load(0)[1]["mask"][5, 35] == 255


def test_box_files_with_a_mask_requested_make_their_boxes_ignore(tmp_path):
    a = YoloAdapter(data=_tree(tmp_path, {"a": "1 0.5 0.5 0.5 0.2\n"}), provides=["mask", "labels"])
    _, t = a.load(0)
    assert set(t) == {"mask", "labels"}
    assert np.all(t["mask"][12:18, 10:30] == 255) and t["mask"][0, 0] == 0 and (t["mask"] == 255).sum() == 120


# polygons in pixels on a 64 x 48 image; vertices on quarter pixels, so that normalising and
# scaling back leaves them exactly where they were
W, H = 64, 48
TRIANGLE = [4.25, 3.5, 40.75, 6.0, 22.0, 30.25]
PENTAGON = [30.0, 20.0, 60.5, 22.25, 58.0, 44.75, 41.25, 40.0, 33.5, 31.0]  # overlaps the triangle
CONCAVE = [10.0, 30.0, 26.0, 30.0, 26.0, 46.0, 18.0, 36.5, 10.0, 46.0]


def _poly_line(k: int, poly, w: int = W, h: int = H) -> str:
    xy = np.asarray(poly, np.float64).reshape(-1, 2) / (w, h)
    return f"{k} " + " ".join(repr(float(v)) for v in xy.ravel()) + "\n"


def _bounds(poly) -> list[float]:
    xy = np.asarray(poly, np.float64).reshape(-1, 2)
    return [*xy.min(0), *xy.max(0)]


def test_polygon_lines_are_instances_rasterised_as_coco(tmp_path):
    """Each polygon line is one instance: an RLE that decodes to pycocotools' rasterisation of
    the polygon (the COCO adapter's instance of the same polygon), its box and its class."""
    polys = [(0, TRIANGLE), (1, PENTAGON), (0, CONCAVE)]
    a = YoloAdapter(data=_tree(tmp_path, {"a": "".join(_poly_line(k, p) for k, p in polys)}, size=(W, H)))
    assert a.provides == ("boxes", "box_labels", "labels", "mask", "instances")
    _, t = a.load(0)
    ann = write_json(tmp_path / "ann.json", coco_dict(
        [(1, "a.png", W, H)],
        [{"image_id": 1, "category_id": k + 1, "segmentation": [p],
          "bbox": [_bounds(p)[0], _bounds(p)[1], _bounds(p)[2] - _bounds(p)[0], _bounds(p)[3] - _bounds(p)[1]]}
         for k, p in polys],
        [(1, "cat"), (2, "dog")]))
    _, tc = CocoAdapter(ann, tmp_path / "images" / "train").load(0)
    assert len(t["instance_rles"]) == len(tc["instance_rles"]) == 3
    for ry, rc, (_, p) in zip(t["instance_rles"], tc["instance_rles"], polys):
        assert ry["size"] == [H, W] and isinstance(ry["counts"], bytes)  # compact: no H x W array per object
        m = mask_utils.decode(ry)
        assert m.shape == (H, W) and m.sum() > 50
        assert np.array_equal(m, mask_utils.decode(rc))
        assert np.array_equal(m, mask_utils.decode(mask_utils.frPyObjects([p], H, W)[0]))
    assert t["instance_boxes"].dtype == np.float32 and t["instance_labels"].dtype == np.int64
    np.testing.assert_allclose(t["instance_boxes"], [_bounds(p) for _, p in polys], atol=1e-4)
    np.testing.assert_allclose(t["instance_boxes"], tc["instance_boxes"], atol=1e-4)
    assert np.array_equal(t["instance_boxes"], t["boxes"])
    assert t["instance_labels"].tolist() == t["box_labels"].tolist() == [0, 1, 0]
    assert np.array_equal(t["mask"], tc["mask"])  # and they paint COCO's semantic mask
    # only what is asked for is made
    _, t2 = YoloAdapter(data=tmp_path / "data.yaml", provides=["instances"]).load(0)
    assert set(t2) == {"instance_rles", "instance_boxes", "instance_labels"}


def test_mixed_files_only_polygon_lines_are_instances(tmp_path):
    """A file may mix box and polygon lines: every line gives a box, only polygon lines give
    instances, and in the mask the box lines' boxes are ignore. A polygon whose box is dropped
    (min_box_size) is no instance either."""
    box = "1 0.8125 0.8125 0.125 0.125\n"  # x 48..56, y 36..42 in pixels
    narrow = _poly_line(1, [2.0, 40.0, 2.5, 40.0, 2.5, 47.0, 2.0, 47.0])  # 0.5 px wide: dropped
    a = YoloAdapter(data=_tree(tmp_path, {"a": _poly_line(0, TRIANGLE) + box + narrow, "b": box}, size=(W, H)))
    assert a.provides == ("boxes", "box_labels", "labels", "mask", "instances")
    st = a.stats()
    assert (st["objects"], st["polygons"], st["short_polygons"], st["bad_label_files"]) == (4, 2, 0, 0)
    _, t = a.load(0)
    np.testing.assert_allclose(t["boxes"], [_bounds(TRIANGLE), [48, 36, 56, 42]], atol=1e-4)
    assert t["box_labels"].tolist() == [0, 1] and t["labels"].tolist() == [0, 1]
    assert len(t["instance_rles"]) == 1 and t["instance_labels"].tolist() == [0]
    np.testing.assert_allclose(t["instance_boxes"], [_bounds(TRIANGLE)], atol=1e-4)
    tri = mask_utils.decode(t["instance_rles"][0]).astype(bool)
    assert np.array_equal(tri, mask_utils.decode(mask_utils.frPyObjects([TRIANGLE], H, W)[0]).astype(bool))
    assert np.all(t["mask"][tri] == 1) and np.all(t["mask"][36:42, 48:56] == 255)
    # a box-only image of a dataset with instances: no objects with masks
    _, tb = a.load(1)
    assert tb["instance_rles"] == [] and tb["instance_boxes"].shape == (0, 4) and tb["instance_labels"].shape == (0,)
    assert tb["instance_boxes"].dtype == np.float32 and tb["instance_labels"].dtype == np.int64
    assert len(tb["boxes"]) == 1 and np.all(tb["mask"][36:42, 48:56] == 255)
    # through the data layer an instance task reads them (the dataset labels it by default)
    from visionmtl.data.loader import build_dataset

    ds = {"type": "yolo", "data": str(tmp_path / "data.yaml")}
    cfg = config_from_dict({"tasks": {"det": {"type": "detection", "classes": ["cat", "dog"]},
                                      "inst": {"type": "instance"}},
                            "data": {"img_size": 64, "workers": 0, "train": [ds], "val": [ds]}})
    val = build_dataset(cfg, "val").parts[0].get(0)["target"]
    assert len(val["eval_instance_rles"]) == 1 and val["instance_labels"].tolist() == [0]
    train = build_dataset(cfg, "train").parts[0].get(0, seed=0)["target"]
    assert train["instance_masks"].shape[1:] == (28, 28) and len(train["boxes"]) >= len(train["instance_masks"])


def test_short_polygons_are_counted_and_skipped(tmp_path, caplog):
    """A polygon of fewer than 3 points (``k x y``, or a class alone) is no object: skipped
    (no box, class, mask or instance) and counted, and the dataset report says so."""
    text = _poly_line(0, TRIANGLE) + "1 0.5 0.5\n" + "1\n" + "0 0.25 0.5 0.125 0.25\n"
    a = YoloAdapter(data=_tree(tmp_path, {"a": text}, size=(W, H)))
    st = a.stats()
    assert (st["short_polygons"], st["objects"], st["polygons"], st["bad_label_files"]) == (2, 2, 1, 0)
    _, t = a.load(0)  # the image itself is fine
    assert t["box_labels"].tolist() == [0, 0] and t["labels"].tolist() == [0]  # class 1 was only in them
    assert len(t["instance_rles"]) == 1 and t["instance_labels"].tolist() == [0]
    assert not np.any(t["mask"] == 2)
    with caplog.at_level(logging.WARNING):
        report_problems(a, "data.train[0]")
    assert "skipped 2 polygons with fewer than 3 points" in caplog.text


def test_a_box_only_dataset_gives_no_instances(tmp_path):
    """Without any polygon line there are no instance masks: ``instances`` is left out of
    ``provides`` (even when asked for), and an instance task on the dataset is a config error."""
    yml = _tree(tmp_path, {"a": "1 0.5 0.5 0.5 0.2\n", "b": ""})
    assert "instances" not in YoloAdapter(data=yml).provides
    a = YoloAdapter(data=yml, provides=["boxes", "box_labels", "instances"])
    assert a.provides == ("boxes", "box_labels") and "instance_rles" not in a.load(0)[1]
    from visionmtl.data.loader import build_dataset

    ds = {"type": "yolo", "data": str(yml), "tasks": ["det", "inst"]}
    cfg = config_from_dict({"tasks": {"det": {"type": "detection", "classes": ["cat", "dog"]},
                                      "inst": {"type": "instance"}},
                            "data": {"img_size": 64, "workers": 0, "train": [ds], "val": [ds]}})
    with pytest.raises(ConfigError, match="has no instance masks .* to label instance task 'inst'"):
        build_dataset(cfg, "train")


def test_empty_and_missing_label_files_are_background_and_missing_ones_reported(tmp_path, caplog):
    yml = _tree(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "", "c": None, "d": None})
    with caplog.at_level(logging.WARNING):
        a = YoloAdapter(data=yml, provides=["boxes", "box_labels", "mask", "labels"])
    st = a.stats()
    assert st == {"images": 4, "label_files": 2, "missing_label_files": 2, "empty_label_files": 1,
                  "bad_label_files": 0, "objects": 1, "polygons": 0, "short_polygons": 0, "clipped_boxes": 0,
                  "empty_images": 3}
    warnings = [r.getMessage() for r in caplog.records if "no label file" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 4 images" in warnings[0] and "c.txt" in warnings[0]
    for i in (1, 2, 3):
        _, t = a.load(i)
        assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == np.float32
        assert t["box_labels"].shape == (0,) and t["labels"].shape == (0,)
        assert np.all(t["mask"] == 0)


def test_data_yaml_forms(tmp_path, monkeypatch):
    # names as {id: name}; path relative to the YAML's folder; train as a list of a folder and a
    # .txt list (./ and plain relative lines are relative to the list's folder); val; nc checked
    root = tmp_path / "ds"
    _tree(root, {"a": "1 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n"})
    _tree(root, {"c": "1 0.5 0.5 0.2 0.2\n"}, split="val")
    write_image(root / "extra" / "images" / "x.jpg", 30, 40)
    (root / "extra" / "list.txt").write_text("./images/x.jpg\n\n# a comment\nimages/x.jpg\n")
    yml = tmp_path / "cfg" / "data.yaml"
    yml.parent.mkdir()
    yml.write_text(yaml.safe_dump({"path": "../ds", "train": ["images/train", "extra/list.txt"], "val": "images/val",
                                   "nc": 2, "names": {1: "dog", 0: "cat"}}))
    a = YoloAdapter(data=yml)
    assert a.classes == ["cat", "dog"]
    assert [Path(a.path(i)).name for i in range(len(a))] == ["a.png", "b.png", "x.jpg", "x.jpg"]
    assert a.stats()["missing_label_files"] == 2  # x.jpg has no labels/x.txt
    v = YoloAdapter(data=str(yml), split="val")
    assert len(v) == 1 and v.load(0)[1]["box_labels"].tolist() == [1]
    # no path: the YAML's folder; images + names without a YAML (relative to the working directory)
    (root / "data2.yaml").write_text(yaml.safe_dump({"train": "images/train", "names": ["cat", "dog"]}))
    assert len(YoloAdapter(data=root / "data2.yaml")) == 2
    monkeypatch.chdir(root)
    b = YoloAdapter(images=["images/train", "images/val"], names=["cat", "dog"])
    assert len(b) == 3 and b.load(2)[1]["labels"].tolist() == [1]
    # an image list that leaves its folder needs allow_outside_root
    (root / "extra" / "out.txt").write_text("../images/val/c.png\n")
    with pytest.raises(DataError, match=r"out.txt: line 1: .*outside.*allow_outside_root"):
        YoloAdapter(images="extra/out.txt", names=["cat", "dog"])
    assert len(YoloAdapter(images="extra/out.txt", names=["cat", "dog"], allow_outside_root=True)) == 1


# ====================================================================== bad input
LINE_CASES = [
    # (label file text, words the message must hold)
    ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n", ["line 2", "4 fields", "expected 5"]),
    ("0 0.5 0.5 0.2 0.2 0.1\n", ["line 1", "6 fields"]),
    ("0 0.5 1.5 0.2 0.2\n", ["line 1", "coordinate 1.5 outside [0, 1]"]),
    ("0 0.5 0.5 -0.2 0.2\n", ["line 1", "coordinate -0.2 outside [0, 1]"]),
    ("\n2 0.5 0.5 0.2 0.2\n", ["line 2", "class id 2 is not in names", "0-1"]),
    ("0.5 0.5 0.5 0.2 0.2\n", ["line 1", "class id '0.5' is not an integer"]),
    ("0 0.1 0.1 0.5 0.1 0.5 0.5\n1 0.2 0.2 0.3 0.3 0.4\n", ["line 2", "6 fields", "at least 3"]),
    ("0 0.1 0.1 0.5 0.1 0.5 0.5 0.2\n", ["line 1", "8 fields"]),
    ("0 0.5 1.5\n", ["line 1", "coordinate 1.5 outside"]),  # a short polygon is checked before it is skipped
    ("0 0.5 abc 0.2 0.2\n", ["line 1", "'abc' is not a number"]),
]


@pytest.mark.parametrize("text,words", LINE_CASES, ids=[c[1][1] for c in LINE_CASES])
def test_bad_label_lines_name_the_file_and_line(tmp_path, caplog, text, words):
    yml = _tree(tmp_path, {"good": "0 0.5 0.5 0.2 0.2\n", "bad": text})
    with caplog.at_level(logging.WARNING):
        a = YoloAdapter(data=yml)
    assert a.stats()["bad_label_files"] == 1
    assert "1 label files have errors" in caplog.text and "bad.txt: line" in caplog.text  # reported when built
    i = [Path(a.path(j)).stem for j in range(len(a))].index("bad")
    with pytest.raises(DataError) as e:
        a.load(i)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "labels" / "train" / "bad.txt") + ": line ")
    for w in words:
        assert w in msg, (w, msg)
    a.load(1 - i)  # the good image still loads


YAML_CASES = [
    # (data.yaml contents, words the message must hold)
    ({"train": "images/train"}, ["data.yaml", "no key 'names'"]),
    ({"train": "images/nowhere", "names": ["cat"]}, ["data.yaml", "key 'train'", "images/nowhere", "not found"]),
    ({"val": "images/train", "names": ["cat"]}, ["data.yaml", "no key 'train'"]),
    ({"path": "missing_root", "train": "images/train", "names": ["cat"]}, ["data.yaml", "key 'path'", "missing_root"]),
    ({"train": "images/train", "names": {0: "cat", 2: "dog"}}, ["data.yaml", "key 'names'", "ids must be 0 .. 1"]),
    ({"train": "images/train", "names": ["cat", "cat"]}, ["data.yaml", "key 'names'", "['cat'] more than once"]),
    ({"train": "images/train", "names": ["cat"], "nc": 3}, ["data.yaml", "key 'nc' is 3", "1 classes"]),
    ({"train": "data.yaml", "names": ["cat"]}, ["data.yaml", "key 'train'", "neither a folder nor a .txt list"]),
]


@pytest.mark.parametrize("data,words", YAML_CASES, ids=[c[1][-1] for c in YAML_CASES])
def test_bad_data_yaml_names_the_file_and_key(tmp_path, data, words):
    write_image(tmp_path / "images" / "train" / "a.png", 10, 10)
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(DataError) as e:
        YoloAdapter(data=tmp_path / "data.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "data.yaml") + ": ")
    for w in words:
        assert w in msg, (w, msg)


def test_bad_arguments_are_config_errors(tmp_path):
    yml = _tree(tmp_path, {"a": ""})
    for kw, words in [({}, "either 'data'"), ({"data": yml, "images": "x"}, "not both"),
                      ({"images": str(tmp_path / "images")}, "needs 'names'"),
                      ({"data": yml, "provides": ["boxes", "masks"]}, "cannot provide ['masks']"),
                      ({"data": yml, "split": "names"}, "not a split")]:
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            YoloAdapter(**kw)
    with pytest.raises(DataError, match=r"data.yaml: data YAML not found"):
        YoloAdapter(data=tmp_path / "nope" / "data.yaml")
    (tmp_path / "bad.yaml").write_text("names: [unclosed\n")
    with pytest.raises(DataError, match=r"bad.yaml: not valid YAML \(line"):
        YoloAdapter(data=tmp_path / "bad.yaml")


# ====================================================================== through the tools
@pytest.fixture(scope="module")
def shapes_yolo(tmp_path_factory, shapes_dir) -> Path:
    """The shapes fixture as a YOLO tree with polygons (its RLE-only objects are left out)."""
    out = tmp_path_factory.mktemp("shapes_yolo")
    for split in ("train", "val"):
        counts = coco_to_yolo(shapes_dir / split / "annotations.json", shapes_dir / split / "images", out,
                              split=split, segments=True)
        assert counts["lines"] > 0 and counts["crowd"] == 0
    return out / "data.yaml"


def _config(path: Path, data_yaml: Path, work: Path, extra: str = "") -> Path:
    path.write_text(f"""
tasks:
  cls: {{type: classification, classes: {SHAPES}, head: {{levels: [p3, p4, p5]}}}}
  det: {{type: detection, classes: {SHAPES}, head: {{num_convs: 1}}}}
  seg: {{type: segmentation, classes: [background, {', '.join(SHAPES)}], head: {{channels: 16}}}}
model: {{backbone: {{name: resnet18, fpn_channels: 16, num_stages: 3}}}}
data:
  img_size: 64
  batch_size: 8
  workers: 0
  train: [{{type: yolo, data: {data_yaml}}}]
  val: [{{type: yolo, data: {data_yaml}, split: val}}]
train: {{epochs: 1, max_iters: 3, amp: 'off', threads: 1, warmup_iters: 1}}
work_dir: {work}
{extra}
""")
    return path


def test_train_and_eval_from_a_yolo_data_yaml(capsys, tmp_path, shapes_yolo):
    cfg = _config(tmp_path / "c.yaml", shapes_yolo, tmp_path / "w")
    code, err = _call(capsys, "train", [cfg])
    assert code == 0, err[-3000:]
    assert (tmp_path / "w" / "last.pt").is_file()
    code, err = _call(capsys, "eval", [cfg, tmp_path / "w" / "last.pt", "--out", tmp_path / "m"])
    assert code == 0, err[-3000:]
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert {"cls", "det", "seg"} <= set(metrics)
    assert "mAP" in metrics["det"] and "mIoU" in metrics["seg"] and "mAP" in metrics["cls"]


def _damaged_copy(tmp_path: Path, shapes_yolo: Path) -> tuple[Path, Path]:
    """A copy of the shapes YOLO data YAML whose train split has one bad label line; returns
    (data.yaml, the bad label file)."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(shapes_yolo.parent, root, symlinks=True)
    d = yaml.safe_load(shapes_yolo.read_text())
    d["path"] = str(root)
    (root / "data.yaml").write_text(yaml.safe_dump(d))
    bad = sorted((root / "labels" / "train").glob("*.txt"))[0]
    bad.write_text(bad.read_text() + "0 0.5 0.5 0.2 0.2 0.1\n")
    return root / "data.yaml", bad


def test_bad_label_line_through_train_is_one_line_or_a_counted_skip(capsys, tmp_path, shapes_yolo):
    yml, bad = _damaged_copy(tmp_path, shapes_yolo)
    n = len(bad.read_text().splitlines())
    cfg = _config(tmp_path / "c.yaml", yml, tmp_path / "w", extra="")
    code, err = _call(capsys, "train", [cfg, "--set", "train.max_iters=6", "data.val=[]"])  # one epoch: 6 batches
    _assert_one_line(code, err, str(bad), f"line {n}", "6 fields")
    # with on_bad_sample: skip the image is dropped and counted
    from visionmtl.config import load_config
    from visionmtl.data.loader import build_loader

    loader = build_loader(load_config(cfg, ["data.on_bad_sample=skip"]), "train", workers=0)
    loader.sampler.set_epoch(0)
    assert sum(b.n_bad for b in loader) == 1


def test_data_yaml_without_names_through_train_is_one_line(capsys, tmp_path, shapes_yolo):
    d = yaml.safe_load(shapes_yolo.read_text())
    del d["names"]
    yml = tmp_path / "data.yaml"
    yml.write_text(yaml.safe_dump(d))
    code, err = _call(capsys, "train", [_config(tmp_path / "c.yaml", yml, tmp_path / "w")])
    _assert_one_line(code, err, str(yml), "no key 'names'")
