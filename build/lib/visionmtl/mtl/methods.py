"""``train.method`` -> a balancing object: one explicit name -> class dict per family.

Loss weighting methods (:mod:`visionmtl.mtl.weighting`) turn the active tasks' losses into one
total; gradient methods (:mod:`visionmtl.mtl.gradient`) turn the Gram matrix of the active
tasks' gradients into coefficients of the combined gradient. :mod:`visionmtl.engine.step` runs the
backward pass each family needs.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from .gradient import GRADIENT_METHODS
from .names import METHOD_NAMES, is_gradient_method  # noqa: F401  (re-exported)
from .weighting import WEIGHTINGS


def build_method(name: str, tasks: Sequence[str], weights: Mapping[str, float] | None = None,
                 args: Mapping[str, Any] | None = None, task_grad_clip: float = 0.0):
    """The method ``name`` for ``tasks``; ``args`` are checked against its constructor."""
    cls = WEIGHTINGS.get(name) or GRADIENT_METHODS.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, METHOD_NAMES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(METHOD_NAMES)}"
        raise ConfigError(f"unknown train.method.name '{name}'{hint}")
    kwargs = dict(args or {})
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "tasks", "weights", "task_grad_clip")
             and params[p].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    for k in kwargs:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid) or '(none)'}"
            raise ConfigError(f"unknown key 'train.method.args.{k}' for method '{name}'{hint}")
    if cls in GRADIENT_METHODS.values():
        kwargs["task_grad_clip"] = task_grad_clip
    return cls(list(tasks), dict(weights or {}), **kwargs)
