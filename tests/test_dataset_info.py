"""``tools/dataset_info.py`` and :mod:`visionmtl.data.report`: figures, problems found, files written."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import real_data
from tests.data_helpers import coco_dict, truncate_file, write_image, write_json, write_mask
from visionmtl.cli import run
from visionmtl.config import config_from_dict
from visionmtl.data.report import dataset_report, format_report, problem_kind, write_report

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "dataset_info.py"


def _masks_dataset(root: Path) -> dict:
    """4 images: one good, one mask of the wrong size, one mask value past the classes, one corrupt image."""
    good = np.zeros((16, 20), np.uint8)
    good[2:8, 3:9] = 1
    good[10:14, 10:18] = 2
    for stem in ("a", "b", "c", "d"):
        write_image(root / "img" / f"{stem}.jpg", 16, 20)
    write_mask(root / "ann" / "a.png", good)
    write_mask(root / "ann" / "b.png", np.zeros((8, 8), np.uint8))
    bad = good.copy()
    bad[0, 0] = 9
    write_mask(root / "ann" / "c.png", bad)
    write_mask(root / "ann" / "d.png", good)
    truncate_file(root / "img" / "d.jpg", 0.5)
    return {"type": "masks", "name": "street", "img_dir": str(root / "img"), "mask_dir": str(root / "ann"),
            "classes": ["road", "car", "sky"]}


def _coco_dataset(root: Path) -> dict:
    """3 images: boxes of two classes, an image with no objects, a box past the border, a missing file."""
    for name in ("x.jpg", "y.jpg"):
        write_image(root / "images" / name, 40, 50)
    anns = [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
            {"image_id": 1, "category_id": 2, "bbox": [20, 5, 8, 16]},
            {"image_id": 1, "category_id": 1, "bbox": [40, 30, 20, 20]},  # reaches past 50x40: clipped
            {"image_id": 3, "category_id": 2, "bbox": [1, 1, 4, 4]}]
    write_json(root / "ann.json", coco_dict([(1, "x.jpg", 50, 40), (2, "y.jpg", 50, 40), (3, "gone.jpg", 50, 40)],
                                            anns, [(1, "cat"), (2, "dog")]))
    return {"type": "coco", "name": "pets", "ann_file": str(root / "ann.json"), "img_dir": str(root / "images")}


def _cfg(tmp_path: Path, train: dict, val: dict | None = None):
    tasks = {"seg": {"type": "segmentation", "classes": ["road", "car", "sky"]}} if train["type"] == "masks" else {
        "det": {"type": "detection", "classes": ["cat", "dog"]}, "cls": {"type": "classification",
                                                                      "classes": ["cat", "dog"]}}
    return config_from_dict({"tasks": tasks, "data": {"train": [train], "val": [val or train]},
                             "work_dir": str(tmp_path / "w")})


def test_problem_kinds():
    assert problem_kind("image file not found") == "missing file"
    assert problem_kind("cannot decode image (corrupt or not an image)") == "unreadable image"
    assert problem_kind("image file is truncated (no JPEG end marker)") == "unreadable image"
    assert problem_kind("line 3: 4 fields, expected 5") == "bad annotation"


def test_masks_report_counts_every_problem_and_goes_on(tmp_path):
    cfg = _cfg(tmp_path, _masks_dataset(tmp_path / "d"))
    (e,) = dataset_report(cfg, ["train"])
    assert e["images"] == 4 and e["read"] == 1  # three samples fail, each is counted, the report goes on
    probs = e["problems"]
    assert probs["mask of the wrong size"]["count"] == 1 and "b.png" in probs["mask of the wrong size"]["files"][0]
    assert probs["unknown class id"]["count"] == 1 and "c.png" in probs["unknown class id"]["files"][0]
    assert probs["unreadable image"]["count"] == 1 and "d.jpg" in probs["unreadable image"]["files"][0]
    assert e["labelled"] == {"seg": 1}
    assert e["pixels_per_class"] == {"road": 16 * 20 - 36 - 32, "sky": 32, "car": 36} and e["image_sizes"] == {"20x16": 1}
    assert list(e["pixels_per_class"]) == ["road", "car", "sky"]  # largest first
    assert e["images_per_class"] == {"car": 1, "road": 1, "sky": 1}
    text = format_report([e])
    assert "problems: 3" in text and "mask of the wrong size: 1" in text
    # ENet's class weights 1/ln(1.02 + p), mean 1, in the mask's class order, ready to paste
    share = {"road": (320 - 68) / 320, "car": 36 / 320, "sky": 32 / 320}
    raw = [1 / np.log(1.02 + share[c]) for c in ("road", "car", "sky")]
    assert e["class_weight_enet"] == pytest.approx([w * 3 / sum(raw) for w in raw], abs=1e-3)
    assert e["class_weight_enet"][0] < 1 < e["class_weight_enet"][2]  # the rarest class weighs most
    assert "head.class_weight: [" in text


def test_coco_report_figures(tmp_path):
    cfg = _cfg(tmp_path, _coco_dataset(tmp_path / "d"))
    (e,) = dataset_report(cfg, ["train"])
    assert e["images"] == 3 and e["read"] == 2
    assert e["problems"]["missing file"]["count"] == 1 and "gone.jpg" in e["problems"]["missing file"]["files"][0]
    assert e["boxes"] == 3 and e["boxes_per_class"] == {"cat": 2, "dog": 1}
    assert e["images_per_class"] == {"cat": 1, "dog": 1}
    assert e["empty_images"] == 1  # y.jpg: labelled for boxes, none there
    assert e["labelled"] == {"det": 2, "cls": 2}
    assert e["adapter_stats"]["clipped_boxes"] == 1
    assert e["box_side"]["count"] == 3 and e["box_side"]["max"] == np.sqrt(8 * 16)  # the clipped box is 10x10
    assert e["box_size_bins"] == {"small": 3, "medium": 0, "large": 0}
    assert sum(e["box_side_hist"]["counts"]) == 3 and sum(e["box_aspect_hist"]["counts"]) == 3
    paths = write_report([e], tmp_path / "out")
    assert json.loads(paths[0].read_text())[0]["boxes_per_class"] == {"cat": 2, "dog": 1}
    assert paths[1].suffix == ".png" and paths[1].stat().st_size > 1000


def _tool(capsys, argv):
    """tools/dataset_info.py in this process (its main and parser, through cli.run)."""
    spec = importlib.util.spec_from_file_location("dataset_info_tool", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = {"main": 0}

    def main(a):
        rc["main"] = mod.main(a)

    code = run(main, mod.get_args_parser().parse_args([str(a) for a in argv]))
    out = capsys.readouterr()
    return code or rc["main"], out.out, out.err


def test_cli_writes_report_and_strict_exit(capsys, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps(_cfg(tmp_path, _coco_dataset(tmp_path / "d")).to_dict()))
    out = tmp_path / "out"
    code, stdout, err = _tool(capsys, [cfg_file, "--split", "train", "--out", out])
    assert code == 0, err
    assert "boxes per class (top 10): cat 2, dog 1" in stdout and "missing file: 1" in stdout
    assert (out / "dataset_info.json").exists() and list(out.glob("*.png"))
    code, _, _ = _tool(capsys, [cfg_file, "--split", "train", "--out", out, "--strict"])
    assert code == 1
    code, _, err = _tool(capsys, [cfg_file, "--set", "data.bogus=1"])
    assert code == 2 and err.startswith("error: ") and "bogus" in err
    assert len(err.strip().splitlines()) == 1


def test_real_coco128_and_camvid(tmp_path):
    coco = real_data("coco128")
    cam = real_data("camvid")
    cfg = _cfg(tmp_path, {"type": "coco", "ann_file": str(coco / "annotations/instances.json"),
                          "img_dir": str(coco / "images")})
    (e,) = dataset_report(cfg, ["train"])
    assert (e["images"], e["read"], e["boxes"], e["empty_images"]) == (128, 128, 929, 2)
    assert list(e["boxes_per_class"].items())[0] == ("person", 254)
    assert e["problems"] == {} and e["adapter_stats"]["crowd_regions"] == 10
    camvid = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
              "Bicyclist"]
    ds = lambda s: {"type": "masks", "img_dir": str(cam / s), "mask_dir": str(cam / f"{s}annot"), "classes": camvid,
                    "ignore_ids": [11]}
    cfg = config_from_dict({"tasks": {"seg": {"type": "segmentation", "classes": camvid}},
                            "data": {"train": [ds("train")], "val": [ds("val")]}, "work_dir": str(tmp_path / "w")})
    tr, va = dataset_report(cfg, ["train", "val"])
    assert (tr["images"], va["images"], tr["problems"], va["problems"]) == (367, 101, {}, {})
    assert list(tr["pixels_per_class"])[0] == "Road" and tr["image_sizes"] == {"480x360": 367}


def test_coco_to_yolo_cli_then_report_matches_coco(shapes_dir, tmp_path):
    """tools/coco_to_yolo.py writes a YOLO copy whose report equals the COCO original's."""
    ann, imgs = shapes_dir / "val" / "annotations.json", shapes_dir / "val" / "images"
    out = tmp_path / "yolo"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "coco_to_yolo.py"), str(ann), str(imgs), str(out),
                        "--split", "val", "--segments"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "crowd 0" in r.stdout and (out / "data.yaml").exists()
    coco = {"type": "coco", "ann_file": str(ann), "img_dir": str(imgs)}
    yolo = {"type": "yolo", "data": str(out / "data.yaml"), "split": "val"}
    names = ["circle", "square", "triangle", "star"]
    tasks = {"det": {"type": "detection", "classes": names}}
    a, b = (dataset_report(config_from_dict({"tasks": tasks, "data": {"train": [d], "val": [d]},
                                             "work_dir": str(tmp_path / "w")}), ["train"])[0] for d in (coco, yolo))
    for key in ("images", "read", "boxes", "empty_images", "boxes_per_class", "images_per_class", "box_size_bins"):
        assert a[key] == b[key], key
    assert a["problems"] == b["problems"] == {}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "coco_to_yolo.py"), str(tmp_path / "no.json"),
                        str(imgs), str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no.json" in r.stderr
