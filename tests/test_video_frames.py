"""Frames lost inside a video: true positions, gaps reported where they are, quiet FFmpeg.

A copy of ``vtest.avi`` (MS-MPEG4v3 in AVI, 795 frames, 768x576, 10 fps) with ~4 % of its bytes
zeroed in the middle loses a few dozen frames; every frame decoded after them must still carry
its position in the file (found independently by matching pixels against the undamaged video),
and the lost stretch must be reported where it is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from visionmtl.inference.sources import VERBOSE_ENV, VideoSource, open_source

from .conftest import real_data

ROOT = Path(__file__).resolve().parent.parent
THUMB = (32, 24)  # enough to tell neighbouring frames apart, small enough to compare all pairs
FFMPEG_LINE = re.compile(r"\[\w+ @ 0x[0-9a-f]+\]")  # "[msmpeg4 @ 0x55d0...] header damaged"


def damage(src: Path, dst: Path, at: float = 0.5, frac: float = 0.04) -> tuple[int, int]:
    """Copy ``src`` to ``dst`` with ``frac`` of its bytes zeroed from ``at``; the zeroed byte range."""
    data = bytearray(src.read_bytes())
    a = int(len(data) * at)
    b = a + int(len(data) * frac)
    data[a:b] = bytes(b - a)
    dst.write_bytes(data)
    return a, b


def avi_chunks(path: Path) -> list[tuple[int, int, bool]]:
    """``(start byte, end byte, keyframe)`` of each video frame, from the AVI's ``idx1`` index."""
    data = path.read_bytes()
    movi = data.index(b"movi")  # idx1 offsets count from the 'movi' fourcc
    at = data.rindex(b"idx1")
    n = struct.unpack_from("<I", data, at + 4)[0] // 16
    out = []
    for k in range(n):
        cid, flags, off, size = struct.unpack_from("<4sIII", data, at + 8 + 16 * k)
        if cid[2:] in (b"dc", b"db"):
            out.append((movi + off, movi + off + 8 + size, bool(flags & 0x10)))
    return out


def decode(path: Path, **kw) -> tuple[VideoSource, list[int], list, np.ndarray]:
    """Read ``path`` through ``open_source``: the source, indices, times and small thumbnails."""
    src = open_source(path, **kw)
    idx, times, thumbs = [], [], []
    with src:
        for f in src:
            idx.append(f.index)
            times.append(f.time)
            thumbs.append(cv2.resize(f.image, THUMB, interpolation=cv2.INTER_AREA))
    return src, idx, times, np.stack(thumbs).astype(np.int16)


def best_matches(thumbs: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each thumbnail: the closest reference frame and whether it is near-exact.

    Near-exact: its mean absolute difference is under 0.25 (grey levels) and under a quarter of
    the difference to the reference frames next to it.
    """
    best = np.empty(len(thumbs), int)
    exact = np.empty(len(thumbs), bool)
    for i, t in enumerate(thumbs):
        d = np.abs(ref - t).mean(axis=(1, 2, 3))
        k = int(d.argmin())
        neighbours = d[[j for j in (k - 1, k + 1) if 0 <= j < len(d)]]
        best[i], exact[i] = k, d[k] < 0.25 and d[k] < 0.25 * neighbours.min()
    return best, exact


@pytest.fixture(scope="module")
def vtest() -> Path:
    return real_data("video", "vtest.avi")


@pytest.fixture(scope="module")
def reference(vtest) -> np.ndarray:
    """Thumbnails of the undamaged video, which decodes whole and in order."""
    src, idx, times, thumbs = decode(vtest)
    assert idx == list(range(795)) and src.gaps == [] and src.stats["failed"] == src.stats["missing"] == 0
    assert times == pytest.approx([i / 10 for i in idx])
    return thumbs


@pytest.fixture(scope="module")
def damaged(vtest, tmp_path_factory) -> tuple[Path, tuple[int, int]]:
    path = tmp_path_factory.mktemp("damaged") / "vtest_damaged.avi"
    return path, damage(vtest, path)


# --------------------------------------------------------------------------------------------
def test_frames_after_a_damaged_stretch_keep_their_positions(reference, damaged, caplog):
    path, (a, b) = damaged
    with caplog.at_level(logging.WARNING, logger="visionmtl"):
        src, idx, times, thumbs = decode(path)
    total = len(reference)
    lost = sorted(set(range(total)) - set(idx))
    assert lost, "the damage lost no frame; the test needs a damaged stretch"
    assert idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < total
    assert src.stats["frames"] == len(idx) and src.stats["missing"] == 0
    # the gaps cover exactly the missing positions, and each is reported once, by its range
    assert [i for start, n in src.gaps for i in range(start, start + n)] == lost
    assert src.stats["failed"] == len(lost)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for start, n in src.gaps:
        assert sum(f"frames {start}-{start + n - 1} lost ({n})" in m for m in warnings) == 1, warnings
    assert not any("ended" in m for m in warnings), warnings
    # lost frames are the ones whose chunks were zeroed (the file's own index says which)
    chunks = avi_chunks(path)
    hit = [k for k, (s, e, _) in enumerate(chunks) if s < b and e > a]
    assert set(lost) <= set(hit), (lost, hit)
    # every decoded frame is at the position of the undamaged frame it matches; frames decoded
    # from the damaged stretch up to the next keyframe are built on lost references (garbled)
    next_key = min(k for k, (_, _, key) in enumerate(chunks) if key and k > hit[-1])
    best, exact = best_matches(thumbs, reference)
    clean = [(i, r) for i, r in enumerate(idx) if not hit[0] <= r < next_key]
    assert clean and all(exact[i] and best[i] == r for i, r in clean), \
        [(r, int(best[i]), bool(exact[i])) for i, r in clean if not (exact[i] and best[i] == r)][:10]
    assert any(r > lost[-1] for _, r in clean)  # frames after the gap are checked, not just before it
    assert times == pytest.approx([r / 10 for r in idx])


def test_ffmpeg_messages_stay_off_stderr(damaged, capfd):
    if os.environ.get("OPENCV_FFMPEG_LOGLEVEL") != "-8":
        pytest.skip("FFmpeg logging is verbose in this process (VISIONMTL_VERBOSE or OPENCV_FFMPEG_LOGLEVEL set)")
    path, _ = damaged
    capfd.readouterr()
    src, idx, _, _ = decode(path)
    out, err = capfd.readouterr()
    assert src.gaps and not FFMPEG_LINE.search(out + err), (out + err)[:500]
    assert len(err.splitlines()) <= 5, err[:500]


@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_keeps_ffmpeg_messages(damaged, verbose):
    """In a fresh process (FFmpeg reads its log level once, at the first video opened)."""
    path, _ = damaged
    env = {k: v for k, v in os.environ.items() if k not in ("OPENCV_FFMPEG_LOGLEVEL", VERBOSE_ENV)}
    if verbose:
        env[VERBOSE_ENV] = "1"
    code = ("import sys; from visionmtl.inference.sources import open_source\n"
            "src = open_source(sys.argv[1]); n = sum(1 for _ in src); print(n, src.gaps)")
    p = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if FFMPEG_LINE.search(line)]
    if verbose:
        assert len(lines) > 20, p.stderr[-2000:]
    else:
        assert not lines and len(p.stderr.splitlines()) <= 3, p.stderr[-2000:]


def test_run_video_records_carry_true_frame_and_time(vtest, shapes_dir, tmp_path):
    """End to end on a short intra-only (MJPG) clip: every decoded frame matches exactly."""
    from visionmtl.inference.predictor import Predictor
    from visionmtl.inference.video import run_video
    from visionmtl.models.build import build_model

    from .test_engine import tiny_cfg

    cap = cv2.VideoCapture(str(vtest))
    frames = [cv2.resize(cap.read()[1], (192, 144), interpolation=cv2.INTER_AREA) for _ in range(60)]
    cap.release()
    clip = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (192, 144))
    for f in frames:
        w.write(f)
    w.release()
    *_, ref = decode(clip)
    cut = tmp_path / "clip_damaged.avi"
    a, b = damage(clip, cut, at=0.5, frac=0.1)
    src, idx, _, thumbs = decode(cut)
    hit = {k for k, (s, e, _) in enumerate(avi_chunks(cut)) if s < b and e > a}
    best, exact = best_matches(thumbs, ref)
    assert src.gaps and all(exact[i] and best[i] == r for i, r in enumerate(idx) if r not in hit), \
        ([(r, int(best[i]), bool(exact[i])) for i, r in enumerate(idx)], hit)

    cfg = tiny_cfg(shapes_dir, tmp_path / "work", tasks=("cls",))
    predictor = Predictor(build_model(cfg), cfg, device="cpu")
    s = run_video(predictor, str(cut), tmp_path / "out", draw=False, save_json=True, progress=False, batch=8)
    recs = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in recs] == idx
    assert [r["time"] for r in recs] == pytest.approx([i / 10 for i in idx])
    assert s["gaps"] == [{"start": a, "frames": n} for a, n in src.gaps]
    assert s["failed_frames"] == sum(n for _, n in src.gaps) and s["frames"] == len(idx)
