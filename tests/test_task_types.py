"""Every task type through the same path: config, build, loss, predict, evaluate, draw, JSON, flip TTA.

A new type adds one entry to ``TYPE_CONFIGS`` (the first test fails until it does).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from visionmtl.benchmark.combos import synthetic_batch
from visionmtl.config import ConfigError, config_from_dict
from visionmtl.engine.evaluate import evaluate, main_metric, summary_score
from visionmtl.inference.draw import draw_result
from visionmtl.inference.outputs import result_to_record
from visionmtl.models.build import build_model
from visionmtl.models.tta import merge_flip, predict_flip
from visionmtl.tasks import TASK_TYPES, spec

S = 64
NAMES = ["a", "b", "c"]
#: one small task of each type (the keys a user writes under ``tasks.<name>``)
TYPE_CONFIGS = {
    "classification": {"classes": NAMES, "multilabel": True, "head": {"hidden": 16}},
    "detection": {"classes": NAMES, "head": {"channels": 16, "num_convs": 1}},
    "segmentation": {"classes": ["bg"] + NAMES, "head": {"channels": 16}},
    "regression": {"targets": ["n", "size"], "mean": [4.0, 10.0], "std": [2.0, 5.0], "head": {"hidden": 16}},
    "instance": {"head": {"channels": 16}},
}
#: tasks a type needs beside it (an instance task segments a detection task's boxes)
COMPANIONS = {"instance": {"det": {"type": "detection", **TYPE_CONFIGS["detection"]}}}


def _cfg(kind: str):
    tree = {"tasks": {"t": {"type": kind, **TYPE_CONFIGS[kind]}, **COMPANIONS.get(kind, {})},
            "model": {"backbone": {"name": "resnet18", "fpn_channels": 16}},
            "data": {"img_size": S}, "train": {"amp": "off"}}
    return config_from_dict(tree)


def test_every_registered_type_is_covered():
    assert set(TYPE_CONFIGS) == set(TASK_TYPES)


@pytest.mark.parametrize("kind", sorted(TASK_TYPES))
def test_task_type_end_to_end(kind):
    torch.manual_seed(0)
    cfg = _cfg(kind)
    task = cfg.tasks["t"]
    # config: the YAML form round-trips through the checkpoint's dict
    again = config_from_dict(cfg.to_dict())
    assert again.tasks["t"].to_dict() == task.to_dict()
    model = build_model(cfg).train()
    assert model.task_types["t"] == kind
    batch = synthetic_batch(cfg, 2, S, seed=1)
    assert batch.has["t"].all() and spec(task).has_label(task, batch.targets[0])
    # loss on a batch: structured, finite, reaches the head
    losses = model.loss(model(batch.images), batch)
    assert set(losses) == set(cfg.tasks) and losses["t"]
    total = sum(losses["t"].values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["t"].parameters())
    # unlabelled images contribute exactly 0, still attached
    none = model.loss(model(batch.images), type(batch)(batch.images, [{}, {}], {t: torch.zeros(2, dtype=torch.bool)
                                                                                for t in cfg.tasks}))
    assert all(v.item() == 0.0 and v.requires_grad for v in none["t"].values())
    # predict, in original pixels
    model.eval()
    with torch.no_grad():
        raw = model(batch.images)
    preds = model.predict(raw, [(S, S)] * 2, [(2 * S, 2 * S)] * 2)
    assert len(preds) == 2 and "t" in preds[0]
    # evaluate: the engine's loop, plain and with flip TTA; the main metric is a number
    for flip in (False, True):
        res = evaluate(model, [batch], cfg.tasks, torch.device("cpu"), flip=flip)
        value = res["t"][main_metric(task)]
        assert value is not None and np.isfinite(value), res
        assert np.isfinite(summary_score(res, cfg.tasks))
    # flip merge: a mirrored batch merged with itself equals its own prediction's structure
    merged = predict_flip(model, batch.images, [(S, S)] * 2)
    assert set(merged[0]) == set(cfg.tasks) and set(merged[0]["t"]) >= set(preds[0]["t"]) - {"probs"}
    with pytest.raises(TypeError, match="types"):
        merge_flip(model.heads, raw, raw, S, [(S, S)] * 2)
    # predictor result -> JSON record -> drawing
    result = {"t": spec(task).to_numpy(task, preds[0]["t"], 0.0)}
    rec = result_to_record(result, cfg.tasks, 0, "x.jpg", (2 * S, 2 * S))
    assert rec["t"]["type"] == kind
    json.dumps(rec)  # serialisable
    img = np.full((2 * S, 2 * S, 3), 127, np.uint8)
    drawn = draw_result(img, result, cfg.tasks, score_thresh=0.0)
    assert drawn.shape == img.shape and drawn.dtype == np.uint8


@pytest.mark.parametrize("kind", sorted(TASK_TYPES))
def test_head_options_match_the_head_signature(kind):
    """Config validation checks head keys without importing torch: the spec's list must be the head's."""
    cfg = _cfg(kind)
    head = build_model(cfg).heads["t"]
    params = inspect.signature(type(head).__init__).parameters
    expected = {p for p in params if p not in ("self", "task", "in_channels", "num_classes", "num_outputs", "strides")}
    assert set(spec(kind).head_options) == expected


def test_method_table_matches_the_method_classes():
    from visionmtl.mtl.gradient import GRADIENT_METHODS
    from visionmtl.mtl.names import GRADIENT_ARGS, WEIGHTING_ARGS
    from visionmtl.mtl.weighting import WEIGHTINGS

    for table, classes in ((WEIGHTING_ARGS, WEIGHTINGS), (GRADIENT_ARGS, GRADIENT_METHODS)):
        assert set(table) == set(classes)
        for name, cls in classes.items():
            ps = inspect.signature(cls.__init__).parameters
            own = [p for p in ps if p not in ("self", "tasks", "weights", "task_grad_clip")
                   and ps[p].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
            assert tuple(own) == table[name], name


def test_unknown_task_type_lists_the_known_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tasks:\n  age:\n    type: clasification\n    classes: [a]\n")
    from visionmtl.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "tasks.age.type" in msg and "clasification" in msg and "did you mean 'classification'" in msg
    for kind in TASK_TYPES:
        assert kind in msg
    assert "\n" not in msg


def test_no_type_name_comparisons_outside_the_specs():
    """The package looks types up in visionmtl/tasks/; nothing else compares a type name."""
    root = Path(__file__).resolve().parent.parent
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](%s)["']|["'](%s)["']\s*(==|!=)|isinstance\([^)]*Head\b"""
                         % ("|".join(TASK_TYPES), "|".join(TASK_TYPES)))
    hits = []
    for path in list((root / "visionmtl").rglob("*.py")) + list((root / "tools").rglob("*.py")):
        if "tasks" in path.relative_to(root).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
