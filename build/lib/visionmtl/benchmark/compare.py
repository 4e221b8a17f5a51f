"""Train several multi-task strategies under the same budget and data, and compare them.

``compare_strategies(cfg, names, out_dir, epochs)`` trains one run per strategy (config
overrides from :data:`STRATEGIES`; ``single`` trains one model per task) with the config's
data, schedule and seed, each in its own process (so peak memory is that run's own), evaluates
the final weights on the val split and writes ``compare.md`` / ``.csv`` / ``.json`` / ``.png``:
each task's main metric, Δm against the single-task models (Maninis et al. 2019), time per
training step (compute only, data loading excluded), peak resident memory, and the backward
passes per step.

Every finished run is stored as ``OUT/<strategy>/result.json`` at once and reused by a later
call, so an interrupted comparison loses at most the run in progress.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..config import Config, ConfigError, config_from_dict
from ..files import write_text

log = logging.getLogger("visionmtl")

#: strategy -> (config overrides as dotted keys, what it is). ``single`` is special-cased.
STRATEGIES: dict[str, tuple[dict[str, Any], str]] = {
    "single": ({}, "one model per task (the Δm baseline)"),
    "fixed": ({"train.method.name": "fixed"}, "joint, fixed weights (Σ wₜLₜ)"),
    "uncertainty": ({"train.method.name": "uncertainty"}, "joint, uncertainty weighting (Kendall et al. 2018)"),
    "dwa": ({"train.method.name": "dwa"}, "joint, dynamic weight average (Liu et al. 2019)"),
    "rlw": ({"train.method.name": "rlw"}, "joint, random loss weighting (Lin et al. 2022)"),
    "stch": ({"train.method.name": "stch"}, "joint, smooth Tchebycheff min-max (Lin et al. 2024)"),
    "gradnorm": ({"train.method.name": "gradnorm", "train.method.grad_on": "rep"},
                 "GradNorm (Chen et al. 2018), norms at the shared features"),
    "mgda": ({"train.method.name": "mgda", "train.method.grad_on": "rep"}, "MGDA-UB (Sener & Koltun 2018)"),
    "mgda_params": ({"train.method.name": "mgda", "train.method.grad_on": "params"}, "MGDA on all shared parameters"),
    "pcgrad": ({"train.method.name": "pcgrad", "train.method.grad_on": "params"}, "PCGrad (Yu et al. 2020)"),
    "pcgrad_rep": ({"train.method.name": "pcgrad", "train.method.grad_on": "rep"}, "PCGrad on the shared features"),
    "cagrad": ({"train.method.name": "cagrad", "train.method.grad_on": "params"}, "CAGrad (Liu et al. 2021)"),
    "cagrad_rep": ({"train.method.name": "cagrad", "train.method.grad_on": "rep"}, "CAGrad on the shared features"),
    "imtl": ({"train.method.name": "imtl", "train.method.grad_on": "params"}, "IMTL-G (Liu et al. 2021)"),
    "imtl_rep": ({"train.method.name": "imtl", "train.method.grad_on": "rep"}, "IMTL-G on the shared features"),
    "alternating": ({"train.mode": "alternating", "train.alternating.order": "round_robin"},
                    "alternating, one task per step, round robin"),
    "alternating_proportional": ({"train.mode": "alternating", "train.alternating.order": "proportional"},
                                 "alternating, tasks drawn in proportion to their data"),
    "alternating_temperature": ({"train.mode": "alternating", "train.alternating.order": "temperature"},
                                "alternating, p ∝ n^(1/T) (train.alternating.temperature)"),
    "alternating_uniform": ({"train.mode": "alternating", "train.alternating.order": "uniform"},
                            "alternating, tasks drawn uniformly"),
    "alternating_per_task": ({"train.mode": "alternating", "train.alternating.optimizers": "per_task"},
                             "alternating, round robin, one optimiser per task"),
    "soft": ({"model.sharing": "soft"}, "soft sharing: a backbone per task + L2 tie"),
    "mtan": ({"model.sharing": "mtan"}, "MTAN-style task attention over the shared pyramid"),
    "private": ({"model.sharing": "private"}, "shared-private: residual adapter per task"),
}


def parse_strategies(spec: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    import difflib

    for n in names:
        if n not in STRATEGIES:
            close = difflib.get_close_matches(n, list(STRATEGIES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(STRATEGIES)}"
            raise ConfigError(f"--strategies: unknown strategy '{n}'{hint}")
    if not names:
        raise ConfigError("--strategies: nothing selected")
    return names


def strategy_config(cfg: Config, name: str, tasks: Optional[Sequence[str]] = None) -> Config:
    """``cfg`` with strategy ``name``'s overrides (and only ``tasks``, for single-task runs)."""
    tree = copy.deepcopy(cfg.to_dict())
    for key, value in STRATEGIES[name][0].items():
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    if tasks is not None:
        tree["tasks"] = {t: v for t, v in tree["tasks"].items() if t in tasks}
        for split in ("train", "val"):
            tree["data"][split] = [d for d in tree["data"][split]
                                   if not d.get("tasks") or any(t in tasks for t in d["tasks"])]
            for d in tree["data"][split]:
                if d.get("tasks"):
                    d["tasks"] = [t for t in d["tasks"] if t in tasks]
    return config_from_dict(tree, source=f"strategy '{name}'")


def backward_passes(cfg: Config) -> str:
    """Backward passes per step, as the method runs them (T = number of tasks)."""
    from ..mtl.names import is_gradient_method

    T = len(cfg.tasks)
    tc = cfg.train
    if tc.mode == "alternating":
        return "1 (one task)"
    if cfg.model.sharing == "soft":
        return f"1 ({T} backbones)"
    if is_gradient_method(tc.method.name):
        if tc.method.grad_on == "params":
            return f"{T} full"
        return f"1 + {T} heads"
    return "1"


def _run_one(tree: dict, work_dir: str, result_file: str, threads: int) -> None:
    """Child process: train, evaluate, write the result JSON."""
    import torch

    from ..cli import setup_logging
    from ..engine.trainer import Trainer

    setup_logging()
    if threads > 0:
        torch.set_num_threads(threads)
    cfg = config_from_dict(tree, source=work_dir)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    trainer = Trainer(cfg, work_dir)
    trainer.train()
    wall = time.time() - t0
    metrics = trainer.evaluate() if trainer.val_loader is not None else {}
    scalars = {t: {k: v for k, v in m.items() if isinstance(v, (int, float))} for t, m in metrics.items()
               if isinstance(m, dict)}
    out = {"metrics": scalars, "iters": trainer.iter, "step_seconds": trainer.step_seconds,
           "wall_seconds": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "start_rss_mb": rss0 / 1024, "task_steps": trainer.task_steps, "task_images": trainer.task_images}
    write_text(result_file, json.dumps(out, indent=1))  # atomic: a re-run trusts an existing result


def run_strategy(cfg: Config, name: str, out_dir: Path, threads: int = 0, tasks: Optional[Sequence[str]] = None) -> dict:
    """Train one strategy (or one single-task model) in a child process; reuse a stored result."""
    label = name if tasks is None else f"single_{'+'.join(tasks)}"
    work = out_dir / label
    result_file = work / "result.json"
    if result_file.is_file():
        log.info("compare: %s already done (%s)", label, result_file)
        return json.loads(result_file.read_text())
    sub = strategy_config(cfg, name, tasks)
    sub.work_dir = str(work)
    work.mkdir(parents=True, exist_ok=True)
    log.info("compare: training %s", label)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_run_one, args=(sub.to_dict(), str(work), str(result_file), threads))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or not result_file.is_file():
        raise RuntimeError(f"compare: strategy '{label}' failed (exit code {proc.exitcode}); see the log above "
                           f"and {work}/metrics.jsonl")
    return json.loads(result_file.read_text())


def _rss(r: Mapping[str, Any]) -> float:
    """Peak resident memory the run added (MB): model, optimiser, activations, per-task gradients."""
    return float(r["peak_rss_mb"]) - float(r.get("start_rss_mb", 0.0))


def compare_strategies(cfg: Config, names: Sequence[str], out_dir: str | Path, epochs: Optional[int] = None,
                       threads: int = 0) -> dict:
    """Train every strategy in ``names`` and summarise; see the module docstring."""
    from ..engine.evaluate import lower_is_better, main_metric
    from ..metrics.mtl import delta_m, delta_m_per_task

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    if epochs:
        cfg.train.epochs = int(epochs)
        cfg.train.stages = []
    cfg.train.eval_interval = max(cfg.train.epochs, 1)
    from .accuracy import ensure_shapes_data

    ensure_shapes_data(cfg)
    tasks = list(cfg.tasks)
    metric_names = {t: main_metric(c) for t, c in cfg.tasks.items()}
    lower = {t: lower_is_better(c, metric_names[t]) for t, c in cfg.tasks.items()}
    rows: list[dict] = []
    singles: dict[str, Optional[float]] = {}
    for name in names:
        if name == "single":
            res = {t: run_strategy(cfg, "fixed", out_dir, threads, [t]) for t in tasks}
            for t in tasks:
                singles[t] = res[t]["metrics"].get(t, {}).get(metric_names[t])
            row = {"strategy": "single", "description": STRATEGIES["single"][1],
                   "metrics": dict(singles), "backward": "1 per model",
                   "iters": sum(r["iters"] for r in res.values()),
                   "step_ms": sum(1000 * r["step_seconds"] / max(r["iters"], 1) for r in res.values()),
                   "peak_rss_mb": max(_rss(r) for r in res.values()),
                   "wall_s": sum(r["wall_seconds"] for r in res.values())}
        else:
            r = run_strategy(cfg, name, out_dir, threads)
            row = {"strategy": name, "description": STRATEGIES[name][1],
                   "metrics": {t: r["metrics"].get(t, {}).get(metric_names[t]) for t in tasks},
                   "backward": backward_passes(strategy_config(cfg, name)), "iters": r["iters"],
                   "step_ms": 1000 * r["step_seconds"] / max(r["iters"], 1), "peak_rss_mb": _rss(r),
                   "wall_s": r["wall_seconds"], "task_steps": r.get("task_steps"), "task_images": r.get("task_images")}
        rows.append(row)
        _write(rows, singles, metric_names, cfg, out_dir)  # partial results are kept as they come
    for row in rows:
        row["delta_m"] = None
        if row["strategy"] != "single" and all(singles.get(t) for t in tasks) and \
                all(row["metrics"].get(t) is not None for t in tasks):
            row["delta_m_per_task"] = delta_m_per_task(row["metrics"], singles, lower)
            row["delta_m"] = delta_m(row["metrics"], singles, lower)
    return _write(rows, singles, metric_names, cfg, out_dir)


def _write(rows: list[dict], singles: dict, metric_names: dict, cfg: Config, out_dir: Path) -> dict:
    from .report import _write_csv

    base = next((r for r in rows if r["strategy"] == "fixed"), None)
    for r in rows:
        r["rel_time"] = (r["step_ms"] / base["step_ms"]) if base and base["step_ms"] else None
    result = {"tasks": list(cfg.tasks), "metric_names": metric_names, "singles": singles,
              "epochs": cfg.train.epochs, "img_size": cfg.data.img_size, "batch_size": cfg.data.batch_size,
              "backbone": cfg.model.backbone.name, "rows": rows}
    paths = {"md": out_dir / "compare.md", "csv": out_dir / "compare.csv", "json": out_dir / "compare.json",
             "png": out_dir / "compare.png"}
    write_text(paths["md"], format_compare(result) + "\n")
    _write_csv(rows, paths["csv"])
    write_text(paths["json"], json.dumps(result, indent=1, default=str))
    try:
        plot_compare(result, paths["png"])
    except Exception as e:  # a plot must never lose the results
        log.warning("could not plot %s: %s", paths["png"], e)
    result["paths"] = {k: str(v) for k, v in paths.items()}
    return result


def _num(v: Optional[float], digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_compare(result: Mapping[str, Any]) -> str:
    tasks = result["tasks"]
    names = result["metric_names"]
    head = ["strategy"] + [f"{t} {names[t]}" for t in tasks] + ["Δm", "ms/step", "× fixed", "+RSS MB",
                                                                 "backward passes"]
    lines = [f"{result['backbone']}, {result['img_size']} px, batch {result['batch_size']}, "
             f"{result['epochs']} epochs per run; val split; Δm against the single-task models", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in result["rows"]:
        dm = r.get("delta_m")
        cells = [r["strategy"]] + [_num(r["metrics"].get(t)) for t in tasks] + [
            "-" if dm is None else f"{100 * dm:+.2f}%", f"{r['step_ms']:.0f}",
            "-" if r.get("rel_time") is None else f"{r['rel_time']:.2f}", f"{r['peak_rss_mb']:.0f}", r["backward"]]
        lines.append("| " + " | ".join(cells) + " |")
    alt = [r for r in result["rows"] if r.get("task_steps") and r["strategy"].startswith("alternating")]
    if alt:
        lines += ["", "Steps (images) per task in alternating runs:", ""]
        for r in alt:
            lines.append(f"- {r['strategy']}: " + ", ".join(
                f"{t} {r['task_steps'].get(t, 0)} ({r['task_images'].get(t, 0)})" for t in tasks))
    return "\n".join(lines)


def plot_compare(result: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["strategy"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 2))
    dm = [100 * (r.get("delta_m") or 0.0) for r in rows]
    axes[0].barh(names, dm, color=["tab:green" if v >= 0 else "tab:red" for v in dm])
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].set_xlabel("Δm vs single-task models (%)")
    axes[0].invert_yaxis()
    axes[1].barh(names, [r["step_ms"] for r in rows], color="tab:blue")
    axes[1].set_xlabel("ms per training step")
    axes[1].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
