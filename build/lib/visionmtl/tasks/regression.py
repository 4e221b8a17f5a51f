"""``type: regression``: named numeric values per image (a face's age, the number of objects).

Config::

    tasks:
      count:
        type: regression
        targets: [n_shapes]        # names in the adapters' ``values`` (CSV columns, COCO image fields)
        loss: smooth_l1            # smooth_l1 | l1 | mse (on normalised values)
        mean: [4.0]                # optional normalisation: the head learns (y - mean) / std
        std: [2.5]
        head: {levels: [p3, p4, p5], pool: sum}

Targets: ``values`` ``{name: float}``; an image without a name has no label for it. A value that
counts the image's objects (an adapter's ``values_follow``, e.g. COCO ``count_fields``) is
re-counted after a training crop: an object counts while its box centre stays in view, and the
centres left (``points``) supervise a density head's map (``pool: sum``, ``density_weight``). Metrics: MAE (main, lower is
better), RMSE, and ``exact``, the share of values whose rounded prediction equals the target
(for counts); the same per target. Flip TTA averages the two passes' values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import TaskType

__all__ = ["RegressionEvaluator", "RegressionOptions", "RegressionTask"]


@dataclass
class RegressionOptions:
    targets: list[str] = field(default_factory=list)  # value names, one output each
    loss: str = "smooth_l1"  # smooth_l1 | l1 | mse
    mean: list[float] = field(default_factory=list)  # per-target normalisation ([] = none)
    std: list[float] = field(default_factory=list)


class RegressionTask(TaskType):
    name = "regression"
    Options = RegressionOptions
    head_options = ("targets", "levels", "pool", "hidden", "dropout", "loss", "beta", "mean", "std", "density_weight")
    target_keys = ("values",)
    uses_classes = False

    def outputs(self, task) -> list[str]:
        return list(task.targets)

    def validate(self, name, task, where) -> None:
        super().validate(name, task, where)
        key = f"tasks.{name}"
        if not task.targets:
            raise ConfigError(f"{where(key + '.targets')}: task '{name}': a regression task names its values in "
                              f"'{key}.targets' (e.g. [age])")
        if len(set(task.targets)) != len(task.targets):
            raise ConfigError(f"{where(key + '.targets')}: task '{name}' lists a target twice: {task.targets}")
        if task.classes:
            raise ConfigError(f"{where(key + '.classes')}: task '{name}': a regression task has 'targets', not "
                              "'classes'")
        if task.loss not in ("smooth_l1", "l1", "mse"):
            raise ConfigError(f"{where(key + '.loss')}: key '{key}.loss' must be one of smooth_l1, l1, mse, "
                              f"got {task.loss!r}")
        for k in ("mean", "std"):
            v = getattr(task, k)
            if v and len(v) != len(task.targets):
                raise ConfigError(f"{where(f'{key}.{k}')}: key '{key}.{k}' has {len(v)} values for "
                                  f"{len(task.targets)} targets")
        if any(s <= 0 for s in task.std):
            raise ConfigError(f"{where(key + '.std')}: key '{key}.std' must be > 0, got {task.std}")
        pool = task.head.get("pool", "avgmax")
        if pool not in ("avg", "avgmax", "sum"):
            raise ConfigError(f"{where(key + '.head.pool')}: key '{key}.head.pool' must be one of avg, avgmax, "
                              f"sum, got {pool!r}")

    # ------------------------------------------------------------------ model
    def head_kwargs(self, task) -> dict:
        return {**task.head, "targets": list(task.targets), "loss": task.loss, "mean": list(task.mean),
                "std": list(task.std)}

    def levels(self, head_cfg) -> tuple[str, ...]:
        return tuple(head_cfg.get("levels") or ("c5",))

    def build_head(self, name, num_outputs, kwargs, backbone):
        from ..models.heads.regression import RegressionHead

        levels = self.levels(kwargs)
        return RegressionHead(name, {lv: backbone.out_channels[lv] for lv in levels}, num_outputs,
                              **{**kwargs, "levels": levels, "strides": [backbone.strides[lv] for lv in levels]})

    def merge_flip(self, head, raw, raw_m, width, sizes, origs, min_score=None):
        return head.predict({"values": (raw["values"].float() + raw_m["values"].float()) / 2}, sizes, origs)

    # ------------------------------------------------------------------ data
    def can_label(self, adapter, task) -> bool:
        return "values" in adapter.provides and bool(set(task.targets) & set(getattr(adapter, "value_names", [])))

    def has_label(self, task, target) -> bool:
        values = target.get("values", {})
        return any(n in values for n in task.targets)

    def mapper(self, adapter, name, task, class_map, what, drop):
        import numpy as np

        have = list(getattr(adapter, "value_names", [])) if "values" in adapter.provides else []
        missing = [n for n in task.targets if n not in have]
        if missing:
            raise ConfigError(f"{what}: {type(adapter).__name__} has no value {missing[0]!r} for regression task "
                              f"'{name}' (it has: {', '.join(have) or 'no values'}); give it as a CSV column "
                              "(value_columns) or a COCO image field (value_fields)")
        follow = {n for n, src in getattr(adapter, "values_follow", {}).items() if src == "boxes" and n in task.targets}

        def map_values(raw: dict, geometric: bool, out: dict) -> None:
            values = raw.get("values", {})
            for n in task.targets:
                if n not in values:
                    continue
                v = values[n]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                    raise ValueError(f"task '{name}': value {n!r} is not a finite number: {v!r}")
                out.setdefault("values", {})[n] = float(v)
                if geometric and n in follow and "boxes" in raw:  # re-counted from the centres left in view
                    b = np.asarray(raw["boxes"], np.float32).reshape(-1, 4)
                    out.setdefault("count_points", {})[n] = (b[:, :2] + b[:, 2:]) / 2
        return map_values

    # ------------------------------------------------------------------ evaluation
    def metrics(self, task) -> dict[str, bool]:
        return {"MAE": True, "RMSE": True, "exact": False}

    def log_metrics(self, task) -> list[str]:
        return ["MAE", "exact"]

    def evaluator(self, task):
        return RegressionEvaluator(task.targets)

    def update(self, evaluator, task, preds, targets, metas) -> None:
        evaluator.update([p["values"] for p in preds], [t.get("values", {}) for t in targets])

    # ------------------------------------------------------------------ results
    def to_numpy(self, task, pred, conf) -> dict:
        return {"values": pred["values"].float().cpu().numpy()}

    def record(self, task, result, save_mask) -> dict:
        return {"type": self.name, "values": {n: round(float(v), 4) for n, v in zip(task.targets, result["values"])}}

    def draw(self, img, name, task, result, score_thresh):
        values = [float(v) for v in result["values"]]
        return img, [f"{name}: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(task.targets, values))]

    def draw_target(self, img, name, task, target):
        values = target.get("values", {})
        shown = [f"{n} {values[n]:g}" for n in task.targets if n in values]
        return img, ([f"{name}: " + ", ".join(shown)] if shown else [])

    def synthetic_target(self, task, target, imgsz, generator) -> None:
        import torch

        draws = (torch.rand(len(task.targets), generator=generator) * 10).tolist()
        target.setdefault("values", {}).update({n: float(v) for n, v in zip(task.targets, draws)})


class RegressionEvaluator:
    """MAE, RMSE and exact-after-rounding share over the labelled values, overall and per target.

    ``update(preds, targets)``: ``preds`` float ``[K]`` per image (tensor or array), ``targets``
    ``{name: float}`` per image (absent names are skipped). ``sync()`` sums over DDP ranks.
    """

    def __init__(self, names) -> None:
        import numpy as np

        self.names = list(names)
        self._acc = np.zeros((len(self.names), 4), np.float64)  # count, |e| sum, e^2 sum, exact count

    def update(self, preds, targets) -> None:
        import numpy as np

        for p, t in zip(preds, targets):
            p = p.detach().float().cpu().numpy() if hasattr(p, "detach") else np.asarray(p, np.float64)
            for k, n in enumerate(self.names):
                if n in t:
                    e = float(p[k]) - float(t[n])
                    self._acc[k] += (1.0, abs(e), e * e, float(round(float(p[k])) == float(t[n])))

    def sync(self) -> None:
        import numpy as np
        import torch

        from ..metrics.common import dist_active

        if dist_active():
            import torch.distributed as dist

            acc = torch.from_numpy(self._acc)
            if dist.get_backend() == "nccl":
                acc = acc.cuda()
            dist.all_reduce(acc)
            self._acc = np.asarray(acc.cpu().numpy(), np.float64)

    def compute(self) -> dict:
        def summary(count, abs_sum, sq_sum, exact):
            if count == 0:
                return {"MAE": None, "RMSE": None, "exact": None, "count": 0}
            return {"MAE": abs_sum / count, "RMSE": math.sqrt(sq_sum / count), "exact": exact / count,
                    "count": int(count)}

        out = summary(*self._acc.sum(0).tolist())
        out["per_target"] = {n: summary(*row.tolist()) for n, row in zip(self.names, self._acc)}
        return out
