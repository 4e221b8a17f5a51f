"""Image classification datasets: one folder per class, or a CSV of multi-label rows."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from .base import BaseAdapter, read_image
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
    """Multi-label images listed in a CSV file, one ``path,label1;label2`` row per image.

    Args:
        csv_file: the CSV. An optional first row ``path,labels`` is recognised as a header and
            skipped. Blank lines are skipped; an empty label field means "no labels" (a valid
            negative, ``labels`` of shape ``[0]``). Paths with commas must be quoted.
        root: folder relative paths are resolved against; by default the CSV's own folder.
        classes: label names (index = native id). When given, an unknown label raises
            ``DataError``; otherwise the classes are the sorted union of all labels.
        label_sep: separator between labels in the second column.

    ``load(i)`` gives ``{"labels": sorted unique int64 ids}``. ``mask_classes`` equals
    ``classes``.
    """

    provides = ("labels",)

    def __init__(
        self,
        csv_file: str | os.PathLike,
        root: str | os.PathLike | None = None,
        classes: Sequence[str] | None = None,
        label_sep: str = ";",
    ):
        self.csv_file = str(csv_file)
        if not os.path.isfile(self.csv_file):
            raise DataError(self.csv_file, "CSV file not found")
        self.root = str(root) if root is not None else os.path.dirname(os.path.abspath(self.csv_file))
        rows = self._read_rows(label_sep)
        if not rows:
            raise DataError(self.csv_file, "no images found")
        if classes is None:
            self.classes = sorted({name for _, _, names in rows for name in names})
        else:
            self.classes = [str(c) for c in classes]
        self.mask_classes = self.classes
        index = {c: k for k, c in enumerate(self.classes)}
        self._paths: list[str] = []
        self._labels: list[np.ndarray] = []
        for line, rel, names in rows:
            ids = set()
            for name in names:
                if name not in index:
                    raise DataError(self.csv_file, f"line {line}: label {name!r} not in classes")
                ids.add(index[name])
            self._paths.append(rel if os.path.isabs(rel) else os.path.join(self.root, rel))
            self._labels.append(np.asarray(sorted(ids), dtype=np.int64))
        self._negatives = sum(1 for lab in self._labels if lab.size == 0)

    def _read_rows(self, label_sep: str) -> list[tuple[int, str, list[str]]]:
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
                    names = list(dict.fromkeys(x.strip() for x in labels.split(label_sep) if x.strip()))
                    rows.append((line, fields[0], names))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(self.csv_file, f"cannot parse CSV ({e})") from None
        return rows

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> str:
        return self._paths[i]

    def stats(self) -> dict:
        return {"images": len(self), "negatives": self._negatives}

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        img = read_image(self._paths[i])
        return img, {"labels": self._labels[i].copy()}


def _walk_images(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes:
                out.append(os.path.join(dirpath, name))
    return out
