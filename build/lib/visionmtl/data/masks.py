"""Semantic segmentation as an image folder plus a folder of class-index (or colour) PNG masks."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .base import BaseAdapter, read_image, read_mask
from .colors import ColorTable, read_color_mask
from .errors import DataError

IGNORE = 255


class MaskFolderAdapter(BaseAdapter):
    """Images in ``img_dir`` paired by file stem with single-channel masks in ``mask_dir``.

    Args:
        img_dir: folder of images (files whose suffix is in ``img_suffixes``, case-insensitive).
        mask_dir: folder of masks named ``<stem><mask_suffix>``; pixel value = class id.
        classes: names of the mask values ``0 .. len(classes) - 1``.
        ignore_ids: mask values that mean "ignore"; they are rewritten to 255. The value 255
            is always ignore.
        split_file: optional text file listing the samples to use, one stem or file name per
            line (blank lines and lines starting with ``#`` are skipped). Without it every
            image in ``img_dir`` is used, sorted by file name.
        provides: ``("mask",)`` by default; add ``"labels"`` to also get the image-level set
            of classes present in the mask.
        colors: the masks are RGB colours, not class indices: a colour -> class table, either
            ``{class name: [r, g, b]}`` naming every class or a list of colours in class order.
            A colour may also be ``"#rrggbb"``, and a class may list several colours
            (``{Car: [[64, 0, 128], [64, 128, 192]]}``). Colour PNGs are read as RGB (an alpha
            channel is dropped, a palette PNG is expanded to its colours); see
            :class:`visionmtl.data.colors.ColorTable`. Without ``colors`` (default) masks are
            single-channel class indices, as before.
        ignore_colors: with ``colors``, colours that mean "ignore" (255), e.g. ``[[0, 0, 0]]``.
        unknown_color: with ``colors``, what a colour in neither table means: ``"error"``
            (default; ``DataError`` naming the mask file, the colour and its pixel count) or
            ``"ignore"`` (255).

    Every image must have a mask (checked once here). At load time a mask whose size differs
    from its image, or that holds a value outside ``classes`` that is not ignored, raises
    ``DataError`` naming the mask file. ``mask_classes`` equals ``classes``.

    Example (CamVid)::

        MaskFolderAdapter("camvid/train", "camvid/trainannot",
                          classes=["Sky", "Building", ..., "Bicyclist"], ignore_ids=[11])

    Example (CamVid's colour labels)::

        MaskFolderAdapter("camvid/701_StillsRaw_full", "camvid/LabeledApproved_full",
                          classes=["Sky", "Building", ...], mask_suffix="_L.png",
                          colors={"Sky": [128, 128, 128], "Building": [128, 0, 0], ...},
                          ignore_colors=[[0, 0, 0]])
    """

    labels_follow = "mask"

    def __init__(
        self,
        img_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        classes: Sequence[str],
        ignore_ids: Sequence[int] = (),
        split_file: str | os.PathLike | None = None,
        img_suffixes: Sequence[str] = (".jpg", ".jpeg", ".png", ".bmp"),
        mask_suffix: str = ".png",
        provides: Sequence[str] = ("mask",),
        colors: Mapping | Sequence | None = None,
        ignore_colors: Sequence = (),
        unknown_color: str = "error",
    ):
        self.img_dir = str(img_dir)
        self.mask_dir = str(mask_dir)
        self.split_file = None if split_file is None else str(split_file)
        self.classes = [str(c) for c in classes]
        self.mask_classes = self.classes
        if not self.classes:
            raise ValueError("MaskFolderAdapter needs at least one class")
        if len(self.classes) > 255:
            raise ValueError(f"{len(self.classes)} classes do not fit uint8 mask ids (255 = ignore)")
        unknown = [k for k in provides if k not in ("mask", "labels")]
        if unknown:
            raise ValueError(f"MaskFolderAdapter cannot provide {unknown}; choose from ['mask', 'labels']")
        self.provides = tuple(provides)
        self.ignore_ids = tuple(int(v) for v in ignore_ids)
        for v in self.ignore_ids:
            if not 0 <= v <= 255:
                raise ValueError(f"ignore id {v} is not a uint8 mask value")
        self.colors: ColorTable | None = None
        if colors is not None:
            if self.ignore_ids:
                raise ConfigError("ignore_ids are class-index values; with colors, list ignore colours in "
                                  "ignore_colors")
            self.colors = ColorTable(self.classes, colors, ignore_colors, unknown_color)
        elif ignore_colors or unknown_color != "error":
            raise ConfigError("ignore_colors and unknown_color apply to colour masks only; give colors too")

        # value -> output value; values that are neither classes nor ignored are flagged invalid
        self._lut = np.arange(256, dtype=np.uint8)
        self._lut[list(self.ignore_ids) + [IGNORE]] = IGNORE
        self._invalid = np.ones(256, dtype=bool)
        self._invalid[: len(self.classes)] = False
        self._invalid[list(self.ignore_ids) + [IGNORE]] = False
        self._ignored = np.zeros(256, dtype=bool)
        self._ignored[list(self.ignore_ids) + [IGNORE]] = True

        self._index(tuple(s.lower() for s in img_suffixes), mask_suffix)
        self._pixel_counts: np.ndarray | None = None

    def _index(self, suffixes: tuple[str, ...], mask_suffix: str) -> None:
        if not os.path.isdir(self.img_dir):
            raise DataError(self.img_dir, "image folder not found")
        if not os.path.isdir(self.mask_dir):
            raise DataError(self.mask_dir, "mask folder not found")
        by_stem: dict[str, str] = {}
        by_name: dict[str, str] = {}
        for name in sorted(os.listdir(self.img_dir)):
            stem, ext = os.path.splitext(name)
            if name.startswith(".") or ext.lower() not in suffixes:
                continue
            if stem in by_stem:
                raise DataError(
                    os.path.join(self.img_dir, name), f"two images share the stem {stem!r} ({by_stem[stem]})"
                )
            by_stem[stem] = name
            by_name[name] = stem

        if self.split_file is None:
            stems = list(by_stem)
            where = self.img_dir
        else:
            stems = self._read_split(by_stem, by_name)
            where = self.split_file
        if not stems:
            raise DataError(where, "no images found")

        mask_names = set(os.listdir(self.mask_dir))
        self._img_paths: list[str] = []
        self._mask_paths: list[str] = []
        for stem in stems:
            img_path = os.path.join(self.img_dir, by_stem[stem])
            mask_name = stem + mask_suffix
            if mask_name not in mask_names:
                raise DataError(img_path, f"no mask for this image (expected {os.path.join(self.mask_dir, mask_name)})")
            self._img_paths.append(img_path)
            self._mask_paths.append(os.path.join(self.mask_dir, mask_name))

    def _read_split(self, by_stem: dict[str, str], by_name: dict[str, str]) -> list[str]:
        if not os.path.isfile(self.split_file):
            raise DataError(self.split_file, "split file not found")
        stems, seen = [], set()
        with open(self.split_file, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                base = os.path.basename(entry.replace("\\", "/"))
                if base in by_stem:
                    stem = base
                elif base in by_name:
                    stem = by_name[base]
                elif os.path.splitext(base)[0] in by_stem:
                    stem = os.path.splitext(base)[0]
                else:
                    raise DataError(self.split_file, f"line {n}: no image {entry!r} in {self.img_dir}")
                if stem not in seen:
                    seen.add(stem)
                    stems.append(stem)
        return stems

    # ------------------------------------------------------------------ adapter interface
    def __len__(self) -> int:
        return len(self._img_paths)

    def path(self, i: int) -> str:
        return self._img_paths[i]

    def mask_path(self, i: int) -> str:
        return self._mask_paths[i]

    def stats(self) -> dict:
        return {"images": len(self)}

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        img = read_image(self._img_paths[i])
        raw = self._read_mask(i)
        if raw.shape != img.shape[:2]:
            raise DataError(
                self._mask_paths[i],
                f"mask size {raw.shape[0]}x{raw.shape[1]} differs from image size "
                f"{img.shape[0]}x{img.shape[1]} ({self._img_paths[i]})",
            )
        counts = self._counts(i, raw)
        target: dict = {}
        if "mask" in self.provides:
            target["mask"] = self._lut[raw]
        if "labels" in self.provides:
            target["labels"] = np.flatnonzero(counts[: len(self.classes)]).astype(np.int64)
        return img, target

    def _read_mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as HxW uint8 values: the stored class indices, or the colours mapped to class
        ids (255 = ignore) with ``colors``."""
        path = self._mask_paths[i]
        if self.colors is None:
            return read_mask(path)
        return self.colors.to_index(read_color_mask(path), path)

    def _counts(self, i: int, raw: np.ndarray) -> np.ndarray:
        """Histogram of raw mask values (length 256); raises on values outside the classes."""
        counts = np.bincount(raw.ravel(), minlength=256)
        counts[self._ignored] = 0
        bad = np.flatnonzero(counts.astype(bool) & self._invalid)
        if bad.size:
            names = ", ".join(f"{k}={c}" for k, c in enumerate(self.classes))
            raise DataError(
                self._mask_paths[i],
                f"class id {int(bad[0])} outside the declared {len(self.classes)} classes ({names}); "
                "declare it in ignore_ids if it means 'ignore'",
            )
        return counts

    def pixel_counts(self) -> np.ndarray:
        """Per-class pixel counts (int64, ``len(classes)``) over the whole set; ignored pixels
        are not counted. Reads the masks only; the result is cached."""
        if self._pixel_counts is None:
            total = np.zeros(256, dtype=np.int64)
            for i in range(len(self._mask_paths)):
                total += self._counts(i, self._read_mask(i))
            self._pixel_counts = total[: len(self.classes)].copy()
        return self._pixel_counts.copy()
