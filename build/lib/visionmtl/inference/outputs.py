"""Structured inference outputs: JSON Lines records, COCO results, masks as RLE or PNG, videos.

One JSONL record per image or frame (see :func:`result_to_record`)::

    {"index": 0, "name": "img.jpg", "image_id": 1, "width": 640, "height": 480,
     "frame": 0, "time": 0.0,                                    # video sources only
     "det": {"type": "detection", "boxes": [[x1, y1, x2, y2], ...], "scores": [...],
             "labels": ["car", ...], "label_ids": [...], "track_ids": [...]},   # with --track
     "cls": {"type": "classification", "labels": ["cat"], "label_ids": [3],
             "probs": {"cat": 0.91, ...}},
     "seg": {"type": "segmentation", "size": [h, w],
             "segments": [{"label": "road", "label_id": 1, "area": 1234,
                           "rle": {"size": [h, w], "counts": "..."}}, ...]}}   # or "png": path

Boxes are in original pixel coordinates. RLE is COCO's (``pycocotools.mask.encode``, column
major) with ``counts`` as str: ``pycocotools.mask.decode({"size": ..., "counts": c.encode()})``
gives the binary mask back.

Each task's part of a record is its spec's ``record`` (visionmtl/tasks/). For image sets,
:class:`CocoResultsWriter` writes ``coco_results.json`` (detection: bbox results:
``image_id``, ``category_id`` = class index + 1, ``bbox`` xywh, ``score``) and a matching
``coco_images.json`` (``images`` / ``categories`` / empty ``annotations``) so the results load
with ``COCO(coco_images.json).loadRes(coco_results.json)``; to evaluate, add ground-truth
annotations with the same image ids and category ids.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Optional, Sequence

import cv2
import numpy as np

from ..rle import mask_to_rle, rle_to_mask  # noqa: F401  (re-exported)
from ..tasks import spec

log = logging.getLogger("visionmtl")

__all__ = ["mask_to_rle", "rle_to_mask", "result_to_record", "JsonlWriter", "CocoResultsWriter", "VideoWriter",
           "open_video_writer"]


def result_to_record(result: Mapping[str, Mapping[str, np.ndarray]], tasks: Mapping[str, Any], index: int, name: str,
                     size: tuple[int, int], image_id: Optional[int] = None, frame_time: Optional[float] = None,
                     save_mask: Optional[Callable[[str, np.ndarray], str]] = None, is_frame: bool = False) -> dict:
    """A JSON-serialisable record of one prediction (see the module docstring).

    Args:
        result: ``{task: {...}}`` with numpy arrays, as returned by ``Predictor``.
        tasks: task name -> TaskConfig; each task's part comes from its spec's ``record``.
        index: frame / image index in the source.
        name: file or source name.
        size: original ``(height, width)``.
        image_id: COCO image id (image sets).
        frame_time: seconds from the start (videos with a known frame rate).
        save_mask: ``(task, mask) -> relative path``: write masks as PNG files and record the
            path (``--mask-format png``); default inline RLE.
        is_frame: a video frame: ``frame`` (= index) is recorded, and ``time`` when known.
    """
    h, w = size
    rec: dict[str, Any] = {"index": int(index), "name": name, "width": int(w), "height": int(h)}
    if image_id is not None:
        rec["image_id"] = int(image_id)
    if is_frame or frame_time is not None:
        rec["frame"] = int(index)
    if frame_time is not None:
        rec["time"] = round(float(frame_time), 4)
    for tname, r in result.items():
        t = tasks[tname]
        saver = (lambda m, _n=tname: save_mask(_n, m)) if save_mask is not None else (lambda m: None)
        rec[tname] = spec(t).record(t, r, saver)
    return rec


class JsonlWriter:
    """Append one JSON object per line to ``path`` (created with its parent folder)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: Optional[IO[str]] = open(self.path, "w", encoding="utf-8")
        self.count = 0

    def write(self, record: Mapping) -> None:
        assert self._fh is not None, "writer is closed"
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CocoResultsWriter:
    """Collect COCO results of one task over an image set (``spec.coco_results`` per image).

    ``close()`` writes ``results_path`` (a list of ``{image_id, category_id, bbox | segmentation,
    score}``) and ``images_path`` (``{"images", "categories", "annotations": []}``). Category ids
    are the task's class index + 1; image ids are the image's position in the set + 1.
    """

    def __init__(self, results_path: str | os.PathLike, images_path: str | os.PathLike, task: Any) -> None:
        self.results_path = Path(results_path)
        self.images_path = Path(images_path)
        self.task = task
        self.classes = list(task.classes)
        self.images: list[dict] = []
        self.results: list[dict] = []

    def add(self, image_id: int, file_name: str, size: tuple[int, int], result: Mapping[str, np.ndarray]) -> None:
        """Record one image (``size`` = (h, w)) and its results (original pixels)."""
        h, w = size
        self.images.append({"id": int(image_id), "file_name": file_name, "height": int(h), "width": int(w)})
        self.results += spec(self.task).coco_results(self.task, image_id, result) or []

    def close(self) -> tuple[Path, Path]:
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        gt = {"info": {"description": "images of a visionmtl inference run (add annotations to evaluate)"},
              "images": self.images,
              "categories": [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(self.classes)],
              "annotations": []}
        _write_atomic(self.images_path, json.dumps(gt))
        _write_atomic(self.results_path, json.dumps(self.results))
        if not self.results:
            log.warning("%s: no results; note that pycocotools' loadRes cannot load an empty results list",
                        self.results_path)
        return self.results_path, self.images_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Video files
# --------------------------------------------------------------------------------------------
#: (fourcc, extension) tried in order. With the opencv-python(-headless) wheels, ``mp4v`` into
#: ``.mp4`` works (FFmpeg's MPEG-4 Part 2 encoder); H.264 (``avc1``) does not (no encoder in
#: the wheel's FFmpeg). ``MJPG`` into ``.avi`` is the fallback: always available, larger files.
VIDEO_CODECS: tuple[tuple[str, str], ...] = (("mp4v", ".mp4"), ("MJPG", ".avi"))


class VideoWriter:
    """``cv2.VideoWriter`` taking RGB frames; frames of another size are resized to the first's."""

    def __init__(self, writer: cv2.VideoWriter, path: Path, fourcc: str, fps: float, size: tuple[int, int]) -> None:
        self.writer, self.path, self.fourcc, self.fps, self.size = writer, path, fourcc, fps, size
        self.count = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        if (frame_rgb.shape[1], frame_rgb.shape[0]) != self.size:
            frame_rgb = cv2.resize(frame_rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def open_video_writer(stem: str | os.PathLike, fps: float, size: tuple[int, int],
                      codecs: Sequence[tuple[str, str]] = VIDEO_CODECS) -> VideoWriter:
    """Open ``<stem><ext>`` with the first codec of ``codecs`` that this OpenCV build can encode.

    Args:
        stem: output path without extension.
        fps: frames per second written in the container.
        size: ``(width, height)``.

    Raises:
        RuntimeError: no codec works (an OpenCV build without video I/O).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    for fourcc, ext in codecs:
        path = stem.with_name(stem.name + ext)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(int(v) for v in size))
        if writer.isOpened():
            return VideoWriter(writer, path, fourcc, float(fps), (int(size[0]), int(size[1])))
        writer.release()
        if path.exists() and path.stat().st_size == 0:
            path.unlink()
        tried.append(f"{fourcc}{ext}")
    raise RuntimeError(f"cannot write video {stem}.*: no working codec among {', '.join(tried)} in this OpenCV build")
