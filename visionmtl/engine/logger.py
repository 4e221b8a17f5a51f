"""Training logs: metrics.jsonl, TensorBoard scalars and PNG curves at the end (rank 0 only)."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """{"det": {"mAP": 0.5, "per_class": {...}}} -> {"det/mAP": 0.5, ...} (numbers only)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[key] = float(v)
    return out


class RunLogger:
    """Writes records to ``work_dir/metrics.jsonl`` and TensorBoard; does nothing off rank 0.

    ``append``: continue an existing ``metrics.jsonl`` (a resumed run); otherwise a new run
    starts the file afresh, so two runs in one folder never mix their curves.
    """

    def __init__(self, work_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 append: bool = True, trim_after: int | None = None):
        self.dir = Path(work_dir)
        self.enabled = enabled
        self.tb = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            if append and trim_after is not None:
                trim_log(self.dir / "metrics.jsonl", trim_after)
            self.file = open(self.dir / "metrics.jsonl", "a" if append else "w", buffering=1)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.dir / "tb"))
                except Exception:  # tensorboard missing or broken: keep the JSON log
                    self.tb = None

    def log(self, kind: str, step: int, values: dict, **extra) -> None:
        if not self.enabled:
            return
        rec = {"type": kind, "iter": step, **extra, **values}
        self.file.write(json.dumps(rec, default=_json_default) + "\n")
        if self.tb is not None:
            for k, v in flatten(values).items():
                if math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def trim_log(path: Path, last_iter: int) -> int:
    """Drop records after iteration ``last_iter`` (a resumed run logs them again); atomic. Returns how many."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            it = json.loads(line).get("iter", 0)
        except (json.JSONDecodeError, AttributeError):
            dropped += 1  # a line half-written when the run was killed
            continue
        if it <= last_iter:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, path)
    return dropped


def _json_default(o):
    try:
        return float(o)
    except Exception:
        return str(o)


def plot_curves(metrics_file: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write loss_curves.png and metric_curves.png from a metrics.jsonl: a grid with one panel per
    loss term (raw values faint, an exponential moving average on top, log scale) and one panel
    per validation metric (a point per evaluation; ``score`` is what ``best.pt`` is chosen by)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list]] = {"train": defaultdict(list), "val": defaultdict(list)}
    with open(metrics_file) as f:
        for line in f:
            rec = json.loads(line)
            kind = rec.get("type")
            if kind not in series:
                continue
            x = rec.get("epoch", rec["iter"]) if kind == "val" else rec["iter"]
            for k, v in flatten({k: v for k, v in rec.items() if k not in ("type", "iter", "epoch")}).items():
                if kind == "train" and not k.startswith("loss"):
                    continue
                if kind == "val" and ("per_class" in k or not isinstance(v, (int, float)) or v is None):
                    continue
                series[kind][k].append((x, v))
    written = []
    for kind, name in (("train", "loss_curves.png"), ("val", "metric_curves.png")):
        keys = sorted(series[kind], key=lambda k: (k != "loss", k))
        if not keys:
            continue
        cols = min(4, len(keys))
        rows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
        for ax, k in zip(axes.flat, keys):
            xs, ys = zip(*series[kind][k])
            if kind == "train":
                ax.plot(xs, ys, color="C0", alpha=0.25, linewidth=0.8)
                smooth, m = [], 0.0
                for t, y in enumerate(ys, 1):  # EMA over the logged points, debiased (as TensorBoard)
                    m = 0.9 * m + 0.1 * y
                    smooth.append(m / (1 - 0.9 ** t))
                ax.plot(xs, smooth, color="C0", linewidth=1.6)
                if min(ys) > 0 and max(ys) > 1.5 * min(ys):  # a log axis over a flat or single value divides by 0
                    ax.set_yscale("log")
                ax.set_xlabel("iteration")
            else:
                ax.plot(xs, ys, color="C1", marker="o", markersize=4)
                ax.set_xlabel("epoch")
            title = "score (chooses best.pt)" if k == "score" else k.replace("loss_", "") if kind == "train" else k
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        path = Path(out_dir) / name
        with warnings.catch_warnings():  # matplotlib's layout of a degenerate panel warns 1/0 (seen in 2 tests)
            warnings.simplefilter("ignore", RuntimeWarning)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
