"""Dataset adapters: COCO, mask folders, image folders and CSV multi-label files."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from tests.data_helpers import coco_dict, square, truncate_file, write_image, write_json, write_mask
from visionmtl.data.coco import CocoAdapter
from visionmtl.data.errors import DataError
from visionmtl.data.folder import CsvLabelsAdapter, ImageFolderAdapter
from visionmtl.data.masks import MaskFolderAdapter

from .conftest import real_data

CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip


# ====================================================================== COCO128 (real data)
@pytest.fixture(scope="module")
def coco128():
    root = real_data("coco128")
    ann_file = root / "annotations" / "instances.json"
    adapter = CocoAdapter(ann_file, root / "images")
    samples = [adapter.load(i) for i in range(len(adapter))]
    with contextlib.redirect_stdout(io.StringIO()):
        ref = COCO(str(ann_file))
    return adapter, samples, ref


def test_coco128_loads_every_image(coco128):
    adapter, samples, ref = coco128
    assert len(adapter) == len(samples) == 128
    assert len(adapter.classes) == 80
    assert adapter.mask_classes == ["background"] + adapter.classes
    for i, (img, tgt) in enumerate(samples):
        info = ref.imgs[adapter.image_id(i)]
        assert img.dtype == np.uint8 and img.shape == (info["height"], info["width"], 3)
        crowds = ref.getAnnIds(imgIds=[adapter.image_id(i)], iscrowd=True)
        assert set(tgt) == {"boxes", "box_areas", "box_labels", "mask", "labels", "instance_rles", "instance_boxes",
                            "instance_labels", "instance_areas"} | (
            {"crowd_boxes", "crowd_labels", "crowd_areas", "instance_crowd_rles", "instance_crowd_labels"}
            if crowds else set())
        assert len(tgt.get("crowd_boxes", ())) == len(tgt.get("crowd_labels", ())) == len(crowds)
        assert tgt["boxes"].dtype == np.float32 and tgt["boxes"].shape[1:] == (4,)
        assert tgt["box_labels"].dtype == np.int64 and len(tgt["box_labels"]) == len(tgt["boxes"])
        assert tgt["mask"].dtype == np.uint8 and tgt["mask"].shape == img.shape[:2]
        assert tgt["labels"].dtype == np.int64
        assert adapter.path(i).endswith(info["file_name"])


def test_coco128_boxes_match_pycocotools(coco128):
    adapter, samples, ref = coco128
    cat_ids = sorted(ref.cats)
    assert adapter.classes == [ref.cats[c]["name"] for c in cat_ids]
    native = {c: k for k, c in enumerate(cat_ids)}

    n_positive = n_kept = 0
    for i, (img, tgt) in enumerate(samples):
        info = ref.imgs[adapter.image_id(i)]
        h, w = info["height"], info["width"]
        expected = []
        for a in ref.loadAnns(ref.getAnnIds(imgIds=[info["id"]], iscrowd=False)):
            x, y, bw, bh = a["bbox"]
            n_positive += bw > 0 and bh > 0
            x1, y1, x2, y2 = np.clip([x, y, x + bw, y + bh], 0, [w, h, w, h])
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                expected.append((x1, y1, x2, y2, native[a["category_id"]]))
        got = [(*b, k) for b, k in zip(tgt["boxes"].tolist(), tgt["box_labels"].tolist())]
        np.testing.assert_allclose(sorted(got), sorted(expected), atol=1e-3)
        n_kept += len(expected)
        b = tgt["boxes"]
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 1] >= 0) and np.all(b[:, 3] <= h)

    non_crowd = sum(1 for a in ref.dataset["annotations"] if not a["iscrowd"])
    n_crowd = len(ref.dataset["annotations"]) - non_crowd
    st = adapter.stats()
    print(f"\nCOCO128: images={len(samples)} boxes={st['boxes']} degenerate={st['degenerate_boxes']} "
          f"crowd={st['crowd_regions']} non-crowd anns={non_crowd}")
    assert sum(len(t["boxes"]) for _, t in samples) == st["boxes"] == n_kept
    assert st["degenerate_boxes"] == non_crowd - n_kept
    assert st["boxes"] + st["degenerate_boxes"] == non_crowd
    assert n_positive == non_crowd  # every COCO128 box has positive area ...
    assert st["degenerate_boxes"] == 0  # ... and at least 1 px on each side after clipping
    assert st["crowd_regions"] == n_crowd == 10
    assert st["annotations"] == 939 and st["empty_images"] == 2


def test_coco128_image_labels_match_pycocotools(coco128):
    adapter, samples, ref = coco128
    native = {c: k for k, c in enumerate(sorted(ref.cats))}
    for i, (_, tgt) in enumerate(samples):
        anns = ref.loadAnns(ref.getAnnIds(imgIds=[adapter.image_id(i)], iscrowd=False))
        expected = sorted({native[a["category_id"]] for a in anns})
        assert tgt["labels"].tolist() == expected


def test_coco128_masks_match_pycocotools(coco128):
    adapter, samples, ref = coco128
    native = {c: k for k, c in enumerate(sorted(ref.cats))}
    n_mask = len(adapter.mask_classes)
    with_ignore = 0
    for i, (_, tgt) in enumerate(samples):
        m = tgt["mask"]
        values = np.unique(m)
        assert np.all((values < n_mask) | (values == 255)), values
        anns = ref.loadAnns(ref.getAnnIds(imgIds=[adapter.image_id(i)]))
        crowd = np.zeros(m.shape, bool)
        cover = np.zeros(m.shape, np.int32)
        inst = [(ref.annToMask(a).astype(bool), native[a["category_id"]] + 1) for a in anns if not a["iscrowd"]]
        for a in anns:
            if a["iscrowd"]:
                crowd |= ref.annToMask(a).astype(bool)
        for bm, _ in inst:
            cover += bm
        assert np.all(m[crowd] == 255)
        assert np.all(m[(cover == 0) & ~crowd] == 0)  # background
        for bm, v in inst:  # pixels covered by exactly one instance carry its class
            assert np.all(m[bm & (cover == 1) & ~crowd] == v)
        assert np.all(m[(cover > 0) & ~crowd] != 0)
        with_ignore += bool(crowd.any())
    assert with_ignore >= 1
    assert sum(bool((t["mask"] == 255).any()) for _, t in samples) == with_ignore


def test_coco128_images_without_annotations_are_negatives(coco128):
    adapter, samples, ref = coco128
    empty = [i for i in range(len(adapter)) if not ref.getAnnIds(imgIds=[adapter.image_id(i)])]
    assert len(empty) == 2
    for i in empty:
        tgt = samples[i][1]
        assert tgt["boxes"].shape == (0, 4) and tgt["boxes"].dtype == np.float32
        assert tgt["box_labels"].shape == (0,)
        assert tgt["labels"].shape == (0,)
        assert np.all(tgt["mask"] == 0)


def test_coco128_provides_subset_skips_masks():
    root = real_data("coco128")
    adapter = CocoAdapter(root / "annotations" / "instances.json", root / "images", provides=("labels",))
    _, tgt = adapter.load(0)
    assert set(tgt) == {"labels"}


# ====================================================================== synthetic COCO
def _tiny_coco(tmp_path, annotations, categories=((7, "cat"), (3, "dog")), size=(40, 30), **kw):
    w, h = size
    write_image(tmp_path / "img" / "a.png", h=h, w=w)
    ann = write_json(tmp_path / "ann.json", coco_dict([(1, "a.png", w, h)], annotations, list(categories)))
    return CocoAdapter(ann, tmp_path / "img", **kw)


@pytest.mark.parametrize("small_first", [True, False])
def test_coco_smaller_instance_is_painted_on_top(tmp_path, small_first):
    big = {"image_id": 1, "category_id": 7, "bbox": [0, 0, 30, 30], "segmentation": [square(0, 0, 30)]}
    small = {"image_id": 1, "category_id": 3, "bbox": [10, 10, 8, 8], "segmentation": [square(10, 10, 8)]}
    adapter = _tiny_coco(tmp_path, [small, big] if small_first else [big, small])
    assert adapter.classes == ["dog", "cat"]  # sorted by category id: 3, 7
    _, tgt = adapter.load(0)
    m = tgt["mask"]
    dog, cat = 1 + 0, 1 + 1  # mask id = native id + 1 (0 = background)
    assert m[14, 14] == dog
    assert m[4, 4] == cat and m[25, 25] == cat
    assert m[5, 35] == 0
    assert sorted(tgt["box_labels"].tolist()) == [0, 1]
    assert tgt["labels"].tolist() == [0, 1]


def test_coco_crowd_is_ignore_and_boxes_are_clipped(tmp_path):
    anns = [
        {"image_id": 1, "category_id": 7, "bbox": [20, 10, 40, 40], "segmentation": [square(20, 10, 40)]},
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1,
         "segmentation": {"size": [30, 40], "counts": [0, 10] + [20, 10] * 9 + [30 * 40 - 10 - 9 * 30]}},
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, 0.5, 10], "segmentation": []},  # degenerate
    ]  # fmt: skip
    adapter = _tiny_coco(tmp_path, anns)
    _, tgt = adapter.load(0)
    np.testing.assert_allclose(tgt["boxes"], [[20, 10, 40, 30]])  # clipped to the 40x30 image
    assert tgt["box_labels"].tolist() == [1]
    assert tgt["labels"].tolist() == [0, 1]  # the degenerate dog still labels the image
    st = adapter.stats()
    assert st["degenerate_boxes"] == 1 and st["crowd_regions"] == 1 and st["boxes"] == 1
    m = tgt["mask"]
    assert np.all(m[0:10, 0:10] == 255)  # crowd (column-major RLE: 10 columns of 10 rows)
    assert m[20, 30] == 2 and m[25, 5] == 0
    assert np.all(m[5:15, 5:6] == 255)  # instance without segmentation: its box is ignore
    # the crowd region's box and class, for evaluation (COCOeval's iscrowd)
    np.testing.assert_allclose(tgt["crowd_boxes"], [[0, 0, 10, 10]])
    assert tgt["crowd_labels"].tolist() == [0]


def test_coco_background_none_leaves_unlabelled_pixels_ignore(tmp_path):
    anns = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "segmentation": [square(0, 0, 10)]}]
    adapter = _tiny_coco(tmp_path, anns, background=None)
    assert adapter.mask_classes == adapter.classes == ["dog", "cat"]
    m = adapter.load(0)[1]["mask"]
    assert m[5, 5] == 0 and m[20, 30] == 255


def test_coco_image_without_annotations(tmp_path):
    adapter = _tiny_coco(tmp_path, [])
    img, tgt = adapter.load(0)
    assert img.shape == (30, 40, 3)
    assert tgt["boxes"].shape == (0, 4) and tgt["labels"].shape == (0,)
    assert np.all(tgt["mask"] == 0)
    assert adapter.image_id(0) == 1


# ====================================================================== CamVid (real data)
@pytest.fixture(scope="module")
def camvid():
    root = real_data("camvid")
    return {
        split: MaskFolderAdapter(root / split, root / f"{split}annot", CAMVID_CLASSES, ignore_ids=[11],
                                 provides=("mask", "labels"))
        for split in ("train", "val")
    }  # fmt: skip


@pytest.mark.parametrize("split,n", [("train", 367), ("val", 101)])
def test_camvid_loads(camvid, split, n):
    adapter = camvid[split]
    assert len(adapter) == n
    for i in range(n):
        img, tgt = adapter.load(i)
        assert img.shape == (360, 480, 3) and tgt["mask"].shape == (360, 480)
        values = np.unique(tgt["mask"])
        assert np.all((values < 11) | (values == 255))
        assert tgt["labels"].tolist() == [v for v in values.tolist() if v != 255]


def test_camvid_pixel_counts(camvid):
    counts = camvid["train"].pixel_counts()
    print("\nCamVid train pixel counts:")
    for name, c in zip(CAMVID_CLASSES, counts.tolist()):
        print(f"  {name:<11} {c:>10}")
    assert counts.dtype == np.int64 and counts.shape == (11,)
    assert np.all(counts > 0)
    assert counts.sum() <= 367 * 360 * 480
    # the ignore value is not counted, and everything else is
    m = camvid["train"].load(0)[1]["mask"]
    assert counts.sum() > (m != 255).sum()


# ====================================================================== mask folder (synthetic)
def _mask_folder(tmp_path, masks: dict[str, np.ndarray], img_size=(6, 8)):
    for stem, m in masks.items():
        write_image(tmp_path / "img" / f"{stem}.jpg", h=img_size[0], w=img_size[1])
        write_mask(tmp_path / "ann" / f"{stem}.png", m)
    return tmp_path / "img", tmp_path / "ann"


def test_mask_folder_ignore_ids_split_and_labels(tmp_path):
    a = np.zeros((6, 8), np.uint8)
    a[:3] = 2
    a[0, 0] = 9
    b = np.ones((6, 8), np.uint8)
    img_dir, ann_dir = _mask_folder(tmp_path, {"a": a, "b": b, "c": b})
    split = tmp_path / "split.txt"
    split.write_text("# val\nc.jpg\n\na\n")
    adapter = MaskFolderAdapter(img_dir, ann_dir, ["x", "y", "z"], ignore_ids=[9], split_file=split,
                                provides=("mask", "labels"))  # fmt: skip
    assert len(adapter) == 2 and adapter.path(0).endswith("c.jpg") and adapter.path(1).endswith("a.jpg")
    _, tgt = adapter.load(1)
    assert tgt["mask"][0, 0] == 255 and tgt["mask"][1, 1] == 2 and tgt["mask"][5, 5] == 0
    assert tgt["labels"].tolist() == [0, 2]
    assert adapter.pixel_counts().tolist() == [24, 48, 23]
    assert adapter.mask_classes == adapter.classes


# ====================================================================== classification folders
def test_image_folder(tmp_path):
    write_image(tmp_path / "cls" / "dog" / "1.jpg")
    write_image(tmp_path / "cls" / "dog" / "sub" / "2.png")
    write_image(tmp_path / "cls" / "cat" / "3.jpg")
    (tmp_path / "cls" / "cat" / "notes.txt").write_text("not an image")
    adapter = ImageFolderAdapter(tmp_path / "cls")
    assert adapter.classes == ["cat", "dog"] and len(adapter) == 3
    labels = [adapter.load(i)[1]["labels"].tolist() for i in range(3)]
    assert labels == [[0], [1], [1]]
    img, tgt = adapter.load(0)
    assert img.shape == (16, 20, 3) and tgt["labels"].dtype == np.int64

    given = ImageFolderAdapter(tmp_path / "cls", classes=["dog", "bird", "cat"])
    assert [given.load(i)[1]["labels"].item() for i in range(3)] == [2, 0, 0]
    assert given.stats()["per_class"] == {"dog": 2, "bird": 0, "cat": 1}


def test_image_folder_unknown_subfolder(tmp_path):
    write_image(tmp_path / "cls" / "dog" / "1.jpg")
    write_image(tmp_path / "cls" / "fox" / "1.jpg")
    with pytest.raises(DataError) as e:
        ImageFolderAdapter(tmp_path / "cls", classes=["dog"])
    assert str(tmp_path / "cls" / "fox") in str(e.value)


def test_csv_multilabel(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    write_image(tmp_path / "imgs" / "b.jpg")
    write_image(tmp_path / "other" / "c.jpg")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(f"path,labels\nimgs/a.jpg,dog;cat\nimgs/b.jpg,\n\n{tmp_path / 'other' / 'c.jpg'},cat; cat\n")
    adapter = CsvLabelsAdapter(csv_file)
    assert adapter.classes == ["cat", "dog"] and len(adapter) == 3
    assert [adapter.load(i)[1]["labels"].tolist() for i in range(3)] == [[0, 1], [], [0]]
    assert adapter.load(1)[1]["labels"].dtype == np.int64
    assert adapter.stats()["negatives"] == 1

    # no header, explicit classes and root
    csv2 = tmp_path / "other" / "l.csv"
    csv2.write_text("a.jpg,dog\n")
    given = CsvLabelsAdapter(csv2, root=tmp_path / "imgs", classes=["bird", "dog"])
    assert len(given) == 1 and given.load(0)[1]["labels"].tolist() == [1]


# ====================================================================== bad input
def _assert_names(excinfo, path):
    assert isinstance(excinfo.value, DataError)
    assert str(path) in str(excinfo.value), str(excinfo.value)


def test_missing_image_file(tmp_path):
    ann = write_json(tmp_path / "ann.json", coco_dict([(1, "gone.jpg", 8, 8)], [], [(1, "a")]))
    adapter = CocoAdapter(ann, tmp_path)
    with pytest.raises(DataError) as e:
        adapter.load(0)
    _assert_names(e, tmp_path / "gone.jpg")


def test_truncated_image(tmp_path):
    path = write_image(tmp_path / "cls" / "a" / "x.jpg", h=64, w=64)
    truncate_file(path, 0.5)
    adapter = ImageFolderAdapter(tmp_path / "cls")
    with pytest.raises(DataError) as e:
        adapter.load(0)
    _assert_names(e, path)


def test_annotation_file_missing_or_not_json(tmp_path):
    with pytest.raises(DataError) as e:
        CocoAdapter(tmp_path / "nope.json", tmp_path)
    _assert_names(e, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{'images': [")
    with pytest.raises(DataError) as e:
        CocoAdapter(bad, tmp_path)
    _assert_names(e, bad)
    assert "JSON" in str(e.value)


@pytest.mark.parametrize("drop", ["images", "annotations", "categories", "image_id", "category_id", "bbox"])
def test_annotation_file_lacking_required_keys(tmp_path, drop):
    d = coco_dict([(1, "a.jpg", 8, 8)], [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}], [(1, "a")])
    if drop in d:
        del d[drop]
    else:
        del d["annotations"][0][drop]
    ann = write_json(tmp_path / "ann.json", d)
    with pytest.raises(DataError) as e:
        CocoAdapter(ann, tmp_path)
    _assert_names(e, ann)
    assert f"'{drop}'" in str(e.value)


def test_annotation_unknown_category(tmp_path):
    d = coco_dict([(1, "a.jpg", 8, 8)], [{"id": 42, "image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 4]}],
                  [(1, "a")])  # fmt: skip
    ann = write_json(tmp_path / "ann.json", d)
    with pytest.raises(DataError) as e:
        CocoAdapter(ann, tmp_path)
    _assert_names(e, ann)
    assert "annotation 42 has category_id 5 not in categories" in str(e.value)


def test_mask_size_differs_from_image(tmp_path):
    img_dir, ann_dir = _mask_folder(tmp_path, {"a": np.zeros((5, 8), np.uint8)}, img_size=(6, 8))
    adapter = MaskFolderAdapter(img_dir, ann_dir, ["x", "y"])
    with pytest.raises(DataError) as e:
        adapter.load(0)
    _assert_names(e, ann_dir / "a.png")
    assert "5x8 differs from image size 6x8" in str(e.value)


def test_mask_class_id_outside_declared(tmp_path):
    m = np.zeros((6, 8), np.uint8)
    m[2, 2] = 11
    img_dir, ann_dir = _mask_folder(tmp_path, {"a": m})
    adapter = MaskFolderAdapter(img_dir, ann_dir, ["x", "y"])
    for call in (lambda: adapter.load(0), adapter.pixel_counts):
        with pytest.raises(DataError) as e:
            call()
        _assert_names(e, ann_dir / "a.png")
        assert "class id 11 outside the declared 2 classes" in str(e.value)
    assert MaskFolderAdapter(img_dir, ann_dir, ["x", "y"], ignore_ids=[11]).load(0)[1]["mask"][2, 2] == 255


def test_image_without_mask(tmp_path):
    img_dir, ann_dir = _mask_folder(tmp_path, {"a": np.zeros((6, 8), np.uint8)})
    orphan = write_image(img_dir / "b.jpg")
    with pytest.raises(DataError) as e:
        MaskFolderAdapter(img_dir, ann_dir, ["x"])
    _assert_names(e, orphan)


def test_empty_datasets(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    with pytest.raises(DataError) as e:
        MaskFolderAdapter(tmp_path / "img", tmp_path / "ann", ["x"])
    _assert_names(e, tmp_path / "img")
    assert "no images found" in str(e.value)

    (tmp_path / "cls" / "dog").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        ImageFolderAdapter(tmp_path / "cls")
    _assert_names(e, tmp_path / "cls")

    csv_file = tmp_path / "l.csv"
    csv_file.write_text("path,labels\n")
    with pytest.raises(DataError) as e:
        CsvLabelsAdapter(csv_file)
    _assert_names(e, csv_file)

    img_dir, ann_dir = _mask_folder(tmp_path / "m", {"a": np.zeros((6, 8), np.uint8)})
    split = tmp_path / "empty.txt"
    split.write_text("\n")
    with pytest.raises(DataError) as e:
        MaskFolderAdapter(img_dir, ann_dir, ["x"], split_file=split)
    _assert_names(e, split)


def test_csv_unknown_label(tmp_path):
    csv_file = tmp_path / "l.csv"
    csv_file.write_text("path,labels\na.jpg,dog\nb.jpg,fox;dog\n")
    with pytest.raises(DataError) as e:
        CsvLabelsAdapter(csv_file, classes=["dog"])
    _assert_names(e, csv_file)
    assert "line 3: label 'fox' not in classes" in str(e.value)
