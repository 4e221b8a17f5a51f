"""Checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError




def rng_state() -> dict:
    """All RNG states as tensors and plain values (safe for weights_only loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write to ``<path>.tmp``, fsync, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load with ``weights_only=True``; errors name the file."""
    ckpt = read_torch_file(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a visionmtl checkpoint (no 'model' entry)")
    return ckpt


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(weights_only=True)`` of any torch file; errors name the file (``what`` it was to be)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: {what} file is empty")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # torch.save: a zip archive (or a legacy pickle)
        kind = "a YAML config" if path.suffix.lower() in (".yaml", ".yml") else "not a torch file"
        raise CheckpointError(f"{path}: not a {what} ({kind}; expected a .pt file written by torch.save, "
                              f"e.g. a run's best.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file
        text = str(e)
        if "weights_only" in text or "Weights only load failed" in text:
            # torch's advice (weights_only=False) would run code from the file: never pass it on
            why = "it holds pickled Python objects beyond tensors and plain values"
        else:
            why = f"{type(e).__name__}: {(text.strip().splitlines() or [''])[0][:200]}"
        raise CheckpointError(f"{path}: cannot read {what} ({why})") from None
    return ckpt


def inference_state(ckpt: dict) -> dict:
    """The weights to evaluate or deploy: the EMA (``train.ema_decay``) when the run kept one."""
    return ckpt["ema"] if "ema" in ckpt else ckpt["model"]


def load_model_state(model: torch.nn.Module, state: dict, path: str = "checkpoint") -> None:
    """Load weights strictly; a mismatch (a checkpoint from another config) gives one clear line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        parts = []
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: checkpoint does not match this model's config: " + "; ".join(parts))
    model.load_state_dict(state)


def load_trained(path: str | os.PathLike, device="cpu", ckpt: dict | None = None):
    """(model in eval mode, cfg, checkpoint) from a checkpoint that carries its resolved config.

    The weights are the EMA when the run kept one (:func:`inference_state`); the backbone's
    ``weights`` setting is ignored (the checkpoint holds them all).
    """
    from ..config import config_from_dict
    from ..models.build import build_model

    ckpt = load_checkpoint(path) if ckpt is None else ckpt  # ckpt: already read from path
    if "config" not in ckpt:
        raise CheckpointError(f"{path}: checkpoint has no config")
    cfg = config_from_dict(ckpt["config"], source=str(path))
    cfg.model.backbone.weights = "none"
    model = build_model(cfg)
    load_model_state(model, inference_state(ckpt), str(path))
    return model.to(device).eval(), cfg, ckpt
