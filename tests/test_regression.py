"""``type: regression`` end to end: config checks, data, re-counting under crops, the head, the trainer,
and bad input as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.data_helpers import write_image
from tests.test_engine import ROOT, tiny_cfg
from visionmtl.config import ConfigError, config_from_dict
from visionmtl.data.loader import build_dataset
from visionmtl.engine.trainer import Trainer
from visionmtl.models.heads.regression import RegressionHead
from visionmtl.tasks import spec

COUNT = {"type": "regression", "targets": ["n_shapes"], "head": {"levels": ["p3", "p4", "p5"], "pool": "sum",
                                                                 "hidden": 16}}


def _with_count(cfg_tree: dict) -> dict:
    cfg_tree["tasks"]["count"] = COUNT
    for split in ("train", "val"):
        for d in cfg_tree["data"][split]:
            d.update(value_fields=["n_shapes"], count_fields=["n_shapes"])
    return cfg_tree


def test_config_checks(tmp_path):
    base = {"tasks": {"age": {"type": "regression", "targets": ["age"]}}}
    cfg = config_from_dict(base)
    assert cfg.tasks["age"].targets == ["age"] and cfg.tasks["age"].loss == "smooth_l1"
    assert spec(cfg.tasks["age"]).outputs(cfg.tasks["age"]) == ["age"]
    bad = [
        ({"targets": []}, r"names its values in 'tasks.age.targets'"),
        ({"targets": ["age"], "loss": "huber"}, r"'tasks.age.loss' must be one of smooth_l1, l1, mse, got 'huber'"),
        ({"targets": ["age"], "mean": [1.0, 2.0]}, r"'tasks.age.mean' has 2 values for 1 targets"),
        ({"targets": ["age"], "std": [0.0]}, r"'tasks.age.std' must be > 0"),
        ({"targets": ["age"], "classes": ["x"]}, r"has 'targets', not 'classes'"),
        ({"targets": ["age"], "multilabel": False}, r"unknown key 'tasks.age.multilabel' for a regression task"),
        ({"targets": ["age"], "head": {"pool": "max"}}, r"'tasks.age.head.pool' must be one of avg, avgmax, sum"),
        ({"targets": ["age"], "head": {"pol": "sum"}}, r"unknown key 'tasks.age.head.pol'.*did you mean 'tasks.age.head.pool'"),
    ]
    for extra, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            config_from_dict({"tasks": {"age": {"type": "regression", **extra}}})


def test_values_reach_the_batch_and_counts_follow_the_crop(shapes_dir, tmp_path):
    cfg = tiny_cfg(shapes_dir, tmp_path, tasks=("det",))
    tree = _with_count(cfg.to_dict())
    tree["data"]["augment"]["crop_size"] = 32  # 32-px crops of 64-px images cut shapes out
    cfg = config_from_dict(tree)
    train = build_dataset(cfg, "train").parts[0]
    val = build_dataset(cfg, "val").parts[0]
    changed = 0
    for i in range(len(train)):
        t = train.get(i, seed=i)["target"]
        n, pts = t["values"]["n_shapes"], t["points"]["n_shapes"]
        # re-counted from the centres left in view; each centre lies in a box that survived
        assert n == float(len(pts)) and n <= len(t["boxes"])
        assert bool(((pts >= 0) & (pts <= 32)).all())
        b = t["boxes"]
        inside = ((pts[:, None, 0] >= b[None, :, 0] - 1) & (pts[:, None, 0] <= b[None, :, 2] + 1)
                  & (pts[:, None, 1] >= b[None, :, 1] - 1) & (pts[:, None, 1] <= b[None, :, 3] + 1))
        assert bool(inside.any(1).all())
        full = train.load(i)[1]["values"]["n_shapes"]
        changed += n < full
    assert changed > 0
    for i in range(len(val)):
        t = val.get(i)["target"]
        assert t["values"]["n_shapes"] == float(len(t["boxes"]))  # evaluation: the whole image
        assert "points" not in t


def test_sum_head_learns_a_count():
    """Density head: a count that is the number of bright cells is learnt to within 0.5."""
    torch.manual_seed(0)
    head = RegressionHead("n", {"p3": 4}, 1, levels=["p3"], pool="sum", hidden=16, loss="l1")
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for step in range(300):
        x = torch.randn(16, 4, 6, 6, generator=g) * 0.1
        n = torch.randint(0, 6, (16,), generator=g)
        for b in range(16):
            idx = torch.randperm(36, generator=g)[: int(n[b])]
            x[b, 0].view(-1)[idx] = 1.0
        targets = [{"values": {"v0": float(k)}} for k in n]
        loss = head.loss(head({"p3": x}), targets, torch.ones(16, dtype=torch.bool))["reg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = torch.stack([p["values"] for p in head.predict(head({"p3": x}), [(48, 48)] * 16)])[:, 0]
    assert (pred.round() == n.float()).float().mean() >= 0.9, (pred, n)
    # partial labels: a missing name is no label; none at all gives an attached 0
    out = head.loss(head({"p3": x[:2]}), [{"values": {}}, {}], torch.tensor([True, False]))["reg"]
    assert out.item() == 0.0 and out.requires_grad


def test_density_term_places_the_count():
    """Point targets: mass in the centre's cell costs nothing, the same mass one cell off does;
    the coarse level's map is spread over the fine grid with its total kept."""
    head = RegressionHead("n", {"p3": 4, "p4": 4}, 1, levels=["p3", "p4"], pool="sum", hidden=8,
                          strides=[8, 16], mean=[1.0], std=[2.0])
    head.train()
    feats = {"p3": torch.randn(2, 4, 4, 4), "p4": torch.randn(2, 4, 2, 2)}
    raw = head(feats)
    assert raw["density"].shape == (2, 1, 4, 4)
    assert torch.allclose(raw["density"].sum((2, 3)), raw["values"], atol=1e-5)  # mass kept
    targets = [{"values": {"v0": 2.0}, "points": {"v0": torch.tensor([[4.0, 4.0], [20.0, 28.0]])}},
               {"values": {"v0": 0.0}, "points": {"v0": torch.zeros(0, 2)}}]
    has = torch.tensor([True, True])

    def density_loss(cells_by_image):
        want = torch.zeros(2, 1, 4, 4)
        for i, cells in enumerate(cells_by_image):
            for y, x in cells:
                want[i, 0, y, x] += 1.0
        want = want / 2.0 - 0.5 / 16  # normalised: (y - 1) / 2 spread over the 16 cells
        values = want.sum((2, 3))
        return head.loss({"values": values, "density": want}, targets, has)

    right = density_loss([[(0, 0), (3, 2)], []])
    assert right["reg"].item() == pytest.approx(0.0, abs=1e-6)
    assert right["density"].item() == pytest.approx(0.0, abs=1e-6)
    wrong = density_loss([[(0, 0), (3, 1)], []])  # same count, one centre a cell off
    assert wrong["reg"].item() == pytest.approx(0.0, abs=1e-6) and wrong["density"].item() > 0.1
    head.eval()
    assert "density" not in head(feats)  # inference: values only
    no_points = head.loss(raw, [{"values": {"v0": 1.0}}] * 2, has)
    assert set(no_points) == {"reg"}


def test_sum_head_gradient_has_a_means_scale():
    """A sum over P positions sends its weights and the features the gradient of a mean: the last
    bias (which adds to every position) gets dL/dvalue, not P times it, so clip_grad on the whole
    model is not set by this head (it shrank every other task's step on the shapes demo)."""
    head = RegressionHead("n", {"p3": 4, "p4": 4}, 1, levels=["p3", "p4"], pool="sum", hidden=8, loss="l1")
    feats = {"p3": torch.randn(1, 4, 12, 12, requires_grad=True), "p4": torch.randn(1, 4, 6, 6, requires_grad=True)}
    loss = head.loss(head(feats), [{"values": {"v0": 50.0}}], torch.tensor([True]))["reg"]
    loss.backward()
    assert head.mlp[-1].bias.grad.item() == pytest.approx(-1.0, rel=1e-5)  # d|v - 50|/dv at v = 0
    small = RegressionHead("n", {"p3": 4}, 1, levels=["p3"], pool="sum", hidden=8, loss="l1")
    small.load_state_dict({k: v for k, v in head.state_dict().items() if "p4" not in k})
    f3 = feats["p3"].detach()[..., :3, :3].clone().requires_grad_(True)
    small.loss(small({"p3": f3}), [{"values": {"v0": 50.0}}], torch.tensor([True]))["reg"].backward()
    assert small.mlp[-1].bias.grad.item() == pytest.approx(-1.0, rel=1e-5)  # whatever the number of positions


def test_normalisation_round_trips():
    head = RegressionHead("age", {"c5": 8}, 1, targets=["age"], pool="avg", mean=[40.0], std=[10.0])
    raw = {"values": torch.tensor([[0.5]])}
    assert head.predict(raw, [(32, 32)])[0]["values"].item() == pytest.approx(45.0)
    loss = head.loss(raw, [{"values": {"age": 45.0}}], torch.tensor([True]))["reg"]
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_trainer_with_a_count_head(shapes_dir, tmp_path):
    cfg = tiny_cfg(shapes_dir, tmp_path, tasks=("cls", "det"), epochs=1, max_iters=3)
    cfg = config_from_dict(_with_count(cfg.to_dict()))
    trainer = Trainer(cfg)
    metrics = trainer.train()
    assert {"MAE", "RMSE", "exact"} <= set(metrics["count"]) and np.isfinite(metrics["count"]["MAE"])
    assert any("loss_count_reg" in h for h in trainer.history)
    assert (tmp_path / "best.pt").is_file()


def _train_cli(tmp_path, config_text: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text)
    return subprocess.run([sys.executable, str(ROOT / "tools/train.py"), str(cfg), "--work-dir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300)


def test_bad_regression_input_is_one_line_exit_2(tmp_path, shapes_dir):
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / name)
    csv = tmp_path / "ages.csv"
    csv.write_text("path,age\na.jpg,31\nb.jpg,thirty\n")
    common = ("tasks:\n  age: {type: regression, targets: [age]}\n"
              "data:\n  img_size: 64\n  batch_size: 2\n  workers: 0\n  train:\n")
    # a value that is not a number: the file, the line and the column
    r = _train_cli(tmp_path, common + f"    - {{type: csv, csv_file: {csv}, value_columns: [age]}}\n")
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(csv) in err and "line 3" in err and "'age'" in err and "thirty" in err
    assert "Traceback" not in r.stderr
    # a dataset that labels the task without the value: names the dataset, the task and the value
    ann, img = shapes_dir / "train/annotations.json", shapes_dir / "train/images"
    r = _train_cli(tmp_path, common.replace("targets: [age]", "targets: [n_shapes]")
                   + f"    - {{type: coco, tasks: [age], ann_file: {ann}, img_dir: {img}}}\n")
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "task 'age'" in err and "'n_shapes'" in err and "value_fields" in err
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("strategy", [
    {"mode": "alternating"},
    {"method": {"name": "pcgrad", "grad_on": "rep"}},
    {"method": {"name": "dwa"}, "stages": [{"epochs": 1, "tasks": ["count"], "freeze": ["backbone"]},
                                           {"epochs": 1}]},
])
def test_strategies_train_a_regression_task(shapes_dir, tmp_path, strategy):
    """Alternating training, a gradient method on features, and staged freezing with the new type."""
    cfg = tiny_cfg(shapes_dir, tmp_path, tasks=("det",), epochs=2, max_iters=4, eval_interval=2)
    tree = _with_count(cfg.to_dict())
    tree["train"].update(strategy)
    trainer = Trainer(config_from_dict(tree))
    before = trainer.net.heads["count"].proj["p3"].weight.detach().clone()
    trainer.train()
    assert trainer.task_steps["count"] > 0
    assert not torch.equal(before, trainer.net.heads["count"].proj["p3"].weight)
    assert all(np.isfinite(h["loss"]) for h in trainer.history)


def test_infer_and_benchmark_with_a_regression_head(shapes_dir, tmp_path):
    """tools/infer.py writes the values in each JSONL record and on the image; the benchmark's
    synthetic batch and Δm handle a lower-is-better main metric."""
    import json

    from visionmtl.benchmark.accuracy import accuracy_summary
    from visionmtl.benchmark.combos import build_combo_model, synthetic_batch

    cfg = tiny_cfg(shapes_dir, tmp_path / "w", tasks=("det",), epochs=1, max_iters=2)
    cfg = config_from_dict(_with_count(cfg.to_dict()))
    Trainer(cfg).train()
    out = tmp_path / "pred"
    r = subprocess.run([sys.executable, str(ROOT / "tools/infer.py"), str(tmp_path / "w/last.pt"), "--source",
                        str(shapes_dir / "val/images"), "--out", str(out), "--save-json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 16 and all(rec["count"]["type"] == "regression" for rec in recs)
    assert all(isinstance(rec["count"]["values"]["n_shapes"], float) for rec in recs)
    b = synthetic_batch(cfg, 2, 64)
    model = build_combo_model(cfg, ("det", "count"))
    losses = model.loss(model(b.images), b)
    assert torch.isfinite(losses["count"]["reg"])
    # Δm: a lower MAE is an improvement
    summary = accuracy_summary({"det": {"det": 0.5}, "count": {"count": 1.0},
                                "det+count": {"det": 0.5, "count": 0.5}}, cfg.tasks)
    assert summary["combos"]["det+count"]["delta_m"] == pytest.approx(0.25)


def test_sum_head_returns_a_mean_sized_gradient_to_the_backbone():
    """Density sum over P positions: forward is the plain sum, the features get 1/P of its gradient."""
    torch.manual_seed(0)
    head = RegressionHead("n", {"p3": 4, "p4": 4}, 1, levels=["p3", "p4"], pool="sum", hidden=8)
    torch.nn.init.normal_(head.mlp[-1].weight, std=0.1)
    feats = {"p3": torch.randn(2, 4, 6, 6, requires_grad=True), "p4": torch.randn(2, 4, 3, 3, requires_grad=True)}
    out = head(feats)["values"]
    plain = sum(head.mlp(head.proj[lv](feats[lv])).flatten(2).sum(2) for lv in ("p3", "p4"))
    torch.testing.assert_close(out, plain)
    g_out = torch.autograd.grad(out.sum(), list(feats.values()), retain_graph=True)
    g_ref = torch.autograd.grad(plain.sum(), list(feats.values()))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b / 45.0)  # 36 + 9 positions
