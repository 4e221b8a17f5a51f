"""Inference: Predictor API, sources, threaded video pipeline, drawn and JSON outputs, bad input."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from visionmtl.cli import run
from visionmtl.config import ConfigError
from visionmtl.data.errors import DataError
from visionmtl.engine.checkpoint import CheckpointError
from visionmtl.inference.outputs import rle_to_mask
from visionmtl.inference.predictor import Predictor
from visionmtl.inference.sources import Frame, LiveSource, Source, SourceInfo, VideoSource, open_source
from visionmtl.inference.mot import render_frames, synthetic_sequence
from visionmtl.inference.video import check_display, model_only_fps, predict_stream, run_video, stream, write_video

from .conftest import real_data
from .test_engine import tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("visionmtl_tools_infer", ROOT / "tools" / "infer.py")
infer_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(infer_tool)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(shapes_dir, tmp_path_factory) -> Path:
    """A 3-head tiny checkpoint, trained 2 iterations; detection keeps every candidate box."""
    from visionmtl.engine.trainer import Trainer

    work = tmp_path_factory.mktemp("infer_ckpt")
    cfg = tiny_cfg(shapes_dir, work, max_iters=2, epochs=1)
    cfg.tasks["det"].head["score_thresh"] = 0.0  # an untrained detector still yields boxes to write
    Trainer(cfg).train()
    return work / "last.pt"


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt, device="cpu", conf=0.01)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """20 frames, 96x64, 10 fps, moving shapes (mp4v)."""
    frames = render_frames(synthetic_sequence(20, 3, size=(96, 64), seed=0))
    return write_video(frames, tmp_path_factory.mktemp("video") / "shapes.mp4", fps=10)


@pytest.fixture
def image_dir(shapes_dir, tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for p in sorted((shapes_dir / "val" / "images").iterdir())[:3]:
        shutil.copy(p, d / p.name)
    return d


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Run tools/infer.py in-process like the console would: (exit code, stderr)."""
    code = run(infer_tool.main, infer_tool.get_args_parser().parse_args(args + ["--no-progress"]))
    return code, capsys.readouterr().err


def read_video(path: Path) -> tuple[int, float, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, fps, size


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class FakeCapture:
    """A ``cv2.VideoCapture`` stand-in: fails to decode the frames in ``fail_at``."""

    def __init__(self, frames: list[np.ndarray], fail_at=(), count: int | None = None, opened: bool = True):
        self.frames, self.fail_at, self.opened = frames, set(fail_at), opened
        self.count = len(frames) if count is None else count
        self.i = 0

    def isOpened(self) -> bool:
        return self.opened

    def read(self):
        i = self.i
        self.i += 1
        if i >= len(self.frames) or i in self.fail_at:
            return False, None
        return True, cv2.cvtColor(self.frames[i], cv2.COLOR_RGB2BGR)

    def get(self, prop):
        h, w = self.frames[0].shape[:2]
        return {cv2.CAP_PROP_FRAME_COUNT: self.count, cv2.CAP_PROP_FPS: 10.0, cv2.CAP_PROP_FRAME_WIDTH: w,
                cv2.CAP_PROP_FRAME_HEIGHT: h, cv2.CAP_PROP_POS_FRAMES: self.i}.get(prop, 0.0)

    def release(self) -> None:
        self.opened = False


# --------------------------------------------------------------------------------------------
# Predictor API
# --------------------------------------------------------------------------------------------
def test_predictor_results_in_original_pixels(predictor, shapes_dir):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)
    r = predictor(img)
    assert set(r) == {"cls", "det", "seg"}
    assert r["seg"]["mask"].shape == (100, 150) and r["seg"]["mask"].dtype == np.uint8
    boxes = r["det"]["boxes"]
    assert len(boxes) > 0 and boxes.shape[1] == 4
    assert boxes[:, [0, 2]].max() <= 150 and boxes[:, [1, 3]].max() <= 100 and boxes.min() >= 0
    assert (r["det"]["scores"] >= 0.01).all()
    assert r["cls"]["probs"].shape == (4,)
    # a list (with a path and a grey image) gives a list, batched
    path = sorted((shapes_dir / "val" / "images").iterdir())[0]
    out = predictor([img, str(path), img[..., 0]])
    assert isinstance(out, list) and len(out) == 3
    assert out[2]["seg"]["mask"].shape == (100, 150)
    np.testing.assert_allclose(out[0]["cls"]["probs"], r["cls"]["probs"], atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        predictor(img.astype(np.float32))


def test_preprocessing_matches_the_eval_pipeline(predictor):
    from visionmtl.data.collate import Collate
    from visionmtl.data.transforms import build_transforms

    cfg = predictor.cfg
    img = np.random.default_rng(1).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    t_img, _ = build_transforms(cfg.data.img_size, cfg.data.augment, train=False)(img, {})
    ref = Collate(cfg.tasks, cfg.data.augment.mean, cfg.data.augment.std)([{"image": t_img, "target": {}, "meta": {}}])
    pb = predictor.prepare([img])
    ours = predictor.normalize(pb.images)
    assert pb.input_sizes == [tuple(t_img.shape[1:])] and pb.orig_sizes == [(90, 130)]
    assert ours.shape == ref.images.shape
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert (ours - ref.images).abs().max().item() < 1e-4


def test_predictor_flip_tta_matches_evaluation_merge(predictor, video):
    """Predictor(flip=True) returns models/tta.py's merge, thresholded, also through the video threads."""
    from visionmtl.models.tta import predict_flip

    flip = Predictor(predictor.model, predictor.cfg, conf=0.02, flip=True)
    assert flip.flip and not predictor.flip and "flip" in repr(flip)  # default: the config's eval_flip
    imgs = [np.random.default_rng(k).integers(0, 255, (70, 110, 3), dtype=np.uint8) for k in range(2)]
    got = flip(imgs)
    pb = flip.prepare(imgs)
    with torch.inference_mode():
        ref = predict_flip(flip.model, flip.normalize(pb.images), pb.input_sizes, orig_sizes=pb.orig_sizes)
    plain = Predictor(predictor.model, predictor.cfg, conf=0.02)(imgs)
    for g, r, p in zip(got, ref, plain):
        keep = (r["det"]["scores"] >= 0.02).numpy()
        assert keep.sum() > 0
        np.testing.assert_allclose(g["det"]["boxes"], r["det"]["boxes"].numpy()[keep], atol=1e-4)
        np.testing.assert_array_equal(g["seg"]["mask"], r["seg"]["mask"].numpy())
        np.testing.assert_allclose(g["cls"]["probs"], r["cls"]["probs"].numpy(), atol=1e-6)
        assert not np.allclose(g["cls"]["probs"], p["cls"]["probs"])  # the mirror pass counted
    frames = list(stream(flip, str(video), batch=3, max_frames=5))
    assert [i for i, _, _ in frames] == list(range(5)) and frames[0][2]["seg"]["mask"].shape == (64, 96)


def test_task_selection(ckpt):
    p = Predictor.from_checkpoint(ckpt, device="cpu", tasks="det,seg")
    r = p(np.zeros((64, 64, 3), np.uint8))
    assert set(r) == {"det", "seg"}
    assert Predictor.from_checkpoint(ckpt, device="cpu", tasks=["classification"]).task_names == ["cls"]
    with pytest.raises(ConfigError, match=r"no head 'depth'.*cls \(classification\)"):
        Predictor.from_checkpoint(ckpt, device="cpu", tasks="det,depth")


def test_stream_api_yields_every_frame_with_track_ids(predictor, video):
    got = list(stream(predictor, str(video), batch=3, track=True))
    assert [i for i, _, _ in got] == list(range(20))
    assert all(f.shape == (64, 96, 3) for _, f, _ in got)
    assert all("track_ids" in r["det"] and len(r["det"]["track_ids"]) == len(r["det"]["boxes"]) for _, _, r in got)


# --------------------------------------------------------------------------------------------
# video pipeline
# --------------------------------------------------------------------------------------------
def test_video_pipeline_processes_all_frames(predictor, video, tmp_path):
    s = run_video(predictor, str(video), tmp_path, batch=4, save_json=True, track=True, progress=False)
    assert s["frames"] == 20 and s["failed_frames"] == 0
    out = Path(s["outputs"]["video"])
    assert out.suffix == ".mp4" and s["outputs"]["codec"] == "mp4v"
    n, fps, size = read_video(out)
    assert (n, fps, size) == (20, 10.0, (96, 64))
    recs = jsonl(tmp_path / "predictions.jsonl")
    assert [r["frame"] for r in recs] == list(range(20))
    assert recs[3]["time"] == pytest.approx(0.3)
    assert {"cls", "det", "seg"} <= set(recs[0]) and "track_ids" in recs[0]["det"]
    seg = recs[0]["seg"]
    mask = rle_to_mask(seg["segments"], tuple(seg["size"]))
    assert mask.shape == (64, 96)
    for stage in ("decode", "preprocess", "model", "postprocess", "track", "draw", "encode", "json"):
        assert stage in s["stages"], stage
    assert s["fps"] > 0


def test_no_draw_skips_drawing_and_encoding(predictor, video, tmp_path):
    s = run_video(predictor, str(video), tmp_path, batch=2, draw=False, progress=False)
    assert s["frames"] == 20
    assert "draw" not in s["stages"] and "encode" not in s["stages"]
    assert not list(tmp_path.iterdir())
    assert model_only_fps(predictor, [np.zeros((64, 96, 3), np.uint8)] * 4, batch=2) > 0


def test_max_frames_and_mjpg_fallback(predictor, video, tmp_path):
    s = run_video(predictor, str(video), tmp_path, max_frames=7, batch=3, progress=False,
                  codecs=(("bad!", ".mp4"), ("MJPG", ".avi")))
    assert s["frames"] == 7
    assert s["outputs"]["video"].endswith(".avi") and s["outputs"]["codec"] == "MJPG"
    assert read_video(Path(s["outputs"]["video"]))[:2] == (7, 10.0)


def test_vtest_cut_via_cli(ckpt, tmp_path, capsys):
    src = real_data("video", "vtest.avi")
    cap = cv2.VideoCapture(str(src))
    frames = [cap.read()[1] for _ in range(15)]
    cap.release()
    cut = tmp_path / "vtest15.avi"
    w = cv2.VideoWriter(str(cut), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for f in frames:
        w.write(f)
    w.release()
    out = tmp_path / "out"
    code, err = cli([str(ckpt), "--source", str(cut), "--out", str(out), "--save-json", "--track", "--batch", "4",
                     "--device", "cpu"], capsys)
    assert code == 0, err
    n, fps, size = read_video(out / "vtest15.mp4")
    assert (n, fps, size) == (15, 10.0, (768, 576))
    recs = jsonl(out / "predictions.jsonl")
    assert len(recs) == 15 and recs[0]["width"] == 768
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 15 and summary["source"]["kind"] == "video"


# --------------------------------------------------------------------------------------------
# image sources and COCO results
# --------------------------------------------------------------------------------------------
def test_directory_writes_drawn_images_jsonl_and_loadable_coco(ckpt, image_dir, tmp_path, capsys):
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    code, err = cli([str(ckpt), "--source", str(image_dir), "--out", str(out), "--save-json", "--conf", "0.01",
                     "--batch", "2", "--device", "cpu"], capsys)
    assert code == 0, err
    inputs = sorted(p.name for p in image_dir.iterdir())
    assert sorted(p.name for p in out.glob("*.jpg")) == inputs
    recs = jsonl(out / "predictions.jsonl")
    assert [r["name"] for r in recs] == [str(image_dir / n) for n in inputs]
    assert [r["image_id"] for r in recs] == [1, 2, 3]
    gt = COCO(str(out / "coco_images.json"))
    dt = gt.loadRes(str(out / "coco_results.json"))
    assert len(dt.getAnnIds()) > 0 and set(dt.getImgIds()) == {1, 2, 3}
    ann = dt.loadAnns(dt.getAnnIds()[0])[0]
    assert ann["category_id"] in {c["id"] for c in gt.dataset["categories"]}
    # boxes in original pixels: the JSONL and COCO agree
    r0 = next(r for r in recs if r["image_id"] == ann["image_id"])
    assert any(np.allclose([b[0], b[1], b[2] - b[0], b[3] - b[1]], ann["bbox"], atol=0.02) for b in r0["det"]["boxes"])


def test_glob_and_single_image(ckpt, image_dir, tmp_path, capsys):
    names = sorted(p.name for p in image_dir.iterdir())
    out = tmp_path / "glob"
    pattern = str(image_dir / f"{names[0][:-5]}*.jpg")
    matched = [n for n in names if n.startswith(names[0][:-5])]
    code, err = cli([str(ckpt), "--source", pattern, "--out", str(out), "--save-json", "--device", "cpu"], capsys)
    assert code == 0, err
    assert len(list(out.glob("*.jpg"))) == len(matched) == len(jsonl(out / "predictions.jsonl"))
    out1 = tmp_path / "one"
    code, err = cli([str(ckpt), "--source", str(image_dir / names[1]), "--out", str(out1), "--save-json",
                     "--mask-format", "png", "--device", "cpu"], capsys)
    assert code == 0, err
    assert [p.name for p in out1.glob("*.jpg")] == [names[1]]
    rec = jsonl(out1 / "predictions.jsonl")
    assert len(rec) == 1 and (out1 / rec[0]["seg"]["png"]).is_file()


def test_cli_subprocess_end_to_end(ckpt, image_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "infer.py"), str(ckpt), "--source", str(image_dir),
                        "--out", str(tmp_path / "o"), "--no-draw", "--save-json", "--tasks", "cls", "--device", "cpu",
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "FPS end-to-end" in p.stdout
    recs = jsonl(tmp_path / "o" / "predictions.jsonl")
    assert len(recs) == 3 and set(recs[0]) >= {"cls"} and "det" not in recs[0]
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "infer.py"), str(tmp_path / "none.pt"), "--source",
                        str(image_dir)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and "not found" in p.stderr
    assert "Traceback" not in p.stderr


# --------------------------------------------------------------------------------------------
# outputs and drawing
# --------------------------------------------------------------------------------------------
def test_drawing_scales_text_and_marks_track_ids(predictor):
    from visionmtl.inference.draw import draw_result, text_scale

    small, big = np.zeros((64, 64, 3), np.uint8), np.zeros((1080, 1920, 3), np.uint8)
    assert text_scale(big) > 2 * text_scale(small)
    res = {"det": {"boxes": np.array([[100, 100, 400, 300]], np.float32), "scores": np.array([0.9], np.float32),
                   "labels": np.array([1])}}
    plain = draw_result(big, res, predictor.tasks)
    res["det"]["track_ids"] = np.array([7])
    tracked = draw_result(big, res, predictor.tasks)
    assert plain.any() and not np.array_equal(plain, tracked)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_missing_unreadable_and_configless_checkpoints(tmp_path, video, capsys):
    code, err = cli([str(tmp_path / "missing.pt"), "--source", str(video)], capsys)
    assert code == 2 and "checkpoint not found" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, err = cli([str(bad), "--source", str(video)], capsys)
    assert code == 2 and "not a checkpoint" in err
    bare = tmp_path / "bare.pt"
    torch.save({"model": {}}, bare)
    code, err = cli([str(bare), "--source", str(video)], capsys)
    assert code == 2 and "has no config" in err
    with pytest.raises(CheckpointError, match="has no config"):
        Predictor.from_checkpoint(bare)


def test_bad_sources(ckpt, tmp_path, capsys):
    code, err = cli([str(ckpt), "--source", str(tmp_path / "nope.jpg")], capsys)
    assert code == 2 and "source not found" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = cli([str(ckpt), "--source", str(empty)], capsys)
    assert code == 2 and "no images" in err
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 garbage")
    code, err = cli([str(ckpt), "--source", str(corrupt)], capsys)
    assert code == 2 and "corrupt.jpg" in err and "decode" in err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 2048)
    code, err = cli([str(ckpt), "--source", str(broken)], capsys)
    assert code == 2 and "cannot open video" in err
    code, err = cli([str(ckpt), "--source", str(tmp_path / "*.png")], capsys)
    assert code == 2 and "glob matches no files" in err
    with pytest.raises(DataError, match="cannot open webcam"):
        open_source("57")
    with pytest.raises(DataError, match="cannot open stream"):
        open_source("rtsp://127.0.0.1:1/none", reconnect=0)


def test_unknown_task_and_show_without_display(ckpt, video, capsys):
    code, err = cli([str(ckpt), "--source", str(video), "--tasks", "det,pose"], capsys)
    assert code == 2 and "no head 'pose'" in err
    if not re.search(r"^\s*GUI:\s*NONE", cv2.getBuildInformation(), re.M) and os.environ.get("DISPLAY"):
        pytest.skip("this OpenCV build has a GUI and a display is available")
    code, err = cli([str(ckpt), "--source", str(video), "--show"], capsys)
    assert code == 2 and "--show" in err and ("GUI" in err or "display" in err)
    with pytest.raises(ConfigError):
        check_display()


def test_undecodable_frames_are_skipped_and_counted(predictor, tmp_path):
    frames = render_frames(synthetic_sequence(10, 2, size=(96, 64)))
    src = VideoSource("fake.avi", capture=FakeCapture(frames, fail_at={3, 7}))
    s = run_video(predictor, src, tmp_path, save_json=True, progress=False, batch=3)
    assert s["frames"] == 8 and s["failed_frames"] == 2
    assert [r["frame"] for r in jsonl(tmp_path / "predictions.jsonl")] == [0, 1, 2, 4, 5, 6, 8, 9]
    assert read_video(Path(s["outputs"]["video"]))[0] == 8
    # the container promises 30 frames but the data stops after 10: ends, never hangs
    src = VideoSource("short.avi", capture=FakeCapture(frames, count=30), max_consecutive_failures=5)
    assert [f.index for f in src] == list(range(10))
    assert src.stats["failed"] == 5 and src.stats["missing"] == 15


def test_truncated_video_file(predictor, video, tmp_path):
    frames = render_frames(synthetic_sequence(20, 2, size=(96, 64)))
    full = write_video(frames, tmp_path / "full.avi", fps=10, fourcc="MJPG")
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    s = run_video(predictor, str(cut), tmp_path / "o", save_json=True, progress=False)
    assert 0 < s["frames"] < 20
    assert s["frames"] + s["failed_frames"] + s["missing_frames"] == 20
    assert len(jsonl(tmp_path / "o" / "predictions.jsonl")) == s["frames"]


def test_stream_that_stops_reconnects_then_ends(predictor):
    frames = render_frames(synthetic_sequence(8, 2, size=(96, 64)))
    opened = []

    def opener(target):
        opened.append(target)
        if len(opened) == 1:
            return FakeCapture(frames[:5])
        if len(opened) == 2:
            return FakeCapture(frames[5:])  # one successful reconnect
        return FakeCapture(frames, opened=False)  # then the server is gone

    src = LiveSource("rtsp://camera/1", reconnect=3, reconnect_delay=0.0, opener=opener)
    got = [f for f, _ in predict_stream(predictor, src, batch=2)]
    assert len(got) == 8 and [f.index for f in got] == list(range(8))
    assert src.stats == {"frames": 8, "failed": 2, "reconnects": 1}
    assert len(opened) == 2 + 3  # bounded: 3 attempts after the second outage


def test_http_stream_that_stops(predictor, video, tmp_path):
    """A real HTTP stream: the server goes away, reconnects fail, the run ends with its count."""
    handler = functools.partial(_QuietHandler, directory=str(video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{video.name}"
    try:
        src = open_source(url, reconnect=2, reconnect_delay=0.01, timeout_ms=3000)
    finally:
        server.shutdown()
        server.server_close()
    s = run_video(predictor, src, tmp_path, save_json=True, progress=False)
    assert src.info.kind == "stream"
    assert s["frames"] == 20 and s["reconnects"] == 0 and s["failed_frames"] >= 1
    assert len(jsonl(tmp_path / "predictions.jsonl")) == 20


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_output_never_overwrites_input(predictor, image_dir):
    s = None
    with pytest.raises(DataError, match="overwrite the input"):
        s = run_video(predictor, str(image_dir), image_dir, progress=False)
    assert s is None


def test_unreadable_image_in_a_set_is_skipped_and_counted(predictor, image_dir, tmp_path):
    (image_dir / "zz_corrupt.png").write_bytes(b"\x89PNG broken")
    s = run_video(predictor, str(image_dir), tmp_path, save_json=True, progress=False, batch=2)
    assert s["frames"] == 3 and s["failed_frames"] == 1
    assert len(jsonl(tmp_path / "predictions.jsonl")) == 3


class _ExplodingSource(Source):
    def __init__(self, n_ok: int) -> None:
        super().__init__()
        self.n_ok = n_ok
        self.info = SourceInfo("video", "exploding", 10.0, (96, 64), 100)

    def __iter__(self):
        for i in range(self.n_ok):
            yield Frame(i, np.zeros((64, 96, 3), np.uint8), "exploding")
        raise DataError("exploding", "device unplugged")


def test_reader_errors_surface_and_nothing_hangs(predictor, tmp_path):
    with pytest.raises(DataError, match="device unplugged"):
        run_video(predictor, _ExplodingSource(5), tmp_path, save_json=True, progress=False, batch=2)
    assert len(jsonl(tmp_path / "predictions.jsonl")) <= 5
    # the consumer stops early: background threads end
    gen = predict_stream(predictor, _ExplodingSource(50), batch=2)
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("visionmtl-")]


def test_half_precision_and_unavailable_device(ckpt):
    p = Predictor.from_checkpoint(ckpt, device="cpu", half=True)
    assert p.amp_dtype == torch.bfloat16
    r = p(np.zeros((64, 64, 3), np.uint8))
    assert r["seg"]["mask"].shape == (64, 64) and r["det"]["boxes"].dtype == np.float32
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Predictor.from_checkpoint(ckpt, device="cuda")
