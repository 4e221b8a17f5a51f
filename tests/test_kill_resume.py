"""``kill -9`` in the middle of an epoch, then ``--resume``: no iteration is lost or logged twice,
and the resumed run's losses equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _config(shapes_dir: Path, path: Path) -> Path:
    ds = lambda split: (f"[{{type: coco, ann_file: {shapes_dir / split / 'annotations.json'}, "  # noqa: E731
                        f"img_dir: {shapes_dir / split / 'images'}}}]")
    path.write_text(f"""
tasks:
  det: {{type: detection, classes: [circle, square, triangle, star], head: {{num_convs: 1, channels: 16}}}}
  seg: {{type: segmentation, classes: [background, circle, square, triangle, star], head: {{channels: 16}}}}
model: {{backbone: {{name: resnet18, fpn_channels: 16, num_stages: 3}}}}
data: {{img_size: 64, batch_size: 8, workers: 0, train: {ds('train')}, val: {ds('val')}}}
train: {{epochs: 3, lr: 0.003, warmup_iters: 3, log_interval: 1, amp: 'off', seed: 0, threads: 1,
         channels_last: false, eval_interval: 3}}
""")
    return path


def _train(cfg: Path, work: Path, resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "tools/train.py"), str(cfg), "--work-dir", str(work)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _train_records(work: Path) -> list[dict]:
    return [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_kill_9_mid_epoch_then_resume(shapes_dir, tmp_path):
    cfg = _config(shapes_dir, tmp_path / "c.yaml")
    ref = _train(cfg, tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]
    expected = _train_records(tmp_path / "ref")
    per_epoch = max(r["iter"] for r in expected if r["epoch"] == 0)
    assert [r["iter"] for r in expected] == list(range(1, len(expected) + 1))

    work = tmp_path / "killed"
    proc = _train(cfg, work)
    target = per_epoch + per_epoch // 2  # the middle of the second epoch, after last.pt of the first
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        log = work / "metrics.jsonl"
        if log.is_file() and any(json.loads(x).get("iter", 0) >= target for x in log.read_text().splitlines()
                                 if x.strip().endswith("}")):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"training ended before it could be killed: {proc.stderr.read()[-2000:]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = [json.loads(x)["iter"] for x in (work / "metrics.jsonl").read_text().splitlines()
              if x.strip().endswith("}") and json.loads(x)["type"] == "train"]
    assert max(logged) > per_epoch  # killed after the first checkpoint, before the run's end
    assert max(logged) < len(expected)

    res = _train(cfg, work, resume=True)
    assert res.wait(timeout=600) == 0, res.stderr.read()[-2000:]
    got = _train_records(work)
    assert [r["iter"] for r in got] == [r["iter"] for r in expected]  # none missing, none twice
    for g, e in zip(got, expected):
        assert g["loss"] == pytest.approx(e["loss"], rel=1e-5, abs=1e-6), (g["iter"], g["loss"], e["loss"])
    assert not list(work.glob("*.tmp"))
