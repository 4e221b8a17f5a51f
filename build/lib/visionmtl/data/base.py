"""The adapter interface every dataset format implements."""

from __future__ import annotations

from collections.abc import Sequence

import os

import cv2
import numpy as np

from .errors import DataError

# what a missing named value means for adapters that give ``values``: raise, or leave it unlabelled
MISSING_VALUES = ("error", "unlabelled")


class BaseAdapter:
    """A dataset on disk in one format.

    ``load(i)`` returns ``(image, target)``: ``image`` is HxWx3 uint8 RGB; ``target`` follows the
    per-image contract in docs/design.md with class ids in this adapter's own id space
    (``self.classes``). Keys the adapter cannot label are absent; so are the names of
    ``values`` (``dict[str, float]``, named numeric values of the image) it has no label for.
    """

    classes: list[str] = []
    provides: tuple[str, ...] = ()
    # the target key ``labels`` is derived from (``"box_labels"`` or ``"mask"``), so that a
    # cropping augmentation can re-derive it from what is left in view; None when labels hold
    # for the whole image whatever part of it is seen
    labels_follow: str | None = None
    # value name -> the target key it counts (``"boxes"``), for the named ``values`` that are a
    # count of the image's objects, so that a cropping augmentation can re-count what is left in
    # view; names absent here are values of the whole image whatever part of it is seen
    values_follow: dict = {}
    # the names of the numeric per-image ``values`` the adapter can give (when it provides them)
    value_names: list[str] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def path(self, i: int) -> str:
        raise NotImplementedError

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def stats(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)})"


def name_list(names: Sequence[str] | None, what: str, allow_empty: bool = False) -> list[str]:
    """``names`` (an adapter argument) as a list of distinct non-empty strings, [] for None.

    Raises TypeError for a bare string and ValueError for an empty list (unless
    ``allow_empty``), an empty name or a name given twice.
    """
    if names is None:
        return []
    if isinstance(names, str):
        raise TypeError(f"{what} must be a list of names, got the string {names!r} (write [{names!r}])")
    out = [str(n).strip() for n in names]
    if not all(out):
        raise ValueError(f"{what} has an empty name: {list(names)!r}")
    if not out and not allow_empty:
        raise ValueError(f"{what} is empty; name at least one (or leave it out)")
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names {dup} more than once")
    return out


def value_stats(values: list[dict[str, float]], names: list[str]) -> dict[str, dict]:
    """Per value name: ``count`` of images labelled with it and the ``mean``, ``min`` and ``max``
    of its values (``None`` when no image has it), from one ``values`` dict per image."""
    out = {}
    for name in names:
        v = np.asarray([d[name] for d in values if name in d], dtype=np.float64)
        if v.size:
            out[name] = {"count": int(v.size), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
        else:
            out[name] = {"count": 0, "mean": None, "min": None, "max": None}
    return out


def inside(root: str, name: str, allow_outside: bool, source: str, what: str) -> str:
    """``root/name`` for a file named by an annotation; DataError when it leaves ``root``.

    ``name`` may be relative (``..`` included) or absolute; the joined path is normalised
    (symbolic links are left alone) and must stay under ``root`` unless ``allow_outside``
    (the adapter's ``allow_outside_root``). ``source`` is the annotation file, ``what`` says where
    in it the name came from.
    """
    path = os.path.normpath(os.path.join(root, name))
    if not allow_outside:
        base = os.path.abspath(root)
        if os.path.commonpath([base, os.path.abspath(path)]) != base:
            raise DataError(source, f"{what}: {name!r} is outside {root}; set allow_outside_root: true on "
                                    "this dataset to read it")
    return path


def read_image(path: str) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, or raise DataError naming the file."""
    buf = np.fromfile(path, dtype=np.uint8) if _exists(path) else None
    if buf is None:
        raise DataError(path, "image file not found")
    if buf.size == 0:
        raise DataError(path, "image file is empty")
    # pixels as stored: EXIF orientation is ignored, as the annotations' pixel frame (COCO's width,
    # height, boxes, polygons; mask PNGs) assumes; see README "Data formats"
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise DataError(path, "cannot decode image (corrupt or not an image)")
    if _truncated_jpeg(path, buf):
        raise DataError(path, "image file is truncated (no JPEG end marker)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str) -> np.ndarray:
    """Read a single-channel class-index PNG as HxW uint8, or raise DataError naming the file."""
    if not _exists(path):
        raise DataError(path, "mask file not found")
    m = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # UNCHANGED ignores EXIF too
    if m is None:
        raise DataError(path, "cannot decode mask (corrupt or not an image)")
    if m.ndim == 3:
        raise DataError(path, f"mask must be single-channel class indices, got {m.shape[2]} channels")
    if m.dtype != np.uint8:
        if m.max(initial=0) > 255:
            raise DataError(path, f"mask values up to {int(m.max())} do not fit uint8 class ids")
        m = m.astype(np.uint8)
    return m


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


def _truncated_jpeg(path: str, buf: np.ndarray) -> bool:
    # OpenCV decodes truncated JPEGs with a grey tail and only a warning; check the EOI marker.
    if buf.size >= 2 and buf[0] == 0xFF and buf[1] == 0xD8:
        tail = buf[-2:] if buf.size >= 2 else buf
        if not (tail[0] == 0xFF and tail[1] == 0xD9):
            # some writers pad after EOI; look in the last few bytes
            return not bool(np.any((buf[-64:-1] == 0xFF) & (buf[-63:] == 0xD9)))
    return False
