"""Measurements for the benchmark: FLOPs (with the breakdown check), peak memory and the environment."""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..engine.runtime import cpu_bf16_fast
from ..models.multitask import MultiTaskModel

#: Dense (non-sparse) bf16 tensor-core peaks in TFLOP/s, matched against the CUDA device name.
#: Order matters: the first pattern whose words all occur in the name wins.
BF16_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], Optional[float]], ...] = (
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), None),  # different clocks and power limit; not in the table
    (("H100",), 989.0),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    (("H200",), 989.0),
    (("A100",), 312.0),
)


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
