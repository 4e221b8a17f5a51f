"""One command-line grammar and portable defaults: help on every option, the same flag names
across tools, ``--out`` a folder, one precision flag (fp32 by default, the training precision
written down), config paths relative to the config file, results that draw themselves, and the
plots of an evaluation and of the demo."""

from __future__ import annotations

import argparse
import importlib
import json
import logging

import numpy as np
import pytest
import torch
import yaml

from visionmtl.cli import add_verbosity, run
from visionmtl.config_check import AMP_MODES
from visionmtl.commands import SUBCOMMANDS

from .test_engine import tiny_cfg


def _parser(name: str) -> argparse.ArgumentParser:
    p = importlib.import_module(f"visionmtl.commands.{SUBCOMMANDS[name][0]}").get_args_parser()
    add_verbosity(p)  # what parse_args adds to every command
    return p


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_option_has_help_and_the_shared_flags(name):
    p = _parser(name)
    for a in p._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        assert a.help, f"visionmtl {name}: {a.option_strings or a.dest} has no help text"
    opts = _options(p)
    assert "--verbose" in opts and "--quiet" in opts
    for s, a in opts.items():
        assert s != "--size" or "--imgsz" in a.option_strings, f"{name}: --size without --imgsz"
        assert s not in ("--half", "--precision") or a.help == argparse.SUPPRESS, f"{name}: {s} is not the flag"
    if "--amp" in opts:
        assert tuple(opts["--amp"].choices) == AMP_MODES and opts["--amp"].const == "auto"
    if "--device" in opts:
        assert "GPU index N" in opts["--device"].help


@pytest.mark.parametrize("name", ["train", "val", "predict", "benchmark"])
def test_precision_is_one_flag_and_fp32_by_default_for_evaluation_and_inference(name):
    opts = _options(_parser(name))
    assert opts["--amp"].default == (None if name == "train" else "off")  # train: the config's train.amp


def test_predictor_and_evaluation_run_fp32_by_default_whatever_the_cpu(monkeypatch, shapes_dir, tmp_path):
    from visionmtl.engine import runtime
    from visionmtl.engine.trainer import Trainer
    from visionmtl.inference.predictor import Predictor

    monkeypatch.setattr(runtime, "cpu_bf16_fast", lambda: True)  # a CPU where train.amp auto picks bf16
    cfg = tiny_cfg(shapes_dir, tmp_path / "run", tasks=("cls", "seg"), max_iters=1, epochs=1, amp="auto")
    t = Trainer(cfg)
    assert t.amp_dtype == torch.bfloat16 and t.cfg.train.amp == "bf16"
    p = Predictor(t.net, cfg, "cpu")
    assert p.amp_dtype is None and "precision=fp32" in repr(p)
    assert Predictor(t.net, cfg, "cpu", amp="bf16").amp_dtype == torch.bfloat16
    assert Predictor(t.net, cfg, "cpu", half=True).amp_dtype == torch.bfloat16  # the older spelling
    from visionmtl.errors import ConfigError

    with pytest.raises(ConfigError, match="--amp fp16: fp16 autocast is for CUDA"):
        Predictor(t.net, cfg, "cpu", amp="fp16")


def test_training_precision_is_in_the_log_and_the_run_config(shapes_dir, tmp_path, caplog):
    from visionmtl.engine import runtime
    from visionmtl.engine.trainer import Trainer

    cfg = tiny_cfg(shapes_dir, tmp_path / "run", tasks=("cls",), max_iters=1, epochs=1, amp="auto")
    with caplog.at_level(logging.INFO, logger="visionmtl"):
        Trainer(cfg).train()
    resolved = "bf16" if runtime.cpu_bf16_fast() else "off"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["amp"] == resolved
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:"))
    assert f"train.amp auto -> {resolved}" in line and "validation in fp32" in line


def test_quiet_and_verbose_set_the_log_level_for_the_command_only(capsys):
    logger = logging.getLogger("visionmtl")
    before = logger.level
    seen = {}

    def probe(args):
        seen["level"] = logger.getEffectiveLevel()

    from visionmtl.cli import parse_args

    p = argparse.ArgumentParser()
    assert run(probe, parse_args(p, ["--quiet"])) == 0 and seen["level"] == logging.WARNING
    assert run(probe, parse_args(p, ["-v"])) == 0 and seen["level"] == logging.DEBUG
    assert logger.level == before
    with pytest.raises(SystemExit):
        parse_args(p, ["--quiet", "--verbose"])  # one or the other


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch, shapes_dir):
    from visionmtl.config import load_config

    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (tmp_path / "project" / "data").symlink_to(shapes_dir, target_is_directory=True)
    tree = tiny_cfg(shapes_dir, tmp_path / "w").to_dict()
    for split in ("train", "val"):
        d = tree["data"][split][0]
        d["args"] = {"ann_file": f"../data/{split}/annotations.json", "img_dir": f"../data/{split}/images"}
    tree["model"]["load_from"] = "../weights/start.pt"
    (folder / "exp.yaml").write_text(yaml.safe_dump(_as_yaml_tree(tree)))
    monkeypatch.chdir(tmp_path)  # elsewhere: the working directory must not matter
    cfg = load_config(folder / "exp.yaml")
    got = cfg.data.train[0].args
    assert got["ann_file"] == str(tmp_path / "project" / "data" / "train" / "annotations.json")
    assert cfg.model.load_from == str(tmp_path / "project" / "weights" / "start.pt")
    # a path given on the command line is the user's: relative to the working directory
    cfg = load_config(folder / "exp.yaml", ["data.val.0.img_dir=here/images"])
    assert cfg.data.val[0].args["img_dir"] == "here/images"


def _as_yaml_tree(tree: dict) -> dict:
    """A Config.to_dict() tree written back as a config file's shape (dataset args inline)."""
    out = json.loads(json.dumps(tree))
    for split in ("train", "val"):
        out["data"][split] = [{"type": d["type"], **d["args"]} for d in out["data"][split]]
    return out


def test_installed_package_looks_for_data_in_the_working_directory(monkeypatch, tmp_path):
    from visionmtl import paths

    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.delenv(paths.DATASETS_VAR, raising=False)
    assert paths.checkout_root() is not None
    assert paths.datasets_dir() == paths.checkout_root() / "data"
    monkeypatch.setattr(paths, "checkout_root", lambda: None)  # as from a wheel in site-packages
    monkeypatch.chdir(tmp_path)
    assert paths.datasets_dir() == tmp_path / "data" and paths.data_root() == tmp_path / "data"
    monkeypatch.setenv(paths.DATASETS_VAR, str(tmp_path / "elsewhere"))
    assert paths.expand("${VISIONMTL_DATASETS}/shapes") == str(tmp_path / "elsewhere" / "shapes")


def test_result_draws_saves_and_serialises_itself(shapes_dir, tmp_path):
    from visionmtl.engine.trainer import Trainer
    from visionmtl.inference.predictor import Predictor
    from visionmtl.inference.results import Result

    cfg = tiny_cfg(shapes_dir, tmp_path / "run", max_iters=1, epochs=1)
    cfg.tasks["det"].head["score_thresh"] = 0.0
    t = Trainer(cfg)
    image = next((shapes_dir / "val" / "images").iterdir())
    r = Predictor(t.net, cfg, "cpu", conf=0.0)(image)
    assert isinstance(r, Result) and isinstance(r, dict) and set(r) == {"cls", "det", "seg"}
    assert len(r["det"]["boxes"]) > 0
    small = r.plot()
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    big = r.plot(min_size=256, text_strip=True)
    assert big.shape[1] == 256 and big.shape[0] > 256  # upscaled, text in a band above
    # what the upscaled drawing draws: boxes scaled, masks resized with the image
    from visionmtl.inference.draw import rescale_result

    up = rescale_result(r, 4.0, (64, 64))
    assert np.allclose(up["det"]["boxes"], 4 * r["det"]["boxes"]) and up["det"]["scores"] is r["det"]["scores"]
    assert up["seg"]["mask"].shape == (256, 256) and (up["seg"]["mask"][::4, ::4] == r["seg"]["mask"]).all()
    path = r.save(tmp_path / "out" / "a.jpg")
    assert path.is_file() and path.stat().st_size > 1000
    rec = r.to_json()
    assert rec["name"] == image.name and rec["width"] == 64 and {"cls", "det", "seg"} <= set(rec)


def test_eval_writes_metrics_and_a_plot_per_task_into_a_numbered_folder(shapes_dir, tmp_path, monkeypatch):
    from visionmtl.commands import main
    from visionmtl.config import save_config
    from visionmtl.engine.trainer import Trainer

    cfg = tiny_cfg(shapes_dir, tmp_path / "run", max_iters=1, epochs=1)
    Trainer(cfg).train()
    save_config(cfg, tmp_path / "c.yaml")
    monkeypatch.chdir(tmp_path)
    for expected in ("runs/val", "runs/val2"):
        assert main(["val", str(tmp_path / "c.yaml"), str(tmp_path / "run" / "last.pt")]) == 0
        out = tmp_path / expected
        assert json.loads((out / "metrics.json").read_text())["seg"]["mIoU"] is not None
        names = {p.name for p in out.iterdir()}
        assert {"cls_confusion_matrix.png", "det_pr_curve.png", "seg_confusion_matrix.png"} <= names, names


def test_demo_draws_ground_truth_beside_the_prediction_at_a_readable_size(shapes_dir, tmp_path):
    import cv2

    from visionmtl.commands.demo import draw_predictions
    from visionmtl.engine.trainer import Trainer

    t = Trainer(tiny_cfg(shapes_dir, tmp_path / "run", max_iters=1, epochs=1))
    paths = draw_predictions(t, tmp_path / "pred", 2, 256)
    assert len(paths) == 2
    img = cv2.imread(str(paths[0]))
    assert img.shape[1] >= 2 * 256 and img.shape[0] > 256  # two 256-px panels and their titles
