"""The GPU path (issue 22) through the trainer's own code: fp16 autocast with its GradScaler, bf16,
channels_last, pinned memory with non_blocking copies, EMA, ``train.compile`` and NCCL.

Tests marked ``cuda`` skip with the reason on a machine without a GPU (``pytest -m cuda`` runs only
them; ``tools/gpu_check.sh`` does). The rest run anywhere: the one-line errors for a GPU or a
compiler that is not there, and the GPU check script's syntax, dry run and CPU smoke run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import real_data
from tests.test_engine import tiny_cfg, write_cfg
from visionmtl.cli import run
from visionmtl.config import ConfigError
from visionmtl.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU: torch.cuda.is_available() is False")


def cuda_test(fn):
    """Marked ``cuda`` (selected by ``pytest -m cuda``) and skipped without a GPU."""
    return pytest.mark.cuda(needs_cuda(fn))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> int:
    """How many parameters differ from ``before``."""
    return sum(not torch.equal(before[k], v) for k, v in model.named_parameters())


def _batch(trainer: Trainer):
    return next(iter(trainer.train_loader))


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------
@cuda_test
def test_fp16_gradscaler_skips_an_overflowing_step_and_lowers_the_scale(shapes_dir, tmp_path):
    """``train.amp: fp16``: a scale so large the fp16 gradients overflow skips the update and halves the scale."""
    t = Trainer(tiny_cfg(shapes_dir, tmp_path, device="cuda", amp="fp16", warmup_iters=0))
    assert t.device.type == "cuda" and t.amp_dtype == torch.float16 and t.scaler.is_enabled()
    batch = _batch(t)
    t.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**60)  # the step reads the trainer's scaler
    before = _params(t.net)
    vals = t.train_step(batch)
    assert math.isfinite(vals["loss"])  # the loss is finite: only the scaled gradients overflow
    assert t.scaler.get_scale() == 2.0**59
    assert _changed(before, t.net) == 0  # skipped: no update
    steps = lambda: {float(st["step"]) for st in t.optimizer.state.values()}  # noqa: E731
    assert steps() <= {0.0}  # fused AdamW runs but takes the step back (GradScaler's found_inf)

    t.scaler.update(new_scale=2.0**10)
    vals = t.train_step(batch)
    assert math.isfinite(vals["loss"]) and t.scaler.get_scale() == 2.0**10
    assert _changed(before, t.net) > 0 and steps() == {1.0}
    assert all(p.dtype == torch.float32 for p in t.net.parameters())  # fp32 master weights


@cuda_test
def test_bf16_autocast_trains_with_fp32_weights(shapes_dir, tmp_path):
    t = Trainer(tiny_cfg(shapes_dir, tmp_path, device="cuda", amp="bf16", warmup_iters=0))
    assert t.amp_dtype == torch.bfloat16 and not t.scaler.is_enabled()
    batch = _batch(t)
    with torch.no_grad(), t.autocast():
        feats = t.net.features(batch.images.cuda())
    assert {f.dtype for f in feats.values()} == {torch.bfloat16}
    before = _params(t.net)
    losses = [t.train_step(batch)["loss"] for _ in range(3)]
    assert all(math.isfinite(v) for v in losses), losses
    assert _changed(before, t.net) > 0
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in t.net.parameters())


@cuda_test
def test_channels_last_matches_contiguous(shapes_dir, tmp_path):
    """The same step in both memory formats (fp32): the same loss; weights and inputs stay channels_last."""
    runs = {}
    for cl in (True, False):
        t = Trainer(tiny_cfg(shapes_dir, tmp_path / str(cl), device="cuda", amp="off", channels_last=cl,
                             warmup_iters=0))
        seen = []
        t.net.register_forward_pre_hook(
            lambda m, args, kw: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)),
            with_kwargs=True)
        batch = _batch(t)
        runs[cl] = (t.train_step(batch)["loss"], t, seen)
    (loss_cl, t_cl, seen_cl), (loss_c, _, seen_c) = runs[True], runs[False]
    assert loss_cl == pytest.approx(loss_c, rel=1e-2)  # TF32 convolutions may round differently per layout
    assert seen_cl == [True] and seen_c == [False]
    convs = [p for p in t_cl.net.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


@cuda_test
def test_pinned_memory_and_non_blocking_copies(shapes_dir, tmp_path):
    """The project's DataLoader pins batches on a CUDA machine; the step copies them without blocking."""
    cfg = tiny_cfg(shapes_dir, tmp_path, device="cuda", amp="bf16", channels_last=True)
    cfg.data.workers = 2
    t = Trainer(cfg)
    assert t.train_loader.pin_memory and t.train_loader.num_workers == 2
    batch = _batch(t)
    assert batch.images.is_pinned() and all(v.is_pinned() for v in batch.has.values())
    assert all(v.is_pinned() for tgt in batch.targets for v in tgt.values() if isinstance(v, torch.Tensor))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        gpu = batch.to(t.device, memory_format=t.memory_format)  # non_blocking by default
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "Memcpy HtoD" in e.name]
    assert all("Pinned" in n for n in copies), copies  # (empty when the profiler records no copies)
    assert torch.equal(gpu.images.cpu(), batch.images)
    assert gpu.images.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(t.train_step(batch)["loss"])


@cuda_test
def test_ema_on_gpu_follows_the_documented_update(shapes_dir, tmp_path):
    t = Trainer(tiny_cfg(shapes_dir, tmp_path, device="cuda", amp="bf16", ema_decay=0.9, ema_tau=0.0,
                         warmup_iters=0))
    assert all(p.device.type == "cuda" for p in t.ema.module.parameters())
    batch = _batch(t)
    t.train_step(batch)  # the first update copies the weights
    for (k, e), p in zip(t.ema.module.named_parameters(), t.net.parameters()):
        assert torch.equal(e, p), k
    e1 = _params(t.ema.module)
    t.train_step(batch)
    for (k, e), p in zip(t.ema.module.named_parameters(), t.net.parameters()):
        torch.testing.assert_close(e, e1[k] + 0.1 * (p.detach() - e1[k]), rtol=1e-5, atol=1e-6, msg=k)
    assert t.eval_model is t.ema.module
    with torch.no_grad():
        raw = t.eval_model(batch.images.cuda())
    assert all(torch.isfinite(v).all() for r in raw.values() for v in (r.values() if isinstance(r, dict) else [r])
               if isinstance(v, torch.Tensor))


@cuda_test
def test_compile_option_trains_like_eager(shapes_dir, tmp_path):
    """``train.compile: true`` compiles the training forward; the first loss matches the eager step's."""
    from visionmtl.engine.runtime import check_compile

    try:
        check_compile(torch.device("cuda"))
    except ConfigError as e:  # refused with this one line (the refusal itself is tested on CPU below)
        pytest.skip(str(e))
    losses = {}
    for comp in (False, True):
        t = Trainer(tiny_cfg(shapes_dir, tmp_path / str(comp), tasks=("cls",), device="cuda", amp="off",
                             compile=comp, warmup_iters=0))  # one head: a small graph compiles quickly
        batch = _batch(t)
        losses[comp] = [t.train_step(batch)["loss"] for _ in range(2)]
        if comp:
            assert isinstance(t.model, torch._dynamo.eval_frame.OptimizedModule)
            assert t.eval_model is t.net  # evaluation stays eager: its input sizes vary
    assert all(math.isfinite(v) for v in losses[True]), losses
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-2), losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cuda_test
def test_nccl_world_size_1_step_equals_the_single_process_step(shapes_dir, tmp_path, monkeypatch):
    """NCCL initialises; the trainer's step through DDP (fixed weights) and through the gradient path
    (PCGrad: per-task gradients all-reduced) equals the plain step at world size 1."""
    import torch.distributed as td
    from torch.nn.parallel import DistributedDataParallel as DDP

    from visionmtl.engine import dist

    if not td.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def make(name: str, method: str) -> Trainer:
        return Trainer(tiny_cfg(shapes_dir, tmp_path / name, device="cuda", amp="off", optimizer="sgd", lr=0.05,
                                warmup_iters=0, method={"name": method}))

    single = {m: make(f"single_{m}", m) for m in ("fixed", "pcgrad")}
    batch = _batch(single["fixed"])
    expected = {}
    for m, t in single.items():
        torch.manual_seed(0)
        t.train_step(batch)
        expected[m] = _params(t.net)
    td.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        assert dist.is_distributed() and dist.world_size() == 1 and td.get_backend() == "nccl"
        for m in ("fixed", "pcgrad"):
            t = make(f"ddp_{m}", m)
            t.model = DDP(t.net, device_ids=[t.device.index or 0])
            torch.manual_seed(0)
            assert math.isfinite(t.train_step(batch)["loss"])
            for k, v in t.net.named_parameters():
                torch.testing.assert_close(v, expected[m][k], rtol=1e-4, atol=1e-5, msg=f"{m}: {k}")
        assert dist.reduce_mean({"a": 2.0}, t.device) == {"a": 2.0}
    finally:
        td.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2 (any machine)
# --------------------------------------------------------------------------------------------
def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _one_line_error(capsys, tool: str, argv: list) -> str:
    mod = _tool(tool)
    code = run(mod.main, mod.get_args_parser().parse_args([str(a) for a in argv]))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without a GPU")
def test_cuda_device_without_a_gpu_is_one_line(shapes_dir, tmp_path, capsys):
    cfg = write_cfg(tiny_cfg(shapes_dir, tmp_path / "run", tasks=("cls",)), tmp_path / "c.yaml")
    line = _one_line_error(capsys, "train", [cfg, "--set", "train.device=cuda"])
    assert "train.device" in line and "CUDA is not available" in line, line
    line = _one_line_error(capsys, "train", [cfg, "--set", "train.device=cuda:1"])
    assert "cuda:1" in line, line
    assert not (tmp_path / "run" / "last.pt").exists()
    ckpt = tmp_path / "x.pt"  # eval.py: the device is checked before the model loads
    torch.save({"model": {}, "config": {}}, ckpt)
    line = _one_line_error(capsys, "eval", [cfg, ckpt, "--device", "cuda"])
    assert "--device cuda" in line and "CUDA is not available" in line, line


def test_compile_where_unsupported_is_one_line(shapes_dir, tmp_path, capsys, monkeypatch):
    cfg = write_cfg(tiny_cfg(shapes_dir, tmp_path / "run", tasks=("cls",)), tmp_path / "c.yaml")
    # no C++ compiler for Inductor's CPU backend: found before any data is read
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    line = _one_line_error(capsys, "train", [cfg, "--set", "train.device=cpu", "train.compile=true"])
    assert "train.compile" in line and "C++ compiler" in line and "no-such-compiler" in line, line
    # a gradient method runs the model per task: refused when the config loads
    line = _one_line_error(capsys, "train", [cfg, "--set", "train.compile=true", "train.method.name=pcgrad"])
    assert "train.compile" in line and "pcgrad" in line, line
    # Python or platform without TorchDynamo
    import torch._dynamo

    from visionmtl.engine.runtime import check_compile

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(ConfigError, match=r"train\.compile: torch\.compile is not supported with Python"):
        check_compile(torch.device("cpu"))


# --------------------------------------------------------------------------------------------
# tools/gpu_check.sh and tools/gpu_bench.py without a GPU
# --------------------------------------------------------------------------------------------
def _bash(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, **(env or {})})


def test_gpu_check_script_parses_and_dry_runs(tmp_path):
    r = _bash("-n", "tools/gpu_check.sh")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = _bash("tools/gpu_check.sh", "--dry-run", "--minutes", "2", env={"OUT": str(out), "PYTHON": "false"})
    assert r.returncode == 0, r.stdout + r.stderr
    for phase in ("deps", "tests", "bench", "train", "eval", "infer", "table", "--imgsz 768", "2 min",
                  "dry run: nothing was run"):
        assert phase in r.stdout, (phase, r.stdout)
    assert not out.exists()  # nothing written, nothing run (PYTHON=false would fail any Python step)
    r = _bash("tools/gpu_check.sh", "--no-such-flag")
    assert r.returncode == 2 and "unknown argument" in r.stderr


def test_gpu_bench_cpu_smoke(tmp_path, capsys):
    """tools/gpu_bench.py --cpu-smoke: the R50 three-head step, FLOP count and DataLoader timing run on CPU."""
    real_data("coco128", "annotations", "instances.json")
    mod = _tool("gpu_bench")
    args = mod.get_args_parser().parse_args(["--cpu-smoke", "--json", str(tmp_path / "b.json")])
    result = mod.main(args)
    assert json.loads((tmp_path / "b.json").read_text())["batch"] == 2
    assert result["compute"]["steps"] == 2 and result["compute"]["img_s"] > 0
    assert result["loader"]["steps"] == 2 and 0 < result["loader"]["busy_share"] <= 1
    ld = result["loader"]
    assert ld["useful_share"] == pytest.approx(ld["img_s"] / result["compute"]["img_s"])
    ratio = result["train_flops_per_img"] / result["fwd_flops_per_img"]
    assert 2.0 < ratio < 3.5, ratio  # backward ~ 2x forward
    assert 0 < result["mfu"] < 1
    assert "MFU" in capsys.readouterr().out
