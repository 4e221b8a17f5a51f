"""Writing result files so that nothing is lost or left half-written (a leaf module).

``write_text`` writes ``<path>.tmp``, fsyncs it and renames it over ``path``: a reader (or a
re-run that trusts an existing result) never sees a partial file. ``write_image`` checks
OpenCV's return value, which is ``False`` (not an exception) when a file cannot be written.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError

__all__ = ["write_image", "write_text"]


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_image(path: str | os.PathLike, image: np.ndarray, rgb: bool = True, params: list | None = None) -> Path:
    """Write an image file (RGB unless ``rgb=False``: BGR or single-channel); DataError if OpenCV cannot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb and image.ndim == 3 else image
    if not cv2.imwrite(str(path), arr, params or []):
        raise DataError(str(path), "cannot write the image (unknown extension, or the folder is not writable)")
    return path


def free_folder(folder: str | os.PathLike, used=None) -> Path:
    """``folder`` when it is free, else the first free one of ``folder2``, ``folder3``, ... (a new
    run never writes over an earlier one, as Ultralytics' ``runs/detect/predict2``). ``used(path)``
    says whether a folder is taken (default: it exists and holds anything)."""
    folder = Path(folder)
    used = used or (lambda p: p.is_dir() and any(p.iterdir()))
    out, k = folder, 2
    while used(out):
        out = folder.with_name(f"{folder.name}{k}")
        k += 1
    return out
