"""Training throughput through the trainer's own step (what ``tools/gpu_bench.py`` measures).

One :class:`~visionmtl.engine.trainer.Trainer` is built from the config (its model, optimiser,
method, scaler, autocast and DataLoader), and :meth:`Trainer.train_step` is timed twice:

* **compute**: a synthetic ``imgsz x imgsz`` batch with labels for every task, held on the device,
  so nothing waits for data: images/s, peak device memory, and MFU = (images/s x training FLOPs
  per image) / the measured peak of a large matmul in the autocast dtype;
* **loader**: batches from the config's training DataLoader (pinned memory, ``non_blocking``
  copies inside the step). Each step is synchronised; the time blocked in ``next(loader)`` is the
  time the device had nothing to do, so ``busy_share`` = step time / (step time + wait time).
  That misses workers that slow the step itself by taking the CPU from the launching thread, so
  ``useful_share`` = loader images/s / compute images/s is reported too (on the H200 with 12
  workers: busy 96.6%, useful 67%).

Training FLOPs per image are counted with :class:`torch.utils.flop_counter.FlopCounterMode` over
one whole step (forward, losses and backward; the optimiser's element-wise update is not counted)
and, as a cross-check, 3x the forward pass counted by :func:`~visionmtl.benchmark.measure.count_flops`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config
from ..engine.step import train_step
from ..engine.trainer import Trainer
from .combos import synthetic_batch
from .measure import count_flops, gpu_bf16_peak_tflops

__all__ = ["ThroughputOptions", "matmul_peak_tflops", "measure_throughput", "step_flops"]


@dataclass
class ThroughputOptions:
    """What to time. ``time_limit`` (seconds, 0 = none) cuts each timed loop short."""

    steps: int = 20  # timed compute steps
    warmup: int = 5  # untimed steps first (cuDNN autotuning, allocator, compilation)
    loader_steps: int = 40  # timed steps with the real DataLoader
    cudnn_benchmark: bool = True  # on CUDA, also time the compute steps with cudnn.benchmark on
    time_limit: float = 0.0
    peak_sizes: tuple[int, ...] = (4096, 8192, 16384)  # matmul sides for the measured peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16,
                       sizes: tuple[int, ...] = (4096, 8192, 16384), iters: int = 20) -> float:
    """The best TFLOP/s of ``n x n @ n x n`` matmuls in ``dtype`` over ``sizes`` (2 n^3 FLOPs each)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12)
        del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best


def step_flops(trainer: Trainer, batch, tasks: list[str]) -> int:
    """FLOPs of one training step on ``batch`` (forward, losses, backward), counted on the eager model."""
    parts = dataclasses.replace(trainer.step_parts(), model=trainer.net)  # FlopCounterMode and compile don't mix
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(parts, batch, tasks)
    return int(counter.get_total_flops())


def _timed_steps(trainer: Trainer, batch, tasks: list[str], n: int, deadline: float) -> tuple[int, float]:
    """Run up to ``n`` steps on one device-resident batch; (steps run, seconds)."""
    _sync(trainer.device)
    t0 = time.perf_counter()
    done = 0
    while done < n and (done == 0 or time.perf_counter() < deadline):
        trainer.train_step(batch, tasks)
        done += 1
    _sync(trainer.device)
    return done, time.perf_counter() - t0


def _loader_steps(trainer: Trainer, tasks: list[str], n: int, deadline: float) -> dict:
    """Steps fed by the training DataLoader: time waiting for a batch vs time in the step."""
    wait = busy = 0.0
    images = pixels = steps = 0
    epoch = 0
    it = iter(trainer.epoch_batches(epoch))
    first = True
    while steps < n and (steps == 0 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        try:
            _, batch = next(it)
        except StopIteration:
            epoch += 1
            it = iter(trainer.epoch_batches(epoch))
            continue
        t1 = time.perf_counter()
        trainer.train_step(batch, tasks)
        _sync(trainer.device)
        t2 = time.perf_counter()
        if first:  # the first batch includes the workers' start-up
            first = False
            continue
        wait += t1 - t0
        busy += t2 - t1
        steps += 1
        images += len(batch)
        pixels += len(batch) * batch.images.shape[-2] * batch.images.shape[-1]
    total = wait + busy
    return {"steps": steps, "images": images, "pixels": pixels, "seconds": total, "wait_s": wait, "step_s": busy,
            "img_s": images / total if total else 0.0, "busy_share": busy / total if total else 0.0,
            "workers": trainer.train_loader.num_workers if trainer.train_loader is not None else 0,
            "pin_memory": bool(getattr(trainer.train_loader, "pin_memory", False))}


def _peak_memory(device: torch.device) -> Optional[int]:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def measure_throughput(cfg: Config, imgsz: int, batch: int, opts: Optional[ThroughputOptions] = None,
                       work_dir: Optional[str] = None) -> dict[str, Any]:
    """Time the trainer's step on ``cfg`` (see the module docstring); returns every figure as a dict.

    ``cfg`` is used as given (device, precision, ``train.compile``, workers); its ``data.val`` is
    not read. ``work_dir`` receives the trainer's config and log files.
    """
    opts = opts or ThroughputOptions()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val=[]))
    t_build = time.perf_counter()
    trainer = Trainer(cfg, work_dir or cfg.work_dir)
    device, dtype = trainer.device, trainer.amp_dtype
    tasks = list(cfg.tasks)
    trainer.net.train()
    build_s = time.perf_counter() - t_build

    out: dict[str, Any] = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "backbone": cfg.model.backbone.name, "tasks": tasks, "imgsz": imgsz,
        "batch": batch, "amp": str(dtype).replace("torch.", "") if dtype else "fp32",
        "channels_last": cfg.train.channels_last, "compile": cfg.train.compile, "build_s": build_s,
    }
    peak_dtype = dtype or torch.float32
    out["peak_tflops"] = matmul_peak_tflops(device, peak_dtype, opts.peak_sizes)
    out["peak_dtype"] = str(peak_dtype).replace("torch.", "")
    out["datasheet_bf16_tflops"] = gpu_bf16_peak_tflops(out["device_name"]) if device.type == "cuda" else None

    syn = synthetic_batch(cfg, batch, imgsz, cfg.train.seed).to(device, memory_format=trainer.memory_format)
    t0 = time.perf_counter()
    for _ in range(max(opts.warmup, 1)):
        trainer.train_step(syn, tasks)
    _sync(device)
    out["warmup_s"] = time.perf_counter() - t0

    flops = step_flops(trainer, syn, tasks)
    out["train_flops_per_img"] = flops / batch
    image1 = syn.images[:1]
    out["fwd_flops_per_img"] = count_flops(trainer.net, image1)["total"]
    trainer.net.train()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    limit = opts.time_limit or float("inf")
    steps, secs = _timed_steps(trainer, syn, tasks, opts.steps, time.perf_counter() + limit / 3)
    out["compute"] = {"steps": steps, "seconds": secs, "img_s": steps * batch / secs, "step_ms": 1e3 * secs / steps}
    out["peak_mem_bytes"] = _peak_memory(device)
    if device.type == "cuda":
        out["device_mem_bytes"] = torch.cuda.get_device_properties(device).total_memory
    achieved = out["compute"]["img_s"] * out["train_flops_per_img"] / 1e12
    out["compute"]["tflops"] = achieved
    out["mfu"] = achieved / out["peak_tflops"] if out["peak_tflops"] else None

    if device.type == "cuda" and opts.cudnn_benchmark and not torch.backends.cudnn.benchmark:
        torch.backends.cudnn.benchmark = True
        try:
            for _ in range(max(opts.warmup, 1)):
                trainer.train_step(syn, tasks)
            steps, secs = _timed_steps(trainer, syn, tasks, opts.steps, time.perf_counter() + limit / 3)
        finally:
            torch.backends.cudnn.benchmark = False
        img_s = steps * batch / secs
        out["compute_cudnn_benchmark"] = {"steps": steps, "seconds": secs, "img_s": img_s,
                                          "step_ms": 1e3 * secs / steps,
                                          "mfu": img_s * out["train_flops_per_img"] / 1e12 / out["peak_tflops"]}
    del syn

    loader = _loader_steps(trainer, tasks, opts.loader_steps, time.perf_counter() + limit / 3)
    per_pixel = out["train_flops_per_img"] / (imgsz * imgsz)
    loader["tflops"] = per_pixel * loader["pixels"] / loader["seconds"] / 1e12 if loader["seconds"] else 0.0
    loader["mfu"] = loader["tflops"] / out["peak_tflops"] if out["peak_tflops"] else None
    # the share of the compute-bound rate reached with real data: waiting on next(loader) misses
    # the workers' CPU contention, which slows the step itself (the launch thread shares the cores)
    loader["useful_share"] = loader["img_s"] / out["compute"]["img_s"] if out["compute"]["img_s"] else None
    out["loader"] = loader
    out["peak_mem_bytes_loader"] = _peak_memory(device)
    return out


def format_table(r: dict[str, Any]) -> str:
    """The figures of :func:`measure_throughput` as a two-column markdown table."""
    gib = lambda b: f"{b / 2**30:.1f} GiB" if b is not None else "n/a"  # noqa: E731
    pct = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"  # noqa: E731
    tf = lambda x: f"{x:.1f}" if x >= 1 else f"{x:.3g}"  # noqa: E731
    c, ld = r["compute"], r["loader"]
    rows = [
        ("setting", f"{r['backbone']}-FPN {'+'.join(r['tasks'])}, {r['imgsz']} px, batch {r['batch']}, {r['amp']}, "
                    f"channels_last={r['channels_last']}, compile={r['compile']}, {r['device_name']}"),
        ("train img/s (compute, batch on device)", f"{c['img_s']:.1f} ({c['step_ms']:.1f} ms/step)"),
        ("train FLOPs/img (fwd+bwd counted; 3x fwd)",
         f"{r['train_flops_per_img'] / 1e9:.1f} G; {3 * r['fwd_flops_per_img'] / 1e9:.1f} G"),
        (f"measured {r['peak_dtype']} matmul peak", f"{tf(r['peak_tflops'])} TFLOP/s"
         + (f" (datasheet {r['datasheet_bf16_tflops']:.0f})" if r.get("datasheet_bf16_tflops") else "")),
        ("achieved / MFU (compute)", f"{tf(c['tflops'])} TFLOP/s / {pct(r['mfu'])}"),
    ]
    if "compute_cudnn_benchmark" in r:
        cb = r["compute_cudnn_benchmark"]
        rows.append(("train img/s, cudnn.benchmark on / MFU", f"{cb['img_s']:.1f} / {pct(cb['mfu'])}"))
    rows += [
        ("peak GPU memory (allocated)", f"{gib(r['peak_mem_bytes'])} compute, {gib(r['peak_mem_bytes_loader'])} with loader"),
        ("train img/s with the DataLoader", f"{ld['img_s']:.1f} ({ld['steps']} steps, {ld['workers']} workers, "
                                            f"pin_memory={ld['pin_memory']})"),
        ("GPU busy share of the step (not waiting for data)", f"{pct(ld['busy_share'])} (waited {ld['wait_s']:.2f} s "
                                                               f"of {ld['seconds']:.2f} s)"),
        ("img/s with the DataLoader / compute-bound img/s", pct(ld.get("useful_share"))),
        ("MFU with the DataLoader", pct(ld["mfu"])),
        ("warm-up (first steps, incl. compilation)", f"{r['warmup_s']:.1f} s"),
    ]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
