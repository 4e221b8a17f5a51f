"""A catalogue of faults a user can cause: each ends in one ``error: ...`` line naming the file, key or
value, with exit code 2, also when the fault is met inside a DataLoader worker."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.data_helpers import write_image
from visionmtl.cli import run

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ["circle", "square", "triangle", "star"]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _call(capsys, tool: str, argv: list[str]) -> tuple[int, str]:
    mod = _tool(tool)
    code = run(mod.main, mod.get_args_parser().parse_args([str(a) for a in argv]))
    return code, capsys.readouterr().err


def _assert_one_line(code: int, err: str, *names: str) -> str:
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    for n in names:
        assert str(n) in line, (n, line)
    return line


@pytest.fixture(scope="module")
def data(tmp_path_factory, shapes_dir):
    """A copy of the tiny shapes data (cases damage it) and a config writer."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(shapes_dir, root / "shapes")
    return root


def _yaml(path: Path, ann: Path, img_dir: Path, extra: str = "", workers: int = 0) -> Path:
    path.write_text(f"""
tasks:
  cls: {{type: classification, classes: {SHAPES}, head: {{levels: [p3, p4, p5]}}}}
  det: {{type: detection, classes: {SHAPES}, head: {{num_convs: 1}}}}
model: {{backbone: {{name: resnet18, fpn_channels: 16, num_stages: 3}}}}
data:
  img_size: 64
  batch_size: 4
  workers: {workers}
  train: [{{type: coco, ann_file: {ann}, img_dir: {img_dir}}}]
train: {{epochs: 1, max_iters: 2, amp: 'off', threads: 1, warmup_iters: 1}}
{extra}
""")
    return path


def _good(tmp_path: Path, data: Path, **kw) -> Path:
    s = data / "shapes" / "train"
    return _yaml(tmp_path / "c.yaml", s / "annotations.json", s / "images", **kw)


# ----------------------------------------------------------------------------- config
CONFIG_CASES = [
    # (--set overrides, words the message must name)
    (["data.batch_size=-4"], ["data.batch_size", "-4"]),
    (["train.lr=-1"], ["train.lr", "-1"]),
    (["train.epochs=0"], ["train.epochs", ">= 1"]),
    (["data.img_size=100"], ["data.img_size", "multiple of 32", "100"]),
    (["data.workers=-1"], ["data.workers"]),
    (["train.amp=fp8"], ["train.amp", "fp8"]),
    (["train.optimizer=adam"], ["train.optimizer", "adamw"]),
    (["tasks.det.head.num_convz=1"], ["tasks.det.head.num_convz", "did you mean 'tasks.det.head.num_convs'"]),
    (["tasks.cls.multilabl=false"], ["tasks.cls.multilabl", "did you mean 'tasks.cls.multilabel'"]),
    (["tasks.cls.type=clasification"], ["tasks.cls.type", "clasification", "regression", "detection"]),
    (["train.method.name=pcgrad", "train.method.args.alfa=1"], ["train.method.args.alfa"]),
    (["train.method.name=magic"], ["train.method.name", "magic"]),
    (["data.train.0.ann_fil=x.json"], ["ann_fil", "did you mean 'ann_file'"]),
    (["data.train.0.type=yolo5"], ["unknown dataset type 'yolo5'", "did you mean 'yolo'"]),
    (["data.train.0.tasks=[seg]"], ["unknown task 'seg'"]),
    (["data.train.0.provides=[boxes, bogus]"], ["data.train.0", "bogus"]),
    (["train.stages=[{epochs: 5}]"], ["train.stages", "5 epochs"]),
    (["train.device=cuda:3"], ["train.device", "CUDA"]),
    (["traing.lr=0.1"], ["traing"]),
    (["tasks.det.weight=abc"], ["tasks.det.weight", "float", "abc"]),
    (["tasks.det.head.nms_thresh=1.5"], ["tasks.det.head.nms_thresh", "[0, 1]", "1.5"]),
    (["tasks.det.head.score_thresh=-0.1"], ["tasks.det.head.score_thresh", "-0.1"]),
    (["tasks.cls.head.threshold=2"], ["tasks.cls.head.threshold", "2"]),
    (["tasks.inst.type=instance", "tasks.inst.detection=dett"], ["tasks.inst.detection", "dett"]),
]


@pytest.mark.parametrize("overrides,names", CONFIG_CASES, ids=[c[0][-1] for c in CONFIG_CASES])
def test_config_faults(capsys, tmp_path, data, overrides, names):
    if "train.device=cuda:3" in overrides and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = _good(tmp_path, data)
    code, err = _call(capsys, "train", [cfg, "--work-dir", tmp_path / "w", "--set", *overrides])
    _assert_one_line(code, err, *names)


def test_config_file_faults(capsys, tmp_path, data):
    code, err = _call(capsys, "train", [tmp_path / "missing.yaml"])
    _assert_one_line(code, err, "missing.yaml", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed\n")
    code, err = _call(capsys, "train", [bad])
    _assert_one_line(code, err, "bad.yaml", "not valid YAML")
    code, err = _call(capsys, "train", [_good(tmp_path, data), "--set", "train.lr"])
    _assert_one_line(code, err, "train.lr", "key=value")


def test_lr_written_as_1e_4_is_a_number(tmp_path, data):
    from visionmtl.config import load_config

    cfg = _good(tmp_path, data, extra="")
    assert load_config(cfg, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)
    text = cfg.read_text().replace("amp: 'off'", "amp: 'off', lr: 1e-4")
    cfg.write_text(text)
    assert load_config(cfg).train.lr == pytest.approx(1e-4)


def test_work_dir_under_a_file(capsys, tmp_path, data):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _call(capsys, "train", [_good(tmp_path, data), "--work-dir", blocker / "run"])
    _assert_one_line(code, err, str(blocker / "run"), "work dir")


# ----------------------------------------------------------------------------- data, with and without workers
def _damage(data: Path, tmp_path: Path, how: str) -> tuple[Path, Path, str]:
    """A copy of the train split with one fault; returns (ann, img_dir, the name the message must give)."""
    src = data / "shapes" / "train"
    dst = tmp_path / "split"
    shutil.copytree(src, dst)
    ann, images = dst / "annotations.json", dst / "images"
    coco = json.loads(ann.read_text())
    first = images / coco["images"][0]["file_name"]
    if how == "missing image":
        first.unlink()
        return ann, images, first.name
    if how == "truncated image":
        first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
        return ann, images, first.name
    if how == "not an image":
        first.write_bytes(b"hello")
        return ann, images, first.name
    if how == "wrong size":
        img = cv2.imread(str(first))
        cv2.imwrite(str(first), cv2.resize(img, (img.shape[1] + 8, img.shape[0])))
        return ann, images, first.name
    if how == "bad annotation json":
        ann.write_text("{not json")
        return ann, images, ann.name
    if how == "missing annotation file":
        ann.unlink()
        return ann, images, ann.name
    if how == "rle of another size":
        im = coco["images"][0]
        a = next(a for a in coco["annotations"] if a["image_id"] == im["id"])
        a["segmentation"] = {"size": [im["height"] + 3, im["width"]], "counts": "0"}
        ann.write_text(json.dumps(coco))
        return ann, images, ann.name
    raise ValueError(how)


DATA_CASES = ["missing image", "truncated image", "not an image", "wrong size", "bad annotation json",
              "missing annotation file", "rle of another size"]


@pytest.mark.parametrize("workers", [0, 1], ids=["main process", "worker"])
@pytest.mark.parametrize("how", DATA_CASES)
def test_data_faults(capsys, tmp_path, data, how, workers):
    ann, images, name = _damage(data, tmp_path, how)
    cfg = _yaml(tmp_path / "c.yaml", ann, images, workers=workers)
    code, err = _call(capsys, "train", [cfg, "--work-dir", tmp_path / "w", "--set", "train.max_iters=0"])
    _assert_one_line(code, err, name)


def test_instance_task_on_a_dataset_without_instance_masks(capsys, tmp_path, data):
    src = data / "shapes" / "train"
    coco = json.loads((src / "annotations.json").read_text())
    for a in coco["annotations"]:
        a.pop("segmentation", None)
    ann = tmp_path / "boxes_only.json"
    ann.write_text(json.dumps(coco))
    cfg = _yaml(tmp_path / "c.yaml", ann, src / "images", extra="")
    code, err = _call(capsys, "train", [cfg, "--work-dir", tmp_path / "w", "--set", "tasks.inst.type=instance",
                                        "data.train.0.tasks=[det, inst]"])
    _assert_one_line(code, err, "boxes_only.json", "no instance masks", "inst")
    # datasets left to label every task they can: the task no dataset can label is named
    code, err = _call(capsys, "train", [cfg, "--work-dir", tmp_path / "w2", "--set", "tasks.inst.type=instance"])
    _assert_one_line(code, err, "no training dataset labels task 'inst'", "data.train.0")


def test_every_sample_bad_is_an_error_not_a_success(capsys, tmp_path, data):
    ann, images, _ = _damage(data, tmp_path, "missing image")
    for p in images.iterdir():
        p.write_bytes(b"")
    cfg = _yaml(tmp_path / "c.yaml", ann, images, extra="", workers=0)
    code, err = _call(capsys, "train", [cfg, "--work-dir", tmp_path / "w", "--set", "data.on_bad_sample=skip"])
    _assert_one_line(code, err, "all", "samples were bad", "nothing was trained")
    assert not (tmp_path / "w" / "best.pt").exists()


# ----------------------------------------------------------------------------- checkpoints and weights
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data):
    from visionmtl.config import load_config
    from visionmtl.engine.trainer import Trainer

    d = tmp_path_factory.mktemp("ck")
    cfg = load_config(_good(d, data))
    Trainer(cfg, str(d / "w")).train()
    return d / "w" / "last.pt"


def test_checkpoint_faults(capsys, tmp_path, ckpt):
    img = write_image(tmp_path / "x.jpg", 32, 32)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {}, "obj": Path("x")}, pickled)  # a class instance: not weights-only loadable
    config = tmp_path / "run.yaml"
    config.write_text("tasks: {}\n")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[:2000])
    cases = [(tmp_path / "none.pt", ["none.pt", "not found"]), (empty, ["empty.pt", "empty"]),
             (garbage, ["garbage.pt", "not a checkpoint"]), (pickled, ["pickled.pt", "pickled Python objects"]),
             (config, ["run.yaml", "not a checkpoint (a YAML config"]), (cut, ["cut.pt", "cannot read"])]
    for path, names in cases:
        code, err = _call(capsys, "infer", [path, "--source", img, "--out", tmp_path / "o"])
        line = _assert_one_line(code, err, *names)
        assert "weights_only=False" not in line
    code, err = _call(capsys, "infer", [ckpt, "--source", tmp_path / "nope.jpg", "--out", tmp_path / "o"])
    _assert_one_line(code, err, "nope.jpg")
    code, err = _call(capsys, "infer", [ckpt, "--source", img, "--conf", "2", "--out", tmp_path / "o"])
    _assert_one_line(code, err, "--conf", "2")


def test_pickled_backbone_weights_give_no_unsafe_advice(capsys, tmp_path, data):
    weights = tmp_path / "w.pth"
    torch.save({"state_dict": {}, "obj": Path("x")}, weights)
    code, err = _call(capsys, "train", [_good(tmp_path, data), "--work-dir", tmp_path / "w",
                                        "--set", f"model.backbone.weights={weights}"])
    _assert_one_line(code, err, "w.pth", "pickled Python objects")
    assert "weights_only=False" not in err


# ----------------------------------------------------------------------------- EXIF
def test_exif_orientation_is_ignored_everywhere(tmp_path):
    """Rule: pixels as stored. A non-square JPEG with orientation 6 (90° clockwise) keeps its stored
    size and pixels, so COCO's width/height and boxes (in that frame) still fit it."""
    from PIL import Image

    from visionmtl.data.base import read_image

    arr = np.zeros((24, 40, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)  # a red band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    assert cv2.imread(str(path)).shape[:2] == (40, 24)  # what OpenCV's default would have done
    img = read_image(str(path))
    assert img.shape == (24, 40, 3)
    assert img[:, :10, 0].mean() > 200 and img[:, 20:, 0].mean() < 50


# ----------------------------------------------------------------------------- paths leaving the dataset root
def test_annotation_paths_stay_inside_the_dataset_root(capsys, tmp_path, data):
    from visionmtl.data.coco import CocoAdapter
    from visionmtl.data.folder import CsvLabelsAdapter

    outside = write_image(tmp_path / "outside.jpg", 32, 32)
    inner = tmp_path / "ds" / "images"
    inner.mkdir(parents=True)
    src = data / "shapes" / "train"
    coco = json.loads((src / "annotations.json").read_text())
    coco["images"][0]["file_name"] = "../../outside.jpg"
    ann = tmp_path / "ds" / "ann.json"
    ann.write_text(json.dumps(coco))
    code, err = _call(capsys, "train", [_yaml(tmp_path / "c.yaml", ann, inner), "--work-dir", tmp_path / "w"])
    _assert_one_line(code, err, str(ann), "../../outside.jpg", "allow_outside_root")
    assert CocoAdapter(ann, inner, allow_outside_root=True).path(0) == str(outside)
    csv = tmp_path / "ds" / "labels.csv"
    for name in (str(outside), "../outside.jpg"):
        csv.write_text(f"path,labels\n{name},a\n")
        with pytest.raises(Exception, match=r"labels.csv: line 2: .* is outside .*allow_outside_root"):
            CsvLabelsAdapter(csv)
    assert CsvLabelsAdapter(csv, allow_outside_root=True).path(0) == str(outside)


def test_dropped_and_clipped_boxes_are_reported(caplog, tmp_path, data):
    """A box past the image is clipped, a sub-pixel one dropped: both are counted and logged, not silent."""
    import logging

    from visionmtl.config import load_config
    from visionmtl.data.loader import build_dataset

    src = data / "shapes" / "train"
    coco = json.loads((src / "annotations.json").read_text())
    im = coco["images"][0]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != im["id"]]
    base = {"image_id": im["id"], "category_id": 1, "iscrowd": 0, "area": 10.0, "segmentation": []}
    coco["annotations"] += [{**base, "id": 10**6, "bbox": [im["width"] - 5, 2, 20, 10]},
                            {**base, "id": 10**6 + 1, "bbox": [3, 3, 0.4, 0.4]}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco))
    cfg = load_config(_yaml(tmp_path / "c.yaml", ann, src / "images"))
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg, "train")
    st = ds.parts[0].adapter.stats()
    assert st["clipped_boxes"] == 1 and st["degenerate_boxes"] == 1
    text = caplog.text
    assert "ann.json" in text and "dropped 1 boxes smaller than min_box_size" in text and "clipped 1 boxes" in text


def test_benchmark_data_follows_on_bad_sample(capsys, tmp_path, data):
    ann, images, name = _damage(data, tmp_path, "missing image")
    cfg = _yaml(tmp_path / "c.yaml", ann, images)
    code, err = _call(capsys, "benchmark_data", [cfg, "--workers", "0", "--batches", "1"])
    _assert_one_line(code, err, name)
    mod = _tool("benchmark_data")
    code = run(mod.main, mod.get_args_parser().parse_args([str(cfg), "--workers", "0", "--batches", "1", "--set",
                                                           "data.on_bad_sample=skip"]))
    out = capsys.readouterr().out
    assert code == 0 and "1 bad samples skipped" in out, out


def test_exif_rule_through_dataset_browse_and_inference(tmp_path, ckpt):
    """Orientation 6 on a square and a non-square image: the dataset's boxes and polygon mask sit on
    the stored pixels, browse draws the stored frame, and inference answers in the stored frame."""
    from PIL import Image

    from visionmtl.config import load_config
    from visionmtl.data.browse import browse
    from visionmtl.data.loader import build_dataset
    from visionmtl.inference.predictor import Predictor

    images, anns = [], []
    for k, (h, w) in enumerate([(64, 64), (48, 80)]):
        arr = np.full((h, w, 3), 40, np.uint8)
        arr[5:25, 10:40] = (250, 30, 30)  # the object, in the stored frame
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(arr).save(tmp_path / f"{k}.jpg", exif=exif.tobytes(), quality=98)
        images.append({"id": k + 1, "file_name": f"{k}.jpg", "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0, "area": 600.0,
                     "bbox": [10, 5, 30, 20], "segmentation": [[10, 5, 40, 5, 40, 25, 10, 25]]})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES)]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"""
tasks:
  det: {{type: detection, classes: {SHAPES}}}
  seg: {{type: segmentation, classes: [background, {', '.join(SHAPES)}]}}
data:
  img_size: 64
  train: [{{type: coco, ann_file: {tmp_path / 'ann.json'}, img_dir: {tmp_path}}}]
""")
    cfg = load_config(cfg_path)
    part = build_dataset(cfg, "train").parts[0]
    for i, (h, w) in enumerate([(64, 64), (48, 80)]):
        img, tgt = part.load(i)  # no size-mismatch error: the stored frame is the annotation's
        assert img.shape[:2] == (h, w)
        red = (img[..., 0] > 150) & (img[..., 1] < 100)
        assert tgt["mask"][red].tolist() == [1] * int(red.sum())  # the polygon paints the red pixels
        assert (tgt["mask"][~red] != 1).mean() > 0.99
        np.testing.assert_allclose(tgt["boxes"][0], [10, 5, 40, 25])
    drawn = browse(cfg, "train", 2, str(tmp_path / "browse"))  # augmented samples: no size mismatch either
    assert len(drawn) == 2 and all(cv2.imread(str(p)) is not None for p in drawn)
    p = Predictor.from_checkpoint(ckpt, device="cpu")
    r = p(str(tmp_path / "1.jpg"))
    assert set(r) == {"cls", "det"}
    assert p.prepare([cv2.cvtColor(cv2.imread(str(tmp_path / "1.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                                   cv2.COLOR_BGR2RGB)]).orig_sizes == [(48, 80)]
