"""Helpers shared by the evaluators."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def dist_active() -> bool:
    """Whether a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()
