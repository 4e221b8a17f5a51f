"""Device, precision, ``torch.compile`` support and seeding: the runtime choices the trainer,
evaluation, benchmark and predictor share (nothing here imports the trainer).

``train.amp: auto`` turns on bf16 autocast on CUDA and on CPUs where bf16 pays off (AMX or
AVX512-BF16), fp32 elsewhere. Results therefore depend on the CPU unless precision is pinned:
tests that compare two code paths pin it (``amp: off``), and ``VISIONMTL_CPU_BF16=1`` / ``=0``
forces the CPU check on or off, so either kind of machine can be tried on the other.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from typing import Optional

import numpy as np
import torch

from ..config_check import AMP_MODES
from ..errors import ConfigError

__all__ = ["AMP_MODES", "CPU_BF16_ENV", "check_compile", "cpu_bf16_fast", "pick_amp", "pick_device",
           "seed_everything"]

CPU_BF16_ENV = "VISIONMTL_CPU_BF16"


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` or a bare ``N``
    (``cuda:N``, as Ultralytics' ``device=0``). A GPU that is not there, or a name that is no
    device, raises RuntimeError with one line."""
    name = str(name).strip().lower()
    if name.isdigit():
        name = f"cuda:{name}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise RuntimeError(f"device '{name}' requested but CUDA is not available ({why}); use 'cpu' or 'auto'")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RuntimeError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or a GPU index N") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise RuntimeError(f"unsupported device '{name}'; use auto, cpu, cuda, cuda:N or a GPU index N")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def cpu_bf16_fast() -> bool:
    """bf16 autocast pays off on CPUs with AMX or AVX512-BF16; elsewhere it is slower than fp32.

    ``VISIONMTL_CPU_BF16=1`` (or ``0``) overrides the hardware check.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def pick_amp(mode: str, device: torch.device, key: str = "train.amp") -> Optional[torch.dtype]:
    """The autocast dtype for ``mode`` (``train.amp``, or the ``--amp`` flag: ``key`` names it in
    errors) on ``device``, or None for fp32.

    Raises:
        ConfigError: an unknown mode, or fp16 on a CPU.
    """
    if mode not in AMP_MODES:
        raise ConfigError(f"{key} {mode}: use {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if device.type == "cuda":
        if mode == "fp16":
            return torch.float16
        if mode == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if mode == "fp16":
        raise ConfigError(f"{key} fp16: fp16 autocast is for CUDA; use bf16 or off on CPU")
    if mode == "bf16" or (mode == "auto" and cpu_bf16_fast()):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_compile(device: torch.device) -> None:
    """Raise a one-line :class:`ConfigError` when ``torch.compile`` (``train.compile``) cannot run on ``device``.

    Checked before any data is read: TorchDynamo must support this Python and platform, the
    Inductor backend needs Triton, a C compiler (``$CC``, else gcc or clang) and compute capability
    7.0+ on CUDA, and a C++ compiler (``$CXX``, else ``g++``) on CPU.
    """
    import torch._dynamo

    supported = getattr(torch._dynamo, "is_dynamo_supported", lambda: True)
    if not supported():
        raise ConfigError(f"train.compile: torch.compile is not supported with Python "
                          f"{sys.version_info.major}.{sys.version_info.minor} on {sys.platform} by torch "
                          f"{torch.__version__}; set train.compile=false")
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (7, 0):
            raise ConfigError(f"train.compile: torch.compile (Inductor) needs CUDA compute capability 7.0+, "
                              f"{torch.cuda.get_device_name(device)} has {major}.{minor}; set train.compile=false")
        if not has_triton():
            raise ConfigError("train.compile: torch.compile on CUDA needs Triton, which is not installed "
                              "(pip install triton); set train.compile=false")
        cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")  # Triton's own lookup
        if not cc or shutil.which(cc) is None:
            raise ConfigError(f"train.compile: Triton builds its kernel launcher with a C compiler, and "
                              f"{cc or 'none'} ($CC, else gcc or clang) was not found; install one or set "
                              "train.compile=false")
    elif device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None:
            raise ConfigError(f"train.compile: torch.compile on CPU needs a C++ compiler, and '{cxx}' "
                              "($CXX, else g++) was not found; install one or set train.compile=false")
    else:
        raise ConfigError(f"train.compile: not supported on device type '{device.type}'; set train.compile=false")
