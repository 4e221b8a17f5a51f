"""Multi-task summary metrics.

:func:`delta_m` is the average relative change of a multi-task model over single-task
baselines (Maninis et al., CVPR 2019; Vandenhende et al., TPAMI 2021)::

    Δm = 1/T · Σ_t (-1)^{l_t} · (M_mtl,t − M_single,t) / M_single,t

where ``l_t = 1`` if lower is better for metric ``t``. The result is a fraction (multiply by
100 for percent); positive means the multi-task model is better on average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set

__all__ = ["delta_m", "delta_m_per_task"]


def _lower_set(lower_is_better: Mapping[str, bool] | Set[str] | None, tasks: list[str]) -> set[str]:
    if lower_is_better is None:
        return set()
    if isinstance(lower_is_better, Mapping):
        names = set(lower_is_better)
        lower = {k for k, v in lower_is_better.items() if v}
    else:
        names = set(lower_is_better)
        lower = names
    unknown = names - set(tasks)
    if unknown:
        raise ValueError(f"lower_is_better names metrics not in the multi-task results: {sorted(unknown)}")
    return lower


def delta_m_per_task(mtl: Mapping[str, float], single: Mapping[str, float],
                     lower_is_better: Mapping[str, bool] | Set[str] | None = None) -> dict[str, float]:
    """Signed relative change per task/metric, ``(-1)^{l_t} (M_mtl - M_single) / M_single``.

    Args:
        mtl: metric name -> value for the multi-task model; its keys define the tasks.
        single: metric name -> value for the single-task baselines; must cover every key of
            ``mtl`` (extra keys are ignored).
        lower_is_better: metrics for which lower is better, as a set of names or a
            name -> bool mapping. Default: higher is better for all.

    Raises:
        ValueError: no tasks, a task missing from ``single``, a baseline value of 0, a
            non-finite value, or an unknown name in ``lower_is_better``.
    """
    tasks = list(mtl)
    if not tasks:
        raise ValueError("no tasks given")
    missing = [t for t in tasks if t not in single]
    if missing:
        raise ValueError(f"single-task results missing for: {missing}")
    lower = _lower_set(lower_is_better, tasks)
    out: dict[str, float] = {}
    for t in tasks:
        if mtl[t] is None or single[t] is None:
            raise ValueError(f"metric {t!r} has no value (mtl={mtl[t]!r}, single={single[t]!r})")
        m, s = float(mtl[t]), float(single[t])
        if not (math.isfinite(m) and math.isfinite(s)):
            raise ValueError(f"metric {t!r} is not finite (mtl={m}, single={s})")
        if s == 0.0:
            raise ValueError(f"single-task value of {t!r} is 0; relative change is undefined")
        sign = -1.0 if t in lower else 1.0
        out[t] = sign * (m - s) / s
    return out


def delta_m(mtl: Mapping[str, float], single: Mapping[str, float],
            lower_is_better: Mapping[str, bool] | Set[str] | None = None) -> float:
    """Mean of :func:`delta_m_per_task` over tasks (a fraction; positive = MTL better)."""
    per = delta_m_per_task(mtl, single, lower_is_better)
    return sum(per.values()) / len(per)
