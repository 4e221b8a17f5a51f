"""Convert a COCO instances JSON and its images into the Ultralytics YOLO layout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from .errors import DataError

__all__ = ["coco_to_yolo"]


def coco_to_yolo(ann_file: str | os.PathLike, img_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 split: str = "train", segments: bool = False, link: bool = True, digits: int = 8) -> dict:
    """Write ``out_dir/images/<split>/<file_name>``, ``out_dir/labels/<split>/<stem>.txt`` and
    ``out_dir/data.yaml`` (``path``, the split's key, ``names``; keys already there are kept).

    Classes are the categories sorted by id (class ``k`` = the k-th). With ``segments=False`` a
    line is ``k cx cy w h`` from the box clipped to the image, as the COCO adapter clips it;
    with ``segments=True`` it is ``k x1 y1 x2 y2 ...``, the annotation's polygons clipped to the
    image. The parts of a multi-part polygon are joined into one by zero-width bridges to the first
    part's first point (there and back, so the filled area is their union where they do not
    overlap). Coordinates are normalised and written with ``digits`` decimals.

    Skipped, and counted in the result: crowd annotations (``crowd``), and with ``segments``
    non-crowd annotations without a polygon (RLE; ``no_polygon``); boxes with no area after
    clipping (``degenerate``). Every image gets a label file, empty when nothing is left.
    Images are symbolic links with ``link`` (else copies). Returns the counts.
    """
    ann_file, out = Path(ann_file), Path(out_dir).resolve()
    try:
        coco = json.loads(ann_file.read_text())
    except (OSError, ValueError) as e:
        raise DataError(str(ann_file), f"cannot read COCO JSON ({e})") from None
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    native = {c["id"]: k for k, c in enumerate(cats)}
    by_image: dict = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    counts = dict.fromkeys(("images", "lines", "crowd", "no_polygon", "degenerate"), 0)
    for im in coco["images"]:
        w, h = float(im["width"]), float(im["height"])
        src = Path(img_dir) / im["file_name"]
        dst = out / "images" / split / im["file_name"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            pass
        elif link:
            os.symlink(src.resolve(), dst)
        else:
            shutil.copyfile(src, dst)
        lines = []
        for a in by_image.get(im["id"], []):
            if a.get("iscrowd", 0):
                counts["crowd"] += 1
                continue
            if segments:
                line = _polygon_line(a, w, h, digits)
                counts["no_polygon"] += line is None
            else:
                line = _box_line(a, w, h, digits)
                counts["degenerate"] += line is None
            if line is not None:
                lines.append(f"{native[a['category_id']]} {line}")
        label = out / "labels" / split / (os.path.splitext(im["file_name"])[0] + ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(ln + "\n" for ln in lines))
        counts["images"] += 1
        counts["lines"] += len(lines)
    _write_yaml(out, split, [str(c["name"]) for c in cats])
    return counts


def _box_line(a: dict, w: float, h: float, digits: int) -> str | None:
    x, y, bw, bh = (float(v) for v in a["bbox"])
    x1, y1, x2, y2 = min(max(x, 0.0), w), min(max(y, 0.0), h), min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
    if x2 <= x1 or y2 <= y1:
        return None
    v = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
    return " ".join(f"{c:.{digits}f}" for c in v)


def _polygon_line(a: dict, w: float, h: float, digits: int) -> str | None:
    segm = a.get("segmentation")
    parts = [np.asarray(p, np.float64).reshape(-1, 2) for p in segm
             if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0] if isinstance(segm, list) else []
    if not parts:
        return None
    first = parts[0][:1]
    pts = [parts[0], first]  # the first ring, closed
    for p in parts[1:]:  # bridge out to each other ring, trace it, close it, bridge back
        pts += [p, p[:1], first]
    xy = np.concatenate(pts) if len(parts) > 1 else parts[0]
    xy = np.clip(xy / np.array([w, h]), 0.0, 1.0)
    return " ".join(f"{c:.{digits}f}" for c in xy.reshape(-1))


def _write_yaml(out: Path, split: str, names: list[str]) -> None:
    path = out / "data.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    data = data or {}
    data.update({"path": str(out), split: f"images/{split}", "names": dict(enumerate(names))})
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
