"""OpenCV video capture with FFmpeg: quiet logging, AVI files read through their index, timeouts.

Helpers of :mod:`visionmtl.inference.sources`. FFmpeg takes options and its log level only
through environment variables that OpenCV reads (the log level once per process, at the first
capture or writer), so they are set here, around the opens that need them.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any, Optional

import cv2

log = logging.getLogger("visionmtl")

__all__ = ["VERBOSE_ENV", "configure_ffmpeg_logging", "open_capture", "open_video", "prop"]

VERBOSE_ENV = "VISIONMTL_VERBOSE"
_FFMPEG_LOGLEVEL = "OPENCV_FFMPEG_LOGLEVEL"
_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_QUIET = "-8"  # AV_LOG_QUIET
_env_lock = threading.Lock()


def configure_ffmpeg_logging(verbose: Optional[bool] = None) -> bool:
    """Silence FFmpeg's own messages unless ``verbose``; True when they are silenced.

    OpenCV's FFmpeg backend reads ``OPENCV_FFMPEG_LOGLEVEL`` once per process, at the first
    capture or writer it opens (not at ``import cv2``), and ignores later changes; without
    it FFmpeg prints every decoder error to stderr. So this runs when this module is imported
    (``verbose=None`` reads ``VISIONMTL_VERBOSE``) and again when a source is opened with an
    explicit ``verbose``, which only counts if no video was opened before in the process.
    A level the user set is left alone, except ``-8``, the quiet level set here (a child
    process inherits it), which ``verbose`` removes. ``OPENCV_LOG_LEVEL`` is not touched: it
    governs OpenCV's own messages, none for a damaged video, and is read at ``import cv2``.
    """
    if verbose is None:
        verbose = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")
    current = os.environ.get(_FFMPEG_LOGLEVEL)
    if current is not None and current.strip() != _QUIET:
        try:
            return int(current) < 0
        except ValueError:
            return False
    if verbose:
        os.environ.pop(_FFMPEG_LOGLEVEL, None)
        return False
    os.environ[_FFMPEG_LOGLEVEL] = _QUIET
    return True


configure_ffmpeg_logging()


def prop(cap: Any, prop: int, default: float = 0.0) -> float:
    try:
        v = float(cap.get(prop))
    except Exception:
        return default
    return v if math.isfinite(v) else default


def _is_avi(path: str) -> bool:
    """True for a RIFF AVI file (by its header, whatever the extension)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[:4] == b"RIFF" and head[8:12] == b"AVI "


def open_video(path: str) -> Any:
    """``cv2.VideoCapture`` for a file; AVI files are read through their index.

    By default FFmpeg's AVI demuxer reads chunks in file order and, after a damaged stretch,
    resyncs on the next chunk header and numbers the packets it finds, so every later
    timestamp is early by the frames lost. ``fflags +sortdts`` switches it to reading each
    packet at the position the file's index gives, with that entry's timestamp (a file
    without an index falls back to file order). The option travels in the environment,
    the only way OpenCV takes FFmpeg options, set around this one open; options the user
    set are kept, and an ``fflags`` of theirs wins.
    """
    if not _is_avi(path):
        return cv2.VideoCapture(path)
    with _env_lock:
        old = os.environ.get(_FFMPEG_OPTIONS)
        if old is not None and "fflags" in old:
            return cv2.VideoCapture(path)
        os.environ[_FFMPEG_OPTIONS] = f"{old}|fflags;+sortdts" if old else "fflags;+sortdts"
        try:
            return cv2.VideoCapture(path)
        finally:
            if old is None:
                os.environ.pop(_FFMPEG_OPTIONS, None)
            else:
                os.environ[_FFMPEG_OPTIONS] = old


def open_capture(target: str | int, timeout_ms: int) -> Any:
    """``cv2.VideoCapture`` for a camera index or URL; network opens and reads time out."""
    if isinstance(target, int):
        return cv2.VideoCapture(target)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    try:
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    except (cv2.error, TypeError):
        return cv2.VideoCapture(target)
