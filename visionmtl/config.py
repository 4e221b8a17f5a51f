"""Configuration: YAML files with ``_base_`` inheritance, ``--set a.b=v`` overrides, typed dataclasses.

``load_config(path, overrides)`` reads a YAML file, deep-merges its ``_base_`` files (a string or
a list, merged in order, then the file itself on top), applies overrides (values parsed as YAML
scalars, so ``c.d=[1,2]`` is a list), and validates the result into :class:`Config`.

Errors are :class:`ConfigError` with one line that names the key, the file that set it and,
for an unknown key, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .config_check import choice as _choice  # noqa: F401  (older imports)
from .config_check import SHARING_MODES, validate  # noqa: F401
from .config_check import where as _where
from .errors import ConfigError
from .paths import find_config, shipped_configs  # noqa: F401  (shipped configs by name)
from .tasks import TASK_TYPES, spec

__all__ = ["Config", "ConfigError", "DataConfig", "DatasetConfig", "ModelConfig", "TASK_TYPES", "TaskConfig",
           "TrainConfig", "config_from_dict", "load_config", "save_config"]


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
@dataclass
class BackboneConfig:
    name: str = "resnet18"
    weights: str = "none"  # none | imagenet | /path/to/file.pth
    freeze_stages: int = 0  # 0 none, 1 stem, 2 stem+layer1, ... 5 everything
    freeze_bn: bool = False
    fpn_channels: int = 128
    num_stages: int = 4  # ResNet stages built: 4 (C2-C5) or 3 (no layer4; P5+ from convs on P4)




@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # hard: one backbone, task heads (default). soft: one backbone per task, pulled together by
    # soft_lambda * sum ||theta_i - theta_j||^2. mtan: per-task attention masks over the shared
    # pyramid. private: a small residual adapter per task beside the shared backbone.
    sharing: str = "hard"
    soft_lambda: float = 1e-3
    adapter_reduction: int = 4  # mtan/private: hidden channels = channels // reduction
    # fine-tuning: a visionmtl checkpoint or a plain state dict, loaded by name and shape before
    # training (a head whose classes changed is re-initialised, its class rows carried by name)
    load_from: str = ""


@dataclass
class TaskConfig:
    """One head. ``classes`` is the task's class list, declared once; datasets map into it.

    Keys of the task's own type (classification ``multilabel``, regression ``targets`` ...) are
    written flat beside ``type`` in YAML; they are parsed into the type's options dataclass
    (``visionmtl/tasks/``) and read as attributes: ``task.multilabel``.
    """

    type: str
    classes: list[str] = field(default_factory=list)
    weight: float = 1.0
    head: dict[str, Any] = field(default_factory=dict)  # head keyword arguments
    options: Any = None  # the type's options dataclass (TaskType.Options)

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and not name.startswith("__") and hasattr(options, name):
            return getattr(options, name)
        raise AttributeError(f"{self.__dict__.get('type', 'task')} task config has no key '{name}'")

    def to_dict(self) -> dict:
        """The YAML form: common keys, then the type's options flat."""
        out = {"type": self.type, "classes": list(self.classes), "weight": self.weight, "head": dict(self.head)}
        if self.options is not None:
            out.update(dataclasses.asdict(self.options))
        return out


# keys every task had before task types had options of their own (checkpoints written then)
_LEGACY_TASK_KEYS = {"multilabel": True, "label_smoothing": 0.0, "attr": None}


@dataclass
class DatasetConfig:
    """One dataset. Keys other than these go to the adapter's constructor (checked by name)."""

    type: str  # coco | masks | folder | csv | yolo | voc (data/formats.py)
    tasks: list[str] = field(default_factory=list)  # task names this dataset labels
    name: str = ""
    class_map: dict[str, Optional[str]] = field(default_factory=dict)  # native -> task class (null = ignore)
    unmapped: str = "error"  # a native class missing from the task's list: error | ignore
    ratio: float = 1.0  # sampling weight when several datasets are mixed
    limit: int = 0  # use only the first N images (quick experiments); 0 = all
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    scale: list[float] = field(default_factory=lambda: [0.5, 1.5])  # random rescale range (train)
    crop: bool = True  # random crop back to img_size after rescale (train)
    # train on random crop_size x crop_size windows of the rescaled image (0 = img_size): objects
    # keep the scale they have at img_size while each step computes on fewer pixels
    crop_size: int = 0
    hflip: float = 0.5
    color_jitter: float = 0.2  # brightness and contrast strength; 0 disables
    saturation: float = 0.1  # fraction of the saturation range; 0 (and hue 0) disables
    hue: float = 0.02  # fraction of the hue circle
    hsv_p: float = 0.5  # probability of the hue/saturation jitter
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class DataConfig:
    img_size: int = 256  # training input size (longest side)
    # evaluation and inference input size; 0 = img_size. Scale-augmented training (augment.scale)
    # makes a larger test size than train size pay off (FixRes): see the README's demo figures
    eval_img_size: int = 0
    eval_flip: bool = False  # evaluation merges each image's predictions with its mirror's (models/tta.py)
    batch_size: int = 16
    val_batch_size: int = 0  # 0 = batch_size
    workers: int = 2  # on a CPU-only run, capped by the cores the model's threads leave free (data/loader.py)
    on_bad_sample: str = "error"  # error | skip
    train: list[DatasetConfig] = field(default_factory=list)
    val: list[DatasetConfig] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def eval_size(self) -> int:
        """Input size for evaluation and inference: ``eval_img_size``, or ``img_size`` when 0."""
        return self.eval_img_size or self.img_size


@dataclass
class MethodConfig:
    """Loss balancing or gradient method (visionmtl/mtl/): one class per name."""

    name: str = "fixed"  # fixed uncertainty dwa rlw stch | gradnorm mgda pcgrad cagrad imtl sum
    grad_on: str = "params"  # gradient methods: params (all shared parameters) | rep (the shared features)
    task_grad_clip: float = 0.0  # gradient methods: max norm of each task's gradient; 0 = off
    args: dict[str, Any] = field(default_factory=dict)  # method options, e.g. {alpha: 0.5} for cagrad


@dataclass
class AlternatingConfig:
    """``train.mode: alternating``: each step draws one task and uses that task's data and loss."""

    order: str = "round_robin"  # round_robin | proportional | uniform | temperature
    temperature: float = 2.0  # order temperature: p_t proportional to n_t ** (1 / temperature)
    optimizers: str = "shared"  # shared: one optimiser | per_task: one per task, each stepping the shared part


@dataclass
class StageConfig:
    """One stage of a staged schedule: which tasks train and which parts are frozen."""

    epochs: int
    tasks: list[str] = field(default_factory=list)  # tasks whose losses train in this stage; [] = all
    freeze: list[str] = field(default_factory=list)  # parts: backbone and/or task names (head + adapter)
    name: str = ""


@dataclass
class TrainConfig:
    epochs: int = 12
    max_iters: int = 0  # 0 = epochs * iters per epoch; >0 stops early (tests, smoke runs)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    schedule: str = "cosine"  # cosine | step | constant
    steps: list[int] = field(default_factory=lambda: [8, 11])  # epochs, for schedule: step
    gamma: float = 0.1
    min_lr_ratio: float = 0.01
    clip_grad: float = 0.0  # max grad norm; 0 disables
    ema_decay: float = 0.0  # EMA of the weights for validation, best.pt and inference; 0 = off
    ema_tau: float = 200.0  # EMA warm-up in iterations: decay * (1 - exp(-iteration / tau))
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the training forward (loss-weighting methods; engine/runtime.py)
    seed: int = 0
    eval_interval: int = 1  # epochs
    best_metric: str = "auto"  # e.g. det.mAP; auto = mean of each task's main metric
    log_interval: int = 10
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    mode: str = "joint"  # joint (one batch, every labelled task) | alternating (one task per step)
    method: MethodConfig = field(default_factory=MethodConfig)
    alternating: AlternatingConfig = field(default_factory=AlternatingConfig)
    stages: list[StageConfig] = field(default_factory=list)  # staged training; [] = one stage, all tasks


@dataclass
class Config:
    tasks: dict[str, TaskConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    work_dir: str = "runs/default"

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["tasks"] = {n: t.to_dict() for n, t in self.tasks.items()}
        return out


# --------------------------------------------------------------------------------------------
# Loading and merging
# --------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(dst: dict, src: dict, origin: dict, src_file: str, prefix: str = "") -> dict:
    """Deep-merge ``src`` into ``dst`` and record which file set each key in ``origin``."""
    for k, v in src.items():
        key = f"{prefix}{k}"
        if k == "_delete_":
            continue
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and not v.get("_delete_", False):
            _merge(dst[k], v, origin, src_file, key + ".")
        else:
            dst[k] = _strip_delete(v)
            _record(origin, key, v, src_file)
    return dst


def _strip_delete(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip_delete(x) for k, x in v.items() if k != "_delete_"}
    return v


def _record(origin: dict, key: str, v: Any, src_file: str) -> None:
    origin[key] = src_file
    if isinstance(v, dict):
        for k, x in v.items():
            _record(origin, f"{key}.{k}", x, src_file)


def load_yaml_tree(path: str | os.PathLike, origin: Optional[dict] = None, _seen: tuple = ()) -> dict:
    """Read ``path`` with its ``_base_`` chain resolved (paths relative to the including file)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(map(str, _seen))}")
    origin = {} if origin is None else origin
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    merged: dict = {}
    for b in bases:
        base_tree = load_yaml_tree(path.parent / b, origin, _seen + (path,))
        _merge(merged, base_tree, {}, "")
    return _merge(merged, data, origin, str(path))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> (["a", "b"], 1); the value is parsed as a YAML scalar/flow value."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(tree: dict, overrides: list[str], origin: dict) -> dict:
    for item in overrides or []:
        parts, value = parse_override(item)
        node = tree
        for p in parts[:-1]:
            if p.isdigit() and isinstance(node, list):
                node = node[int(p)]
                continue
            if not isinstance(node.get(p), (dict, list)):
                node[p] = {}
            node = node[p]
        last = parts[-1]
        if isinstance(node, list) and last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
        _record(origin, ".".join(parts), value, "--set")
    return tree


def load_config(path: str | os.PathLike, overrides: Optional[list[str]] = None) -> Config:
    """Load, merge, override and validate a config file (or a shipped config by name, :func:`find_config`)."""
    path = find_config(path)
    origin: dict = {}
    tree = load_yaml_tree(path, origin)
    tree = apply_overrides(tree, overrides or [], origin)
    cfg = from_dict(Config, tree, origin, default_file=str(Path(path).resolve()))
    validate(cfg, origin, str(path))
    return cfg


def config_from_dict(tree: dict, source: str = "<dict>") -> Config:
    """Validate a plain dict (e.g. the resolved config stored in a checkpoint)."""
    cfg = from_dict(Config, tree, {}, default_file=source)
    validate(cfg, {}, source)
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Typed conversion
# --------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " | ".join(_type_name(a) for a in args)
        return f"{inner} or null" if len(args) < len(typing.get_args(tp)) else inner
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is Any:
        return "any"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, origin: dict, default_file: str) -> Any:
    def fail() -> ConfigError:
        return ConfigError(
            f"{_where(key, origin, default_file)}: key '{key}' expects {_type_name(tp)}, "
            f"got {type(value).__name__} {value!r}"
        )

    origin_t = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin_t in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key, origin, default_file)
            except ConfigError:
                pass
        raise fail()
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail()
        return from_dict(tp, value, origin, default_file, prefix=key + ".")
    if origin_t is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, f"{key}.{i}", origin, default_file) for i, v in enumerate(value)]
    if origin_t is dict:
        if not isinstance(value, dict):
            raise fail()
        _, inner = typing.get_args(tp)
        return {str(k): _convert(inner, v, f"{key}.{k}", origin, default_file) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail()
    raise fail()


def from_dict(cls: type, data: dict, origin: dict, default_file: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if cls is TaskConfig:
        return _task_from_dict(data, origin, default_file, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict = {}
    extra: dict = {}
    for k, v in data.items():
        k = str(k)
        key = prefix + k
        if k not in fields:
            if cls is DatasetConfig:  # adapter arguments, checked against the adapter in validate()
                extra[k] = v
                continue
            close = difflib.get_close_matches(k, list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{_where(key, origin, default_file)}: unknown key '{key}'{hint}")
        kwargs[k] = _convert(hints[k], v, key, origin, default_file)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_where(prefix.rstrip('.'), origin, default_file)}: missing required key '{prefix}{name}'")
    obj = cls(**kwargs)
    if cls is DatasetConfig:
        obj.args = {**obj.args, **extra}
    return obj


def _task_from_dict(data: dict, origin: dict, default_file: str, prefix: str) -> TaskConfig:
    """A TaskConfig: common keys, and the rest parsed into the type's options dataclass."""
    common = {f.name for f in dataclasses.fields(TaskConfig)} - {"options"}
    if "type" not in data:
        raise ConfigError(f"{_where(prefix.rstrip('.'), origin, default_file)}: missing required key '{prefix}type'")
    kind = data["type"]
    try:
        options_cls = spec(str(kind)).Options
    except ConfigError as e:
        raise ConfigError(f"{_where(prefix + 'type', origin, default_file)}: key '{prefix}type': {e}") from None
    own = {f.name for f in dataclasses.fields(options_cls)}
    base = {k: v for k, v in data.items() if str(k) in common}
    rest = {str(k): v for k, v in data.items() if str(k) not in common}
    for k, default in _LEGACY_TASK_KEYS.items():  # older checkpoints wrote these on every task
        if k in rest and k not in own and rest[k] == default:
            del rest[k]
    for k in rest:
        if k not in own:
            valid = sorted(common | own)
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{_where(prefix + k, origin, default_file)}: unknown key '{prefix}{k}' "
                              f"for a {kind} task{hint}")
    hints = typing.get_type_hints(TaskConfig)
    kwargs = {k: _convert(hints[k], v, prefix + k, origin, default_file) for k, v in base.items()}
    kwargs["options"] = from_dict(options_cls, rest, origin, default_file, prefix)
    return TaskConfig(**kwargs)
