"""The front door: the ``visionmtl`` command and ``python -m visionmtl``, the top-level API, the
README's Python example, shipped configs by name, the wheel in a fresh virtual environment, and
one-line errors for a bad device, an unknown subcommand and another config's work dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from visionmtl.commands import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def _module(args, cwd=None, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "visionmtl", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_m_visionmtl_lists_subcommands_and_refuses_unknown_ones():
    p = _module(["--help"])
    assert p.returncode == 0 and all(name in p.stdout for name in SUBCOMMANDS)
    p = _module(["trian", "x.yaml"])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1
    assert "unknown subcommand 'trian'" in lines[0] and "train, val, predict, export" in lines[0]
    p = _module(["export", "--help"])
    assert p.returncode == 0 and p.stdout.startswith("usage: visionmtl export")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_device_0_without_a_gpu_is_one_line(capsys):
    assert main(["train", "shapes/r18_fpn_3heads", "--device", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: train.device: device 'cuda:0'") and "not available" in err
    assert main(["train", "shapes/r18_fpn_3heads", "--device", "gpu7"]) == 2
    assert "unknown device 'gpu7'" in capsys.readouterr().err


def test_top_level_api_is_lazy():
    out = subprocess.run([sys.executable, "-c", "import sys, visionmtl; print('torch' in sys.modules); "
                          "from visionmtl import load_config, Trainer, Predictor; print(Trainer.__module__)"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "visionmtl.engine.trainer"]


def _shapes(cwd: Path) -> None:
    from visionmtl.data.shapes import make_shapes

    make_shapes(cwd / "data" / "shapes", train=16, val=4, size=128, seed=0)


def test_readme_python_example_runs(tmp_path):
    """The README's first Python block, as written, in a folder holding a small shapes dataset."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "from visionmtl import load_config, Trainer, Predictor" in code
    _shapes(tmp_path)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                            "VISIONMTL_DATASETS": str(tmp_path / "data")})  # a checkout's data/ is tmp_path's
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "runs" / "shapes_r18_3heads" / "best.pt").is_file()
    assert (tmp_path / "prediction.jpg").is_file()
    assert "(100, 4)" in p.stdout or re.search(r"\(\d+, 4\) \(128, 128\)", p.stdout), p.stdout


def test_exist_ok_refuses_another_configs_run(shapes_dir, tmp_path, capsys):
    from visionmtl.config import save_config

    from .test_engine import tiny_cfg

    paths = []
    for tasks in (("cls",), ("cls", "seg")):
        cfg = tiny_cfg(shapes_dir, tmp_path / "run", tasks=tasks, epochs=1, max_iters=1)
        paths.append(tmp_path / f"{len(tasks)}.yaml")
        save_config(cfg, paths[-1])
    assert main(["train", str(paths[0])]) == 0
    assert main(["train", str(paths[1]), "--exist-ok"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds the run of another config (tasks.seg differs)" in err and str(tmp_path / "run") in err


def test_wheel_installs_a_working_command_in_a_fresh_venv(tmp_path):
    """Build the wheel, install it (no dependencies: they come from this environment) into a new
    virtual environment, run ``visionmtl --help`` and two training steps of a shipped config from
    outside the repository."""
    import shutil

    src = tmp_path / "src"  # a copy of what the wheel is built from, so that the build leaves no build/ here
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "configs", src / "configs")
    shutil.copytree(ROOT / "visionmtl", src / "visionmtl", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("visionmtl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "visionmtl/commands/train.py" in names and "visionmtl/configs/shapes/r18_fpn_3heads.yaml" in names
    assert "visionmtl/configs/_base_/runtime.yaml" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "visionmtl = visionmtl.commands:main" in zipfile.ZipFile(wheel).read(entry).decode()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "deps.pth").write_text("\n".join(deps) + "\n")  # torch & co. from this environment
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "outside"
    work.mkdir()
    _shapes(work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import visionmtl; print(visionmtl.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv))  # the wheel's copy, not the checkout's
    p = subprocess.run([str(venv / "bin" / "visionmtl"), "--help"], cwd=work, env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "train" in p.stdout
    p = subprocess.run([str(venv / "bin" / "visionmtl"), "train", "shapes/r18_fpn_3heads", "--set", "train.max_iters=2",
                        "train.epochs=1", "data.workers=0"], cwd=work, env={**env, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (work / "runs" / "shapes_r18_3heads" / "last.pt").is_file()


def test_overrides_anywhere_and_set_does_not_swallow_the_config():
    from visionmtl.cli import parse_args
    from visionmtl.commands.train import get_args_parser

    p = get_args_parser()
    a = parse_args(p, ["--set", "train.lr=0.01", "my.yaml"])
    assert a.config == "my.yaml" and a.set == ["train.lr=0.01"]
    a = parse_args(p, ["my.yaml", "train.epochs=3", "--work-dir", "runs/a=b", "data.batch_size=4"])
    assert a.config == "my.yaml" and a.set == ["train.epochs=3", "data.batch_size=4"] and a.work_dir == "runs/a=b"


def test_predict_output_folders_are_numbered(shapes_dir, tmp_path, capsys):
    from visionmtl.engine.trainer import Trainer

    from .test_engine import tiny_cfg

    cfg = tiny_cfg(shapes_dir, tmp_path / "run", tasks=("cls",), epochs=1, max_iters=1)
    Trainer(cfg).train()
    image = next((shapes_dir / "val" / "images").iterdir())
    out = tmp_path / "predict"
    for _ in range(2):
        assert main(["predict", str(tmp_path / "run" / "last.pt"), "--source", str(image), "--out", str(out)]) == 0
    assert (out / "summary.json").is_file() and (tmp_path / "predict2" / "summary.json").is_file()
    assert "outputs in " + str(tmp_path / "predict2") in capsys.readouterr().out
