"""Benchmarks of head combinations: speed, memory and FLOPs (:mod:`.speed`), accuracy and Δm
against single-task models (:mod:`.accuracy`), and reports (:mod:`.report`).

``run_benchmark(cfg, opts)`` is the whole ``tools/benchmark.py`` run as a function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..config import Config
from .accuracy import accuracy_summary, parse_checkpoints, run_accuracy
from .report import format_markdown, write_report
from .speed import BenchmarkOptions, count_flops, parse_combos, run_speed, synthetic_batch

__all__ = [
    "BenchmarkOptions",
    "accuracy_summary",
    "count_flops",
    "format_markdown",
    "parse_checkpoints",
    "parse_combos",
    "run_accuracy",
    "run_benchmark",
    "run_speed",
    "synthetic_batch",
    "write_report",
]


def run_benchmark(cfg: Config, opts: Optional[BenchmarkOptions] = None, out_dir: Optional[str | Path] = None,
                  accuracy: bool = False, train_epochs: Optional[int] = None,
                  checkpoints: Optional[str | dict] = None, accuracy_all_combos: bool = False) -> dict[str, Any]:
    """Accuracy (optional), then speed/memory/FLOPs of every selected combination, then the report.

    Args:
        cfg: the config to benchmark.
        opts: speed options (default :class:`BenchmarkOptions`).
        out_dir: where the report goes (nothing is written when None).
        accuracy: train the single-task models and the multi-task model and evaluate them.
        train_epochs: epochs for those runs (default: the config's).
        checkpoints: ``task=path,mtl=path`` models to evaluate instead of training them.
        accuracy_all_combos: with ``accuracy``, also train every selected multi-task combination.

    Returns:
        The result of :func:`run_speed` (with ``accuracy`` when measured) and, when written,
        ``"paths"`` (output files).
    """
    opts = opts or BenchmarkOptions()
    acc = None
    if accuracy or checkpoints:
        combos = None
        if accuracy_all_combos:
            combos = [c for c in parse_combos(opts.combos, list(cfg.tasks), cfg) if len(c) > 1]
            if tuple(cfg.tasks) not in combos:
                combos.append(tuple(cfg.tasks))
        acc = run_accuracy(cfg, out_dir or "runs/benchmark", train_epochs, checkpoints, train=accuracy,
                           combos=combos, device=opts.device, threads=opts.threads)
    result = run_speed(cfg, opts, accuracy=acc)
    if out_dir is not None:
        result["paths"] = {k: str(v) for k, v in write_report(result, out_dir).items()}
    return result
