"""Speed, memory and FLOPs of every head combination, shared backbone versus separate models.

For each combination of the config's tasks (``cls``, ``det+seg``, ...) a model with exactly those
heads is built (``build_model`` on a copy of the config holding only those tasks, so e.g. a
classification-only model has no FPN), and measured on one fixed, seeded input batch:

* **parameters** and **GFLOPs per image** (:class:`torch.utils.flop_counter.FlopCounterMode`, a
  forward pass at batch 1 in fp32), broken down into the backbone and each head. The breakdown is
  checked independently: the backbone and every head are also counted on their own, and their sum
  must match the whole model (``flops["rel_err"]``).
* **inference latency** per batch of the model forward alone (``forward``: what FLOP/s figures
  use, no post-processing) and of forward + ``model.predict`` (``forward_predict``: decoding,
  NMS, mask argmax) - median, p90, min and max over the repeats, and images/s at the median.
* **training step** time (``--train``): forward, ``model.loss`` on synthetic targets, backward and
  an optimiser step (the config's optimiser), on a separate copy of the model so the inference
  weights never change.
* **peak memory** of inference and of a training step (see :class:`PeakMemory`).
* **separate models** (``compare_separate``): the same tasks as one single-task model per task,
  each with its own backbone, run one after another on the same input; time is the whole
  sequence, memory the peak with all of them loaded; ``ratio`` = separate / shared. For a
  single-task combination the separate model is the model itself, so its figures are copied
  (ratio 1) rather than measured twice.

Method: every combination is warmed up first, then the repeats are interleaved (repeat ``r``
times one batch of every combination in turn) so that drift in clock speed or background load
hits all combinations alike; on CUDA every timed call is bracketed by ``torch.cuda.synchronize``.

Memory is reported as *resident weights + peak transient*: the bytes of the parameters and
buffers of the model(s) involved (plus the optimiser state for a training step), plus the peak
growth of memory while the step runs. On CUDA the growth is ``torch.cuda.max_memory_allocated``
minus ``memory_allocated`` before the step (the caching allocator's reserve is not counted). On CPU
it is the growth of the process's resident set size, sampled every 0.5 ms from ``/proc/self/statm``
by a background thread (and raised to ``ru_maxrss`` if that high-water mark moved during the step);
freed heap memory is returned to the OS with glibc's ``malloc_trim`` before each measurement so the
baseline is not inflated by earlier steps. CPU figures are therefore an RSS estimate, accurate to a
few MiB, not an allocator-exact count.

Head combinations and the synthetic batch live in ``combos.py``; FLOP counting, memory sampling
and the environment record in ``measure.py``; this module runs and times them.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ..config import Config, ConfigError
from ..engine.optim import OptimizerSet, build_optimizer
from ..engine.step import StepParts, train_step
from ..mtl.methods import build_method
from ..engine.runtime import pick_amp, pick_device
from ..models.multitask import MultiTaskModel
from .combos import build_combo_model, closure, combo_name, parse_combos, subset_config, synthetic_batch
from .measure import (BF16_PEAK_TFLOPS, PeakMemory, count_flops, cpu_model_name, environment, gpu_bf16_peak_tflops,
                      model_bytes, optimizer_bytes)

log = logging.getLogger("visionmtl")

__all__ = [
    "BF16_PEAK_TFLOPS",
    "BenchmarkOptions",
    "PeakMemory",
    "combo_name",
    "count_flops",
    "cpu_model_name",
    "environment",
    "gpu_bf16_peak_tflops",
    "parse_combos",
    "run_speed",
    "subset_config",
    "synthetic_batch",
]

@dataclass
class BenchmarkOptions:
    """What to measure and how (the command-line flags of ``tools/benchmark.py``).

    Attributes:
        combos: ``"all"`` (every non-empty subset of the tasks), a comma-separated string such as
            ``"cls,det+seg"``, or a sequence of combinations (each a ``"+"``-joined string or a
            sequence of task names).
        imgsz: square input side in pixels (a multiple of 32); ``None`` = ``cfg.data.img_size``.
        batch: images per batch.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: autocast mode as in ``train.amp``: ``off``, ``auto``, ``bf16`` or ``fp16``.
        channels_last: run models and inputs in channels-last memory format.
        train: also time a training step.
        compare_separate: also run each combination as separate single-task models.
        repeats: timed batches per combination and measurement.
        warmup: untimed batches per combination and measurement before timing.
        seed: seed of the weights and the synthetic input.
        threads: torch CPU threads; 0 leaves torch's setting.
        memory: measure peak memory (one extra pass per combination).
        memory_runs: passes per memory figure; the largest is reported.
    """

    combos: Any = "all"
    imgsz: Optional[int] = None
    batch: int = 8
    device: str = "auto"
    amp: str = "off"
    channels_last: bool = False
    train: bool = False
    compare_separate: bool = False
    repeats: int = 20
    warmup: int = 3
    seed: int = 0
    threads: int = 0
    memory: bool = True
    memory_runs: int = 2

    def to_dict(self) -> dict:
        d = asdict(self)
        if not isinstance(d["combos"], str):
            d["combos"] = [c if isinstance(c, str) else "+".join(c) for c in d["combos"]]
        return d


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------
@dataclass
class _Trainable:
    parts: StepParts  # the trainer's own step (engine/step.py) with the config's method
    tasks: tuple[str, ...]

    def resident_bytes(self) -> int:
        """Weights plus optimiser state."""
        return model_bytes(self.parts.net) + sum(optimizer_bytes(o) for o in self.parts.optim.optimizers.values())


@dataclass
class _Entry:
    """The models of one combination: the inference model and, with --train, a training copy."""

    combo: tuple[str, ...]
    model: MultiTaskModel
    trainable: Optional[_Trainable] = None
    flops: dict = field(default_factory=dict)


class _Bench:
    """Holds the models, the input and the timing functions of one benchmark run."""

    def __init__(self, cfg: Config, opts: BenchmarkOptions, device: torch.device,
                 amp_dtype: Optional[torch.dtype], imgsz: int) -> None:
        self.cfg = cfg
        self.opts = opts
        self.device = device
        self.amp_dtype = amp_dtype
        self.mf = torch.channels_last if opts.channels_last else torch.contiguous_format
        cpu_batch = synthetic_batch(cfg, opts.batch, imgsz, opts.seed)
        self.batch = cpu_batch.to(device, memory_format=self.mf)
        self.images = self.batch.images
        self.image1 = cpu_batch.images[:1].to(device, memory_format=self.mf)
        self.sizes = [m["input_size"] for m in cpu_batch.meta]
        self.entries: dict[tuple[str, ...], _Entry] = {}

    # ------------------------------------------------------------------ models
    def entry(self, combo: tuple[str, ...]) -> _Entry:
        if combo in self.entries:
            return self.entries[combo]
        model = build_combo_model(self.cfg, combo, self.opts.seed).to(self.device, memory_format=self.mf).eval()
        e = _Entry(combo, model)
        e.flops = count_flops(model, self.image1)
        if self.opts.train:
            tmodel = build_combo_model(self.cfg, combo, self.opts.seed).to(self.device, memory_format=self.mf).train()
            tc = self.cfg.train
            weights = {t: self.cfg.tasks[t].weight for t in combo}
            method = build_method(tc.method.name, list(combo), weights, tc.method.args, tc.method.task_grad_clip)
            for q in method.parameters():
                q.data = q.data.to(self.device)
            optim = OptimizerSet({"all": build_optimizer(tmodel, tc, extra_params=list(method.parameters()))},
                                 total=10**6, iters_per_epoch=1000, cfg=tc)
            scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
            parts = StepParts(model=tmodel, net=tmodel, method=method, optim=optim, scaler=scaler,
                              autocast=self.autocast, weights=weights, grad_on=tc.method.grad_on,
                              clip_grad=tc.clip_grad, device=self.device, memory_format=self.mf)
            e.trainable = _Trainable(parts, combo)
        self.entries[combo] = e
        return e

    def autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ steps
    def forward(self, models: Sequence[MultiTaskModel]) -> None:
        with torch.inference_mode(), self.autocast():
            for m in models:
                m(self.images)

    def forward_predict(self, models: Sequence[MultiTaskModel]) -> None:
        with torch.inference_mode():
            for m in models:
                with self.autocast():
                    raw = m(self.images)
                m.predict(raw, self.sizes)

    def train_step(self, trainables: Sequence[_Trainable]) -> None:
        """The trainer's own step (method, clipping, scaler, schedule) on the synthetic batch."""
        for tr in trainables:
            train_step(tr.parts, self.batch, tr.tasks)

    def timed(self, fn: Callable[[], None]) -> float:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def peak(self, fn: Callable[[], None], runs: int) -> int:
        best = 0
        for _ in range(max(runs, 1)):
            with PeakMemory(self.device) as pm:
                fn()
            best = max(best, pm.peak)
        return best


def _stats(times: Sequence[float], batch: int) -> dict:
    ms = [t * 1e3 for t in times]
    med = statistics.median(ms)
    return {
        "median_ms": med,
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "throughput": batch / (med / 1e3) if med > 0 else math.inf,
        "n": len(ms),
    }


def run_speed(cfg: Config, opts: BenchmarkOptions, accuracy: Optional[dict] = None) -> dict:
    """Measure every selected combination; returns the JSON-ready result (see the module doc).

    Args:
        cfg: the config whose tasks, backbone and heads are benchmarked.
        opts: what to measure.
        accuracy: optional result of :func:`visionmtl.benchmark.accuracy.run_accuracy` (or the
            same structure); each combination with metrics gets an ``accuracy`` entry.
    """
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    if opts.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {opts.repeats}")
    device = pick_device(opts.device)
    amp_dtype = pick_amp(opts.amp, device)
    imgsz = int(opts.imgsz or cfg.data.img_size)
    tasks = list(cfg.tasks)
    combos = parse_combos(opts.combos, tasks, cfg)
    bench = _Bench(cfg, opts, device, amp_dtype, imgsz)
    env = environment(device, amp_dtype, imgsz, opts.batch, opts.channels_last)
    log.info("benchmark on %s (%s), %s, %d px, batch %d, %d threads", env["device_name"], device, env["dtype"],
             imgsz, opts.batch, env["threads"])

    # models: every combination, plus the single-task models the separate runs need (a task that
    # cannot work alone, an instance task, gets its own copy of what it needs: its detector)
    needed = list(combos)
    if opts.compare_separate:
        needed += list(dict.fromkeys(closure(cfg.tasks, (t,)) for c in combos for t in c if closure(cfg.tasks, (t,)) not in needed))
    for c in needed:
        bench.entry(c)
    full = tuple(tasks)
    flop_check_entry = bench.entries.get(full)
    flop_check = (flop_check_entry.flops if flop_check_entry is not None
                  else count_flops(build_combo_model(cfg, full, opts.seed).to(device, memory_format=bench.mf), bench.image1))

    # measurements: name -> callable, per combination
    def plan(combo: tuple[str, ...]) -> dict[str, Callable[[], None]]:
        e = bench.entries[combo]
        p: dict[str, Callable[[], None]] = {
            "forward": lambda: bench.forward([e.model]),
            "forward_predict": lambda: bench.forward_predict([e.model]),
        }
        if opts.train:
            p["train"] = lambda: bench.train_step([e.trainable])
        if opts.compare_separate and all(closure(cfg.tasks, (t,)) != combo for t in combo):
            # a single task's separate model is the model itself (an instance task's: with its detector)
            singles = [bench.entries[closure(cfg.tasks, (t,))] for t in combo]
            p["sep_forward"] = lambda: bench.forward([s.model for s in singles])
            p["sep_forward_predict"] = lambda: bench.forward_predict([s.model for s in singles])
            if opts.train:
                p["sep_train"] = lambda: bench.train_step([s.trainable for s in singles])
        return p

    plans = {c: plan(c) for c in combos}
    for c in combos:  # warm-up
        for fn in plans[c].values():
            for _ in range(opts.warmup):
                fn()
    times: dict[tuple[str, ...], dict[str, list[float]]] = {c: {k: [] for k in plans[c]} for c in combos}
    for r in range(opts.repeats):  # interleaved: every combination once per repeat
        for c in combos:
            for k, fn in plans[c].items():
                times[c][k].append(bench.timed(fn))

    rows = []
    for c in combos:
        e = bench.entries[c]
        params = sum(p.numel() for p in e.model.parameters())
        gflops = e.flops["total"] / 1e9
        row: dict[str, Any] = {
            "combo": combo_name(c),
            "tasks": list(c),
            "params": params,
            "params_m": params / 1e6,
            "gflops": gflops,
            "flops": {
                "backbone_gflops": e.flops["backbone"] / 1e9,
                "heads_gflops": {t: v / 1e9 for t, v in e.flops["heads"].items()},
                "sum_separate_gflops": e.flops["sum_separate"] / 1e9,
                "rel_err": e.flops["rel_err"],
            },
            "forward": _stats(times[c]["forward"], opts.batch),
            "forward_predict": _stats(times[c]["forward_predict"], opts.batch),
        }
        row["forward"]["gflops_per_s"] = gflops * row["forward"]["throughput"]
        weights = model_bytes(e.model)
        if opts.memory:
            row["infer_memory_mb"] = (weights + bench.peak(plans[c]["forward_predict"], opts.memory_runs)) / 2**20
        if opts.train:
            tr = e.trainable
            st = _stats(times[c]["train"], opts.batch)
            train_flops = 3.0 * e.flops["total"] * opts.batch
            st["achieved_gflops_s"] = train_flops / (st["median_ms"] / 1e3) / 1e9
            st["achieved_tflops"] = st["achieved_gflops_s"] / 1e3
            peak_tf = env.get("gpu_bf16_peak_tflops")
            st["mfu"] = st["achieved_tflops"] / peak_tf if (device.type == "cuda" and peak_tf) else None
            row["train"] = st
            if opts.memory:
                resident = tr.resident_bytes()
                row["train_memory_mb"] = (resident + bench.peak(plans[c]["train"], opts.memory_runs)) / 2**20
        if opts.compare_separate and any(closure(cfg.tasks, (t,)) == c for t in c):  # its own separate model
            sep = {k: copy.deepcopy(row[k]) for k in ("params", "params_m", "gflops", "forward", "forward_predict")}
            sep.update(forward_ratio=1.0, forward_predict_ratio=1.0, gflops_ratio=1.0, same_as_shared=True)
            if opts.memory:
                sep.update(infer_memory_mb=row["infer_memory_mb"], infer_memory_ratio=1.0)
            if opts.train:
                sep.update(train=copy.deepcopy(row["train"]), train_ratio=1.0)
                if opts.memory:
                    sep.update(train_memory_mb=row["train_memory_mb"], train_memory_ratio=1.0)
            row["separate"] = sep
        elif opts.compare_separate:
            singles = [bench.entries[closure(cfg.tasks, (t,))] for t in c]
            sep_params = sum(p.numel() for s in singles for p in s.model.parameters())
            sep: dict[str, Any] = {
                "params": sep_params,
                "params_m": sep_params / 1e6,
                "gflops": sum(s.flops["total"] for s in singles) / 1e9,
                "forward": _stats(times[c]["sep_forward"], opts.batch),
                "forward_predict": _stats(times[c]["sep_forward_predict"], opts.batch),
            }
            sep["forward_ratio"] = sep["forward"]["median_ms"] / row["forward"]["median_ms"]
            sep["forward_predict_ratio"] = sep["forward_predict"]["median_ms"] / row["forward_predict"]["median_ms"]
            sep["gflops_ratio"] = sep["gflops"] / gflops
            if opts.memory:
                sep_weights = sum(model_bytes(s.model) for s in singles)
                sep["infer_memory_mb"] = (sep_weights + bench.peak(plans[c]["sep_forward_predict"], opts.memory_runs)) / 2**20
                sep["infer_memory_ratio"] = sep["infer_memory_mb"] / row["infer_memory_mb"]
            if opts.train:
                sep["train"] = _stats(times[c]["sep_train"], opts.batch)
                sep["train_ratio"] = sep["train"]["median_ms"] / row["train"]["median_ms"]
                if opts.memory:
                    resident = sum(s.trainable.resident_bytes() for s in singles)
                    sep["train_memory_mb"] = (resident + bench.peak(plans[c]["sep_train"], opts.memory_runs)) / 2**20
                    sep["train_memory_ratio"] = sep["train_memory_mb"] / row["train_memory_mb"]
            row["separate"] = sep
        if accuracy is not None:
            acc = combo_accuracy(accuracy, c)
            if acc is not None:
                row["accuracy"] = acc
        rows.append(row)

    return {
        "env": env,
        "options": {**opts.to_dict(), "imgsz": imgsz},
        "combos": rows,
        "flop_check": {
            "combo": combo_name(full),
            "total_gflops": flop_check["total"] / 1e9,
            "backbone_gflops": flop_check["backbone"] / 1e9,
            "heads_gflops": {t: v / 1e9 for t, v in flop_check["heads"].items()},
            "sum_separate_gflops": flop_check["sum_separate"] / 1e9,
            "rel_err": flop_check["rel_err"],
            "ok": flop_check["rel_err"] <= 0.01,
        },
        **({"accuracy": accuracy} if accuracy is not None else {}),
    }


def combo_accuracy(accuracy: dict, combo: Sequence[str]) -> Optional[dict]:
    """The accuracy entry of ``combo`` from an accuracy result, or None when it was not measured."""
    return accuracy.get("combos", {}).get(combo_name(combo))
