"""YOLO (Ultralytics) layout: ``images/`` + ``labels/*.txt`` and a data YAML; boxes, polygons (masks and
instances), labels."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from ..errors import ConfigError
from ..paths import expand
from .base import BaseAdapter, inside, read_image
from .errors import DataError
from .paint import paint_largest_first, polygons_to_rle

__all__ = ["YoloAdapter", "label_path"]

log = logging.getLogger(__name__)

IMG_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
_KNOWN_KEYS = ("boxes", "box_labels", "mask", "labels", "instances")
_NOT_SPLITS = ("path", "names", "nc", "download")
_SPLIT_HELP = "a folder of images, a .txt list of image paths, or a list of either"
_EPS = 1e-6  # normalised slack before a box corner past the image counts as clipped


def label_path(image_path: str) -> str:
    """The label file of an image, as Ultralytics derives it: the last ``/images/`` of the path
    becomes ``/labels/`` and the suffix ``.txt`` (beside the image when there is no ``images``)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return os.path.splitext(sb.join(image_path.rsplit(sa, 1)))[0] + ".txt"


class YoloAdapter(BaseAdapter):
    """An Ultralytics YOLO dataset: images, one ``.txt`` label file per image, class names.

    Args:
        data: an Ultralytics data YAML. ``path`` is the dataset root (relative to the YAML's
            folder, or else to the working directory; default the YAML's folder); ``train``,
            ``val`` and ``test`` are each a folder of images (searched recursively), a ``.txt``
            list of image paths (relative ones are relative to the list's folder), or a list of
            either, relative to the root; ``names`` is a list or a mapping ``{id: name}`` with
            ids ``0 .. n-1``; ``nc``, when present, must equal the number of names.
        split: the YAML key whose images to read (``train``, ``val``, ``test``, ...).
        images: instead of ``data``: a folder, ``.txt`` list or list of either (relative to the
            working directory); needs ``names``.
        names: the class names when ``images`` is given (index = class id).
        provides: target keys, any of ``boxes``, ``box_labels``, ``mask``, ``labels``,
            ``instances``. By default boxes, box labels and labels, plus ``mask`` and ``instances``
            when any label file holds a polygon; ``instances`` is dropped (also when asked for)
            when none does, so that a box-only dataset labels no instance task (and one named
            in its ``tasks`` is a config error).
        min_box_size: boxes whose width or height in pixels is below this are dropped at load
            (image sizes are only known then; the class still counts in ``labels``), and with
            them their instances.
        background: name of the background class of the *mask* id space, or ``None`` (as in
            :class:`~visionmtl.data.coco.CocoAdapter`).
        allow_outside_root: read image paths in a ``.txt`` list that leave the list's folder.

    The label file of ``.../images/.../x.jpg`` is ``.../labels/.../x.txt`` (:func:`label_path`).
    A line of 5 fields is a box, ``class cx cy w h``; a line of any other odd number of fields
    is a polygon, ``class x1 y1 x2 y2 ...``; every coordinate is normalised to ``[0, 1]`` by the
    image size. Each line is read on its own, so one file may mix boxes and polygons (a
    2-point polygon would also have 5 fields: such a line is always a box). A polygon of fewer
    than 3 points (3 fields, or just a class) is skipped, the whole object with it (no box, no
    class in ``labels``), and counted in ``stats()["short_polygons"]``, as the COCO adapter
    counts its short polygons.

    A polygon's box is its bounds; its mask is rasterised by pycocotools exactly as the COCO
    adapter rasterises a polygon. With ``mask`` the polygons are painted as COCO's (largest
    first, so smaller instances end on top; with a background class unlabelled pixels are 0,
    else 255) and then the boxes of box lines are 255 (ignore), as COCO's annotations without
    a segmentation. With ``instances``, every polygon line whose box is kept (``min_box_size``)
    is an instance: ``instance_rles`` (one pycocotools RLE per line, original pixels),
    ``instance_boxes`` float32 ``[N,4]`` (its box, the same as in ``boxes``) and
    ``instance_labels`` int64 ``[N]``. Only polygon lines are instances: box lines (in a
    box-only file or mixed with polygons) have no mask and give boxes only, as a COCO annotation
    without a segmentation does. ``labels`` is the sorted set of classes in the file. An empty
    label file is an image without objects; so is an image without one, and those are counted
    (``stats()["missing_label_files"]``) and reported once when the adapter is built. Box
    corners past the image are clipped (counted as ``clipped_boxes``).

    Every label file is read when the adapter is built. A bad line (an even number of fields,
    a coordinate outside ``[0, 1]``, a class id not in ``names``) is counted and logged then,
    and loading that image raises ``DataError(label_file, "line n: ...")`` so that
    ``data.on_bad_sample: skip`` can drop it. Problems with the YAML raise ``DataError`` naming
    the YAML and its key.
    """

    labels_follow = "box_labels"

    def __init__(
        self,
        data: str | os.PathLike | None = None,
        split: str = "train",
        images: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        names: Sequence[str] | dict | None = None,
        provides: Sequence[str] | None = None,
        min_box_size: float = 1.0,
        background: str | None = "background",
        allow_outside_root: bool = False,
    ):
        if (data is None) == (images is None):
            raise ConfigError("YoloAdapter needs either 'data' (a data YAML) or 'images' with 'names', not both")
        self.allow_outside_root = bool(allow_outside_root)
        self.min_box_size = float(min_box_size)
        self.background = background
        self.split = str(split)
        if data is not None:
            if names is not None:
                raise ConfigError("YoloAdapter: 'names' comes from the data YAML; leave it out with 'data'")
            self.data: str | None = expand(data)
            self.source = self.data
            self.classes, self._paths = self._read_yaml()
        else:
            if names is None:
                raise ConfigError("YoloAdapter: 'images' needs 'names' (the class names, index = class id)")
            self.data = None
            self.source = "images"
            self.classes = _names(names, "names", None)
            self._paths = self._find_images(images, Path.cwd(), None, "images")
        if background is not None and background in self.classes:
            raise DataError(self.source, f"class name {background!r} clashes with the mask background class; "
                                         "pass background=None or another name")
        self.mask_classes: list[str] = ([background] if background is not None else []) + self.classes
        self._index()
        if provides is None:
            provides = ("boxes", "box_labels", "labels") + (("mask", "instances") if self._stats["polygons"] else ())
        unknown = [k for k in provides if k not in _KNOWN_KEYS]
        if unknown:
            raise ConfigError(f"YoloAdapter cannot provide {unknown}; choose from {list(_KNOWN_KEYS)}")
        # without a single polygon line there are no instance masks: leave instances out, so that
        # an instance task is not labelled by this dataset (a config error when named in its tasks)
        self.provides = tuple(k for k in provides if k != "instances" or self._stats["polygons"])
        if "mask" in self.provides and len(self.mask_classes) > 255:
            raise DataError(self.source, f"{len(self.mask_classes)} mask classes do not fit uint8 ids")
        self._report()

    # ------------------------------------------------------------------ the data YAML
    def _read_yaml(self) -> tuple[list[str], list[str]]:
        f = self.data
        if not os.path.isfile(f):
            raise DataError(f, "data YAML not found")
        try:
            with open(f, encoding="utf-8") as fh:
                d = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            raise DataError(f, f"not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
        except UnicodeDecodeError as e:
            raise DataError(f, f"not UTF-8 text ({e.reason})") from None
        if not isinstance(d, dict):
            raise DataError(f, f"expected a mapping with keys path, train, val, names; got {type(d).__name__}")
        if "names" not in d:
            raise DataError(f, "no key 'names' (the class names: a list, or a mapping {id: name})")
        classes = _names(d["names"], "key 'names'", f)
        if "nc" in d and d["nc"] != len(classes):
            raise DataError(f, f"key 'nc' is {d['nc']!r} but 'names' lists {len(classes)} classes")
        if self.split in _NOT_SPLITS:
            raise ConfigError(f"YoloAdapter: split {self.split!r} is not a split of the data YAML; "
                              "use train, val or test")
        if d.get(self.split) is None:
            raise DataError(f, f"no key '{self.split}' (the {self.split} images: {_SPLIT_HELP})")
        here = Path(f).resolve().parent
        root = here
        if d.get("path") is not None:
            p = Path(expand(str(d["path"])))
            root = p if p.is_absolute() else here / p
            if not root.is_dir() and not p.is_absolute() and p.is_dir():
                root = p.resolve()  # relative to the working directory, as Ultralytics also reads it
            if not root.is_dir():
                raise DataError(f, f"key 'path': folder {d['path']!r} not found (looked in {here / p})")
        return classes, self._find_images(d[self.split], root, f, f"key '{self.split}'")

    def _find_images(self, entry, root: Path, source: str | None, key: str) -> list[str]:
        """The image paths of a split entry: a folder, a .txt list, or a list of either. Problems
        name ``source`` (the YAML) and ``key``, or the argument ``images`` without a YAML."""
        def bad(problem: str) -> Exception:
            return DataError(source, f"{key}: {problem}") if source else ConfigError(f"YoloAdapter {key}: {problem}")

        entries = entry if isinstance(entry, (list, tuple)) else [entry]
        if not entries or not all(isinstance(e, (str, os.PathLike)) for e in entries):
            raise bad(f"expected {_SPLIT_HELP}; got {entry!r}")
        paths: list[str] = []
        for e in entries:
            p = Path(expand(e))
            p = p if p.is_absolute() else root / p
            if p.is_dir():
                found = _walk_images(str(p))
                if not found:
                    raise bad(f"no images in {p}")
                paths += found
            elif p.is_file() and p.suffix.lower() == ".txt":
                paths += self._read_list(str(p))
            elif p.is_file():
                raise bad(f"{p} is neither a folder nor a .txt list of images")
            else:
                raise bad(f"{p} not found")
        return paths

    def _read_list(self, txt: str) -> list[str]:
        base = os.path.dirname(txt)
        out = []
        try:
            with open(txt, encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    name = line.strip()
                    if name and not name.startswith("#"):
                        out.append(inside(base, name, self.allow_outside_root, txt, f"line {n}"))
        except UnicodeDecodeError as e:
            raise DataError(txt, f"not UTF-8 text ({e.reason})") from None
        if not out:
            raise DataError(txt, "lists no images")
        return out

    # ------------------------------------------------------------------ label files
    def _index(self) -> None:
        self._labels_path = [label_path(p) for p in self._paths]
        self._cls: list[np.ndarray] = []  # int64 [N] class of each object
        self._boxes: list[np.ndarray] = []  # float64 [N, 4] normalised xyxy, clipped to [0, 1]
        self._polys: list[list[np.ndarray | None]] = []  # per object: normalised flat polygon, None for a box
        self._errors: list[str | None] = []
        st = dict.fromkeys(("images", "label_files", "missing_label_files", "empty_label_files", "bad_label_files",
                            "objects", "polygons", "short_polygons", "clipped_boxes"), 0)
        st["images"] = len(self._paths)
        self._missing: list[str] = []
        for lp in self._labels_path:
            cls, boxes, polys, err, clipped, short = _parse_label_file(lp, len(self.classes))
            if err == "missing":
                self._missing.append(lp)
                err = None
            else:
                st["label_files"] += 1
                st["empty_label_files"] += err is None and len(cls) == 0
            st["bad_label_files"] += err is not None
            st["objects"] += len(cls)
            st["polygons"] += sum(p is not None for p in polys)
            st["short_polygons"] += short
            st["clipped_boxes"] += clipped
            self._cls.append(cls)
            self._boxes.append(boxes)
            self._polys.append(polys)
            self._errors.append(err)
        st["missing_label_files"] = len(self._missing)
        st["empty_images"] = sum(len(c) == 0 for c, e in zip(self._cls, self._errors) if e is None)
        self._stats = st

    def _report(self) -> None:
        st, where = self._stats, f"{self.source} ({self.split})" if self.data else self.source
        if self._missing:
            log.warning("%s: %d of %d images have no label file and are read as background (no objects), "
                        "e.g. %s", where, len(self._missing), st["images"], self._missing[0])
        if st["bad_label_files"]:
            first = next(f"{p}: {e}" for p, e in zip(self._labels_path, self._errors) if e)
            log.warning("%s: %d label files have errors; loading their images raises (data.on_bad_sample: skip "
                        "drops them). First: %s", where, st["bad_label_files"], first)
        if st["clipped_boxes"]:
            log.warning("%s: clipped %d boxes that reached past their image", where, st["clipped_boxes"])

    # ------------------------------------------------------------------ adapter interface
    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> str:
        return self._paths[i]

    def label_file(self, i: int) -> str:
        """The label file of sample ``i`` (it may not exist: then the image is background)."""
        return self._labels_path[i]

    def stats(self) -> dict:
        """Counts: images, label files (read, missing, empty, with errors), objects read (of
        which polygons), polygons skipped for having fewer than 3 points, clipped boxes, images
        without objects (bad label files aside)."""
        return dict(self._stats)

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        if self._errors[i] is not None:
            raise DataError(self._labels_path[i], self._errors[i])
        img = read_image(self._paths[i])
        h, w = img.shape[:2]
        boxes = (self._boxes[i] * np.array([w, h, w, h], np.float64)).astype(np.float32)  # (N, 4) pixels
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        target: dict = {}
        if "boxes" in self.provides:
            target["boxes"] = boxes[keep]
        if "box_labels" in self.provides:
            target["box_labels"] = self._cls[i][keep]
        if {"mask", "instances"} & set(self.provides):
            is_poly = np.array([p is not None for p in self._polys[i]], bool)
            rles = self._rles(i, h, w)  # one per polygon line, in line order
            if "mask" in self.provides:
                target["mask"] = self._rasterise(i, h, w, rles, is_poly)
            if "instances" in self.provides:
                sel = keep[is_poly]  # the polygon lines whose box is kept
                target["instance_rles"] = [r for r, k in zip(rles, sel) if k]
                target["instance_boxes"] = boxes[is_poly][sel]
                target["instance_labels"] = self._cls[i][is_poly][sel]
        if "labels" in self.provides:
            target["labels"] = np.unique(self._cls[i]).astype(np.int64)
        return img, target

    def _rles(self, i: int, h: int, w: int) -> list[dict]:
        """The polygon lines of sample ``i`` as pycocotools RLEs in pixels, rasterised as COCO's."""
        scale = np.array([w, h], np.float64)
        return [polygons_to_rle([(p.reshape(-1, 2) * scale).reshape(-1)], h, w)
                for p in self._polys[i] if p is not None]

    def _rasterise(self, i: int, h: int, w: int, rles: list[dict], is_poly: np.ndarray) -> np.ndarray:
        offset = 1 if self.background is not None else 0
        mask = np.full((h, w), 0 if self.background is not None else 255, dtype=np.uint8)
        paint_largest_first(mask, rles, (self._cls[i][is_poly] + offset).tolist())
        # box lines: objects without an outline, so their boxes are ignore (as COCO's boxes without a segmentation)
        for x1, y1, x2, y2 in self._boxes[i][~is_poly] * np.array([w, h, w, h]):
            mask[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = 255
        return mask


# ---------------------------------------------------------------------- helpers
def _names(names, what: str, source: str | None) -> list[str]:
    """Class names from a list, or a mapping ``{id: name}`` with ids 0 .. n-1."""
    def bad(problem: str):
        return DataError(source, f"{what}: {problem}") if source else ConfigError(f"YoloAdapter {what}: {problem}")

    if isinstance(names, dict):
        ids = list(names)
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in ids):
            raise bad(f"ids must be integers, got {ids[:10]!r}")
        if sorted(ids) != list(range(len(ids))):
            raise bad(f"ids must be 0 .. {len(ids) - 1}, got {sorted(ids)[:10]!r}")
        names = [names[k] for k in range(len(ids))]
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise bad(f"expected a list of names or a mapping {{id: name}}, got {names!r}")
    out = [str(n).strip() if n is not None else "" for n in names]
    if not out:
        raise bad("no class names")
    if not all(out):
        raise bad(f"an empty name in {list(names)!r}")
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise bad(f"names {dup} more than once")
    return out


def _walk_images(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, n) for n in sorted(filenames)
                if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMG_SUFFIXES]
    return out


def _parse_label_file(path: str, nc: int):
    """``(classes int64 [N], boxes float64 [N, 4] normalised xyxy, polygons, error, clipped, short)``.

    ``polygons`` has one entry per object: its flat normalised polygon, or None for a box line.
    ``error`` is ``"missing"`` for a missing file, else None or the first problem
    (``"line n: ..."``); ``short`` counts the polygons of fewer than 3 points, which are skipped.
    """
    empty = (np.zeros(0, np.int64), np.zeros((0, 4), np.float64), [])
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [(n, ln.split()) for n, ln in enumerate(fh, start=1) if ln.strip()]
    except FileNotFoundError:
        return (*empty, "missing", 0, 0)
    except UnicodeDecodeError as e:
        return (*empty, f"not UTF-8 text ({e.reason})", 0, 0)
    except OSError as e:
        return (*empty, f"cannot read label file ({e.strerror})", 0, 0)
    classes, boxes, polys, short = [], [], [], 0
    for n, tokens in lines:
        nf = len(tokens)
        if nf % 2 == 0:
            return (*empty, f"line {n}: {nf} fields; expected 5 (class cx cy w h) or a class and at least 3 "
                            "x y pairs (class x1 y1 x2 y2 x3 y3 ...)", 0, 0)
        try:
            v = np.array([float(t) for t in tokens], np.float64)
        except ValueError:
            tok = next(t for t in tokens if not _is_float(t))
            return (*empty, f"line {n}: {tok!r} is not a number", 0, 0)
        k = v[0]
        if not float(k).is_integer():
            return (*empty, f"line {n}: class id {tokens[0]!r} is not an integer", 0, 0)
        if not 0 <= k < nc:
            return (*empty, f"line {n}: class id {int(k)} is not in names ({nc} classes, ids 0-{nc - 1})", 0, 0)
        c = v[1:]
        out = c[~((c >= 0) & (c <= 1))]  # NaN too
        if out.size:
            return (*empty, f"line {n}: coordinate {out[0]:g} outside [0, 1] (YOLO coordinates are normalised "
                            "by the image size)", 0, 0)
        if nf == 5:  # a box (a 2-point polygon cannot be told from one)
            cx, cy, bw, bh = c
            boxes.append((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
            polys.append(None)
        elif nf < 7:  # a polygon of 0 or 1 points: no outline, no box; skipped and counted
            short += 1
            continue
        else:
            xy = c.reshape(-1, 2)
            boxes.append((*xy.min(0), *xy.max(0)))
            polys.append(c)
        classes.append(int(k))
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    clipped = int(np.sum(np.any((b < -_EPS) | (b > 1 + _EPS), axis=1)))
    return (np.asarray(classes, np.int64), np.clip(b, 0.0, 1.0), polys, None, clipped, short)


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
