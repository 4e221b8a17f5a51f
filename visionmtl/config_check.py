"""Validation of a whole config at load time: every key, before anything heavy is imported.

:func:`validate` runs inside ``load_config``: task types and their options (through each type's
spec), head keyword arguments, the training strategy (mode, method and its ``args``, sharing,
stages), and every dataset entry's adapter keys. It imports no torch, so a typo anywhere fails
in well under a second, with one line that names the file that set the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import resolve

__all__ = ["choice", "validate", "where"]

SHARING_MODES = ("hard", "soft", "mtan", "private")
AMP_MODES = ("off", "auto", "bf16", "fp16")  # train.amp and every command's --amp


def where(key: str, origin: dict, default_file: str) -> str:
    """The file that set ``key`` (or its closest parent), else ``default_file``."""
    parts = key.split(".")
    while parts:
        k = ".".join(parts)
        if k in origin and origin[k]:
            return origin[k]
        parts.pop()
    return default_file


def config_dir(key: str, origin: dict, default_file: str) -> Path | None:
    """The folder of the config file that set ``key``: relative paths there resolve against it.
    ``None`` (the working directory) for ``--set`` overrides and configs built from a dict."""
    f = where(key, origin, default_file)
    return Path(f).resolve().parent if f and f != "--set" and not f.startswith("<") and Path(f).is_file() else None


def choice(value: str, choices: tuple, key: str, origin: dict, file: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where(key, origin, file)}: key '{key}' must be one of {', '.join(choices)}, "
                          f"got {value!r}{hint}")


def _positive_multiple(value: int, key: str, origin: dict, file: str, zero_ok: bool) -> None:
    if (zero_ok and value == 0) or (value >= 32 and value % 32 == 0):
        return
    zero = "0 (= img_size) or " if zero_ok else ""
    raise ConfigError(f"{where(key, origin, file)}: key '{key}' must be {zero}a positive multiple of 32, got {value}")


def validate(cfg: Any, origin: dict, file: str) -> None:
    """Cross-field checks beyond types: task types and options, choices, strategy, datasets."""
    from .tasks import spec

    w = lambda key: where(key, origin, file)  # noqa: E731
    if not cfg.tasks:
        raise ConfigError(f"{file}: 'tasks' is empty; configure at least one head")
    for name, t in cfg.tasks.items():
        if not name or "." in name:
            raise ConfigError(f"{w('tasks')}: invalid task name {name!r} (non-empty, no '.')")
        spec(t).validate(name, t, w)
    for name, t in cfg.tasks.items():
        spec(t).check_links(name, t, cfg.tasks, w)
    kinds = {t.type for t in cfg.tasks.values()}
    for kind in sorted(kinds):
        names = [n for n, t in cfg.tasks.items() if t.type == kind]
        if spec(kind).single and len(names) > 1:
            raise ConfigError(f"{file}: only one {kind} task is supported, got {names}")
    d, tc = cfg.data, cfg.train
    choice(d.on_bad_sample, ("error", "skip"), "data.on_bad_sample", origin, file)
    choice(tc.optimizer, ("adamw", "sgd"), "train.optimizer", origin, file)
    choice(tc.schedule, ("cosine", "step", "constant"), "train.schedule", origin, file)
    choice(tc.amp, AMP_MODES, "train.amp", origin, file)
    _positive_multiple(d.img_size, "data.img_size", origin, file, zero_ok=False)
    _positive_multiple(d.augment.crop_size, "data.augment.crop_size", origin, file, zero_ok=True)
    _positive_multiple(d.eval_img_size, "data.eval_img_size", origin, file, zero_ok=True)
    for key, value, ok, rule in (
        ("data.batch_size", d.batch_size, d.batch_size >= 1, ">= 1"),
        ("data.val_batch_size", d.val_batch_size, d.val_batch_size >= 0, ">= 0 (0 = batch_size)"),
        ("data.workers", d.workers, d.workers >= 0, ">= 0"),
        ("train.epochs", tc.epochs, tc.epochs >= 1, ">= 1"),
        ("train.max_iters", tc.max_iters, tc.max_iters >= 0, ">= 0 (0 = no limit)"),
        ("train.clip_grad", tc.clip_grad, tc.clip_grad >= 0, ">= 0 (0 = off)"),
        ("train.warmup_iters", tc.warmup_iters, tc.warmup_iters >= 0, ">= 0"),
        ("train.threads", tc.threads, tc.threads >= 0, ">= 0 (0 = torch's default)"),
        ("train.lr", tc.lr, tc.lr > 0, "> 0"),
        ("train.weight_decay", tc.weight_decay, tc.weight_decay >= 0, ">= 0"),
        ("train.eval_interval", tc.eval_interval, tc.eval_interval >= 1, ">= 1"),
        ("train.log_interval", tc.log_interval, tc.log_interval >= 1, ">= 1"),
        ("train.ema_decay", tc.ema_decay, 0.0 <= tc.ema_decay < 1.0, "0 (off) or in (0, 1)"),
        ("train.ema_tau", tc.ema_tau, tc.ema_tau >= 0, ">= 0"),
    ):
        if not ok:
            raise ConfigError(f"{w(key)}: key '{key}' must be {rule}, got {value}")
    m = cfg.model
    if m.load_from:
        m.load_from = resolve(m.load_from, config_dir("model.load_from", origin, file))
    if m.backbone.weights not in ("none", "imagenet"):
        m.backbone.weights = resolve(m.backbone.weights, config_dir("model.backbone.weights", origin, file))
    _validate_strategy(cfg, origin, file)
    _validate_datasets(cfg, origin, file)


def _validate_strategy(cfg: Any, origin: dict, file: str) -> None:
    """Training-strategy checks: mode, method and its args, sharing and stages fit together."""
    from .mtl.names import METHOD_ARGS, METHOD_NAMES, is_gradient_method

    tc, mc = cfg.train, cfg.model
    choice(tc.mode, ("joint", "alternating"), "train.mode", origin, file)
    choice(mc.sharing, SHARING_MODES, "model.sharing", origin, file)
    choice(tc.method.name, METHOD_NAMES, "train.method.name", origin, file)
    choice(tc.method.grad_on, ("params", "rep"), "train.method.grad_on", origin, file)
    valid = METHOD_ARGS[tc.method.name]
    for k in tc.method.args:
        if k not in valid:
            key = f"train.method.args.{k}"
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid) or '(none)'}"
            raise ConfigError(f"{where(key, origin, file)}: unknown key '{key}' for method '{tc.method.name}'{hint}")
    choice(tc.alternating.order, ("round_robin", "proportional", "uniform", "temperature"),
           "train.alternating.order", origin, file)
    choice(tc.alternating.optimizers, ("shared", "per_task"), "train.alternating.optimizers", origin, file)
    if tc.alternating.temperature <= 0:
        raise ConfigError(f"{where('train.alternating.temperature', origin, file)}: key "
                          f"'train.alternating.temperature' must be > 0, got {tc.alternating.temperature}")
    gradient = is_gradient_method(tc.method.name)
    at = where("train.method.name", origin, file)
    if gradient and tc.mode == "alternating":
        raise ConfigError(f"{at}: gradient method '{tc.method.name}' combines several tasks' gradients, but "
                          "train.mode: alternating trains one task per step; use a loss weighting method")
    if gradient and mc.sharing == "soft":
        raise ConfigError(f"{at}: gradient method '{tc.method.name}' needs shared parameters, but "
                          "model.sharing: soft gives every task its own backbone")
    if gradient and tc.compile:
        raise ConfigError(f"{where('train.compile', origin, file)}: train.compile compiles the joint forward, but "
                          f"gradient method '{tc.method.name}' runs the model per task; set train.compile=false "
                          "or use a loss weighting method")
    if tc.method.task_grad_clip > 0 and not gradient:
        raise ConfigError(f"{where('train.method.task_grad_clip', origin, file)}: train.method.task_grad_clip "
                          f"needs per-task gradients; use a gradient method (e.g. name: sum), not '{tc.method.name}'")
    total = 0
    for i, st in enumerate(tc.stages):
        key = f"train.stages.{i}"
        if st.epochs < 1:
            raise ConfigError(f"{where(key + '.epochs', origin, file)}: key '{key}.epochs' must be >= 1, got {st.epochs}")
        total += st.epochs
        for t in st.tasks:
            if t not in cfg.tasks:
                raise ConfigError(f"{where(key + '.tasks', origin, file)}: stage {st.name or i} trains unknown task "
                                  f"'{t}'; configured tasks: {', '.join(cfg.tasks)}")
        for part in st.freeze:
            if part != "backbone" and part not in cfg.tasks:
                raise ConfigError(f"{where(key + '.freeze', origin, file)}: stage {st.name or i} freezes unknown "
                                  f"part '{part}'; valid: backbone, {', '.join(cfg.tasks)}")
        trained = st.tasks or list(cfg.tasks)
        if all(t in st.freeze for t in trained) and "backbone" in st.freeze:
            raise ConfigError(f"{where(key, origin, file)}: stage {st.name or i} freezes everything it trains")
    if total > tc.epochs:
        raise ConfigError(f"{where('train.stages', origin, file)}: key 'train.stages' lasts {total} epochs but "
                          f"train.epochs is {tc.epochs}")


def _validate_datasets(cfg: Any, origin: dict, file: str) -> None:
    """Each dataset entry: known format, adapter keys its constructor takes, known task names."""
    from .data.formats import check_adapter_args

    for split in ("train", "val"):
        for i, d in enumerate(getattr(cfg.data, split)):
            key = f"data.{split}.{i}"
            choice(d.unmapped, ("error", "ignore"), key + ".unmapped", origin, file)
            if d.ratio <= 0:
                raise ConfigError(f"{where(key + '.ratio', origin, file)}: key '{key}.ratio' must be > 0, got {d.ratio}")
            check_adapter_args(d.type, d.args, f"{where(key, origin, file)}: {key}" + (f" ({d.name})" if d.name else ""))
            for t in d.tasks:
                if t not in cfg.tasks:
                    close = difflib.get_close_matches(t, list(cfg.tasks), n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else f"; configured tasks: {', '.join(cfg.tasks)}"
                    raise ConfigError(f"{where(key + '.tasks', origin, file)}: dataset {d.name or i} labels unknown "
                                      f"task '{t}'{hint}")
            for k, v in d.args.items():
                if isinstance(v, str) and (k in ("data", "images") or any(s in k for s in ("file", "dir", "root"))):
                    d.args[k] = resolve(v, config_dir(f"{key}.{k}", origin, file))
