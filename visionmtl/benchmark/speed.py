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
"""

from __future__ import annotations

import copy
import ctypes
import gc
import itertools
import logging
import math
import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config, ConfigError
from ..data.collate import Batch
from ..engine.optim import build_optimizer
from ..engine.trainer import cpu_bf16_fast, pick_amp, pick_device
from ..models.build import build_model
from ..models.multitask import MultiTaskModel

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

#: Dense (non-sparse) bf16 tensor-core peaks in TFLOP/s, matched against the CUDA device name.
#: Order matters: the first pattern whose words all occur in the name wins.
BF16_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], Optional[float]], ...] = (
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), None),  # different clocks and power limit; not in the table
    (("H100",), 989.0),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    (("H200",), 989.0),
    (("A100",), 312.0),
)


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
# Combinations and configs
# --------------------------------------------------------------------------------------------
def combo_name(combo: Sequence[str]) -> str:
    """``("cls", "det")`` -> ``"cls+det"``."""
    return "+".join(combo)


def all_combos(tasks: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``tasks``, by size then in task order (7 for 3 tasks)."""
    tasks = list(tasks)
    return [c for k in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, k)]


def parse_combos(spec: Any, tasks: Sequence[str]) -> list[tuple[str, ...]]:
    """Resolve a combination spec against the configured task names.

    Args:
        spec: ``"all"``, ``"cls,det+seg"``, or a sequence of ``"a+b"`` strings / task tuples.
        tasks: task names in config order.

    Returns:
        Combinations as tuples in config order, without duplicates, in the order given.

    Raises:
        ConfigError: an unknown task name, an empty combination, or nothing selected.
    """
    tasks = list(tasks)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return all_combos(tasks)
    items = [s for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[tuple[str, ...]] = []
    for item in items:
        names = [n.strip() for n in item.split("+")] if isinstance(item, str) else [str(n).strip() for n in item]
        names = [n for n in names if n]
        if not names:
            raise ConfigError(f"--combos: empty combination in {spec!r}")
        unknown = [n for n in names if n not in tasks]
        if unknown:
            raise ConfigError(f"--combos: unknown task(s) {unknown}; configured tasks: {', '.join(tasks)}")
        combo = tuple(t for t in tasks if t in names)
        if combo not in out:
            out.append(combo)
    if not out:
        raise ConfigError(f"--combos: nothing selected by {spec!r}")
    return out


def subset_config(cfg: Config, tasks: Sequence[str]) -> Config:
    """A deep copy of ``cfg`` keeping only ``tasks``; dataset task lists are restricted to them and
    a dataset left with none is dropped."""
    missing = [t for t in tasks if t not in cfg.tasks]
    if missing:
        raise ConfigError(f"unknown task(s) {missing}; configured tasks: {', '.join(cfg.tasks)}")
    sub = copy.deepcopy(cfg)
    sub.tasks = {n: t for n, t in sub.tasks.items() if n in tasks}
    for split in ("train", "val"):
        kept = []
        for d in getattr(sub.data, split):
            if d.tasks:
                d.tasks = [t for t in d.tasks if t in tasks]
                if not d.tasks:  # an empty list would mean "every task it can": drop the dataset
                    continue
            kept.append(d)
        setattr(sub.data, split, kept)
    return sub


def build_combo_model(cfg: Config, combo: Sequence[str], seed: int = 0) -> MultiTaskModel:
    """The config's model with only the heads of ``combo`` (weights seeded, backbone weights as configured)."""
    torch.manual_seed(seed)
    return build_model(subset_config(cfg, combo))


# --------------------------------------------------------------------------------------------
# Synthetic input
# --------------------------------------------------------------------------------------------
def synthetic_batch(cfg: Config, batch: int, imgsz: int, seed: int = 0, max_boxes: int = 4) -> Batch:
    """A seeded batch with labels for every task of ``cfg`` (``has`` all true).

    Images are standard-normal ``[B, 3, imgsz, imgsz]`` (roughly what normalisation produces);
    classification gets 1-2 random labels (exactly one for multi-class, or ``attrs[attr]``),
    detection 1-``max_boxes`` random boxes at least 8 px wide, segmentation a blocky random mask.
    """
    if imgsz < 32 or imgsz % 32:
        raise ConfigError(f"--imgsz must be a positive multiple of 32, got {imgsz}")
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, imgsz, imgsz, generator=g)
    targets: list[dict] = [{} for _ in range(batch)]
    for name, t in cfg.tasks.items():
        n_cls = len(t.classes)
        for tgt in targets:
            if t.type == "classification":
                if t.attr:
                    tgt.setdefault("attrs", {})[t.attr] = int(torch.randint(n_cls, (1,), generator=g))
                else:
                    k = 1 if not t.multilabel else int(torch.randint(1, min(2, n_cls) + 1, (1,), generator=g))
                    tgt["labels"] = torch.randperm(n_cls, generator=g)[:k].to(torch.int64)
            elif t.type == "detection":
                n = int(torch.randint(1, max_boxes + 1, (1,), generator=g))
                xy = torch.rand(n, 2, generator=g) * (imgsz - 8)
                wh = 8 + torch.rand(n, 2, generator=g) * (imgsz / 2)
                x2y2 = torch.minimum(xy + wh, torch.full_like(xy, float(imgsz)))
                tgt["boxes"] = torch.cat([xy, x2y2], dim=1).to(torch.float32)
                tgt["box_labels"] = torch.randint(n_cls, (n,), generator=g, dtype=torch.int64)
            else:
                cells = max(imgsz // 16, 1)
                low = torch.randint(n_cls, (1, 1, cells, cells), generator=g).float()
                tgt["mask"] = nn.functional.interpolate(low, size=(imgsz, imgsz), mode="nearest")[0, 0].to(torch.int64)
    has = {name: torch.ones(batch, dtype=torch.bool) for name in cfg.tasks}
    meta = [{"path": "<synthetic>", "image_id": i, "dataset": "synthetic", "orig_size": (imgsz, imgsz),
             "input_size": (imgsz, imgsz)} for i in range(batch)]
    return Batch(images, targets, has, meta)


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------
def _flops_of(fn: Callable[[], Any]) -> tuple[int, Any, dict[str, int]]:
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    per_module = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), out, per_module


@torch.inference_mode()
def count_flops(model: MultiTaskModel, image: Tensor) -> dict:
    """FLOPs of one forward pass of ``model`` on ``image`` (``[1, 3, H, W]``), with a breakdown.

    Returns:
        ``total`` (whole model), ``backbone`` and ``heads`` (``{task: flops}``) from the
        per-module breakdown of that same pass, ``sum_separate`` (the backbone counted on its
        own plus every head counted on its own, on the backbone's features) and ``rel_err`` =
        ``|total - sum_separate| / total``. All values are FLOPs (multiply-add = 2) per image.
    """
    was_training = model.training
    model.eval()
    try:
        image = image[:1]
        total, _, per_module = _flops_of(lambda: model(image))
        root = type(model).__name__
        backbone = per_module.get(f"{root}.backbone", 0)
        heads = {t: per_module.get(f"{root}.heads.{t}", 0) for t in model.tasks}
        bb_alone, feats, _ = _flops_of(lambda: model.backbone(image))
        heads_alone = {}
        for t, head in model.heads.items():
            heads_alone[t], _, _ = _flops_of(lambda head=head: head(feats))
        sum_sep = bb_alone + sum(heads_alone.values())
    finally:
        model.train(was_training)
    return {
        "total": total,
        "backbone": backbone,
        "heads": heads,
        "backbone_alone": bb_alone,
        "heads_alone": heads_alone,
        "sum_separate": sum_sep,
        "rel_err": abs(total - sum_sep) / total if total else 0.0,
    }


def gpu_bf16_peak_tflops(name: str) -> Optional[float]:
    """Dense bf16 peak of a CUDA device by name (:data:`BF16_PEAK_TFLOPS`), or None if unknown."""
    upper = name.upper()
    for words, peak in BF16_PEAK_TFLOPS:
        if all(w in upper for w in words):
            return peak
    return None


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------
def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssSampler(threading.Thread):
    """Reads the resident set size from ``/proc/self/statm`` every ``interval`` seconds."""

    def __init__(self, interval: float = 5e-4) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self._halt = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)

    def rss(self) -> int:
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.rss())
        os.close(self._fd)
        return self.peak


class PeakMemory(AbstractContextManager):
    """Peak memory growth (bytes) of the code inside the ``with`` block, in :attr:`peak`.

    CUDA: ``max_memory_allocated`` minus ``memory_allocated`` at entry. CPU: the growth of the
    process's RSS, sampled by a thread every 0.5 ms from ``/proc/self/statm`` and raised to the
    ``ru_maxrss`` high-water mark when that moved inside the block; freed heap memory is handed
    back to the OS (``malloc_trim``) at entry so the baseline is tight.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._base = 0
        self._sampler: Optional[_RssSampler] = None
        self._ru0 = 0

    def __enter__(self) -> PeakMemory:
        gc.collect(1)  # young generations: cheap; tensors are freed by reference counting
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _malloc_trim()
            self._sampler = _RssSampler()
            self._base = self._sampler.rss()
            self._ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self._sampler.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            assert self._sampler is not None
            peak = self._sampler.stop()
            ru1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if ru1 > self._ru0:  # a new process-lifetime high inside the block (KiB on Linux)
                peak = max(peak, ru1 * 1024)
        self.peak = max(int(peak) - int(self._base), 0)


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    """Total storage bytes of ``tensors`` (each counted once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, Tensor) or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers."""
    return tensor_bytes(itertools.chain(model.parameters(), model.buffers()))


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the optimiser's state tensors (momentum, Adam moments)."""
    return tensor_bytes(v for state in opt.state.values() for v in state.values() if isinstance(v, Tensor))


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def cpu_model_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def environment(device: torch.device, amp_dtype: Optional[torch.dtype], imgsz: int, batch: int,
                channels_last: bool) -> dict:
    """The header of every report: software, hardware and the measured setting."""
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name(),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": _dtype_name(amp_dtype),
        "imgsz": imgsz,
        "batch": batch,
        "channels_last": channels_last,
        "cpu_bf16_fast": cpu_bf16_fast(),
        "memory_method": ("cuda: weights + (max_memory_allocated - memory_allocated before)" if device.type == "cuda"
                          else "cpu: weights + peak RSS growth (/proc/self/statm sampled every 0.5 ms, ru_maxrss, "
                               "malloc_trim before)"),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu_bf16_peak_tflops"] = gpu_bf16_peak_tflops(env["device_name"])
    return env


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------
@dataclass
class _Trainable:
    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    weights: dict[str, float]


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
            opt = build_optimizer(tmodel, self.cfg.train)
            scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
            e.trainable = _Trainable(tmodel, opt, scaler, {t: self.cfg.tasks[t].weight for t in combo})
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
        for tr in trainables:
            with self.autocast():
                raw = tr.model(self.images)
            losses = tr.model.loss(raw, self.batch)
            total = None
            for key, v in losses.items():
                task = next(t for t in tr.weights if key.startswith(f"loss_{t}_"))
                term = tr.weights[task] * v
                total = term if total is None else total + term
            tr.scaler.scale(total).backward()
            tr.scaler.step(tr.optimizer)
            tr.scaler.update()
            tr.optimizer.zero_grad(set_to_none=True)

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
    combos = parse_combos(opts.combos, tasks)
    bench = _Bench(cfg, opts, device, amp_dtype, imgsz)
    env = environment(device, amp_dtype, imgsz, opts.batch, opts.channels_last)
    log.info("benchmark on %s (%s), %s, %d px, batch %d, %d threads", env["device_name"], device, env["dtype"],
             imgsz, opts.batch, env["threads"])

    # models: every combination, plus the single-task models the separate runs need
    needed = list(combos)
    if opts.compare_separate:
        needed += [(t,) for c in combos for t in c if (t,) not in needed]
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
        if opts.compare_separate and len(combo) > 1:  # a single task's separate model is the model itself
            singles = [bench.entries[(t,)] for t in combo]
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
                resident = model_bytes(tr.model) + optimizer_bytes(tr.optimizer)
                row["train_memory_mb"] = (resident + bench.peak(plans[c]["train"], opts.memory_runs)) / 2**20
        if opts.compare_separate and len(c) == 1:
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
            singles = [bench.entries[(t,)] for t in c]
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
                    resident = sum(model_bytes(s.trainable.model) + optimizer_bytes(s.trainable.optimizer) for s in singles)
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
