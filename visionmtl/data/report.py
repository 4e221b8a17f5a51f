"""What a dataset holds, and what is wrong with it: the check a user runs before training.

:func:`dataset_report` reads every image and annotation of each dataset of a config's splits
through its adapter (the same code training uses) and gathers, per dataset and split:

* images, how many each task labels, image sizes, empty images (labelled for boxes, none there);
* per native class: images, boxes and mask pixels;
* box sizes (the square root of the box area, in pixels) and aspect ratios (width / height);
* the adapter's own counters (boxes dropped or clipped, label files missing, ...);
* every problem, counted per kind and listed with its files: unreadable or missing images,
  bad annotations (each adapter's ``DataError``), unknown class ids, masks of the wrong size.

A sample that fails is recorded and the report goes on: it never stops at the first problem.
:func:`write_report` writes ``dataset_info.json`` and one PNG of plots per dataset and split;
:func:`format_report` is the text ``tools/dataset_info.py`` prints.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..tasks import spec
from .dataset import TaskDataset, build_adapter, can_label

log = logging.getLogger(__name__)

__all__ = ["dataset_report", "format_report", "problem_kind", "write_report"]

# how many files each problem kind lists (the count is always complete)
MAX_LISTED = 50
# histogram bins: box side sqrt(w*h) from 1 to 4096 px in half octaves; log2(aspect) from -5 to 5
SIDE_EDGES = 2.0 ** np.arange(0, 12.5, 0.5)
ASPECT_EDGES = np.arange(-5, 5.25, 0.25)
# the words of a DataError's problem that name its kind, first match wins
_KINDS = (
    ("not found", "missing file"),
    ("no such file", "missing file"),
    ("cannot decode", "unreadable image"),
    ("truncated", "unreadable image"),
    ("is empty", "unreadable image"),
    ("mask size", "mask of the wrong size"),
    ("class", "unknown class id"),
    ("outside", "out of bounds"),
    ("out of bounds", "out of bounds"),
)


def problem_kind(problem: str) -> str:
    """A short kind for a DataError's problem text (``"bad annotation"`` when none matches)."""
    low = problem.lower()
    for words, kind in _KINDS:
        if words in low:
            return kind
    return "bad annotation"


class _Stats:
    """Accumulates one dataset split's figures."""

    def __init__(self, classes: list[str], mask_classes: list[str] | None = None, background: str | None = None):
        self.classes = list(classes)
        self.background = background  # a mask-only background class: pixels counted, not images
        self.mask_classes = list(mask_classes) if mask_classes is not None else self.classes
        self.images = 0
        self.read = 0
        self.tasks: Counter = Counter()
        self.sizes: Counter = Counter()
        self.empty = 0
        self.boxes_per_class: Counter = Counter()
        self.images_per_class: Counter = Counter()
        self.pixels_per_class: Counter = Counter()
        self.box_side: list[float] = []
        self.box_aspect: list[float] = []
        self.problems: dict[str, list[str]] = defaultdict(list)
        self.problem_counts: Counter = Counter()

    def problem(self, kind: str, message: str) -> None:
        self.problem_counts[kind] += 1
        if len(self.problems[kind]) < MAX_LISTED:
            self.problems[kind].append(message)

    def name(self, cid: int, mask: bool = False) -> str:
        names = self.mask_classes if mask else self.classes
        return names[cid] if 0 <= cid < len(names) else f"<id {cid}>"

    def add(self, path: str, image: np.ndarray, raw: dict, labelled: list[str]) -> None:
        self.read += 1
        h, w = image.shape[:2]
        self.sizes[f"{w}x{h}"] += 1
        self.tasks.update(labelled)
        present: set[str] = set()
        n_cls = len(self.classes)
        if "boxes" in raw:
            boxes = np.asarray(raw["boxes"], np.float64).reshape(-1, 4)
            labels = np.asarray(raw.get("box_labels", np.zeros(len(boxes))), np.int64).reshape(-1)
            if len(boxes) == 0:
                self.empty += 1
            bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            self.box_side += np.sqrt(np.clip(bw * bh, 0, None)).tolist()
            self.box_aspect += (bw / np.maximum(bh, 1e-6)).tolist()
            out = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > w) | (boxes[:, 3] > h)
            if out.any():
                self.problem("out of bounds", f"{path}: {int(out.sum())} boxes reach past the {w}x{h} image")
            bad = labels[(labels < 0) | (labels >= n_cls)]
            if bad.size:
                self.problem("unknown class id", f"{path}: box class ids {sorted(set(bad.tolist()))} "
                                                 f"(the dataset has {n_cls} classes)")
            names = [self.name(int(c)) for c in labels]
            self.boxes_per_class.update(names)
            present.update(names)
        if "mask" in raw:
            m = np.asarray(raw["mask"])
            if m.shape[:2] != (h, w):
                self.problem("mask of the wrong size", f"{path}: mask {m.shape[1]}x{m.shape[0]} for a {w}x{h} image")
            counts = np.bincount(m.ravel(), minlength=256)
            counts[255] = 0
            n_mask = len(self.mask_classes)
            for cid in np.flatnonzero(counts):
                self.pixels_per_class[self.name(int(cid), mask=True)] += int(counts[cid])
            bad = np.flatnonzero(counts[n_mask:]) + n_mask
            if bad.size:
                self.problem("unknown class id", f"{path}: mask values {bad.tolist()} (the mask has "
                                                 f"{n_mask} classes)")
            present.update(self.name(int(c), mask=True) for c in np.flatnonzero(counts[:n_mask]))
        if "labels" in raw:
            present.update(self.name(int(c)) for c in np.asarray(raw["labels"]).reshape(-1))
        self.images_per_class.update(present - {self.background})

    def enet_weights(self) -> list[float]:
        """ENet's class weights ``1 / ln(1.02 + p_c)`` (``p_c``: the class's share of the labelled
        pixels), normalised to mean 1, in mask class order; ``[]`` without masks."""
        total = sum(self.pixels_per_class.values())
        if not total:
            return []
        w = [1.0 / math.log(1.02 + self.pixels_per_class.get(c, 0) / total) for c in self.mask_classes]
        return [round(x * len(w) / sum(w), 3) for x in w]

    def summary(self) -> dict:
        def dist(v: list[float]) -> dict:
            if not v:
                return {"count": 0}
            a = np.asarray(v)
            q = np.percentile(a, [0, 5, 25, 50, 75, 95, 100])
            return {"count": int(a.size), "mean": float(a.mean()),
                    **{k: float(x) for k, x in zip(("min", "p5", "p25", "median", "p75", "p95", "max"), q)}}

        def hist(v: list[float], edges: np.ndarray) -> dict:
            counts, _ = np.histogram(np.clip(np.asarray(v, np.float64), edges[0], edges[-1]), bins=edges)
            return {"edges": [round(float(x), 4) for x in edges], "counts": counts.tolist()}

        def ranked(c: Counter) -> dict:
            return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

        return {
            "images": self.images, "read": self.read, "labelled": dict(self.tasks), "empty_images": self.empty,
            "image_sizes": ranked(self.sizes), "classes": self.classes,
            "boxes": int(sum(self.boxes_per_class.values())), "boxes_per_class": ranked(self.boxes_per_class),
            "images_per_class": ranked(self.images_per_class), "pixels_per_class": ranked(self.pixels_per_class),
            "mask_classes": self.mask_classes, "class_weight_enet": self.enet_weights(),
            "box_side": dist(self.box_side), "box_aspect": dist(self.box_aspect),
            # COCO's size bins by area: small < 32^2 <= medium < 96^2 <= large
            "box_size_bins": dict(zip(("small", "medium", "large"),
                                      np.histogram(self.box_side, bins=[0, 32, 96, np.inf])[0].tolist())),
            "box_side_hist": hist(self.box_side, SIDE_EDGES),
            "box_aspect_hist": hist(np.log2(np.clip(self.box_aspect, 1e-3, None)).tolist() if self.box_aspect else [],
                                    ASPECT_EDGES),
            "problems": {k: {"count": self.problem_counts[k], "files": self.problems[k]}
                         for k in sorted(self.problem_counts)},
        }


def _report_one(cfg, split: str, i: int, d) -> dict:
    where = f"data.{split}.{i}" + (f" ({d.name})" if d.name else "")
    entry = {"split": split, "dataset": d.name or f"{split}{i}", "type": d.type, "where": where}
    try:
        adapter = build_adapter(d, where)
    except (DataError, ConfigError, ValueError, TypeError, OSError) as e:  # the whole dataset cannot be read
        entry.update(images=0, problems={"unreadable dataset": {"count": 1, "files": [f"{where}: {e}"]}})
        return entry
    tasks = d.tasks or [n for n, t in cfg.tasks.items() if can_label(adapter, t)]
    try:
        mapped = TaskDataset(adapter, cfg.tasks, tasks, None, d.class_map, "error", entry["dataset"], d.unmapped)
    except (ConfigError, ValueError) as e:  # classes that do not map into the tasks: report, count without tasks
        mapped = None
        tasks = []
        entry["mapping_error"] = str(e)
    mask_classes = getattr(adapter, "mask_classes", None)
    background = getattr(adapter, "background", None) if mask_classes is not None else None
    st = _Stats(getattr(adapter, "classes", []), mask_classes, background)
    n = len(adapter) if not d.limit else min(len(adapter), d.limit)
    st.images = n
    for k in range(n):
        path = adapter.path(k)
        try:
            image, raw = adapter.load(k)
            labelled = []
            if mapped is not None:
                target = mapped.map_target(raw)
                labelled = [t for t in tasks if spec(cfg.tasks[t]).has_label(cfg.tasks[t], target)]
        except DataError as e:
            st.problem(problem_kind(e.problem), str(e))
            continue
        except (ValueError, KeyError, IndexError) as e:  # a mapper's complaint about one sample
            st.problem("bad annotation", f"{path}: {e}")
            continue
        st.add(path, image, raw, labelled)
    entry.update(st.summary())
    entry["tasks"] = tasks
    entry["adapter_stats"] = {k: v for k, v in adapter.stats().items() if v}
    return entry


def dataset_report(cfg, splits: list[str]) -> list[dict]:
    """One entry per dataset of each split in ``splits`` (see the module docstring)."""
    out = []
    for split in splits:
        for i, d in enumerate(getattr(cfg.data, split)):
            log.info("reading data.%s.%d (%s)", split, i, d.type)
            out.append(_report_one(cfg, split, i, d))
    return out


def _top(d: dict, k: int) -> str:
    items = list(d.items())[:k]
    more = len(d) - len(items)
    return ", ".join(f"{n} {c}" for n, c in items) + (f", ... ({more} more)" if more > 0 else "")


def format_report(entries: list[dict], top: int = 10, listed: int = 5) -> str:
    """The printed summary: per dataset and split, its figures and problems."""
    lines = []
    for e in entries:
        lines.append(f"== {e['split']}: {e['dataset']} (type {e['type']}, {e['where']})")
        if e.get("mapping_error"):
            lines.append(f"   classes do not map into the tasks: {e['mapping_error']}")
        if "read" in e:
            lines.append(f"   images {e['images']} (read {e['read']}), empty {e['empty_images']}, boxes {e['boxes']}")
            lines.append("   labelled: " + (", ".join(f"{t} {e['labelled'].get(t, 0)}" for t in e["tasks"]) or "none"))
            lines.append(f"   image sizes: {_top(e['image_sizes'], 3)}")
            for key, what in (("boxes_per_class", "boxes"), ("images_per_class", "images"),
                              ("pixels_per_class", "pixels")):
                if e[key]:
                    lines.append(f"   {what} per class (top {top}): {_top(e[key], top)}")
            if e.get("class_weight_enet"):
                lines.append(f"   class weights 1/ln(1.02+p), mean 1, for the classes {', '.join(e['mask_classes'])}: "
                             f"head.class_weight: [{', '.join(f'{w:g}' for w in e['class_weight_enet'])}]")
            for key, what in (("box_side", "box side px"), ("box_aspect", "box aspect w/h")):
                s = e[key]
                if s["count"]:
                    lines.append(f"   {what}: median {s['median']:.3g}, 5-95% {s['p5']:.3g}-{s['p95']:.3g}, "
                                 f"range {s['min']:.3g}-{s['max']:.3g}")
            if e["boxes"]:
                b = e["box_size_bins"]
                lines.append(f"   boxes small/medium/large (COCO areas): {b['small']} / {b['medium']} / {b['large']}")
            if e.get("adapter_stats"):
                lines.append("   adapter: " + ", ".join(f"{k} {v}" for k, v in e["adapter_stats"].items()))
        probs = e.get("problems", {})
        total = sum(p["count"] for p in probs.values())
        lines.append(f"   problems: {total}" + ("" if total else " (none found)"))
        for kind, p in probs.items():
            lines.append(f"     {kind}: {p['count']}")
            lines += [f"       {f}" for f in p["files"][:listed]]
            if p["count"] > listed:
                lines.append(f"       ... {p['count'] - listed} more (all in dataset_info.json)")
    return "\n".join(lines)


def _plot(e: dict, path: Path, top: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    counts = e["boxes_per_class"] or e["images_per_class"] or e["pixels_per_class"]
    what = "boxes" if e["boxes_per_class"] else ("images" if e["images_per_class"] else "pixels")
    names = list(counts)[:top]
    ax[0, 0].barh(names[::-1], [counts[n] for n in names][::-1])
    ax[0, 0].set_title(f"{what} per class (top {len(names)})")
    if e["pixels_per_class"] and what != "pixels":
        px = e["pixels_per_class"]
        pn = list(px)[:top]
        ax[0, 1].barh(pn[::-1], [px[n] for n in pn][::-1])
        ax[0, 1].set_title("mask pixels per class")
    else:
        sizes = [tuple(map(int, s.split("x"))) for s in e["image_sizes"]]
        ax[0, 1].scatter([w for w, _ in sizes], [h for _, h in sizes], s=[4 + 2 * c for c in e["image_sizes"].values()])
        ax[0, 1].set_title("image sizes (width x height)")
    if e["boxes"]:
        for a, key, title in ((ax[1, 0], "box_side_hist", "box side sqrt(w*h), px (log scale)"),
                              (ax[1, 1], "box_aspect_hist", "box aspect log2(w/h)")):
            h = e[key]
            edges = np.asarray(h["edges"])
            a.stairs(h["counts"], edges, fill=True)
            a.set_title(title)
        ax[1, 0].set_xscale("log", base=2)
    else:
        for a in ax[1]:
            a.set_axis_off()
    fig.suptitle(f"{e['split']}: {e['dataset']} ({e['images']} images)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(entries: list[dict], out_dir: str | Path) -> list[Path]:
    """``dataset_info.json`` plus one PNG of plots per entry; returns the paths written."""
    import json

    from ..files import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "dataset_info.json"]
    write_text(paths[0], json.dumps(entries, indent=1) + "\n")
    for k, e in enumerate(entries):
        if "read" not in e:
            continue
        p = out / f"{e['split']}_{k}_{_safe(e['dataset'])}.png"
        _plot(e, p)
        paths.append(p)
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "dataset"
