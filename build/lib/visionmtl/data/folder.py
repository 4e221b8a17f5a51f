"""Image classification datasets: one folder per class, or a CSV of multi-label rows."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

import numpy as np

from .base import MISSING_VALUES, BaseAdapter, inside, name_list, read_image, value_stats
from .errors import DataError

IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_HEADER_PATH = {"path", "file", "filename", "file_name", "image"}
_HEADER_LABELS = {"labels", "label", "classes", "class"}


class ImageFolderAdapter(BaseAdapter):
    """Multi-class images laid out as ``root/<class name>/**/<image>``.

    Args:
        root: folder whose sub-folders are the classes.
        classes: class names (index = native id). By default the sorted sub-folder names.
            When given, a sub-folder that is not one of them raises ``DataError``; a class
            without a sub-folder simply has no images.
        img_suffixes: file suffixes counted as images (case-insensitive); hidden files and
            folders are skipped.

    ``load(i)`` gives ``{"labels": array([k])}``. ``mask_classes`` equals ``classes``.
    """

    provides = ("labels",)

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str] | None = None,
        img_suffixes: Sequence[str] = IMG_SUFFIXES,
    ):
        self.root = str(root)
        if not os.path.isdir(self.root):
            raise DataError(self.root, "image folder not found")
        suffixes = tuple(s.lower() for s in img_suffixes)
        subs = sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )
        if classes is None:
            self.classes = subs
        else:
            self.classes = [str(c) for c in classes]
            known = set(self.classes)
            for s in subs:
                if s not in known:
                    raise DataError(
                        os.path.join(self.root, s),
                        f"folder {s!r} is not one of the declared classes {self.classes}",
                    )
        self.mask_classes = self.classes
        index = {c: k for k, c in enumerate(self.classes)}
        self._paths: list[str] = []
        self._labels: list[int] = []
        for s in subs:
            for path in _walk_images(os.path.join(self.root, s), suffixes):
                self._paths.append(path)
                self._labels.append(index[s])
        if not self._paths:
            raise DataError(self.root, "no images found")
        self._per_class = np.bincount(np.asarray(self._labels), minlength=len(self.classes))

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> str:
        return self._paths[i]

    def stats(self) -> dict:
        return {"images": len(self), "per_class": {c: int(n) for c, n in zip(self.classes, self._per_class)}}

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        img = read_image(self._paths[i])
        return img, {"labels": np.array([self._labels[i]], dtype=np.int64)}


class CsvLabelsAdapter(BaseAdapter):
    """Images listed in a CSV file: multi-label rows ``path,label1;label2``, optionally with
    named numeric values per image (``path,labels,age,...``).

    Args:
        csv_file: the CSV. Without ``value_columns`` it has two columns, path and labels; an
            optional first row ``path,labels`` is recognised as a header and skipped. Blank lines
            are skipped; an empty label field means "no labels" (a valid negative, ``labels`` of
            shape ``[0]``). Paths with commas must be quoted.
        root: folder relative paths are resolved against; by default the CSV's own folder.
        classes: label names (index = native id). When given, an unknown label raises
            ``DataError``; otherwise the classes are the sorted union of all labels.
        label_sep: separator between labels in the labels column.
        value_columns: names of columns holding a number per image (e.g. ``age``), given in
            ``values``. The CSV must then start with a header row; its columns are looked up by
            name, in any order: the path column (``path``, ``file``, ``filename``,
            ``file_name`` or ``image``, any case), optionally a labels column (``labels``,
            ``label``, ``classes`` or ``class``, any case) and each value column (exact name).
            Other columns are ignored. A cell is parsed as a float (``31``, ``0.5``, ``1e-4``);
            one that is not a finite number raises ``DataError`` naming the file, line and
            column. Without a labels column the adapter gives no ``labels``.
        missing_values: what an empty value cell means: ``"error"`` raises ``DataError`` naming
            the file, line and column; ``"unlabelled"`` leaves that name out of the image's
            ``values`` (no label for it).
        allow_outside_root: read image paths that leave ``root`` (``../x.jpg``, absolute
            paths); by default that is a ``DataError`` naming the CSV file and line.

    ``load(i)`` gives ``{"labels": sorted unique int64 ids}`` (when the CSV has labels) and
    ``{"values": {name: float}}`` (with ``value_columns``). ``provides`` lists exactly those
    keys; ``value_names`` lists the value columns. ``mask_classes`` equals ``classes``.
    """

    provides = ("labels",)

    def __init__(
        self,
        csv_file: str | os.PathLike,
        root: str | os.PathLike | None = None,
        classes: Sequence[str] | None = None,
        label_sep: str = ";",
        value_columns: Sequence[str] | None = None,
        missing_values: str = "error",
        allow_outside_root: bool = False,
    ):
        self.csv_file = str(csv_file)
        self.allow_outside_root = bool(allow_outside_root)
        if missing_values not in MISSING_VALUES:
            raise ValueError(f"missing_values must be one of {list(MISSING_VALUES)}, got {missing_values!r}")
        self.missing_values = missing_values
        self.value_names: list[str] = name_list(value_columns, "value_columns")
        if not os.path.isfile(self.csv_file):
            raise DataError(self.csv_file, "CSV file not found")
        self.root = str(root) if root is not None else os.path.dirname(os.path.abspath(self.csv_file))
        if value_columns is None:
            rows = [(line, rel, names, {}) for line, rel, names in self._read_rows(label_sep)]
            has_labels = True
        else:
            rows, has_labels = self._read_table(label_sep)
        if not rows:
            raise DataError(self.csv_file, "no images found")
        self.provides = (("labels",) if has_labels else ()) + (("values",) if value_columns is not None else ())
        if classes is None:
            self.classes = sorted({name for _, _, names, _ in rows for name in names})
        else:
            self.classes = [str(c) for c in classes]
        self.mask_classes = self.classes
        index = {c: k for k, c in enumerate(self.classes)}
        self._paths: list[str] = []
        self._labels: list[np.ndarray] = []
        self._values: list[dict[str, float]] = []
        for line, rel, names, values in rows:
            ids = set()
            for name in names:
                if name not in index:
                    raise DataError(self.csv_file, f"line {line}: label {name!r} not in classes")
                ids.add(index[name])
            self._paths.append(inside(self.root, rel, self.allow_outside_root, self.csv_file, f"line {line}"))
            self._labels.append(np.asarray(sorted(ids), dtype=np.int64))
            self._values.append(values)
        self._negatives = sum(1 for lab in self._labels if lab.size == 0)

    def _read_rows(self, label_sep: str) -> list[tuple[int, str, list[str]]]:
        """Rows ``(line, path, label names)`` of a 2-column CSV with an optional header."""
        rows = []
        try:
            with open(self.csv_file, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                first = True
                for fields in reader:
                    line = reader.line_num
                    if not fields or all(not x.strip() for x in fields):
                        continue
                    fields = [x.strip() for x in fields]
                    if first:
                        first = False
                        if fields[0].lower() in _HEADER_PATH and (
                            len(fields) == 1 or fields[1].lower() in _HEADER_LABELS
                        ):
                            continue
                    if len(fields) > 2:
                        raise DataError(
                            self.csv_file,
                            f"line {line}: expected 'path,labels', got {len(fields)} fields "
                            "(quote paths that contain commas)",
                        )
                    if not fields[0]:
                        raise DataError(self.csv_file, f"line {line}: empty image path")
                    labels = fields[1] if len(fields) == 2 else ""
                    rows.append((line, fields[0], _split_labels(labels, label_sep)))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(self.csv_file, f"cannot parse CSV ({e})") from None
        return rows

    def _read_table(self, label_sep: str) -> tuple[list[tuple[int, str, list[str], dict[str, float]]], bool]:
        """Rows ``(line, path, label names, values)`` of a CSV whose header names its columns,
        and whether it has a labels column."""
        rows = []
        header: list[str] | None = None
        labels_col = None
        try:
            with open(self.csv_file, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                for fields in reader:
                    line = reader.line_num
                    if not fields or all(not x.strip() for x in fields):
                        continue
                    fields = [x.strip() for x in fields]
                    if header is None:
                        header = fields
                        path_col, labels_col, value_cols = self._columns(header)
                        continue
                    if len(fields) > len(header):
                        raise DataError(
                            self.csv_file,
                            f"line {line}: {len(fields)} fields but the header has {len(header)} "
                            "(quote paths that contain commas)",
                        )
                    fields += [""] * (len(header) - len(fields))  # short row: trailing cells empty
                    if not fields[path_col]:
                        raise DataError(self.csv_file, f"line {line}: empty image path")
                    names = _split_labels(fields[labels_col], label_sep) if labels_col is not None else []
                    values = {}
                    for name, col in value_cols:
                        v = self._parse_value(fields[col], line, name)
                        if v is not None:
                            values[name] = v
                    rows.append((line, fields[path_col], names, values))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(self.csv_file, f"cannot parse CSV ({e})") from None
        return rows, labels_col is not None

    def _columns(self, header: list[str]) -> tuple[int, int | None, list[tuple[str, int]]]:
        """Column indices of the path, the labels (None when absent) and each value name."""
        cols = ", ".join(header)
        names = set(self.value_names)
        paths = [c for c, h in enumerate(header) if h.lower() in _HEADER_PATH and h not in names]
        labels = [c for c, h in enumerate(header) if h.lower() in _HEADER_LABELS and h not in names]
        if not paths:
            raise DataError(
                self.csv_file,
                f"no image path column in the header (columns: {cols}); value_columns needs a header "
                f"row naming the path column one of {sorted(_HEADER_PATH)}",
            )
        for what, found in (("image path", paths), ("labels", labels)):
            if len(found) > 1:
                raise DataError(self.csv_file, f"several {what} columns in the header: {[header[c] for c in found]}")
        value_cols = []
        for name in self.value_names:
            if name not in header:
                raise DataError(self.csv_file, f"no column {name!r} in the header (columns: {cols})")
            if header.count(name) > 1:
                raise DataError(self.csv_file, f"column {name!r} appears {header.count(name)} times in the header")
            value_cols.append((name, header.index(name)))
        return paths[0], (labels[0] if labels else None), value_cols

    def _parse_value(self, cell: str, line: int, name: str) -> float | None:
        """A value cell as a finite float; None for an empty cell when missing values are allowed."""
        if not cell:
            if self.missing_values == "unlabelled":
                return None
            raise DataError(
                self.csv_file,
                f"line {line}: column {name!r} is empty (pass missing_values='unlabelled' to allow "
                "images without it)",
            )
        try:
            v = float(cell)
        except ValueError:
            raise DataError(self.csv_file, f"line {line}: column {name!r} is not a number: {cell!r}") from None
        if not math.isfinite(v):
            raise DataError(self.csv_file, f"line {line}: column {name!r} is not a finite number: {cell!r}")
        return v

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> str:
        return self._paths[i]

    def stats(self) -> dict:
        """``images``; ``negatives`` (images without labels) when the CSV has labels; with
        value columns, ``values[name]`` = ``count`` (images labelled), ``mean``, ``min``, ``max``."""
        out: dict = {"images": len(self)}
        if "labels" in self.provides:
            out["negatives"] = self._negatives
        if "values" in self.provides:
            out["values"] = value_stats(self._values, self.value_names)
        return out

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        img = read_image(self._paths[i])
        target: dict = {}
        if "labels" in self.provides:
            target["labels"] = self._labels[i].copy()
        if "values" in self.provides:
            target["values"] = dict(self._values[i])
        return img, target


def _split_labels(field: str, label_sep: str) -> list[str]:
    """The unique label names of a labels field, in order of appearance."""
    return list(dict.fromkeys(x.strip() for x in field.split(label_sep) if x.strip()))


def _walk_images(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes:
                out.append(os.path.join(dirpath, name))
    return out
