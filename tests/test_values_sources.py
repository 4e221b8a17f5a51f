"""Named numeric per-image values (``target["values"]``): CSV columns, COCO image fields, the
shapes generator's ``n_shapes`` and re-counting object counts through a training crop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.data_helpers import coco_dict, write_image, write_json
from visionmtl.config import AugmentConfig
from visionmtl.data.base import BaseAdapter
from visionmtl.data.coco import CocoAdapter
from visionmtl.data.errors import DataError
from visionmtl.data.folder import CsvLabelsAdapter
from visionmtl.data.transforms import build_transforms


# ====================================================================== CSV value columns
def _csv(tmp_path, text: str, images=("a.jpg", "b.jpg", "c.jpg")):
    for name in images:
        write_image(tmp_path / name)
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_csv_values_by_header_name_in_any_order(tmp_path):
    path = _csv(tmp_path, "count,labels,age,File_Name,notes\n"
                          "3,cat;dog,31,a.jpg,x\n0,,1e-4,b.jpg,y\n-2,dog,7.5,c.jpg,\n")
    ds = CsvLabelsAdapter(path, value_columns=["age", "count"])
    assert ds.provides == ("labels", "values") and ds.value_names == ["age", "count"]
    assert ds.classes == ["cat", "dog"] and len(ds) == 3
    img, t = ds.load(0)
    assert img.shape == (16, 20, 3) and t["labels"].tolist() == [0, 1]
    assert t["values"] == {"age": 31.0, "count": 3.0}
    assert all(type(v) is float for v in t["values"].values())
    assert ds.load(1)[1]["values"] == {"age": 1e-4, "count": 0.0}
    assert ds.load(1)[1]["labels"].shape == (0,)
    assert ds.load(2)[1]["values"] == {"age": 7.5, "count": -2.0}
    assert ds.path(2) == str(tmp_path / "c.jpg")
    ds.load(0)[1]["values"]["age"] = 0.0  # a copy: the adapter's values do not change
    assert ds.load(0)[1]["values"]["age"] == 31.0
    st = ds.stats()
    assert st["images"] == 3 and st["negatives"] == 1
    assert st["values"]["age"] == {"count": 3, "mean": pytest.approx((31 + 1e-4 + 7.5) / 3), "min": 1e-4, "max": 31.0}
    assert st["values"]["count"]["min"] == -2.0 and st["values"]["count"]["max"] == 3.0


def test_csv_values_only_has_no_labels(tmp_path):
    path = _csv(tmp_path, "age,path\n31,a.jpg\n40,b.jpg\n")
    ds = CsvLabelsAdapter(path, value_columns=["age"])
    assert ds.provides == ("values",) and "labels" not in ds.provides
    _, t = ds.load(1)
    assert t == {"values": {"age": 40.0}}
    assert "negatives" not in ds.stats() and ds.stats()["values"]["age"]["count"] == 2


def test_csv_without_value_columns_is_unchanged(tmp_path):
    path = _csv(tmp_path, "a.jpg,cat\nb.jpg,\n")  # headerless 2-column file still works
    ds = CsvLabelsAdapter(path)
    assert ds.provides == ("labels",) and ds.value_names == []
    assert set(ds.load(0)[1]) == {"labels"} and ds.load(0)[1]["labels"].tolist() == [0]
    assert ds.stats() == {"images": 2, "negatives": 1}


@pytest.mark.parametrize("cell", ["abc", "3,5", "1.2.3", "12 kg"])
def test_csv_value_not_a_number_names_file_line_column(tmp_path, cell):
    path = _csv(tmp_path, f'path,age\na.jpg,4\n\nb.jpg,"{cell}"\n')
    with pytest.raises(DataError) as e:
        CsvLabelsAdapter(path, value_columns=["age"])
    assert e.value.path == str(path)
    assert f"line 4: column 'age' is not a number: {cell!r}" in str(e.value)


@pytest.mark.parametrize("cell", ["nan", "inf", "-Infinity"])
def test_csv_value_not_finite_is_an_error(tmp_path, cell):
    path = _csv(tmp_path, f"path,age\na.jpg,{cell}\n")
    with pytest.raises(DataError, match=r"labels\.csv: line 2: column 'age' is not a finite number"):
        CsvLabelsAdapter(path, value_columns=["age"], missing_values="unlabelled")


def test_csv_empty_value_error_or_unlabelled(tmp_path):
    path = _csv(tmp_path, "path,labels,age,height\na.jpg,cat,31,1.8\nb.jpg,dog,,1.6\nc.jpg,cat,20\n")
    with pytest.raises(DataError, match=r"labels\.csv: line 3: column 'age' is empty"):
        CsvLabelsAdapter(path, value_columns=["age", "height"])
    ds = CsvLabelsAdapter(path, value_columns=["age", "height"], missing_values="unlabelled")
    assert [ds.load(i)[1]["values"] for i in range(3)] == [
        {"age": 31.0, "height": 1.8}, {"height": 1.6}, {"age": 20.0},  # short row: trailing cell empty
    ]
    st = ds.stats()["values"]
    assert st["age"]["count"] == 2 and st["height"]["count"] == 2
    with pytest.raises(ValueError, match="missing_values"):
        CsvLabelsAdapter(path, value_columns=["age"], missing_values="skip")


def test_csv_value_column_missing_from_header(tmp_path):
    path = _csv(tmp_path, "path,labels,height\na.jpg,cat,1.8\n")
    with pytest.raises(DataError) as e:
        CsvLabelsAdapter(path, value_columns=["age"])
    assert str(e.value) == f"{path}: no column 'age' in the header (columns: path, labels, height)"


def test_csv_value_columns_need_a_header_and_well_formed_rows(tmp_path):
    path = _csv(tmp_path, "a.jpg,cat,31\n")
    with pytest.raises(DataError, match="no image path column in the header"):
        CsvLabelsAdapter(path, value_columns=["age"])
    path = _csv(tmp_path, "path,age\na.jpg,31,extra\n")
    with pytest.raises(DataError, match="line 2: 3 fields but the header has 2"):
        CsvLabelsAdapter(path, value_columns=["age"])
    with pytest.raises(TypeError, match="list of names"):
        CsvLabelsAdapter(path, value_columns="age")
    with pytest.raises(ValueError, match="value_columns is empty"):
        CsvLabelsAdapter(path, value_columns=[])
    with pytest.raises(ValueError, match=r"more than once"):
        CsvLabelsAdapter(path, value_columns=["age", "age"])


# ====================================================================== COCO image fields
def _coco(tmp_path, records: list[dict], n_boxes=(2, 0, 1), crowd_on_first=True) -> tuple:
    """Three 40x40 images; image k has n_boxes[k] non-crowd boxes (the first also a crowd)."""
    images = [(i + 1, f"im{i}.jpg", 40, 40) for i in range(3)]
    for _, name, w, h in images:
        write_image(tmp_path / "img" / name, h, w)
    anns = []
    for k, n in enumerate(n_boxes):
        anns += [{"image_id": k + 1, "category_id": 1, "bbox": [2 + 10 * j, 4, 8, 8]} for j in range(n)]
    if crowd_on_first:
        anns.append({"image_id": 1, "category_id": 1, "bbox": [0, 20, 30, 15], "iscrowd": 1})
    d = coco_dict(images, anns, [(1, "thing")])
    for im, extra in zip(d["images"], records):
        im.update(extra)
    return write_json(tmp_path / "ann.json", d), tmp_path / "img"


def test_coco_value_fields_from_image_records(tmp_path):
    ann, img_dir = _coco(tmp_path, [{"age": 31, "n": 2}, {"age": 2.5, "n": 0}, {"age": -1e-4, "n": 1}])
    ds = CocoAdapter(ann, img_dir, value_fields=["age", "n"], count_fields=["n"])
    assert ds.provides == ("boxes", "box_labels", "mask", "labels", "values")
    assert ds.value_names == ["age", "n"] and ds.values_follow == {"n": "boxes"}
    _, t = ds.load(0)
    assert t["values"] == {"age": 31.0, "n": 2.0} and len(t["boxes"]) == 2
    assert all(type(v) is float for v in t["values"].values())
    assert ds.load(2)[1]["values"] == {"age": -1e-4, "n": 1.0}
    st = ds.stats()
    assert st["values"]["n"] == {"count": 3, "mean": 1.0, "min": 0.0, "max": 2.0} and st["images"] == 3

    plain = CocoAdapter(ann, img_dir, provides=("labels",))
    assert "values" not in plain.provides and "values" not in plain.load(0)[1]
    assert plain.values_follow == {} and BaseAdapter.values_follow == {}
    only = CocoAdapter(ann, img_dir, provides=("labels",), value_fields=["age"])
    assert only.provides == ("labels", "values") and only.values_follow == {}
    assert set(only.load(1)[1]) == {"labels", "values"}


@pytest.mark.parametrize("bad", ["abc", True, None, [3]])
def test_coco_value_field_not_a_number(tmp_path, bad):
    ann, img_dir = _coco(tmp_path, [{"age": 31}, {"age": 2}, {"age": bad}])
    if bad is None:  # null is a missing value
        with pytest.raises(DataError, match=r"ann\.json: image id 3 \(im2\.jpg\): no field 'age'"):
            CocoAdapter(ann, img_dir, value_fields=["age"])
        ds = CocoAdapter(ann, img_dir, value_fields=["age"], missing_values="unlabelled")
        assert ds.load(2)[1]["values"] == {}
        return
    with pytest.raises(DataError) as e:
        CocoAdapter(ann, img_dir, value_fields=["age"], missing_values="unlabelled")
    assert e.value.path == str(ann)
    assert e.value.problem == f"image id 3 (im2.jpg): field 'age' is not a number: {bad!r}"


def test_coco_value_field_not_finite(tmp_path):
    ann, img_dir = _coco(tmp_path, [{"age": 31}, {"age": 2}, {"age": 1}])
    ann.write_text(ann.read_text().replace('"age": 2', '"age": NaN'))  # Python's json reads NaN
    with pytest.raises(DataError, match=r"image id 2 \(im1\.jpg\): field 'age' is not a finite number"):
        CocoAdapter(ann, img_dir, value_fields=["age"])


def test_coco_missing_value_field_error_or_unlabelled(tmp_path):
    ann, img_dir = _coco(tmp_path, [{"age": 31}, {}, {"age": 4}])
    with pytest.raises(DataError) as e:
        CocoAdapter(ann, img_dir, value_fields=["age"])
    assert e.value.path == str(ann) and "image id 2 (im1.jpg): no field 'age'" in e.value.problem
    ds = CocoAdapter(ann, img_dir, value_fields=["age"], missing_values="unlabelled")
    assert [ds.load(i)[1]["values"] for i in range(3)] == [{"age": 31.0}, {}, {"age": 4.0}]
    assert ds.stats()["values"]["age"]["count"] == 2


def test_coco_count_field_must_match_non_crowd_boxes(tmp_path):
    # image 1 has 2 boxes and a crowd region: a count of 3 includes the crowd and is wrong
    ann, img_dir = _coco(tmp_path, [{"n": 3}, {"n": 0}, {"n": 1}])
    with pytest.raises(DataError) as e:
        CocoAdapter(ann, img_dir, value_fields=["n"], count_fields=["n"])
    assert e.value.path == str(ann)
    assert "image id 1 (im0.jpg): count field 'n' is 3 but the image has 2 non-crowd boxes" in e.value.problem
    # not a count: any number is fine
    assert CocoAdapter(ann, img_dir, value_fields=["n"]).load(0)[1]["values"] == {"n": 3.0}
    # boxes dropped as degenerate are not counted, and the message says so
    ann, img_dir = _coco(tmp_path, [{"n": 2}, {"n": 0}, {"n": 1}])
    with pytest.raises(DataError, match=r"count field 'n' is 2 but the image has 0 non-crowd boxes \(2 more dropped"):
        CocoAdapter(ann, img_dir, value_fields=["n"], count_fields=["n"], min_box_size=10)
    with pytest.raises(ValueError, match="not among value_fields"):
        CocoAdapter(ann, img_dir, value_fields=["age"], count_fields=["n"])
    with pytest.raises(ValueError, match="need 'boxes'"):
        CocoAdapter(ann, img_dir, provides=("labels",), value_fields=["n"], count_fields=["n"])


# ====================================================================== shapes: n_shapes
def test_shapes_images_carry_n_shapes(shapes_dir):
    for split in ("train", "val"):
        d = json.loads((shapes_dir / split / "annotations.json").read_text())
        per_image = {im["id"]: 0 for im in d["images"]}
        for a in d["annotations"]:
            per_image[a["image_id"]] += 1
        assert all(im["n_shapes"] == per_image[im["id"]] for im in d["images"])
        assert len({im["n_shapes"] for im in d["images"]}) > 2
    ds = CocoAdapter(shapes_dir / "train" / "annotations.json", shapes_dir / "train" / "images",
                     value_fields=["n_shapes"], count_fields=["n_shapes"])  # counts match the boxes
    _, t = ds.load(3)
    assert t["values"]["n_shapes"] == len(t["boxes"])


# ====================================================================== transform: count_points
def _boxes_target():
    boxes = np.array([[2, 2, 14, 14], [40, 5, 60, 30], [100, 100, 126, 120], [70, 60, 95, 90],
                      [5, 100, 30, 126], [110, 10, 125, 24]], np.float32)
    return boxes, np.array([0, 1, 2, 0, 1, 2], np.int64)


def _centres(boxes):
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def test_transform_recounts_count_points_after_crop():
    """An object counts while its centre is in view; its centre moves with the image."""
    tf = build_transforms(128, AugmentConfig(scale=[1.0, 2.0], crop=True, crop_size=64, hflip=0.5), train=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    boxes, labels = _boxes_target()
    counts, fewer_than_boxes = set(), 0
    for seed in range(12):
        values = {"n": 6.0, "age": 31.0}
        target = {"boxes": boxes, "box_labels": labels, "values": values, "count_points": {"n": _centres(boxes)}}
        img, out = tf(image, target, seed=seed)
        assert img.shape == (3, 64, 64)
        assert "count_points" not in out
        pts = out["points"]["n"]
        assert out["values"]["n"] == float(len(pts)) and type(out["values"]["n"]) is float
        assert bool(((pts >= 0) & (pts < 64)).all())
        # every surviving centre is the centre of a surviving box (to the 1-px flip convention)
        b = out["boxes"]
        unclipped = (b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < 64) & (b[:, 3] < 64)
        c = ((b[:, :2] + b[:, 2:]) / 2)[unclipped]
        assert all(bool((pts - cc).abs().max(1).values.min() <= 1.01) for cc in c)  # whole boxes are counted
        assert len(pts) <= len(b)
        fewer_than_boxes += len(pts) < len(b)  # a box cut to a sliver keeps no centre
        assert out["values"]["age"] == 31.0
        assert values == {"n": 6.0, "age": 31.0}  # the input dict is not changed
        assert "count_points" in target
        counts.add(len(pts))
    assert min(counts) < 6 and len(counts) > 1  # some crops cut objects out
    assert fewer_than_boxes > 0


def test_transform_count_points_with_label_boxes_and_without_task_boxes():
    tf = build_transforms(128, AugmentConfig(scale=[1.5, 1.5], crop=True, hflip=0.0), train=True)
    image = np.zeros((128, 128, 3), np.uint8)
    boxes, labels = _boxes_target()
    for seed in range(6):
        full = {"boxes": boxes, "box_labels": labels, "label_boxes": boxes, "label_box_ids": labels,
                "count_points": {"n": _centres(boxes), "n_first": _centres(boxes[:2])}}
        _, out = tf(image, full, seed=seed)
        kept = out["box_labels"].numpy()
        assert out["labels"].tolist() == sorted(set(kept.tolist()))  # label boxes unaffected
        assert out["values"]["n"] == len(out["points"]["n"]) <= len(kept)
        assert out["values"]["n_first"] == len(out["points"]["n_first"]) <= 2
        assert set(out) == {"boxes", "box_labels", "labels", "values", "points"}
        # no task boxes at all: the count still follows the same crop
        _, alone = tf(image, {"values": {"n": 6.0}, "count_points": {"n": _centres(boxes)}}, seed=seed)
        assert alone["values"] == {"n": out["values"]["n"]} and "boxes" not in alone
        assert torch.equal(alone["points"]["n"], out["points"]["n"])


def test_transform_without_count_points_passes_values_through():
    for train in (True, False):
        tf = build_transforms(64, AugmentConfig(), train=train)
        values = {"age": 31.0}
        _, out = tf(np.zeros((40, 50, 3), np.uint8), {"labels": np.array([1]), "values": values}, seed=0)
        assert out["values"] == {"age": 31.0}
    tf = build_transforms(64, AugmentConfig(), train=False)  # eval resize keeps every box
    boxes, labels = _boxes_target()
    _, out = tf(np.zeros((128, 128, 3), np.uint8), {"values": {"n": 6.0}, "count_points": {"n": _centres(boxes)}})
    assert out["values"] == {"n": 6.0} and len(out["points"]["n"]) == 6
