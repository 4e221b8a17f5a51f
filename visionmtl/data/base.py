"""The adapter interface every dataset format implements."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import DataError


class BaseAdapter:
    """A dataset on disk in one format.

    ``load(i)`` returns ``(image, target)``: ``image`` is HxWx3 uint8 RGB; ``target`` follows the
    per-image contract in docs/design.md with class ids in this adapter's own id space
    (``self.classes``). Keys the adapter cannot label are absent.
    """

    classes: list[str] = []
    provides: tuple[str, ...] = ()
    # the target key ``labels`` is derived from (``"box_labels"`` or ``"mask"``), so that a
    # cropping augmentation can re-derive it from what is left in view; None when labels hold
    # for the whole image whatever part of it is seen
    labels_follow: str | None = None

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


def read_image(path: str) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, or raise DataError naming the file."""
    buf = np.fromfile(path, dtype=np.uint8) if _exists(path) else None
    if buf is None:
        raise DataError(path, "image file not found")
    if buf.size == 0:
        raise DataError(path, "image file is empty")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(path, "cannot decode image (corrupt or not an image)")
    if _truncated_jpeg(path, buf):
        raise DataError(path, "image file is truncated (no JPEG end marker)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str) -> np.ndarray:
    """Read a single-channel class-index PNG as HxW uint8, or raise DataError naming the file."""
    if not _exists(path):
        raise DataError(path, "mask file not found")
    m = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
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
