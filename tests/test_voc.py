"""Pascal VOC adapter: a VOC tree built from real COCO128 and checked against the COCO adapter,
the box convention, difficult objects as ignore regions in evaluation, and bad input."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data_helpers import write_image
from visionmtl.config import config_from_dict
from visionmtl.data.coco import CocoAdapter
from visionmtl.data.dataset import TaskDataset
from visionmtl.data.errors import DataError
from visionmtl.data.loader import build_dataset, build_loader
from visionmtl.data.voc import VOC_CLASSES, VocAdapter, voc_palette

from .conftest import real_data

N_SEG = 96  # the first 96 COCO128 images are in the Segmentation list (and have PNGs); all 128 in Main


# ====================================================================== writing a VOC tree
def write_xml(path: Path, size: tuple[int, int] | None, objects, filename: str = "x.jpg") -> Path:
    """A VOC annotation: ``size`` (width, height) or None to leave it out; ``objects`` are
    ``(name, (xmin, ymin, xmax, ymax), difficult)`` in VOC's 1-based inclusive convention."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2012"
    ET.SubElement(ann, "filename").text = filename
    if size is not None:
        s = ET.SubElement(ann, "size")
        for k, v in (("width", size[0]), ("height", size[1]), ("depth", 3)):
            ET.SubElement(s, k).text = str(v)
    for name, box, difficult in objects:
        o = ET.SubElement(ann, "object")
        ET.SubElement(o, "name").text = name
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = "0"
        ET.SubElement(o, "difficult").text = str(int(difficult))
        b = ET.SubElement(o, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(b, k).text = repr(float(v)) if isinstance(v, float) else str(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(path)
    return path


def write_palette_png(path: Path, indices: np.ndarray) -> Path:
    """A palette PNG (VOC's colour map) whose pixel indices are ``indices``."""
    im = Image.fromarray(np.ascontiguousarray(indices, dtype=np.uint8))
    im.putpalette(voc_palette().ravel().tolist())  # an 'L' image becomes 'P', indices untouched
    assert im.mode == "P"
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def write_list(root: Path, image_set: str, split: str, ids) -> None:
    p = root / "ImageSets" / image_set / f"{split}.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(f"{i}\n" for i in ids))


def is_difficult(ann: dict) -> bool:
    """Which COCO annotations the tree flags ``difficult``: crowd regions and every 4th id."""
    return bool(ann.get("iscrowd")) or ann["id"] % 4 == 0


@pytest.fixture(scope="module")
def coco_voc(tmp_path_factory):
    """COCO128 as a VOC2012 tree: XML (crowd regions and a quarter of the objects difficult),
    SegmentationClass palette PNGs of the COCO adapter's masks, SegmentationObject PNGs, lists."""
    from pycocotools import mask as mask_utils

    src = real_data("coco128")
    coco = CocoAdapter(src / "annotations" / "instances.json", src / "images")
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    ids, expected = [], []
    for i in range(len(coco)):
        info = coco.coco.imgs[coco.image_id(i)]
        vid = Path(info["file_name"]).stem
        ids.append(vid)
        os.symlink(src / "images" / info["file_name"], root / "JPEGImages" / f"{vid}.jpg")
        anns = coco.coco.imgToAnns.get(info["id"], [])
        objects = []
        for a in anns:
            x, y, w, h = a["bbox"]
            name = coco.classes[coco.cat_to_native[a["category_id"]]]
            objects.append((name, (x + 1.0, y + 1.0, x + w, y + h), is_difficult(a)))  # 1-based inclusive
        write_xml(root / "Annotations" / f"{vid}.xml", (info["width"], info["height"]), objects, info["file_name"])
        img, tgt = coco.load(i)
        inst, obj = {}, None
        if i < N_SEG:
            write_palette_png(root / "SegmentationClass" / f"{vid}.png", tgt["mask"])
            # instances painted largest first, as the COCO adapter paints its class mask
            nc = [a for a in anns if not a["iscrowd"]]
            obj = np.zeros(img.shape[:2], np.uint8)
            if nc:
                rles = [coco.coco.annToRLE(a) for a in nc]
                for j in np.argsort(-mask_utils.area(rles).astype(np.int64), kind="stable"):
                    obj[mask_utils.decode(rles[j]).astype(bool)] = j + 1
            obj[tgt["mask"] == 255] = 255
            write_palette_png(root / "SegmentationObject" / f"{vid}.png", obj)
            inst = {j + 1: coco.cat_to_native[nc[j]["category_id"]] for j in range(len(nc)) if (obj == j + 1).any()}
        expected.append({"image": img, "target": tgt, "anns": anns, "instances": inst, "objects": obj})
    write_list(root, "Main", "train", ids)
    write_list(root, "Segmentation", "train", ids[:N_SEG])
    return root, coco, expected


# ====================================================================== COCO128 through VOC
def _rows(boxes, labels) -> np.ndarray:
    rows = np.concatenate([np.asarray(boxes, np.float64).reshape(-1, 4),
                           np.asarray(labels, np.float64).reshape(-1, 1)], axis=1)
    return rows[np.lexsort(np.round(rows, 2).T[::-1])] if len(rows) else rows.reshape(0, 5)


def test_voc_from_coco128_matches_the_coco_adapter(coco_voc):
    """Same images, boxes within 0.01 px, classes; difficult objects only as ignore regions."""
    root, coco, expected = coco_voc
    voc = VocAdapter(root, "train", classes=coco.classes)
    assert voc.image_set == "Main" and len(voc) == 128 and voc.classes == coco.classes
    max_err, n_difficult, fewer_labels = 0.0, 0, 0
    for i, exp in enumerate(expected):
        img, tgt = voc.load(i)
        assert np.array_equal(img, exp["image"])
        ref = exp["target"]
        nc = [a for a in exp["anns"] if not a["iscrowd"]]
        assert len(nc) == len(ref["boxes"])  # COCO128 drops no box, so rows follow the annotations
        flag = np.array([is_difficult(a) for a in nc], bool).reshape(-1)
        train = _rows(ref["boxes"][~flag], ref["box_labels"][~flag])
        got = _rows(tgt["boxes"], tgt["box_labels"])
        assert got.shape == train.shape and np.array_equal(got[:, 4], train[:, 4])
        if len(got):
            max_err = max(max_err, float(np.abs(got[:, :4] - train[:, :4]).max()))
        assert tgt["boxes"].dtype == np.float32 and tgt["box_labels"].dtype == np.int64
        # difficult objects and COCO's crowd regions: evaluation-only ignore regions
        ignore = _rows(np.concatenate([ref["boxes"][flag], ref.get("crowd_boxes", np.zeros((0, 4)))]),
                       np.concatenate([ref["box_labels"][flag], ref.get("crowd_labels", np.zeros(0))]))
        if len(ignore):
            got_ignore = _rows(tgt["crowd_boxes"], tgt["crowd_labels"])
            assert got_ignore.shape == ignore.shape and np.array_equal(got_ignore[:, 4], ignore[:, 4])
            max_err = max(max_err, float(np.abs(got_ignore[:, :4] - ignore[:, :4]).max()))
            n_difficult += len(ignore)
        else:
            assert "crowd_boxes" not in tgt and "crowd_labels" not in tgt
        assert tgt["labels"].tolist() == sorted(set(ref["box_labels"][~flag].tolist()))
        fewer_labels += len(tgt["labels"]) < len(ref["labels"])
    st = voc.stats()
    print(f"\nVOC from COCO128: images={len(voc)} boxes={st['boxes']} difficult={st['difficult']} "
          f"max box difference={max_err:.2e} px; images with a class only in difficult objects: {fewer_labels}")
    assert max_err < 0.01
    assert st["difficult"] == n_difficult > 200 and st["boxes"] + st["difficult"] == st["objects"] == 939
    assert st["empty_images"] == 2 and st["bad_annotations"] == 0 and st["degenerate_boxes"] == 0
    assert fewer_labels > 0  # the rule bites: a class seen only in difficult objects does not label the image


def test_voc_masks_equal_the_coco_adapter(coco_voc):
    root, coco, expected = coco_voc
    voc = VocAdapter(root, "train", provides=("mask",), classes=coco.classes)
    assert voc.image_set == "Segmentation" and len(voc) == N_SEG
    assert voc.mask_classes == coco.mask_classes == ["background"] + coco.classes
    with_ignore = 0
    for i in range(N_SEG):
        _, tgt = voc.load(i)
        assert set(tgt) == {"mask"} and tgt["mask"].dtype == np.uint8
        assert np.array_equal(tgt["mask"], expected[i]["target"]["mask"])
        with_ignore += bool((tgt["mask"] == 255).any())
    assert with_ignore >= 1  # COCO's crowd regions came through as index 255
    # without a background class, index k + 1 becomes class k and background is ignore
    plain = VocAdapter(root, "train", provides=("mask",), classes=coco.classes, background=None)
    assert plain.mask_classes == coco.classes
    m, ref = plain.load(0)[1]["mask"], expected[0]["target"]["mask"]
    assert np.array_equal(m, np.where((ref == 0) | (ref == 255), 255, ref.astype(np.int64) - 1).astype(np.uint8))


def _tight_box(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_voc_instances_from_segmentation_object(coco_voc):
    """``instances``: one RLE per object index of the PNG, decoding to exactly its pixels (the
    void border 255 in none), its tight box and the class under it."""
    from pycocotools import mask as mask_utils

    root, coco, expected = coco_voc
    voc = VocAdapter(root, "train", provides=("mask", "instances"), classes=coco.classes)
    assert voc.image_set == "Segmentation" and "instances" in voc.provides
    assert voc.stats()["images_with_objects"] == N_SEG
    n_inst = with_void = 0
    for i in range(N_SEG):
        _, tgt = voc.load(i)
        inst, obj = expected[i]["instances"], expected[i]["objects"]
        rles, boxes, labels = tgt["instance_rles"], tgt["instance_boxes"], tgt["instance_labels"]
        assert set(tgt) == {"mask", "instance_rles", "instance_boxes", "instance_labels"}
        assert len(rles) == len(inst) and boxes.dtype == np.float32 and boxes.shape == (len(inst), 4)
        assert labels.dtype == np.int64 and labels.tolist() == [inst[k] for k in sorted(inst)]
        masks = np.stack([mask_utils.decode(r) for r in rles]) if rles else np.zeros((0, *obj.shape), np.uint8)
        for r, m, k, box in zip(rles, masks, sorted(inst), boxes):
            assert r["size"] == list(obj.shape) and isinstance(r["counts"], bytes)
            assert np.array_equal(m, (obj == k).astype(np.uint8))  # exactly the index's pixels
            assert box.tolist() == _tight_box(m)
        assert masks.sum(0).max(initial=0) <= 1  # disjoint
        void = obj == 255
        with_void += bool(void.any())
        assert not masks.any(0)[void].any()  # the void border is in no instance
        fg = (tgt["mask"] != 0) & (tgt["mask"] != 255)
        assert np.array_equal(masks.any(0), fg)  # together they are the class mask's objects
        for m, k in zip(masks, labels):
            assert np.all(tgt["mask"][m.astype(bool)] == k + 1)
        n_inst += len(labels)
    print(f"\nVOC instances from COCO128 (first {N_SEG} images): {n_inst}")
    assert n_inst > 500 and with_void >= 1


def test_voc_instances_tight_boxes_void_and_no_object_pngs(tmp_path):
    """Exact boxes (last column + 1), 255 pixels in no instance, labels from the class PNG; a
    tree without ``SegmentationObject`` does not provide ``instances``; ``instance_masks`` is gone."""
    from pycocotools import mask as mask_utils

    cls = np.zeros((10, 20), np.uint8)
    obj = np.zeros((10, 20), np.uint8)
    cls[2:5, 3:8], obj[2:5, 3:8] = 1, 1    # instance 1: a cat, rows 2-4, columns 3-7
    cls[5:9, 10:12], obj[5:9, 10:12] = 2, 3  # instance 3: a dog, rows 5-8, columns 10-11
    cls[6, 15], obj[6, 15] = 2, 2            # instance 2: one dog pixel
    cls[1, 3:8] = obj[1, 3:8] = 255          # a void border above the cat, and right of the dog
    cls[5:9, 12] = obj[5:9, 12] = 255
    root = tiny_voc(tmp_path / "voc", [("cat", (4, 3, 8, 5), 0), ("dog", (11, 6, 12, 9), 0)], mask=cls)
    plain = VocAdapter(root, provides=("boxes", "mask", "instances"), classes=["cat", "dog"])
    assert plain.provides == ("boxes", "mask") and "images_with_objects" in plain.stats()
    write_palette_png(root / "SegmentationObject" / "a.png", obj)
    voc = VocAdapter(root, provides=("boxes", "mask", "instances"), classes=["cat", "dog"])
    assert voc.provides == ("boxes", "mask", "instances") and voc.stats()["images_with_objects"] == 1
    _, t = voc.load(0)
    np.testing.assert_array_equal(t["instance_boxes"], [[3, 2, 8, 5], [15, 6, 16, 7], [10, 5, 12, 9]])
    assert t["instance_labels"].tolist() == [0, 1, 1]
    for r, k in zip(t["instance_rles"], (1, 2, 3)):
        assert np.array_equal(mask_utils.decode(r), (obj == k).astype(np.uint8))
    assert sum(int(mask_utils.area(r)) for r in t["instance_rles"]) == 15 + 1 + 8
    # an instance task reads them through the data layer
    ds = {"type": "voc", "root": str(root), "classes": ["cat", "dog"], "provides": ["boxes", "box_labels", "instances"]}
    cfg = config_from_dict({"tasks": {"det": {"type": "detection", "classes": ["cat", "dog"]},
                                      "inst": {"type": "instance"}},
                            "data": {"img_size": 64, "workers": 0, "train": [ds], "val": [ds]}})
    val = build_dataset(cfg, "val").parts[0].get(0)["target"]
    assert len(val["eval_instance_rles"]) == 3 and val["instance_labels"].tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match=r"cannot provide \['instance_masks'\].*now 'instances'"):
        VocAdapter(root, provides=("mask", "instance_masks"), classes=["cat", "dog"])


def test_main_list_with_masks_labels_segmentation_where_a_png_exists(coco_voc):
    """image_set Main with masks: partial labels, an image without a class PNG has no mask key."""
    root, coco, expected = coco_voc
    voc = VocAdapter(root, "train", provides=("boxes", "box_labels", "mask"), image_set="Main", classes=coco.classes)
    assert len(voc) == 128 and voc.stats()["images_with_mask"] == N_SEG
    assert "mask" in voc.load(N_SEG - 1)[1] and set(voc.load(N_SEG)[1]) >= {"boxes", "box_labels"}
    assert "mask" not in voc.load(N_SEG)[1]


# ====================================================================== the box convention
def tiny_voc(root: Path, objects, size=(20, 10), classes=("cat", "dog"), mask: np.ndarray | None = None,
             split: str = "train") -> Path:
    """A one-image VOC tree (id ``a``) with a solid image of ``size`` (w, h)."""
    write_image(root / "JPEGImages" / "a.jpg", h=size[1], w=size[0])
    write_xml(root / "Annotations" / "a.xml", size, objects)
    for image_set in ("Main", "Segmentation"):
        write_list(root, image_set, split, ["a"])
    if mask is not None:
        write_palette_png(root / "SegmentationClass" / "a.png", mask)
    return root


def test_voc_box_convention_is_1_based_inclusive(tmp_path):
    objects = [("cat", (1, 1, 20, 10), 0),       # the whole 20x10 image
               ("dog", (7, 3, 7, 3), 0),         # one pixel: column 6, row 2
               ("cat", (15, 2, 25, 8), 0),       # reaches 5 px past the right edge: clipped
               ("dog", (10.5, 2, 10.2, 9), 0),   # 0.7 px wide (float coordinates): dropped
               ("dog", (2, 2, 6, 6), 1)]         # difficult
    voc = VocAdapter(tiny_voc(tmp_path, objects), classes=["cat", "dog"])
    _, t = voc.load(0)
    np.testing.assert_array_equal(t["boxes"], [[0, 0, 20, 10], [6, 2, 7, 3], [14, 1, 20, 8]])
    assert t["box_labels"].tolist() == [0, 1, 0] and t["labels"].tolist() == [0, 1]
    np.testing.assert_array_equal(t["crowd_boxes"], [[1, 1, 6, 6]])
    assert t["crowd_labels"].tolist() == [1]
    st = voc.stats()
    assert (st["clipped_boxes"], st["degenerate_boxes"], st["difficult"], st["boxes"]) == (1, 1, 1, 3)


def test_voc_defaults_to_the_20_classes(tmp_path):
    voc = VocAdapter(tiny_voc(tmp_path, [("tvmonitor", (1, 1, 5, 5), 0)], size=(8, 8)))
    assert voc.classes == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert voc.load(0)[1]["box_labels"].tolist() == [19]
    assert tuple(voc_palette()[1]) == (128, 0, 0) and tuple(voc_palette()[255]) == (224, 224, 192)


# ====================================================================== evaluation
def _det_map(root: Path, preds: list[tuple[list[float], float]]) -> float:
    """mAP of cat detections ``(xyxy, score)`` on the tiny tree's image, through the config, the
    dataset's target mapping and the detection task's evaluator."""
    import torch

    from visionmtl.tasks import spec

    ds = [{"type": "voc", "root": str(root), "split": "train", "classes": ["cat", "dog"]}]
    cfg = config_from_dict({"tasks": {"det": {"type": "detection", "classes": ["cat", "dog"]}},
                            "data": {"img_size": 64, "workers": 0, "train": ds, "val": ds}})
    part = build_dataset(cfg, "val").parts[0]
    _, target = part.load(0)
    task = cfg.tasks["det"]
    ev = spec(task).evaluator(task)
    pred = {"boxes": torch.tensor([b for b, _ in preds], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([s for _, s in preds]), "labels": torch.zeros(len(preds), dtype=torch.int64)}
    meta = {"orig_size": (80, 100), "input_size": (80, 100)}
    spec(task).update(ev, task, [pred], [target], [meta])
    return ev.compute()["mAP"]


@pytest.mark.parametrize("flag", [1, 0, None], ids=["difficult", "not difficult", "absent"])
def test_a_detection_on_a_difficult_box_is_neither_tp_nor_fp(tmp_path, flag):
    cat, hard = (11, 11, 40, 40), (61, 41, 90, 70)  # xyxy [10, 10, 40, 40] and [60, 40, 90, 70]
    objects = [("cat", cat, 0)] + ([("cat", hard, flag)] if flag is not None else [])
    root = tiny_voc(tmp_path, objects, size=(100, 80))
    on_hard = ([60.0, 40.0, 90.0, 70.0], 0.95)
    on_cat = ([10.0, 10.0, 40.0, 40.0], 0.9)
    both, only_cat = _det_map(root, [on_hard, on_cat]), _det_map(root, [on_cat])
    if flag == 1:  # ignored: the top-scored detection is no false positive, missing it is no miss
        assert both == pytest.approx(1.0) and only_cat == pytest.approx(1.0)
    elif flag == 0:  # a normal object: detecting it is a hit, missing it halves the recall
        assert both == pytest.approx(1.0) and only_cat < 0.6
    else:  # no object there: the detection is a false positive ranked first
        assert both < 0.6 and only_cat == pytest.approx(1.0)


# ====================================================================== the data layer
def test_voc_through_the_data_layer(coco_voc, tmp_path):
    """Class mapping by name, limit, labels that follow boxes under training crops, browse."""
    from visionmtl.data.browse import browse

    root, coco, _ = coco_voc
    keep = ["person", "car", "dog"]
    ds = {"type": "voc", "root": str(root), "split": "train", "classes": coco.classes,
          "provides": ["boxes", "box_labels", "labels", "mask"], "unmapped": "ignore"}
    tree = {"tasks": {"cls": {"type": "classification", "classes": keep, "multilabel": True},
                      "det": {"type": "detection", "classes": keep},
                      "seg": {"type": "segmentation", "classes": ["background"] + keep}},
            "data": {"img_size": 128, "batch_size": 2, "workers": 0, "augment": {"crop_size": 64},
                     "train": [dict(ds, limit=32)], "val": [ds]}}
    cfg = config_from_dict(tree)
    train = build_dataset(cfg, "train").parts[0]
    val = build_dataset(cfg, "val").parts[0]
    assert isinstance(train, TaskDataset) and len(train) == 32 and len(val) == N_SEG
    dropped = 0
    for i in range(len(train)):
        t = train.get(i, seed=i)["target"]
        assert set(t) >= {"boxes", "box_labels", "labels", "mask"}
        assert set(t["labels"].tolist()) == set(t["box_labels"].tolist())  # what the crop left in view
        assert set(t["mask"].unique().tolist()) <= {0, 1, 2, 3, 255}
        full = val.load(i)[1]
        dropped += set(t["labels"].tolist()) < set(full["labels"].tolist())
        assert set(full["labels"].tolist()) <= {0, 1, 2}
    assert dropped > 0
    paths = browse(cfg, "train", 3, str(tmp_path / "browse"))
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    # ratio mixing and partial labels: boxes from the Main list, masks from the Segmentation list
    tree["data"]["train"] = [dict(ds, provides=["boxes", "box_labels"], tasks=["det"], ratio=3.0),
                             dict(ds, provides=["mask"], tasks=["seg"], limit=32)]
    tree["data"]["batch_size"] = 16
    loader = build_loader(config_from_dict(tree), "train")
    assert [len(p) for p in loader.dataset.parts] == [128, 32]
    share = []
    for epoch in range(10):
        loader.sampler.set_epoch(epoch)
        share += [i < 128 for _, i in loader.sampler]
    print(f"\nVOC Main (ratio 3) and Segmentation (ratio 1): Main share {np.mean(share):.3f}")
    assert abs(np.mean(share) - 0.75) < 0.05
    loader.sampler.set_epoch(0)
    batch = next(iter(loader))
    det, seg = batch.has["det"], batch.has["seg"]
    assert det.any() and seg.any() and not (det & seg).any() and bool((det | seg).all())
    assert "cls" not in batch.has or not batch.has["cls"].any()


# ====================================================================== bad input
def _cli_error(capsys, tmp_path: Path, dataset: dict, skip: bool = False) -> tuple[int, str]:
    """``tools/browse_dataset.py`` on a config whose only dataset is ``dataset``: (exit code, the
    ``error:`` lines)."""
    import importlib.util

    import yaml

    from visionmtl.cli import run

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "tasks": {"det": {"type": "detection", "classes": ["cat", "dog"]}},
        "data": {"img_size": 64, "workers": 0, "on_bad_sample": "skip" if skip else "error", "train": [dataset]}}))
    path = Path(__file__).resolve().parent.parent / "tools" / "browse_dataset.py"
    mod_spec = importlib.util.spec_from_file_location("tool_browse_dataset", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    code = run(mod.main, mod.get_args_parser().parse_args([str(cfg), "--num", "4", "--out", str(tmp_path / "b")]))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [ln for ln in err.splitlines() if ln.startswith("error: ")]


XML_FAULTS = {
    "not well-formed": ("<annotation><size><width>20</width></annotation>", ["not well-formed XML", "mismatched tag"]),
    "no size": ("<annotation><object><name>cat</name></object></annotation>", ["no <size>"]),
    "size without height": ("<annotation><size><width>20</width></size></annotation>", ["no <size>"]),
    "zero size": ("<annotation><size><width>0</width><height>10</height></size></annotation>", ["<size> is 0x10"]),
    "unknown class": ("<annotation><size><width>20</width><height>10</height></size><object><name>cow</name>"
                      "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
                      ["object #1 (cow)", "class 'cow' is not among the 2 classes"]),
    "coordinate not a number": ("<annotation><size><width>20</width><height>10</height></size><object><name>cat"
                                "</name><bndbox><xmin>1</xmin><ymin>one</ymin><xmax>2</xmax><ymax>2</ymax></bndbox>"
                                "</object></annotation>", ["object #1 (cat)", "<ymin> is 'one'"]),
    "inverted box": ("<annotation><size><width>20</width><height>10</height></size><object><name>cat</name>"
                     "<bndbox><xmin>9</xmin><ymin>1</ymin><xmax>3</xmax><ymax>2</ymax></bndbox></object></annotation>",
                     ["object #1 (cat)", "inverted"]),
    "no bndbox": ("<annotation><size><width>20</width><height>10</height></size><object><name>cat</name>"
                  "</object></annotation>", ["object #1 (cat) has no <bndbox>"]),
}


@pytest.mark.parametrize("how", list(XML_FAULTS))
def test_bad_xml_fails_when_loaded_naming_the_file(tmp_path, how):
    root = tiny_voc(tmp_path / "voc", [("cat", (1, 1, 5, 5), 0)])
    xml = root / "Annotations" / "a.xml"
    text, words = XML_FAULTS[how]
    xml.write_text(text)
    voc = VocAdapter(root, classes=["cat", "dog"])  # the list is read; the image is bad
    assert voc.stats()["bad_annotations"] == 1
    with pytest.raises(DataError) as e:
        voc.load(0)
    assert str(e.value).startswith(f"{xml}: ")
    for w in words:
        assert w in str(e.value), str(e.value)


def test_bad_xml_is_one_line_or_a_counted_skip(capsys, tmp_path):
    root = tiny_voc(tmp_path / "voc", [("cat", (1, 1, 5, 5), 0)])
    write_image(root / "JPEGImages" / "b.jpg", h=10, w=20)
    write_xml(root / "Annotations" / "b.xml", (20, 10), [("dog", (2, 2, 9, 9), 0)])
    write_list(root, "Main", "train", ["a", "b"])
    xml = root / "Annotations" / "a.xml"
    xml.write_text("<annotation><size>")
    ds = {"type": "voc", "root": str(root), "classes": ["cat", "dog"]}
    code, lines = _cli_error(capsys, tmp_path, ds)
    assert code == 2 and len(lines) == 1 and str(xml) in lines[0] and "not well-formed XML" in lines[0], lines
    code, lines = _cli_error(capsys, tmp_path, ds, skip=True)
    assert code == 0 and not lines
    assert len(list((tmp_path / "b").iterdir())) == 1  # the good image only


def test_palette_index_above_the_class_count(capsys, tmp_path):
    m = np.zeros((10, 20), np.uint8)
    m[2:4, 3:8] = 3  # classes cat, dog: 0 = background, 1..2 = classes
    m[0, 0] = 255  # the void border is fine
    root = tiny_voc(tmp_path / "voc", [("cat", (1, 1, 5, 5), 0)], mask=m)
    png = root / "SegmentationClass" / "a.png"
    voc = VocAdapter(root, provides=("mask",), classes=["cat", "dog"])
    with pytest.raises(DataError) as e:
        voc.load(0)
    assert str(e.value) == (f"{png}: palette index 3 (10 pixels) is above the 2 classes "
                            "(0 = background, 1..2 = classes, 255 = ignore)")
    m[m == 3] = 2
    write_palette_png(png, m)
    assert voc.load(0)[1]["mask"][3, 4] == 2 and voc.load(0)[1]["mask"][0, 0] == 255
    write_palette_png(png, np.full((10, 20), 7, np.uint8))
    ds = {"type": "voc", "root": str(root), "classes": ["cat", "dog"], "provides": ["boxes", "box_labels", "mask"]}
    code, lines = _cli_error(capsys, tmp_path, ds)
    assert code == 2 and len(lines) == 1 and str(png) in lines[0] and "palette index 7" in lines[0], lines


def test_other_voc_faults_name_the_file(tmp_path):
    root = tiny_voc(tmp_path / "voc", [("cat", (1, 1, 5, 5), 0)])
    with pytest.raises(DataError, match=r"ImageSets/Main/val\.txt: image list not found \(ImageSets/Main has: train\)"):
        VocAdapter(root, split="val", classes=["cat", "dog"])
    write_list(root, "Main", "escape", ["../../outside"])
    with pytest.raises(DataError, match=r"escape\.txt: line 1: '\.\./\.\./outside\.jpg' is outside"):
        VocAdapter(root, split="escape", classes=["cat", "dog"])
    (root / "Annotations" / "a.xml").unlink()
    with pytest.raises(DataError, match=r"a\.xml: annotation file not found"):
        VocAdapter(root, classes=["cat", "dog"]).load(0)
    # a Segmentation-list image without its class PNG
    with pytest.raises(DataError, match=r"SegmentationClass/a\.png: mask file not found"):
        VocAdapter(root, provides=("mask",), classes=["cat", "dog"]).load(0)
    # an RGB PNG where a palette PNG belongs
    write_image(root / "SegmentationClass" / "a.png", h=10, w=20)
    with pytest.raises(DataError, match=r"a\.png: expected a palette PNG of class indices, got PIL mode 'RGB'"):
        VocAdapter(root, provides=("mask",), classes=["cat", "dog"]).load(0)
    with pytest.raises(ValueError, match="cannot provide"):
        VocAdapter(root, provides=("polygons",))
    with pytest.raises(DataError, match="VOC folder not found"):
        VocAdapter(tmp_path / "nowhere")
