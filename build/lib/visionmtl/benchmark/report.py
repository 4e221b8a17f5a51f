"""Benchmark reports: Markdown tables, CSV, JSON and a PNG bar chart.

:func:`write_report` writes ``benchmark.md``, ``benchmark.csv`` (one row per combination,
flattened columns), ``benchmark.json`` (the full result) and ``benchmark.png`` (throughput and
memory per combination, shared and separate side by side) to an output folder; with accuracy
results also ``accuracy.md``, ``accuracy.csv`` and ``accuracy.json``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ..files import write_text

__all__ = ["accuracy_markdown", "accuracy_text", "flatten", "format_markdown", "plot_chart", "write_report"]


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.{digits}f}"
    return str(v)


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:+.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def accuracy_text(acc: Optional[Mapping[str, Any]], names: Optional[Mapping[str, str]] = None) -> str:
    """One cell: ``cls mAP 0.812, det mAP 0.301; Δm +1.50%`` (Δm only for multi-task entries)."""
    if not acc:
        return "-"
    names = names or {}
    parts = [f"{t} {names.get(t, '')} {_f(v, 3)}".replace("  ", " ") for t, v in acc.get("metrics", {}).items()]
    text = ", ".join(parts)
    if len(acc.get("tasks", [])) > 1:
        text += f"; Δm {_pct(acc.get('delta_m'))}"
    return text


def _env_lines(env: Mapping[str, Any]) -> list[str]:
    head = (f"torch {env.get('torch')} | {env.get('device_name')} ({env.get('device')}) | threads {env.get('threads')}"
            f" | {env.get('dtype')} | input {env.get('imgsz')}x{env.get('imgsz')} | batch {env.get('batch')}"
            f" | channels_last {_f(env.get('channels_last'))} | CPU bf16 fast {_f(env.get('cpu_bf16_fast'))}")
    lines = [head]
    if env.get("device", "").startswith("cuda"):
        peak = env.get("gpu_bf16_peak_tflops")
        lines.append(f"CUDA {env.get('cuda')} | bf16 dense peak {peak if peak else 'unknown'} TFLOP/s")
    lines.append(f"memory = {env.get('memory_method')}")
    return lines


def format_markdown(result: Mapping[str, Any]) -> str:
    """The whole speed report (and accuracy, when present) as Markdown."""
    env = result["env"]
    rows = result["combos"]
    opts = result.get("options", {})
    names = (result.get("accuracy") or {}).get("metric_names", {})
    out = ["# visionmtl benchmark: head combinations", ""]
    out += [line + "  " for line in _env_lines(env)]
    out += [f"repeats {opts.get('repeats')} (interleaved across combinations), warm-up {opts.get('warmup')}; "
            "latency per batch; img/s at the median; forward = model only (no decoding/NMS), "
            "forward+predict includes post-processing.", ""]

    out += ["## Inference", ""]
    header = ["combo", "params (M)", "GFLOPs/img", "fwd ms median", "p90", "min", "max", "fwd img/s", "GFLOP/s",
              "fwd+predict ms", "fwd+predict img/s", "memory MiB", "accuracy"]
    body = []
    for r in rows:
        f, fp = r["forward"], r["forward_predict"]
        body.append([r["combo"], _f(r["params_m"]), _f(r["gflops"], 3), _f(f["median_ms"]), _f(f["p90_ms"]),
                     _f(f["min_ms"]), _f(f["max_ms"]), _f(f["throughput"], 1), _f(f.get("gflops_per_s"), 1),
                     _f(fp["median_ms"]), _f(fp["throughput"], 1), _f(r.get("infer_memory_mb"), 1),
                     accuracy_text(r.get("accuracy"), names)])
    out += [_table(header, body), ""]

    if any("train" in r for r in rows):
        cuda = env.get("device", "").startswith("cuda")
        out += ["## Training step (forward, loss, backward, optimiser step)", ""]
        header = ["combo", "step ms median", "p90", "min", "max", "img/s"]
        header += ["TFLOP/s (3x fwd)", "MFU (bf16 peak)"] if cuda else ["GFLOP/s (3x fwd)"]
        header += ["memory MiB"]
        body = []
        for r in rows:
            t = r.get("train")
            if not t:
                continue
            line = [r["combo"], _f(t["median_ms"]), _f(t["p90_ms"]), _f(t["min_ms"]), _f(t["max_ms"]),
                    _f(t["throughput"], 1)]
            if cuda:
                line += [_f(t["achieved_tflops"], 2), "-" if t.get("mfu") is None else f"{100 * t['mfu']:.1f}%"]
            else:
                line.append(_f(t["achieved_gflops_s"], 1))
            line.append(_f(r.get("train_memory_mb"), 1))
            body.append(line)
        out += [_table(header, body), ""]

    if any("separate" in r for r in rows):
        out += ["## Shared backbone vs separate single-task models",
                "", "separate = one model per task, run one after another on the same input (time: the whole "
                "sequence; memory: all loaded). ratio = separate / shared.", ""]
        has_train = any("train" in r.get("separate", {}) for r in rows)
        header = ["combo", "GFLOPs shared", "separate", "ratio", "fwd ms shared", "separate", "ratio",
                  "fwd+predict ms shared", "separate", "ratio", "memory MiB shared", "separate", "ratio"]
        if has_train:
            header += ["train ms shared", "separate", "ratio", "train MiB shared", "separate", "ratio"]
        body = []
        for r in rows:
            s = r.get("separate")
            if not s:
                continue
            line = [r["combo"], _f(r["gflops"], 3), _f(s["gflops"], 3), _x(s["gflops_ratio"]),
                    _f(r["forward"]["median_ms"]), _f(s["forward"]["median_ms"]), _x(s["forward_ratio"]),
                    _f(r["forward_predict"]["median_ms"]), _f(s["forward_predict"]["median_ms"]),
                    _x(s["forward_predict_ratio"]), _f(r.get("infer_memory_mb"), 1), _f(s.get("infer_memory_mb"), 1),
                    _x(s.get("infer_memory_ratio"))]
            if has_train:
                line += [_f(r.get("train", {}).get("median_ms")), _f(s.get("train", {}).get("median_ms")),
                         _x(s.get("train_ratio")), _f(r.get("train_memory_mb"), 1), _f(s.get("train_memory_mb"), 1),
                         _x(s.get("train_memory_ratio"))]
            body.append(line)
        out += [_table(header, body), ""]

    out += ["## FLOPs per image (GFLOPs, forward at batch 1)", ""]
    tasks = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    header = ["combo", "total", "backbone"] + [f"head {t}" for t in tasks] + ["backbone + heads (counted alone)", "rel. error"]
    body = []
    for r in rows:
        fl = r["flops"]
        body.append([r["combo"], _f(r["gflops"], 4), _f(fl["backbone_gflops"], 4)]
                    + [_f(fl["heads_gflops"].get(t), 4) for t in tasks]
                    + [_f(fl["sum_separate_gflops"], 4), f"{100 * fl['rel_err']:.3f}%"])
    out += [_table(header, body), ""]
    fc = result.get("flop_check")
    if fc:
        heads = " + ".join(f"{t} {_f(v, 4)}" for t, v in fc["heads_gflops"].items())
        out += [f"FLOP check ({fc['combo']}): total {_f(fc['total_gflops'], 4)} GFLOPs vs backbone "
                f"{_f(fc['backbone_gflops'], 4)} + heads ({heads}) counted alone = {_f(fc['sum_separate_gflops'], 4)}; "
                f"relative error {100 * fc['rel_err']:.3f}% -> {'OK' if fc['ok'] else 'MISMATCH (> 1%)'}", ""]

    if result.get("accuracy"):
        out += [accuracy_markdown(result["accuracy"]), ""]
    return "\n".join(out)


def accuracy_markdown(acc: Mapping[str, Any]) -> str:
    """The accuracy table: each model's main metric per task and Δm against the single-task models."""
    names = acc.get("metric_names", {})
    tasks = list(names)
    header = ["model"] + [f"{t} {names[t]}" for t in tasks] + ["Δm vs single-task", "source"]
    body = []
    for name, e in acc.get("combos", {}).items():
        dm = "-" if len(e["tasks"]) == 1 else (_pct(e.get("delta_m")) if e.get("delta_m") is not None
                                                else f"- ({e.get('note', 'n/a')})")
        body.append([name] + [_f(e["metrics"].get(t), 4) if t in e["metrics"] else "" for t in tasks]
                    + [dm, str(e.get("source") or "-")])
    epochs = acc.get("epochs")
    title = "## Accuracy on the val split" + (f" ({epochs} epoch{'' if epochs == 1 else 's'} of training)" if epochs else "")
    return "\n".join([title, "", "Δm = mean over tasks of (M_mtl - M_single) / M_single (all higher-is-better).", "",
                      _table(header, body)])


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys; lists become ``+``-joined strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = "+".join(map(str, v))
        else:
            out[key] = v
    return out


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    flat = [flatten(r) for r in rows]
    fields = list(dict.fromkeys(k for r in flat for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(flat)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def plot_chart(result: Mapping[str, Any], path: str | Path) -> None:
    """Bar chart: forward throughput and inference memory per combination (plus training when
    measured), with separate-model bars next to the shared ones when compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["combos"]
    names = [r["combo"] for r in rows]
    sep = all("separate" in r for r in rows)
    panels = [("inference throughput (img/s, forward)", lambda r: r["forward"]["throughput"],
               lambda s: s["forward"]["throughput"])]
    if all("infer_memory_mb" in r for r in rows):
        panels.append(("inference memory (MiB)", lambda r: r["infer_memory_mb"], lambda s: s.get("infer_memory_mb")))
    if all("train" in r for r in rows):
        panels.append(("training throughput (img/s)", lambda r: r["train"]["throughput"],
                       lambda s: s.get("train", {}).get("throughput")))
        if all("train_memory_mb" in r for r in rows):
            panels.append(("training memory (MiB)", lambda r: r["train_memory_mb"], lambda s: s.get("train_memory_mb")))
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.0, 1.1 * len(names)) * ncols, 3.8 * nrows), squeeze=False)
    x = np.arange(len(names))
    width = 0.4 if sep else 0.7
    for ax, (title, shared_fn, sep_fn) in zip(axes.flat, panels):
        shared = [shared_fn(r) for r in rows]
        ax.bar(x - (width / 2 if sep else 0), shared, width, label="shared backbone")
        if sep:
            ax.bar(x + width / 2, [sep_fn(r["separate"]) or 0.0 for r in rows], width, label="separate models")
            ax.legend(fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    env = result["env"]
    fig.suptitle(f"{env.get('device_name')} | {env.get('dtype')} | {env.get('imgsz')} px | batch {env.get('batch')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write every output file; returns ``{kind: path}`` (md, csv, json, png, and accuracy_* if present)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "benchmark.md", "csv": out / "benchmark.csv", "json": out / "benchmark.json",
             "png": out / "benchmark.png"}
    write_text(paths["md"], format_markdown(result) + "\n")
    _write_csv(result["combos"], paths["csv"])
    write_text(paths["json"], json.dumps(result, indent=2, default=_json_default))
    plot_chart(result, paths["png"])
    acc = result.get("accuracy")
    if acc:
        paths.update(write_accuracy(acc, out))
    return paths


def write_accuracy(acc: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``accuracy.md``, ``accuracy.csv`` (one row per model) and ``accuracy.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"accuracy_md": out / "accuracy.md", "accuracy_csv": out / "accuracy.csv",
             "accuracy_json": out / "accuracy.json"}
    write_text(paths["accuracy_md"], accuracy_markdown(acc) + "\n")
    rows = [{"model": name, **{k: v for k, v in e.items() if k != "tasks"}, "tasks": e["tasks"]}
            for name, e in acc.get("combos", {}).items()]
    _write_csv(rows, paths["accuracy_csv"])
    write_text(paths["accuracy_json"], json.dumps(acc, indent=2, default=_json_default))
    return paths
