"""Fine-tuning from weights: ``model.load_from`` (MMDetection's ``load_from``, Detectron2's
``MODEL.WEIGHTS``).

The file is a visionmtl checkpoint (its EMA weights when the run kept them) or a plain state dict
(``{name: tensor}``, also under ``state_dict`` or ``model``, with or without DDP's ``module.``
prefix). Parameters and buffers are matched by name and shape. A head whose class list changed
keeps the model's fresh initialisation, except that when both class lists are known (the
checkpoint's config and this one) the rows of its class-indexed tensors (dimension 0 of the
size of the class list: the classifier's weight and bias) are carried over by class name, so a
class both models know (by name, or by name up to case when that is unambiguous) keeps what it
learnt. One summary says what was loaded, carried by name, re-initialised, missing and
unexpected; the same goes to ``load_from.json`` in the work dir.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

import torch

from .checkpoint import CheckpointError, inference_state, read_torch_file

__all__ = ["load_from"]

log = logging.getLogger(__name__)


def _state_and_config(raw: Any, path: str) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """The weights and (for a visionmtl checkpoint) the config dict of a loaded torch file."""
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], Mapping):
        state, config = inference_state(raw), raw.get("config")
    elif isinstance(raw, dict) and isinstance(raw.get("state_dict"), Mapping):
        state, config = raw["state_dict"], None
    elif isinstance(raw, dict):
        state, config = raw, None
    else:
        raise CheckpointError(f"{path}: not a checkpoint or state dict (it holds a {type(raw).__name__})")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: not a checkpoint or state dict (no tensors in it)")
    if all(k.startswith("module.") for k in tensors):  # saved from a DDP-wrapped model
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, config if isinstance(config, Mapping) else None


def _old_classes(config: Optional[Mapping]) -> dict[str, list[str]]:
    if not config:
        return {}
    tasks = config.get("tasks") or {}
    out = {}
    for name, t in tasks.items():
        if isinstance(t, Mapping) and isinstance(t.get("classes"), list) and t["classes"]:
            out[str(name)] = [str(c) for c in t["classes"]]
        elif isinstance(t, Mapping) and isinstance(t.get("targets"), list):
            out[str(name)] = [str(c) for c in t["targets"]]
    return out


def _rows_by_name(old: list[str], new: list[str]) -> list[tuple[int, int]]:
    """``(new row, old row)`` for every class both lists name: the same name, else the same name
    up to case (COCO's ``car`` is CamVid's ``Car``) when that is unambiguous in the old list."""
    index = {c: i for i, c in enumerate(old)}
    folded: dict[str, int | None] = {}
    for i, c in enumerate(old):
        folded[c.casefold()] = None if c.casefold() in folded else i
    rows = []
    for i, c in enumerate(new):
        j = index.get(c, folded.get(c.casefold()))
        if j is not None:
            rows.append((i, j))
    return rows


def load_from(model: torch.nn.Module, tasks: Mapping[str, Any], path: str) -> dict:
    """Load ``path`` into ``model`` by name and shape (see the module docstring); return the summary.

    Args:
        model: the freshly built model.
        tasks: this config's tasks (``name -> TaskConfig``): their output names, for carrying
            class rows by name.
        path: the weights file.

    Raises:
        CheckpointError: a missing or unreadable file, a file that is not a checkpoint or a state
            dict, or one of which no parameter matches the model.
    """
    from ..tasks import spec

    path = str(path)
    state, config = _state_and_config(read_torch_file(path, "load_from weights file"), path)
    old = _old_classes(config)
    new = {n: list(spec(t).outputs(t)) for n, t in tasks.items()}
    own = model.state_dict()
    loaded, by_name, reinit = [], {}, []
    updates: dict[str, torch.Tensor] = {}
    for k, v in own.items():
        src = state.get(k)
        if src is None:
            continue
        if src.shape == v.shape:
            updates[k] = src.to(v.dtype)
            loaded.append(k)
            continue
        task = k.split(".")[1] if k.startswith("heads.") else None
        if task in old and task in new and src.dim() >= 1 and src.shape[0] == len(old[task]) \
                and v.shape[0] == len(new[task]) and src.shape[1:] == v.shape[1:]:
            rows = _rows_by_name(old[task], new[task])
            t = v.clone()
            for i, j in rows:
                t[i] = src[j].to(v.dtype)
            updates[k] = t
            by_name.setdefault(task, set()).add(len(rows))
            continue
        reinit.append(k)
    if not updates:
        raise CheckpointError(f"{path}: no parameter of the file matches this model by name and shape "
                              f"({len(state)} tensors in the file, e.g. {next(iter(state))!r}; "
                              f"{len(own)} in the model, e.g. {next(iter(own))!r})")
    model.load_state_dict({**own, **updates})
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    changed = sorted({k.split(".")[1] for k in reinit if k.startswith("heads.")} | set(by_name))
    summary = {
        "path": path, "loaded": len(loaded), "carried_by_class_name": {t: max(n) for t, n in by_name.items()},
        "reinitialised": reinit, "missing": missing, "unexpected": unexpected, "heads_with_new_classes": changed,
    }
    carried = ", ".join(f"{t}: {max(n)} of {len(new[t])} classes" for t, n in by_name.items())
    log.info("load_from %s: %d of %d tensors loaded%s%s; %d re-initialised (shape changed), %d missing from the "
             "file, %d in the file unused", path, len(loaded), len(own),
             f"; heads with new classes: {', '.join(changed)}" if changed else "",
             f" (class rows carried by name: {carried})" if carried else "", len(reinit), len(missing),
             len(unexpected))
    return summary
