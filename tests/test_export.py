"""ONNX export: every head combination answers as the PyTorch model does (raw graph outputs and
decoded results), static and dynamic batch, the onnxruntime predictor on images and video, INT8,
and one-line errors for bad input."""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from visionmtl import __version__
from visionmtl.cli import run
from visionmtl.config import config_from_dict
from visionmtl.data.base import read_image
from visionmtl.inference.export import export_onnx
from visionmtl.inference.parity import compare_results
from visionmtl.inference.predictor import Predictor
from visionmtl.models.build import build_model

from .data_helpers import truncate_file
from .test_engine import tiny_cfg

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"visionmtl_tools_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


export_tool, infer_tool = _tool("export"), _tool("infer")


@pytest.fixture(scope="module")
def ckpt(shapes_dir, tmp_path_factory) -> Path:
    """cls + det + seg + inst on a tiny ResNet-18, random init, saved as the trainer saves.

    The detector keeps every candidate (``score_thresh`` 0, ``max_det`` above the candidate
    count), so each image has a few hundred detections and NMS does real work."""
    work = tmp_path_factory.mktemp("export")
    tree = tiny_cfg(shapes_dir, work).to_dict()
    tree["model"]["backbone"].update(fpn_channels=16, num_stages=3)
    tree["tasks"]["det"]["head"].update(score_thresh=0.0, max_det=2000, levels=["p3", "p4", "p5"])
    tree["tasks"]["cls"]["head"] = {"levels": ["p4", "p5"], "pool": "lse"}
    tree["tasks"]["inst"] = {"type": "instance", "head": {"channels": 16, "roi_size": 7, "mask_size": 14}}
    cfg = config_from_dict(tree)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = work / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "version": __version__,
                "classes": {n: list(t.classes) for n, t in cfg.tasks.items()}}, path)
    return path


def _images(shapes_dir, n=8):
    return [read_image(f) for f in sorted(glob.glob(str(shapes_dir / "val" / "images" / "*")))[:n]]


def _check(ckpt, onnx_path, images, conf=0.05, batch=2):
    ox = Predictor.from_onnx(onnx_path, conf=conf, batch_size=batch)
    pt = Predictor.from_checkpoint(ckpt, device="cpu", conf=conf, flip=False, batch_size=batch, tasks=ox.task_names)
    return compare_results(pt(images), ox(images))


# every combination of cls, det and seg, and the instance task on its detector; the four heads
# together are test_dynamic_batch_and_size_with_metadata's model
COMBOS = ["cls", "det", "seg", "cls,det", "cls,seg", "det,seg", "cls,det,seg", "det,inst"]


@pytest.mark.parametrize("tasks", COMBOS)
def test_every_head_combination_exports_with_parity(ckpt, shapes_dir, tmp_path, tasks):
    """Static batch 2: raw graph outputs within 1e-4 of PyTorch's, decoded results the same."""
    out = export_onnx(ckpt, tmp_path / "m.onnx", imgsz=64, batch=2, tasks=tasks)
    assert out["tasks"] == tasks.split(",")
    assert max(out["max_abs_diff"].values()) <= 1e-4, out["max_abs_diff"]
    r = _check(ckpt, out["path"], _images(shapes_dir, 5))  # 5 images: the last static batch is padded
    assert r["same"], r
    assert r["images"] == 5
    if "det" in tasks:
        assert r["boxes"] > 100 and r["max_box_diff"] <= 1e-3
    if "inst" in tasks:
        assert r["masks"] > 100
    if "seg" in tasks:
        assert r["seg_pixels"] == 5 * 64 * 64


def test_regression_head_exports_with_its_normalisation(shapes_dir, tmp_path):
    """A regression head (a density summed over P3-P5, de-normalised by its mean/std buffers): the
    values come from the graph, so the host side needs no weights."""
    tree = tiny_cfg(shapes_dir, tmp_path, tasks=("cls",)).to_dict()
    tree["model"]["backbone"].update(fpn_channels=16, num_stages=3)
    tree["tasks"]["cls"]["head"] = {"levels": ["p4", "p5"], "pool": "lse"}
    tree["tasks"]["count"] = {"type": "regression", "targets": ["n_shapes"], "mean": [4.0], "std": [2.5],
                              "head": {"levels": ["p3", "p4", "p5"], "pool": "sum"}}
    cfg = config_from_dict(tree)
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    path = tmp_path / "reg.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "version": __version__}, path)
    out = export_onnx(path, tmp_path / "reg.onnx", imgsz=64, dynamic=True)
    assert max(out["max_abs_diff"].values()) <= 1e-4, out["max_abs_diff"]
    images = _images(shapes_dir, 4)
    pt = Predictor.from_checkpoint(path, device="cpu", flip=False, batch_size=2)(images)
    ox = Predictor.from_onnx(out["path"], batch_size=2)(images)
    r = compare_results(pt, ox)
    assert r["same"] and r["values_max_diff"] < 1e-4, r
    assert abs(float(np.mean([x["count"]["values"][0] for x in ox])) - 4.0) < 3.0  # de-normalised around the mean


def test_dynamic_batch_and_size_with_metadata(ckpt, shapes_dir, tmp_path):
    """One dynamic graph takes any batch and any multiple of the stride; the file describes itself."""
    out = export_onnx(ckpt, tmp_path / "d.onnx", imgsz=64, dynamic=True)
    assert max(out["max_abs_diff"].values()) <= 1e-4, out["max_abs_diff"]
    meta = {p.key: p.value for p in onnx.load(out["path"]).metadata_props}
    assert meta["visionmtl.version"] == __version__ and meta["visionmtl.batch"] == "dynamic"
    assert '"det": ["circle", "square", "triangle", "star"]' in meta["visionmtl.classes"]
    assert meta["visionmtl.precision"] == "fp32" and "det.boxes" in meta["visionmtl.outputs"]
    images = _images(shapes_dir, 4)
    ox = Predictor.from_onnx(out["path"], conf=0.05)
    pt = Predictor.from_checkpoint(ckpt, device="cpu", conf=0.05, flip=False)
    for batch, imgsz in ((1, 64), (3, 64), (2, 96)):  # 96 px: a larger input through the same file
        for p in (ox, pt):
            p.batch_size, p.imgsz = batch, imgsz
        r = compare_results(pt(images), ox(images))
        assert r["same"] and r["boxes"] > 100 and r["masks"] > 100 and r["seg_pixels"] == 4 * 64 * 64, r


def test_onnx_video_with_tracking_and_cli(ckpt, shapes_dir, tmp_path, capsys):
    """tools/infer.py on the .onnx: every frame of a video, tracking, the same detections as the checkpoint."""
    from visionmtl.inference.mot import render_frames, synthetic_sequence
    from visionmtl.inference.video import write_video

    out = export_onnx(ckpt, tmp_path / "v.onnx", imgsz=64, batch=1, tasks="det,seg")
    video = write_video(render_frames(synthetic_sequence(n_frames=12, size=(64, 64))), tmp_path / "clip.mp4", fps=10)
    summaries = []
    for model in (str(ckpt), out["path"]):
        args = infer_tool.get_args_parser().parse_args(
            [model, "--source", str(video), "--out", str(tmp_path / Path(model).suffix[1:]), "--no-draw",
             "--save-json", "--track", "--conf", "0.2", "--tasks", "det,seg", "--no-progress"])
        summaries.append(infer_tool.main(args))
    assert [s["frames"] for s in summaries] == [12, 12]
    assert summaries[1]["backend"] == "onnxruntime"
    a = (tmp_path / "pt" / "predictions.jsonl").read_text()
    b = (tmp_path / "onnx" / "predictions.jsonl").read_text()
    assert a.count('"track_id') == b.count('"track_id') > 0


def test_int8_quantization_writes_a_smaller_working_model(ckpt, shapes_dir, tmp_path, capsys):
    args = export_tool.get_args_parser().parse_args(
        [str(ckpt), "--out", str(tmp_path / "q"), "--imgsz", "64", "--tasks", "cls,seg", "--int8",
         "--calib-images", "4"])
    assert run(export_tool.main, args) == 0
    stem = tmp_path / "q" / ckpt.stem
    fp32, int8 = stem.with_suffix(".onnx"), Path(f"{stem}.int8.onnx")
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    q = Predictor.from_onnx(int8)
    assert q.onnx.precision == "int8"
    res = q(_images(shapes_dir, 2))
    ref = Predictor.from_onnx(fp32)(_images(shapes_dir, 2))
    agree = np.mean([(a["seg"]["mask"] == b["seg"]["mask"]).mean() for a, b in zip(res, ref)])
    assert agree > 0.5  # an untrained model: the INT8 graph runs and stays close, not identical


def _cli_error(tool, argv, capsys) -> str:
    rc = run(tool.main, tool.get_args_parser().parse_args(argv))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line_errors(ckpt, tmp_path, capsys):
    state = torch.load(ckpt, weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({**state, "version": "0.0.1"}, old)
    assert "visionmtl 0.0.1" in _cli_error(export_tool, [str(old)], capsys)
    other = tmp_path / "other.pt"
    tree = dict(state["config"])
    tree["tasks"] = {**tree["tasks"], "seg": {**tree["tasks"]["seg"], "head": {"channels": 8}}}
    torch.save({**state, "config": tree}, other)
    assert "does not match" in _cli_error(export_tool, [str(other)], capsys)
    assert "multiple of the model's largest stride" in _cli_error(export_tool, [str(ckpt), "--imgsz", "100"], capsys)
    assert "no head 'pose'" in _cli_error(export_tool, [str(ckpt), "--tasks", "det,pose"], capsys)
    assert "add 'det'" in _cli_error(export_tool, [str(ckpt), "--tasks", "inst"], capsys)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("tasks: {}\n")
    assert "c.yaml" in _cli_error(export_tool, [str(cfg_file)], capsys)

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(plain), dynamo=False)
    img = tmp_path / "x.png"
    import cv2

    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    assert "without visionmtl metadata" in _cli_error(infer_tool, [str(plain), "--source", str(img)], capsys)
    good = export_onnx(ckpt, tmp_path / "g.onnx", imgsz=64, tasks="cls", check=False)["path"]
    cut = truncate_file(good, keep=0.5)
    assert "not a readable ONNX model" in _cli_error(infer_tool, [str(cut), "--source", str(img)], capsys)
    assert "not found" in _cli_error(infer_tool, [str(tmp_path / "none.onnx"), "--source", str(img)], capsys)
