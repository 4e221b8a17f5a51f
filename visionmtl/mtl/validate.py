"""Config checks for training strategies: mode, method, sharing and stages fit together.

Called by :func:`visionmtl.config.validate`; errors are one-line :class:`ConfigError` messages
that name the key and the file that set it.
"""

from __future__ import annotations

from ..config import SHARING_MODES, Config, ConfigError, _choice, _where
from .methods import METHOD_NAMES, is_gradient_method


def validate_strategy(cfg: Config, origin: dict, file: str) -> None:
    """Training-strategy checks: mode, method, sharing and stages fit together."""
    tc, mc = cfg.train, cfg.model
    _choice(tc.mode, ("joint", "alternating"), "train.mode", origin, file)
    _choice(mc.sharing, SHARING_MODES, "model.sharing", origin, file)
    _choice(tc.method.name, METHOD_NAMES, "train.method.name", origin, file)
    _choice(tc.method.grad_on, ("params", "rep"), "train.method.grad_on", origin, file)
    _choice(tc.alternating.order, ("round_robin", "proportional", "uniform", "temperature"),
            "train.alternating.order", origin, file)
    _choice(tc.alternating.optimizers, ("shared", "per_task"), "train.alternating.optimizers", origin, file)
    if tc.alternating.temperature <= 0:
        raise ConfigError(f"{_where('train.alternating.temperature', origin, file)}: key 'train.alternating.temperature' "
                          f"must be > 0, got {tc.alternating.temperature}")
    gradient = is_gradient_method(tc.method.name)
    where = _where("train.method.name", origin, file)
    if gradient and tc.mode == "alternating":
        raise ConfigError(f"{where}: gradient method '{tc.method.name}' combines several tasks' gradients, but "
                          "train.mode: alternating trains one task per step; use a loss weighting method")
    if gradient and mc.sharing == "soft":
        raise ConfigError(f"{where}: gradient method '{tc.method.name}' needs shared parameters, but "
                          "model.sharing: soft gives every task its own backbone")
    if tc.method.task_grad_clip > 0 and not gradient:
        raise ConfigError(f"{_where('train.method.task_grad_clip', origin, file)}: train.method.task_grad_clip "
                          f"needs per-task gradients; use a gradient method (e.g. name: sum), not '{tc.method.name}'")
    total = 0
    for i, st in enumerate(tc.stages):
        key = f"train.stages.{i}"
        if st.epochs < 1:
            raise ConfigError(f"{_where(key + '.epochs', origin, file)}: key '{key}.epochs' must be >= 1, got {st.epochs}")
        total += st.epochs
        for t in st.tasks:
            if t not in cfg.tasks:
                raise ConfigError(f"{_where(key + '.tasks', origin, file)}: stage {st.name or i} trains unknown task "
                                  f"'{t}'; configured tasks: {', '.join(cfg.tasks)}")
        for part in st.freeze:
            if part != "backbone" and part not in cfg.tasks:
                raise ConfigError(f"{_where(key + '.freeze', origin, file)}: stage {st.name or i} freezes unknown part "
                                  f"'{part}'; valid: backbone, {', '.join(cfg.tasks)}")
        trained = st.tasks or list(cfg.tasks)
        if all(t in st.freeze for t in trained) and "backbone" in st.freeze:
            raise ConfigError(f"{_where(key, origin, file)}: stage {st.name or i} freezes everything it trains")
    if total > tc.epochs:
        raise ConfigError(f"{_where('train.stages', origin, file)}: the stages last {total} epochs but train.epochs "
                          f"is {tc.epochs}")
