"""Runs are never lost: a new run into a folder that holds one goes to the next numbered folder,
best.pt holds the weights only, resume refuses another config's run, and training logs readable
lines when stderr is not a terminal."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from visionmtl.cli import run
from visionmtl.config import save_config

from .test_engine import tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("visionmtl_tools_train", ROOT / "tools" / "train.py")
train_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_tool)


def _train(argv, capsys) -> tuple[int, str]:
    rc = run(train_tool.main, train_tool.get_args_parser().parse_args([str(a) for a in argv]))
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.fixture
def config(shapes_dir, tmp_path) -> Path:
    cfg = tiny_cfg(shapes_dir, tmp_path / "runs" / "exp", tasks=("cls", "seg"), epochs=1, max_iters=2)
    path = tmp_path / "exp.yaml"
    save_config(cfg, path)
    return path


def test_a_second_run_goes_to_a_numbered_folder_and_best_holds_weights_only(config, tmp_path, capsys, caplog):
    runs = tmp_path / "runs"
    with caplog.at_level(logging.INFO):
        assert _train([config], capsys)[0] == 0
    first = {p.name: p.read_bytes() for p in (runs / "exp").iterdir() if p.is_file()}
    assert {"best.pt", "last.pt", "metrics.jsonl", "config.yaml"} <= set(first)
    # stderr is not a terminal here: progress comes as log lines with the losses, not a bar
    lines = [r.getMessage() for r in caplog.records if " iter " in r.getMessage()]
    assert lines and "loss" in lines[-1] and "img/s" in lines[-1] and "ETA" in lines[-1], lines

    assert _train([config], capsys)[0] == 0
    assert {p.name: p.read_bytes() for p in (runs / "exp").iterdir() if p.is_file()} == first  # untouched
    assert (runs / "exp2" / "last.pt").is_file()
    assert _train([config, "--exist-ok"], capsys)[0] == 0
    assert not (runs / "exp3").exists()

    best = torch.load(runs / "exp2" / "best.pt", weights_only=True)
    last = torch.load(runs / "exp2" / "last.pt", weights_only=True)
    assert "optimizer" not in best and {"model", "config", "classes", "version"} <= set(best)
    assert "optimizer" in last
    assert (runs / "exp2" / "best.pt").stat().st_size < (runs / "exp2" / "last.pt").stat().st_size


def test_resume_refuses_weights_only_and_another_configs_run(config, shapes_dir, tmp_path, capsys):
    assert _train([config], capsys)[0] == 0
    rc, err = _train([config, "--resume", tmp_path / "runs" / "exp" / "best.pt"], capsys)
    assert rc == 2 and "holds weights only" in err and "last.pt" in err
    other = tiny_cfg(shapes_dir, tmp_path / "runs" / "exp", tasks=("cls",), epochs=1, max_iters=2)
    other_path = tmp_path / "other.yaml"
    save_config(other, other_path)
    rc, err = _train([other_path, "--resume"], capsys)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and "a run of another config (tasks.seg differs)" in line, err


def test_curves_have_a_panel_per_loss_and_metric(tmp_path):
    """metric_curves.png: one panel per validation metric (per-class detail and nulls left out)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from visionmtl.engine.logger import plot_curves

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for i in range(1, 30):
            f.write(json.dumps({"type": "train", "iter": i, "loss": 3 / i, "loss_det_cls": 1 / i, "lr": 0.1}) + "\n")
        for e in (1, 2):
            f.write(json.dumps({"type": "val", "iter": 10 * e, "epoch": e, "score": e / 3,
                                "det": {"mAP": e / 4, "mAP_l": None, "per_class": {"a": 1.0}},
                                "seg": {"mIoU": e / 5}}) + "\n")
    panels = []
    real = plt.Figure.savefig

    def count(fig, *a, **k):
        panels.append(sum(ax.axison for ax in fig.axes))
        return real(fig, *a, **k)

    plt.Figure.savefig = count
    try:
        paths = plot_curves(tmp_path / "metrics.jsonl", tmp_path)
    finally:
        plt.Figure.savefig = real
    assert [p.name for p in paths] == ["loss_curves.png", "metric_curves.png"] and all(p.is_file() for p in paths)
    assert panels == [2, 3]  # loss, det_cls | score, det/mAP, seg/mIoU
