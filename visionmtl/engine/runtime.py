"""Device, precision and seeding: the runtime choices the trainer, evaluation, benchmark and
predictor share (nothing here imports the trainer).

``train.amp: auto`` turns on bf16 autocast on CUDA and on CPUs where bf16 pays off (AMX or
AVX512-BF16), fp32 elsewhere. Results therefore depend on the CPU unless precision is pinned:
tests that compare two code paths pin it (``amp: off``), and ``VISIONMTL_CPU_BF16=1`` / ``=0``
forces the CPU check on or off, so either kind of machine can be tried on the other.
"""

from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch

__all__ = ["CPU_BF16_ENV", "cpu_bf16_fast", "pick_amp", "pick_device", "seed_everything"]

CPU_BF16_ENV = "VISIONMTL_CPU_BF16"


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda``/``cuda:N`` without CUDA raises RuntimeError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


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


def pick_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``train.amp`` on ``device``, or None for fp32."""
    if mode == "off":
        return None
    if device.type == "cuda":
        if mode == "fp16":
            return torch.float16
        if mode == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if mode == "fp16":
        raise ValueError("train.amp: fp16 autocast is for CUDA; use bf16 or off on CPU")
    if mode == "bf16" or (mode == "auto" and cpu_bf16_fast()):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
