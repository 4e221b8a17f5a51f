"""Fine-tuning from weights: ``model.load_from`` by name and shape, class rows carried by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visionmtl.config import config_from_dict
from visionmtl.engine.checkpoint import CheckpointError
from visionmtl.engine.trainer import Trainer
from visionmtl.engine.transfer import load_from
from visionmtl.models.build import build_model

from .test_bad_input import _assert_one_line, _call, _good, data  # noqa: F401 (fixture)
from .test_engine import tiny_cfg

SHAPES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def source(shapes_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("source")
    Trainer(tiny_cfg(shapes_dir, work, max_iters=2, epochs=1)).train()
    return work / "last.pt"


def _rows(model, task: str, n: int) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith(f"heads.{task}.") and v.dim() >= 1
            and v.shape[0] == n}


def test_changed_classes_keep_their_rows_by_name(shapes_dir, tmp_path, source):
    from visionmtl.engine.checkpoint import inference_state, load_checkpoint

    old = inference_state(load_checkpoint(source))
    new_cls = ["Star", "hexagon", "circle"]  # reordered, one class gone, one new, one up to case
    cfg = tiny_cfg(shapes_dir, tmp_path, max_iters=1, epochs=1)
    tree = cfg.to_dict()
    tree["tasks"]["cls"]["classes"] = new_cls
    tree["tasks"]["seg"]["classes"] = ["background"] + new_cls
    cfg = config_from_dict(tree)
    torch.manual_seed(0)
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    summary = load_from(model, cfg.tasks, str(source))
    assert summary["carried_by_class_name"] == {"cls": 2, "seg": 3}
    assert summary["heads_with_new_classes"] == ["cls", "seg"] and not summary["missing"]
    state = model.state_dict()
    for k in [k for k in state if k.startswith(("backbone.", "heads.det."))]:
        assert torch.equal(state[k], old[k].to(state[k].dtype)), k  # unchanged parts load exactly
    rows = _rows(model, "cls", 3)
    assert rows
    for k in rows:  # star and circle keep their rows; hexagon keeps the fresh initialisation
        assert torch.equal(state[k][0], old[k][SHAPES.index("star")])
        assert torch.equal(state[k][2], old[k][SHAPES.index("circle")])
        assert torch.equal(state[k][1], fresh[k][1])


def test_plain_state_dict_from_ddp_loads_everything(shapes_dir, tmp_path, source):
    from visionmtl.engine.checkpoint import load_trained

    model, cfg, _ = load_trained(source)
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, plain)
    torch.manual_seed(1)
    again = build_model(cfg)
    summary = load_from(again, cfg.tasks, str(plain))
    assert summary["loaded"] == len(model.state_dict()) and not summary["reinitialised"]
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_trainer_fine_tunes_and_writes_the_summary(shapes_dir, tmp_path, source):
    cfg = tiny_cfg(shapes_dir, tmp_path, tasks=("det",), max_iters=1, epochs=1)
    cfg.model.load_from = str(source)
    Trainer(cfg).train()
    summary = json.loads((tmp_path / "load_from.json").read_text())
    assert summary["loaded"] > 0 and summary["unexpected"]  # the cls and seg heads of the source are unused


def test_load_from_bad_input_is_one_line(capsys, tmp_path, data):
    cfg = _good(tmp_path, data)
    missing = tmp_path / "nope.pt"
    code, err = _call(capsys, "train", [cfg, "--work-dir", tmp_path / "w", "--set", f"model.load_from={missing}"])
    _assert_one_line(code, err, "nope.pt", "not found")
    code, err = _call(capsys, "train", [cfg, "--work-dir", tmp_path / "w", "--set", f"model.load_from={cfg}"])
    line = _assert_one_line(code, err, "c.yaml", "not a load_from weights file (a YAML config")
    assert "weights_only" not in line
    stranger = tmp_path / "stranger.pth"
    torch.save({"encoder.conv.weight": torch.zeros(3, 3)}, stranger)
    code, err = _call(capsys, "train", [cfg, "--work-dir", tmp_path / "w", "--set", f"model.load_from={stranger}"])
    _assert_one_line(code, err, "stranger.pth", "no parameter of the file matches", "encoder.conv.weight")


def test_not_a_state_dict(tmp_path):
    odd = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], odd)
    with pytest.raises(CheckpointError, match="not a checkpoint or state dict"):
        load_from(torch.nn.Linear(1, 1), {}, str(odd))


def test_rows_by_name_exact_first_then_up_to_case_when_unambiguous():
    from visionmtl.engine.transfer import _rows_by_name

    old = ["person", "car", "Car", "bicycle"]
    assert _rows_by_name(old, ["Car", "car", "CAR", "Person", "Bicyclist"]) == [(0, 2), (1, 1), (3, 0)]
