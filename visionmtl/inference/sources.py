"""Inference inputs, all read with OpenCV: images, folders, globs, video files, webcams, streams.

``open_source(spec)`` picks the reader from the spec:

================================  ===========  ==============================================
spec                              kind         reader
================================  ===========  ==============================================
``photo.jpg``                     ``image``    :class:`ImageSource` (one file)
``folder/``                       ``images``   :class:`ImageSource` (its image files, sorted)
``"data/**/*.png"``               ``images``   :class:`ImageSource` (glob, ``**`` recursive)
``clip.mp4`` / ``.avi`` / ...     ``video``    :class:`VideoSource`
``0``                             ``webcam``   :class:`LiveSource` (camera index)
``rtsp://`` / ``http(s)://`` ...  ``stream``   :class:`LiveSource` (reconnects, bounded)
================================  ===========  ==============================================

Every source iterates over :class:`Frame` ``(index, image, name)`` tuples (``image`` HxWx3
uint8 RGB), exposes :class:`SourceInfo` (kind, fps, size, frame count) as ``.info`` and counts
problems in ``.stats``. Sources that cannot be opened raise :class:`~visionmtl.data.errors.DataError`
naming the input; problems after opening (an undecodable image in a folder, a frame that fails
to decode mid-video, a stream that drops) are skipped, counted and logged, never fatal, and
never wait forever: network streams open and read with timeouts, reconnects are bounded.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import cv2
import numpy as np

from ..data.base import read_image
from ..data.errors import DataError

log = logging.getLogger("visionmtl")

__all__ = [
    "IMAGE_EXTS", "VIDEO_EXTS", "STREAM_PREFIXES", "Frame", "SourceInfo", "Source", "ImageSource",
    "VideoSource", "LiveSource", "open_source",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".wmv", ".flv", ".webm", ".mpg", ".mpeg", ".ts", ".3gp",
              ".ogv", ".gif", ".asf", ".mts", ".m2ts")
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_GLOB_CHARS = re.compile(r"[*?\[]")


class Frame(NamedTuple):
    """One decoded input: position in the source, HxWx3 uint8 RGB pixels, and a display name."""

    index: int
    image: np.ndarray
    name: str


@dataclass
class SourceInfo:
    """What is known about a source before reading it.

    ``kind`` is ``image``, ``images``, ``video``, ``webcam`` or ``stream``; ``fps`` is None for
    image sets (and for live sources that do not report it); ``size`` is ``(width, height)``
    when known up front; ``frame_count`` is the number of images, the container's frame count
    for videos (None when it does not say) and None for live sources.
    """

    kind: str
    spec: str
    fps: Optional[float] = None
    size: Optional[tuple[int, int]] = None
    frame_count: Optional[int] = None
    paths: list[str] = field(default_factory=list)

    @property
    def is_video(self) -> bool:
        """Frames from one timeline (video, webcam, stream) rather than separate images."""
        return self.kind in ("video", "webcam", "stream")

    @property
    def is_live(self) -> bool:
        return self.kind in ("webcam", "stream")

    @property
    def stem(self) -> str:
        """A file-name friendly name for outputs derived from this source."""
        if self.kind == "webcam":
            return f"webcam{self.spec}"
        if self.kind == "stream":
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec.split("://", 1)[-1]).strip("_")[:60] or "stream"
        if self.kind == "images" and os.path.isdir(self.spec):
            return Path(self.spec).resolve().name or "images"
        return Path(self.spec).stem or "output"


class Source:
    """Base class: iterate for :class:`Frame` tuples; ``info``, ``stats`` and ``close()``."""

    info: SourceInfo

    def __init__(self) -> None:
        self.stats: dict[str, int] = {"frames": 0, "failed": 0}

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying reader (safe to call twice)."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        """The frame count when known up front (images, most video files), else 0."""
        return int(self.info.frame_count or 0)


# --------------------------------------------------------------------------------------------
class ImageSource(Source):
    """A list of image files, read in order; unreadable files in a set are skipped and counted.

    A single image (``kind="image"``) that cannot be read raises :class:`DataError`.
    """

    def __init__(self, paths: list[str], spec: str, kind: str = "images") -> None:
        super().__init__()
        if not paths:
            raise DataError(spec, "no images to read")
        self.paths = list(paths)
        self.info = SourceInfo(kind, spec, None, None, len(self.paths), self.paths)
        if kind == "image":  # fail fast, before a model is loaded on behalf of an unreadable file
            self._first = read_image(self.paths[0])
            h, w = self._first.shape[:2]
            self.info.size = (w, h)
        else:
            self._first = None

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            if i == 0 and self._first is not None:
                img, self._first = self._first, None
            else:
                try:
                    img = read_image(path)
                except DataError as e:
                    if self.info.kind == "image":
                        raise
                    self.stats["failed"] += 1
                    log.warning("skipping unreadable image: %s", e)
                    continue
            self.stats["frames"] += 1
            yield Frame(i, img, path)


# --------------------------------------------------------------------------------------------
def _prop(cap: Any, prop: int, default: float = 0.0) -> float:
    try:
        v = float(cap.get(prop))
    except Exception:
        return default
    return v if math.isfinite(v) else default


class VideoSource(Source):
    """A video file read frame by frame with ``cv2.VideoCapture``.

    A frame that fails to decode before the container's frame count is reached is skipped
    and counted (``stats["failed"]``) and reading goes on; ``max_consecutive_failures``
    failures in a row (a truncated file) end the video, the frames never reached are counted
    in ``stats["missing"]``. Frames the decoder drops silently are detected from
    ``CAP_PROP_POS_FRAMES`` jumps and counted as failed too, so ``Frame.index`` is always the
    frame's position in the file.

    Args:
        path: the video file.
        capture: an already opened capture-like object (``read``, ``get``, ``isOpened``,
            ``release``) to read instead of opening ``path``.
        max_consecutive_failures: failed reads in a row after which the video is treated as ended.
    """

    def __init__(self, path: str, capture: Any = None, max_consecutive_failures: int = 25) -> None:
        super().__init__()
        self.stats.update(missing=0)
        self.path = str(path)
        if capture is None:
            if not os.path.isfile(self.path):
                raise DataError(self.path, "video file not found")
            if os.path.getsize(self.path) == 0:
                raise DataError(self.path, "video file is empty")
            capture = cv2.VideoCapture(self.path)
        self.cap = capture
        if not self.cap.isOpened():
            self.close()
            raise DataError(self.path, "cannot open video (unsupported codec/container or corrupt file)")
        fps = _prop(self.cap, cv2.CAP_PROP_FPS)
        w, h = int(_prop(self.cap, cv2.CAP_PROP_FRAME_WIDTH)), int(_prop(self.cap, cv2.CAP_PROP_FRAME_HEIGHT))
        n = int(_prop(self.cap, cv2.CAP_PROP_FRAME_COUNT))
        self.info = SourceInfo("video", self.path, fps if 0 < fps < 1000 else None, (w, h) if w > 0 and h > 0 else None,
                               n if n > 0 else None)
        self.max_consecutive_failures = int(max_consecutive_failures)

    def close(self) -> None:
        if getattr(self, "cap", None) is not None:
            self.cap.release()
            self.cap = None

    def __iter__(self) -> Iterator[Frame]:
        if self.cap is None:
            raise DataError(self.path, "video source is closed")
        count = self.info.frame_count
        name = os.path.basename(self.path)
        idx = 0  # position of the next frame
        streak = 0
        gave_up = False
        try:
            while self.cap is not None:
                ok, frame = self.cap.read()
                if ok and frame is not None and frame.size:
                    pos = int(_prop(self.cap, cv2.CAP_PROP_POS_FRAMES, 0))
                    if idx < pos - 1 <= idx + 1000:  # the decoder skipped frames without reporting it
                        self._failed(pos - 1 - idx, idx)
                        idx = pos - 1
                    streak = 0
                    self.stats["frames"] += 1
                    yield Frame(idx, _to_rgb(frame), name)
                    idx += 1
                    continue
                if count is not None and idx < count and streak < self.max_consecutive_failures:
                    streak += 1
                    self._failed(1, idx)
                    idx += 1
                    continue
                gave_up = True
                break
        finally:
            if gave_up and count is not None and idx < count:
                self.stats["missing"] = count - idx
                log.warning("%s: video ended at frame %d of %d (%d failed reads in a row; file truncated?)",
                            self.path, idx, count, streak)
            if self.stats["failed"]:
                log.warning("%s: %d frames could not be decoded and were skipped", self.path, self.stats["failed"])

    def _failed(self, n: int, idx: int) -> None:
        if self.stats["failed"] < 5:
            log.warning("%s: frame %d could not be decoded; skipped", self.path, idx)
        self.stats["failed"] += n


# --------------------------------------------------------------------------------------------
def _open_capture(target: str | int, timeout_ms: int) -> Any:
    """``cv2.VideoCapture`` for a camera index or URL; network opens and reads time out."""
    if isinstance(target, int):
        return cv2.VideoCapture(target)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    try:
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    except (cv2.error, TypeError):
        return cv2.VideoCapture(target)


class LiveSource(Source):
    """A webcam (integer index) or network stream (URL), read until it ends or is closed.

    When a read fails the capture is reopened, up to ``reconnect`` attempts per outage with
    ``reconnect_delay`` seconds (doubling, at most 10 s) between them; after that the source
    ends cleanly and the counts stay in ``stats`` (``frames``, ``failed`` reads,
    ``reconnects``). Failing to open at all raises :class:`DataError`.

    Args:
        target: camera index or stream URL.
        reconnect: reopen attempts per outage (0 disables reconnecting).
        reconnect_delay: seconds before the first reopen attempt.
        timeout_ms: open/read timeout for network streams.
        opener: ``opener(target) -> capture``; replaces ``cv2.VideoCapture`` (tests, custom backends).
    """

    def __init__(self, target: str | int, reconnect: int = 3, reconnect_delay: float = 1.0, timeout_ms: int = 10000,
                 opener: Optional[Callable[[str | int], Any]] = None) -> None:
        super().__init__()
        self.stats.update(reconnects=0)
        self.target = target
        self.reconnect = max(0, int(reconnect))
        self.reconnect_delay = float(reconnect_delay)
        self._open = opener or (lambda t: _open_capture(t, timeout_ms))
        kind = "webcam" if isinstance(target, int) else "stream"
        self.label = f"webcam {target}" if kind == "webcam" else str(target)
        self.cap = self._open(target)
        if self.cap is None or not self.cap.isOpened():
            self.close()
            what = "cannot open webcam (no such camera, or it is busy)" if kind == "webcam" else \
                "cannot open stream (unreachable, wrong URL, or unsupported protocol)"
            raise DataError(self.label, what)
        fps = _prop(self.cap, cv2.CAP_PROP_FPS)
        w, h = int(_prop(self.cap, cv2.CAP_PROP_FRAME_WIDTH)), int(_prop(self.cap, cv2.CAP_PROP_FRAME_HEIGHT))
        self.info = SourceInfo(kind, str(target), fps if 0 < fps < 1000 else None,
                               (w, h) if w > 0 and h > 0 else None, None)
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if getattr(self, "cap", None) is not None:
            self.cap.release()
            self.cap = None

    def _reopen(self) -> bool:
        delay = self.reconnect_delay
        for attempt in range(1, self.reconnect + 1):
            if self._closed:
                return False
            log.warning("%s: no frame; reconnecting (attempt %d/%d)", self.label, attempt, self.reconnect)
            if delay > 0:
                time.sleep(delay)
            delay = min(max(delay * 2, 0.0), 10.0)
            if self.cap is not None:
                self.cap.release()
            self.cap = self._open(self.target)
            if self.cap is not None and self.cap.isOpened():
                self.stats["reconnects"] += 1
                return True
        return False

    def __iter__(self) -> Iterator[Frame]:
        idx = 0
        while not self._closed and self.cap is not None:
            ok, frame = self.cap.read()
            if ok and frame is not None and frame.size:
                self.stats["frames"] += 1
                yield Frame(idx, _to_rgb(frame), self.label)
                idx += 1
                continue
            self.stats["failed"] += 1
            if not self._reopen():
                if not self._closed:
                    log.warning("%s: stream ended after %d frames (%d reconnects, %d failed reads)", self.label,
                                self.stats["frames"], self.stats["reconnects"], self.stats["failed"])
                return


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------
def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTS)


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


def open_source(spec: str | int | os.PathLike, reconnect: int = 3, reconnect_delay: float = 1.0,
                timeout_ms: int = 10000) -> Source:
    """Open an inference input from its spec (see the module docstring for the forms).

    Raises:
        DataError: the input does not exist, cannot be opened, or holds no images.
    """
    if isinstance(spec, int):
        return LiveSource(spec, reconnect, reconnect_delay, timeout_ms)
    s = str(spec).strip()
    if not s:
        raise DataError("<empty>", "no source given")
    if s.isdigit():
        return LiveSource(int(s), reconnect, reconnect_delay, timeout_ms)
    if s.lower().startswith(STREAM_PREFIXES):
        if s.lower().startswith(("http://", "https://")) and _is_image(s.split("?", 1)[0]):
            raise DataError(s, "image URLs are not supported; download the image and pass the file")
        return LiveSource(s, reconnect, reconnect_delay, timeout_ms)
    path = os.path.expanduser(s)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if _is_image(f)
                       and os.path.isfile(os.path.join(path, f)))
        if not files:
            videos = [f for f in os.listdir(path) if _is_video(f)]
            hint = f" (it has {len(videos)} video files: pass one of them)" if videos else ""
            raise DataError(path, f"directory has no images ({', '.join(IMAGE_EXTS[:5])}, ...){hint}")
        return ImageSource(files, path, "images")
    if os.path.isfile(path):
        if _is_image(path):
            return ImageSource([path], path, "image")
        if _is_video(path):
            return VideoSource(path)
        if cv2.haveImageReader(path):  # an image with an unusual extension
            return ImageSource([path], path, "image")
        return VideoSource(path)  # let FFmpeg try; a clear error if it cannot
    if _GLOB_CHARS.search(path):
        matches = sorted(glob.glob(path, recursive=True))
        files = [f for f in matches if _is_image(f) and os.path.isfile(f)]
        if not files:
            what = f"matches {len(matches)} files but no images" if matches else "matches no files"
            raise DataError(s, f"glob {what}")
        return ImageSource(files, s, "images")
    raise DataError(s, "source not found (expected an image, a directory, a glob, a video file, "
                       "a webcam index such as 0, or an rtsp:// / http(s):// stream URL)")
