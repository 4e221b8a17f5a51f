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

Every source iterates over :class:`Frame` ``(index, image, name, time)`` tuples (``image`` HxWx3
uint8 RGB), exposes :class:`SourceInfo` (kind, fps, size, frame count) as ``.info``, counts
problems in ``.stats`` and lists the stretches of a video that could not be decoded in ``.gaps``.
Sources that cannot be opened raise :class:`~visionmtl.data.errors.DataError` naming the input;
problems after opening (an undecodable image in a folder, frames lost mid-video, a stream that
drops) are skipped, counted and logged, never fatal, and never wait forever: network streams
open and read with timeouts, reconnects are bounded. A video frame's index is its position in
the file even after lost frames (see :class:`VideoSource`).

FFmpeg's own messages (hundreds of decoder errors for a damaged video) are silenced unless
``VISIONMTL_VERBOSE=1`` or ``verbose=True`` (see :func:`configure_ffmpeg_logging`).
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
from .capture import VERBOSE_ENV, configure_ffmpeg_logging, open_capture, open_video, prop

log = logging.getLogger("visionmtl")

__all__ = [
    "IMAGE_EXTS", "VIDEO_EXTS", "STREAM_PREFIXES", "Frame", "SourceInfo", "Source", "ImageSource",
    "VideoSource", "LiveSource", "open_source", "configure_ffmpeg_logging", "VERBOSE_ENV",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".wmv", ".flv", ".webm", ".mpg", ".mpeg", ".ts", ".3gp",
              ".ogv", ".gif", ".asf", ".mts", ".m2ts")
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_GLOB_CHARS = re.compile(r"[*?\[]")

class Frame(NamedTuple):
    """One decoded input: position in the source, HxWx3 uint8 RGB pixels, and a display name.

    ``time`` is the frame's container timestamp in seconds when a video gives a usable one
    (None otherwise; ``index / fps`` is then the nominal time).
    """

    index: int
    image: np.ndarray
    name: str
    time: Optional[float] = None


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
    """Base class: iterate for :class:`Frame` tuples; ``info``, ``stats``, ``gaps`` and ``close()``.

    ``gaps`` lists ``(first index, frames lost)`` for each stretch of a video with no decoded
    frame (empty for other sources).
    """

    info: SourceInfo

    def __init__(self) -> None:
        self.stats: dict[str, int] = {"frames": 0, "failed": 0}
        self.gaps: list[tuple[int, int]] = []

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
_MAX_GAP_WARNINGS = 10


class VideoSource(Source):
    """A video file read frame by frame with ``cv2.VideoCapture``.

    ``Frame.index`` is the frame's position in the file, from the decoded frame's container
    timestamp (``CAP_PROP_POS_MSEC`` x fps, rounded; also ``Frame.time``), not from a count of
    frames read: with OpenCV's FFmpeg backend ``CAP_PROP_POS_FRAMES`` is the number of frames
    decoded so far, which does not move when frames are lost in a damaged stretch, while the
    timestamp does. So the timestamp wins when the two disagree. It is not used when there
    is none (0 after the first frame), when it goes backwards, or when it points far past
    the frame count; the index is then the previous one plus one per failed read, or
    ``CAP_PROP_POS_FRAMES - 1`` when that is further on. AVI files are opened so that
    their timestamps come from the file's index (:func:`_open_video`). For a variable
    frame rate video the index is the timestamp in nominal-rate frames.

    Positions with no decoded frame before the last one decoded are lost frames: each
    stretch is logged once (its first and last index), kept in ``gaps`` as ``(start, n)``
    and counted in ``stats["failed"]``. Failed reads go on while the container's frame
    count says frames remain (each consumes at least one packet; at the end of the file
    they return at once), at most ``max_consecutive_failures`` in a row when given. The
    frames after the last decoded one are counted in ``stats["missing"]`` (a truncated file).

    Args:
        path: the video file.
        capture: an already opened capture-like object (``read``, ``get``, ``isOpened``,
            ``release``) to read instead of opening ``path``.
        max_consecutive_failures: failed reads in a row after which the video is treated as
            ended (None: bounded by the frame count only).
        verbose: keep FFmpeg's own messages (see :func:`configure_ffmpeg_logging`); None
            leaves the process-wide setting as it is.
    """

    def __init__(self, path: str, capture: Any = None, max_consecutive_failures: Optional[int] = None,
                 verbose: Optional[bool] = None) -> None:
        super().__init__()
        self.stats.update(missing=0)
        self.path = str(path)
        if capture is None:
            if not os.path.isfile(self.path):
                raise DataError(self.path, "video file not found")
            if os.path.getsize(self.path) == 0:
                raise DataError(self.path, "video file is empty")
            if verbose is not None:
                configure_ffmpeg_logging(verbose)
            capture = open_video(self.path)
        self.cap = capture
        if not self.cap.isOpened():
            self.close()
            raise DataError(self.path, "cannot open video (unsupported codec/container or corrupt file)")
        fps = prop(self.cap, cv2.CAP_PROP_FPS)
        w, h = int(prop(self.cap, cv2.CAP_PROP_FRAME_WIDTH)), int(prop(self.cap, cv2.CAP_PROP_FRAME_HEIGHT))
        n = int(prop(self.cap, cv2.CAP_PROP_FRAME_COUNT))
        self.info = SourceInfo("video", self.path, fps if 0 < fps < 1000 else None, (w, h) if w > 0 and h > 0 else None,
                               n if n > 0 else None)
        self.max_consecutive_failures = None if max_consecutive_failures is None else int(max_consecutive_failures)

    def close(self) -> None:
        if getattr(self, "cap", None) is not None:
            self.cap.release()
            self.cap = None

    def __iter__(self) -> Iterator[Frame]:
        if self.cap is None:
            raise DataError(self.path, "video source is closed")
        name = os.path.basename(self.path)
        nxt = streak = 0  # position of the next frame; failed reads since the last decoded frame
        ended = False
        try:
            while self.cap is not None:
                ok, frame = self.cap.read()
                if ok and frame is not None and frame.size:
                    idx, t = self._position(nxt, streak)
                    if idx > nxt:
                        self._gap(nxt, idx - nxt)
                    nxt, streak = idx + 1, 0
                    self.stats["frames"] += 1
                    yield Frame(idx, _to_rgb(frame), name, t)
                elif self._keep_reading(nxt, streak):
                    streak += 1
                else:
                    ended = True
                    break
        finally:
            if ended:
                self._end(nxt, streak)
            if len(self.gaps) > 1:
                log.warning("%s: %d frames lost in %d gaps", self.path, self.stats["failed"], len(self.gaps))

    def _position(self, nxt: int, streak: int) -> tuple[int, Optional[float]]:
        """Index and container time (s, None when not usable) of the frame just decoded."""
        t = self._timestamp(nxt)
        if t is not None:
            return int(math.floor(t * self.info.fps + 0.5)), t
        guess = nxt + streak
        pos = int(prop(self.cap, cv2.CAP_PROP_POS_FRAMES, 0)) - 1
        return (pos if guess < pos <= guess + 1000 else guess), None

    def _timestamp(self, nxt: int) -> Optional[float]:
        """The decoded frame's timestamp in seconds when it is a usable position, else None."""
        fps, count = self.info.fps, self.info.frame_count
        ms = prop(self.cap, cv2.CAP_PROP_POS_MSEC, -1.0)
        if fps is None or ms < 0 or (ms == 0 and nxt > 0):  # 0: OpenCV's "no timestamp"
            return None
        k = math.floor(ms * fps / 1000 + 0.5)
        if k < nxt or (count is not None and k >= count + max(25, count // 10)):
            return None
        return round(ms / 1000, 6)

    def _keep_reading(self, nxt: int, streak: int) -> bool:
        """After a failed read: try again while the frame count says frames remain."""
        count, limit = self.info.frame_count, self.max_consecutive_failures
        return count is not None and nxt + streak < count and (limit is None or streak < limit)

    def _gap(self, start: int, n: int) -> None:
        """Record ``n`` frames lost from ``start`` on; one warning per gap (the first few)."""
        self.gaps.append((start, n))
        self.stats["failed"] += n
        if len(self.gaps) <= _MAX_GAP_WARNINGS:
            log.warning("%s: frames %d-%d lost (%d): damaged or undecodable, skipped", self.path, start,
                        start + n - 1, n)
        elif len(self.gaps) == _MAX_GAP_WARNINGS + 1:
            log.warning("%s: more gaps; not logged one by one (see the summary)", self.path)

    def _end(self, nxt: int, streak: int) -> None:
        """Reading stopped: trailing failed reads the position confirms are lost, the rest missing."""
        count = self.info.frame_count
        pos = int(prop(self.cap, cv2.CAP_PROP_POS_FRAMES, 0)) if self.cap is not None else 0
        end = max(nxt, min(nxt + streak, pos))  # OpenCV's position counts decoded frames only
        end = min(end, count) if count is not None else end
        if end > nxt:
            self._gap(nxt, end - nxt)
        if count is not None and end < count:
            self.stats["missing"] = count - end
            log.warning("%s: video ended at frame %d of %d; the last %d are missing (file truncated?)",
                        self.path, end, count, count - end)


# --------------------------------------------------------------------------------------------
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
        self._open = opener or (lambda t: open_capture(t, timeout_ms))
        kind = "webcam" if isinstance(target, int) else "stream"
        self.label = f"webcam {target}" if kind == "webcam" else str(target)
        self.cap = self._open(target)
        if self.cap is None or not self.cap.isOpened():
            self.close()
            what = "cannot open webcam (no such camera, or it is busy)" if kind == "webcam" else \
                "cannot open stream (unreachable, wrong URL, or unsupported protocol)"
            raise DataError(self.label, what)
        fps = prop(self.cap, cv2.CAP_PROP_FPS)
        w, h = int(prop(self.cap, cv2.CAP_PROP_FRAME_WIDTH)), int(prop(self.cap, cv2.CAP_PROP_FRAME_HEIGHT))
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
                timeout_ms: int = 10000, verbose: Optional[bool] = None) -> Source:
    """Open an inference input from its spec (see the module docstring for the forms).

    ``verbose`` keeps FFmpeg's own messages (None: ``VISIONMTL_VERBOSE``, read at import;
    see :func:`configure_ffmpeg_logging`).

    Raises:
        DataError: the input does not exist, cannot be opened, or holds no images.
    """
    if verbose is not None:
        configure_ffmpeg_logging(verbose)
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
