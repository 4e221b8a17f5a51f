"""Benchmark of head combinations: speed/memory/FLOPs figures, reports, CLI, FLOP check and Δm wiring."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_engine import tiny_cfg
from visionmtl.benchmark import BenchmarkOptions
from visionmtl.benchmark.accuracy import accuracy_summary, main_metrics, parse_checkpoints, run_accuracy
from visionmtl.benchmark.report import accuracy_text, format_markdown, write_report
from visionmtl.benchmark.speed import (build_combo_model, count_flops, gpu_bf16_peak_tflops, parse_combos,
                                       run_speed, synthetic_batch)
from visionmtl.config import ConfigError, save_config

ROOT = Path(__file__).resolve().parent.parent
ALL = ["cls", "det", "seg", "cls+det", "cls+seg", "det+seg", "cls+det+seg"]
OUTPUTS = ("benchmark.md", "benchmark.csv", "benchmark.json", "benchmark.png")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_result(result: dict, repeats: int) -> None:
    """Every combination present with positive finite figures, and the 3-head FLOP check."""
    rows = {r["combo"]: r for r in result["combos"]}
    assert list(rows) == ALL
    for name, r in rows.items():
        assert _positive(r["params"]) and _positive(r["gflops"]), name
        for kind in ("forward", "forward_predict"):
            st = r[kind]
            assert st["n"] == repeats, (name, kind)
            assert all(_positive(st[k]) for k in ("median_ms", "p90_ms", "min_ms", "max_ms", "throughput")), (name, st)
            assert st["min_ms"] <= st["median_ms"] <= st["max_ms"]
        assert _positive(r["train"]["median_ms"]) and _positive(r["train"]["throughput"]), name
        assert _positive(r["train"]["achieved_gflops_s"]), name
        for key in ("infer_memory_mb", "train_memory_mb"):
            assert math.isfinite(r[key]) and r[key] >= 0, (name, key)
        assert r["train_memory_mb"] > r["infer_memory_mb"]  # optimiser state and gradients on top
        sep = r["separate"]
        for key in ("forward", "forward_predict", "train"):
            assert _positive(sep[key]["median_ms"]) and _positive(sep[key]["throughput"]), (name, key)
        assert sep["infer_memory_mb"] >= 0 and sep["train_memory_mb"] >= 0
        n = len(r["tasks"])
        if n > 1:  # n backbones instead of one
            assert sep["gflops"] > 1.5 * r["gflops"] and sep["params"] > 1.5 * r["params"], name
            assert sep["infer_memory_mb"] > r["infer_memory_mb"], name
        else:
            assert sep["gflops_ratio"] == 1.0
        fl = r["flops"]
        assert set(fl["heads_gflops"]) == set(r["tasks"])
        assert fl["rel_err"] < 0.01, (name, fl)
    # the 3-head model: total == backbone + three heads (counted alone) within 1%
    full = rows["cls+det+seg"]
    parts = full["flops"]["backbone_gflops"] + sum(full["flops"]["heads_gflops"].values())
    assert full["gflops"] == pytest.approx(parts, rel=0.01)
    fc = result["flop_check"]
    assert fc["combo"] == "cls+det+seg" and fc["ok"] and fc["rel_err"] < 0.01
    assert fc["total_gflops"] == pytest.approx(fc["sum_separate_gflops"], rel=0.01)
    assert all(v > 0 for v in fc["heads_gflops"].values())
    env = result["env"]
    for key in ("torch", "device_name", "threads", "dtype", "imgsz", "batch", "channels_last", "cpu_bf16_fast"):
        assert key in env, key
    assert env["imgsz"] == 64 and env["batch"] == 2 and env["dtype"] == "fp32"


def _fake_accuracy(tasks: dict) -> dict:
    """Accuracy results as run_accuracy returns them, with made-up metrics."""
    values = {"cls": {"cls": 0.8}, "det": {"det": 0.4}, "seg": {"seg": 0.5},
              "cls+det+seg": {"cls": 0.84, "det": 0.38, "seg": 0.55}}
    return accuracy_summary(values, tasks)


def test_benchmark_api_every_combination(shapes_dir, tmp_path):
    cfg = tiny_cfg(shapes_dir, tmp_path)
    opts = BenchmarkOptions(batch=2, repeats=2, warmup=1, train=True, compare_separate=True, device="cpu",
                            memory_runs=1)
    result = run_speed(cfg, opts, accuracy=_fake_accuracy(cfg.tasks))
    _check_result(result, repeats=2)
    rows = {r["combo"]: r for r in result["combos"]}
    # accuracy column for the combinations with metrics, Δm for the multi-task one
    assert rows["cls+det+seg"]["accuracy"]["delta_m"] == pytest.approx((0.05 - 0.05 + 0.10) / 3)
    assert "accuracy" not in rows["det+seg"]
    paths = write_report(result, tmp_path / "out")
    for name in OUTPUTS + ("accuracy.md", "accuracy.csv", "accuracy.json"):
        assert (tmp_path / "out" / name).is_file() and (tmp_path / "out" / name).stat().st_size > 0, name
    md = paths["md"].read_text()
    assert all(f"| {c} |" in md for c in ALL)
    assert "Δm +3.33%" in md and "FLOP check (cls+det+seg)" in md and "-> OK" in md
    csv_lines = paths["csv"].read_text().splitlines()
    assert len(csv_lines) == 1 + 7 and "separate.train_memory_mb" in csv_lines[0]
    assert json.loads(paths["json"].read_text())["flop_check"]["ok"] is True


def test_benchmark_cli(shapes_dir, tmp_path):
    cfg = tiny_cfg(shapes_dir, tmp_path)
    cfg_file = tmp_path / "tiny.yaml"
    save_config(cfg, cfg_file)
    out = tmp_path / "bench"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark.py"), str(cfg_file), "--combos", "all", "--imgsz", "64",
           "--batch", "2", "--repeats", "2", "--warmup", "1", "--train", "--compare-separate", "--device", "cpu",
           "--threads", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| cls+det+seg |" in proc.stdout and "Shared backbone vs separate" in proc.stdout
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "benchmark.json").read_text())
    _check_result(result, repeats=2)
    assert result["env"]["threads"] == 1


def test_cli_rejects_unknown_task(shapes_dir, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    save_config(tiny_cfg(shapes_dir, tmp_path), cfg_file)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), str(cfg_file), "--combos", "cls+dep",
                           "--device", "cpu", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "unknown task" in proc.stderr and "dep" in proc.stderr


def test_parse_combos():
    tasks = ["cls", "det", "seg"]
    assert ["+".join(c) for c in parse_combos("all", tasks)] == ALL
    assert parse_combos("seg+cls, det", tasks) == [("cls", "seg"), ("det",)]
    assert parse_combos(["det+seg", ("seg", "det")], tasks) == [("det", "seg")]
    with pytest.raises(ConfigError, match="unknown task"):
        parse_combos("cls+depth", tasks)
    with pytest.raises(ConfigError, match="empty"):
        parse_combos("cls,+", tasks)
    assert parse_checkpoints("cls=a.pt, mtl=b.pt,det+seg=c.pt", tasks) == {
        ("cls",): "a.pt", ("cls", "det", "seg"): "b.pt", ("det", "seg"): "c.pt"}
    with pytest.raises(ConfigError, match=r"two checkpoints for cls\+det\+seg \(b.pt and d.pt\)"):
        parse_checkpoints("mtl=b.pt,seg+cls+det=d.pt", tasks)


def test_flop_check_detects_unaccounted_work(shapes_dir, tmp_path):
    """Work outside the backbone and heads makes total != backbone + heads: the check can fail."""
    cfg = tiny_cfg(shapes_dir, tmp_path)
    model = build_combo_model(cfg, ("cls", "det", "seg")).eval()
    image = synthetic_batch(cfg, 1, 64).images
    ok = count_flops(model, image)
    assert ok["rel_err"] < 1e-6 and ok["total"] == ok["backbone"] + sum(ok["heads"].values())
    orig = model.forward
    weight = torch.randn(256, 3 * 64 * 64)

    def forward_with_extra(x):
        torch.nn.functional.linear(x.flatten(1), weight)  # 2*256*12288 FLOPs not in any head
        return orig(x)

    model.forward = forward_with_extra
    bad = count_flops(model, image)
    assert bad["total"] - ok["total"] == 2 * 256 * 3 * 64 * 64
    assert bad["rel_err"] > 0.01


def test_synthetic_batch_matches_the_loss_contract(shapes_dir, tmp_path):
    cfg = tiny_cfg(shapes_dir, tmp_path)
    b = synthetic_batch(cfg, 3, 64, seed=1)
    assert b.images.shape == (3, 3, 64, 64) and all(h.all() for h in b.has.values())
    assert torch.equal(b.images, synthetic_batch(cfg, 3, 64, seed=1).images)  # seeded
    for t in b.targets:
        assert t["boxes"].shape[1] == 4 and (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()
        assert t["mask"].shape == (64, 64) and int(t["mask"].max()) < 5
        assert 1 <= t["labels"].numel() <= 2
    model = build_combo_model(cfg, ("cls", "det", "seg"))
    losses = model.loss(model(b.images), b)
    assert all(torch.isfinite(v) and v > 0 for terms in losses.values() for k, v in terms.items() if k != "box"), losses
    with pytest.raises(ConfigError, match="multiple of 32"):
        synthetic_batch(cfg, 1, 50)


def test_delta_m_wiring_on_fake_metrics(shapes_dir, tmp_path):
    tasks = tiny_cfg(shapes_dir, tmp_path).tasks
    # main metric picked per task type from evaluate()-style results
    res = {"cls": {"mAP": 0.84, "per_class": {}}, "det": {"mAP": 0.38, "mAP50": 0.6}, "seg": {"mIoU": 0.55}}
    mm = main_metrics(res, tasks)
    assert {t: (m["metric"], m["value"]) for t, m in mm.items()} == {
        "cls": ("mAP", 0.84), "det": ("mAP", 0.38), "seg": ("mIoU", 0.55)}
    values = {"cls": {"cls": 0.8}, "det": {"det": 0.4}, "seg": {"seg": 0.5},
              "det+seg": {"det": 0.44, "seg": 0.45},
              "cls+det+seg": {t: m["value"] for t, m in mm.items()}}
    s = accuracy_summary(values, tasks)
    assert list(s["combos"]) == ["cls", "det", "seg", "det+seg", "cls+det+seg"]
    full = s["combos"]["cls+det+seg"]
    assert full["delta_m_per_task"] == pytest.approx({"cls": 0.05, "det": -0.05, "seg": 0.10})
    assert full["delta_m"] == pytest.approx(0.05 / 1.5)
    assert s["combos"]["det+seg"]["delta_m"] == pytest.approx((0.10 - 0.10) / 2, abs=1e-12)
    assert s["combos"]["cls"]["delta_m"] == 0.0
    assert "Δm +3.33%" in accuracy_text(full, s["metric_names"])
    # a missing baseline gives no Δm, with a reason
    s2 = accuracy_summary({"cls": {"cls": 0.8}, "cls+det": {"cls": 0.9, "det": 0.3}}, tasks)
    assert s2["combos"]["cls+det"]["delta_m"] is None and "det" in s2["combos"]["cls+det"]["note"]


def test_accuracy_tiny_training_and_checkpoint(shapes_dir, tmp_path):
    """--accuracy with 1 epoch: singles + multi-task model trained and evaluated; the multi-task
    checkpoint evaluated through --checkpoints gives the same metrics."""
    cfg = tiny_cfg(shapes_dir, tmp_path, tasks=("cls", "seg"), max_iters=2)
    acc = run_accuracy(cfg, tmp_path / "acc", epochs=1, device="cpu")
    assert list(acc["combos"]) == ["cls", "seg", "cls+seg"]
    for name, e in acc["combos"].items():
        assert all(v is not None and 0 <= v <= 1 for v in e["metrics"].values()), (name, e)
    full = acc["combos"]["cls+seg"]
    expect = sum((full["metrics"][t] - acc["singles"][t]) / acc["singles"][t] for t in ("cls", "seg")) / 2
    assert full["delta_m"] == pytest.approx(expect)
    ckpt = tmp_path / "acc" / "accuracy" / "cls_seg" / "last.pt"
    assert ckpt.is_file()
    again = run_accuracy(cfg, tmp_path / "acc2", checkpoints=f"mtl={ckpt}", train=False, device="cpu")
    assert list(again["combos"]) == ["cls+seg"]
    assert again["combos"]["cls+seg"]["metrics"] == pytest.approx(full["metrics"])
    assert again["combos"]["cls+seg"]["delta_m"] is None  # no single-task baselines given


def test_gpu_peak_table():
    assert gpu_bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_bf16_peak_tflops("NVIDIA H200") == 989.0
    assert gpu_bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_bf16_peak_tflops("NVIDIA GeForce RTX 3090") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_benchmark_cuda_tiny(shapes_dir, tmp_path):
    cfg = tiny_cfg(shapes_dir, tmp_path)
    opts = BenchmarkOptions(combos="cls+det+seg", batch=2, repeats=2, warmup=1, train=True, compare_separate=True,
                            device="cuda", amp="auto", channels_last=True, memory_runs=1)
    result = run_speed(cfg, opts)
    r = result["combos"][0]
    assert r["infer_memory_mb"] > 0 and r["train_memory_mb"] > r["infer_memory_mb"]
    assert r["separate"]["infer_memory_mb"] > r["infer_memory_mb"]
    assert result["env"]["dtype"] in ("bf16", "fp16")
    assert _positive(r["train"]["achieved_tflops"])
    md = format_markdown(result)
    assert "MFU" in md


def test_subset_config_drops_datasets_left_without_a_task():
    """A dataset that labelled only dropped tasks goes; an empty task list would mean 'all'."""
    from visionmtl.benchmark.speed import subset_config
    from visionmtl.config import config_from_dict

    classes = ["a", "b"]
    tree = {"tasks": {"cls": {"type": "classification", "classes": classes, "multilabel": True},
                      "seg": {"type": "segmentation", "classes": classes}},
            "data": {"train": [{"type": "masks", "name": "segonly", "tasks": ["seg"], "img_dir": "i", "mask_dir": "m",
                                "classes": classes},
                               {"type": "folder", "name": "both", "tasks": ["cls", "seg"], "root": "r"},
                               {"type": "folder", "name": "any", "root": "r"}]}}
    cfg = config_from_dict(tree)
    sub = subset_config(cfg, ["cls"])
    assert [(d.name, d.tasks) for d in sub.data.train] == [("both", ["cls"]), ("any", [])]
    assert list(sub.tasks) == ["cls"] and len(cfg.data.train) == 3  # the original is untouched
    assert [d.name for d in subset_config(cfg, ["seg"]).data.train] == ["segonly", "both", "any"]
