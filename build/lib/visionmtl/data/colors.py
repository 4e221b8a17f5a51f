"""Colour masks: a colour -> class table for masks stored as RGB colours.

CamVid's original labels (32 classes as colours), Cityscapes' ``*_color.png`` and many exports
from annotation tools store the class of a pixel as a colour. :class:`ColorTable` maps such a
mask to class ids in one vectorised step: each pixel's colour is packed into one ``uint32``
(``r << 16 | g << 8 | b``) and looked up in the sorted table with ``np.searchsorted``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError
from .errors import DataError

__all__ = ["ColorTable", "UNKNOWN_COLOR", "pack_rgb", "read_color_mask"]

IGNORE = 255
UNKNOWN_COLOR = ("error", "ignore")  # what a colour missing from the table means


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` uint8 RGB -> ``[...]`` uint32 ``r << 16 | g << 8 | b``."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2].astype(np.uint32)


def _rgb(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def _color(value: Any, where: str) -> int:
    """One colour, ``[r, g, b]`` (0..255 each) or ``"#rrggbb"``, as its packed code."""
    if isinstance(value, str):
        s = value.strip()
        if len(s) == 7 and s[0] == "#" and all(c in "0123456789abcdefABCDEF" for c in s[1:]):
            return int(s[1:], 16)
        raise ConfigError(f"{where}: colour {value!r} is not [r, g, b] or '#rrggbb'")
    if (isinstance(value, Sequence) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return int(value[0]) << 16 | int(value[1]) << 8 | int(value[2])
    raise ConfigError(f"{where}: colour {value!r} is not [r, g, b] with integers 0..255 (or '#rrggbb')")


def _is_one(value: Any) -> bool:
    """Whether ``value`` is one colour (``"#rrggbb"`` or three numbers) rather than a list of them."""
    return isinstance(value, str) or (isinstance(value, Sequence) and len(value) == 3
                                      and all(isinstance(v, (int, float)) for v in value))


def _colors(value: Any, where: str) -> list[int]:
    """A colour entry: one colour, or a non-empty list of colours that all mean the same."""
    if _is_one(value):
        return [_color(value, where)]
    if isinstance(value, Sequence) and value:
        return [_color(v, where) for v in value]
    raise ConfigError(f"{where}: {value!r} is not a colour [r, g, b] or a list of colours")


class ColorTable:
    """Colours -> class ids (``0 .. len(classes) - 1``; 255 = ignore).

    Args:
        classes: the class names; class ``k`` is written as ``k``.
        colors: either a mapping ``{class name: colour}`` naming every class, or a list with
            one colour per class, in class order. A colour is ``[r, g, b]`` or ``"#rrggbb"``;
            a class may list several colours (``[[r, g, b], [r, g, b]]``), e.g. to merge
            CamVid's 32 colour classes into its 11.
        ignore_colors: colours that mean "ignore" (255), e.g. CamVid's Void ``[0, 0, 0]``.
        unknown: what a colour in neither table means: ``"error"`` (``DataError`` naming the
            file, the colour and its pixel count) or ``"ignore"`` (255).

    A colour given twice (for two classes, or for a class and ignore) is a ``ConfigError``.
    """

    def __init__(self, classes: Sequence[str], colors: Mapping | Sequence, ignore_colors: Sequence = (),
                 unknown: str = "error"):
        classes = list(classes)
        if unknown not in UNKNOWN_COLOR:
            raise ConfigError(f"unknown_color must be one of {list(UNKNOWN_COLOR)}, got {unknown!r}")
        self.unknown = unknown
        if isinstance(colors, Mapping):
            stray = [str(k) for k in colors if k not in classes]
            if stray:
                raise ConfigError(f"colors names {stray}, which are not among classes {classes}")
            missing = [c for c in classes if c not in colors]
            if missing:
                raise ConfigError(f"colors gives no colour for classes {missing}")
            entries = [(k, _colors(colors[c], f"colors.{c}")) for k, c in enumerate(classes)]
        elif isinstance(colors, Sequence) and not isinstance(colors, str):
            if len(colors) != len(classes):
                raise ConfigError(f"colors lists {len(colors)} colours for {len(classes)} classes; give one per class "
                                  "in class order, or a mapping {class: colour}")
            entries = [(k, _colors(v, f"colors[{k}] ({classes[k]})")) for k, v in enumerate(colors)]
        else:
            raise ConfigError(f"colors must be a mapping {{class: [r, g, b]}} or a list of colours, got {colors!r}")
        if not isinstance(ignore_colors, Sequence):
            raise ConfigError(f"ignore_colors must be a list of colours, got {ignore_colors!r}")
        entries.append((IGNORE, _colors(ignore_colors, "ignore_colors") if len(ignore_colors) else []))
        owner: dict[int, int] = {}
        for value, codes in entries:
            for code in codes:
                if code in owner and owner[code] != value:
                    names = [("ignore" if v == IGNORE else classes[v]) for v in (owner[code], value)]
                    raise ConfigError(f"colour {list(_rgb(code))} is given for both {names[0]!r} and {names[1]!r}")
                owner[code] = value
        self.classes = classes
        self._codes = np.asarray(sorted(owner), dtype=np.uint32)
        self._values = np.asarray([owner[c] for c in sorted(owner)], dtype=np.uint8)

    def colors(self) -> dict[int, list[tuple[int, int, int]]]:
        """Class id (255 = ignore) -> its colours, as RGB tuples."""
        out: dict[int, list] = {}
        for code, value in zip(self._codes.tolist(), self._values.tolist()):
            out.setdefault(value, []).append(_rgb(code))
        return out

    def to_index(self, rgb: np.ndarray, path: str) -> np.ndarray:
        """``rgb`` HxWx3 uint8 -> HxW uint8 class ids (255 = ignore); ``path`` names it in errors."""
        codes = pack_rgb(rgb)
        pos = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        hit = self._codes[pos] == codes
        out = self._values[pos]
        if not hit.all():
            if self.unknown == "ignore":
                out[~hit] = IGNORE
            else:
                miss, counts = np.unique(codes[~hit], return_counts=True)
                j = int(np.argmax(counts))  # the most frequent unknown colour
                k = len(miss) - 1
                more = f"; {k} more unknown colour{'s' * (k > 1)}, {int(counts.sum())} pixels in all" if k else ""
                raise DataError(path, f"colour {list(_rgb(int(miss[j])))} ({_pixels(int(counts[j]))}) is not in the "
                                      f"colour table{more}; add it to colors or ignore_colors, or set "
                                      "unknown_color: ignore")
        return out


def _pixels(n: int) -> str:
    return f"{n} pixel{'s' * (n != 1)}"


def read_color_mask(path: str) -> np.ndarray:
    """Read a colour mask PNG as HxWx3 uint8 RGB (alpha dropped, palettes expanded), or raise
    DataError naming the file."""
    import os

    if not os.path.isfile(path):
        raise DataError(path, "mask file not found")
    m = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # palettes come out as BGR
    if m is None:
        raise DataError(path, "cannot decode mask (corrupt or not an image)")
    if m.ndim == 2 or m.shape[2] not in (3, 4):
        n = 1 if m.ndim == 2 else m.shape[2]
        raise DataError(path, f"colour mask must have RGB channels, got {n} channel{'s' if n > 1 else ''} "
                              "(for class-index masks leave out colors)")
    if m.dtype != np.uint8:
        raise DataError(path, f"colour mask must be 8-bit per channel, got {m.dtype}")
    return np.ascontiguousarray(m[..., 2::-1])  # BGR(A) -> RGB
