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

For image sets, :class:`CocoResultsWriter` writes ``coco_results.json`` (bbox results:
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
from typing import IO, Any, Mapping, Optional, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

log = logging.getLogger("visionmtl")

__all__ = ["mask_to_rle", "rle_to_mask", "result_to_record", "JsonlWriter", "CocoResultsWriter", "VideoWriter",
           "open_video_writer"]


def mask_to_rle(mask: np.ndarray, classes: Sequence[str], skip: Sequence[int] = ()) -> list[dict]:
    """One COCO RLE per class present in a class-index mask (``counts`` as str)."""
    mask = np.asarray(mask)
    counts = np.bincount(mask.reshape(-1).astype(np.int64), minlength=1)
    fmask = np.asfortranarray(mask)  # comparisons keep the column-major layout pycocotools needs
    out = []
    for c in np.flatnonzero(counts):
        c = int(c)
        if c in skip or c == 255:
            continue
        rle = mask_utils.encode((fmask == c).view(np.uint8))
        out.append({"label": classes[c] if c < len(classes) else str(c), "label_id": c, "area": int(counts[c]),
                    "rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}})
    return out


def rle_to_mask(segments: Sequence[Mapping], size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """Rebuild a class-index mask ``[h, w]`` from :func:`mask_to_rle` segments."""
    mask = np.full(size, fill, np.uint8)
    for s in segments:
        m = mask_utils.decode({"size": list(s["rle"]["size"]), "counts": s["rle"]["counts"].encode("ascii")})
        mask[m.astype(bool)] = s["label_id"]
    return mask


def _f(values: Any, nd: int = 2) -> list:
    return np.round(np.asarray(values, np.float64), nd).tolist()


def result_to_record(result: Mapping[str, Mapping[str, np.ndarray]], tasks: Mapping[str, Any], index: int, name: str,
                     size: tuple[int, int], image_id: Optional[int] = None, frame_time: Optional[float] = None,
                     mask_format: str = "rle", mask_path: Optional[str] = None, is_frame: bool = False) -> dict:
    """A JSON-serialisable record of one prediction (see the module docstring).

    Args:
        result: ``{task: {...}}`` with numpy arrays, as returned by ``Predictor``.
        tasks: task name -> TaskConfig (``type``, ``classes``).
        index: frame / image index in the source.
        name: file or source name.
        size: original ``(height, width)``.
        image_id: COCO image id (image sets).
        frame_time: seconds from the start (videos with a known frame rate).
        mask_format: ``rle`` (inline) or ``png`` (``mask_path`` is recorded; the caller writes it).
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
        classes = list(t.classes)
        name_of = lambda c: classes[c] if 0 <= c < len(classes) else str(c)  # noqa: E731
        if t.type == "detection":
            labels = np.asarray(r["labels"], np.int64).reshape(-1)
            out = {"type": t.type, "boxes": _f(np.asarray(r["boxes"]).reshape(-1, 4)), "scores": _f(r["scores"], 4),
                   "labels": [name_of(int(c)) for c in labels], "label_ids": labels.tolist()}
            if "track_ids" in r:
                out["track_ids"] = np.asarray(r["track_ids"], np.int64).reshape(-1).tolist()
        elif t.type == "classification":
            probs = np.asarray(r["probs"], np.float64).reshape(-1)
            labels = np.asarray(r["labels"], np.int64).reshape(-1)
            out = {"type": t.type, "labels": [name_of(int(c)) for c in labels], "label_ids": labels.tolist(),
                   "probs": {name_of(i): round(float(p), 4) for i, p in enumerate(probs)}}
        elif t.type == "segmentation":
            mask = np.asarray(r["mask"])
            out = {"type": t.type, "size": [int(mask.shape[0]), int(mask.shape[1])]}
            if mask_format == "png":
                out["png"] = mask_path
            else:
                out["segments"] = mask_to_rle(mask, classes)
        else:
            continue
        rec[tname] = out
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
    """Collect COCO bbox results of one detection task over an image set.

    ``close()`` writes ``results_path`` (a list of ``{image_id, category_id, bbox, score}``)
    and ``images_path`` (``{"images", "categories", "annotations": []}``). Category ids are
    the task's class index + 1; image ids are the image's position in the set + 1.
    """

    def __init__(self, results_path: str | os.PathLike, images_path: str | os.PathLike, classes: Sequence[str]) -> None:
        self.results_path = Path(results_path)
        self.images_path = Path(images_path)
        self.classes = list(classes)
        self.images: list[dict] = []
        self.results: list[dict] = []

    def add(self, image_id: int, file_name: str, size: tuple[int, int], det: Mapping[str, np.ndarray]) -> None:
        """Record one image (``size`` = (h, w)) and its detections (xyxy, original pixels)."""
        h, w = size
        self.images.append({"id": int(image_id), "file_name": file_name, "height": int(h), "width": int(w)})
        boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
        for b, s, c in zip(boxes, np.asarray(det["scores"]).reshape(-1), np.asarray(det["labels"]).reshape(-1)):
            self.results.append({"image_id": int(image_id), "category_id": int(c) + 1,
                                 "bbox": [round(float(b[0]), 2), round(float(b[1]), 2),
                                          round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)],
                                 "score": round(float(s), 5)})

    def close(self) -> tuple[Path, Path]:
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        gt = {"info": {"description": "images of a visionmtl inference run (add annotations to evaluate)"},
              "images": self.images,
              "categories": [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(self.classes)],
              "annotations": []}
        self.images_path.write_text(json.dumps(gt))
        self.results_path.write_text(json.dumps(self.results))
        if not self.results:
            log.warning("%s: no detections; note that pycocotools' loadRes cannot load an empty results list",
                        self.results_path)
        return self.results_path, self.images_path


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
