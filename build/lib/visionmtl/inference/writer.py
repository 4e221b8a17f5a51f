"""The inference pipeline's writer thread: drawing, encoding, display and structured outputs."""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import cv2
import numpy as np

from ..config import ConfigError
from ..data.errors import DataError
from .draw import draw_result
from .outputs import CocoResultsWriter, JsonlWriter, open_video_writer, result_to_record
from .sources import Frame, SourceInfo
from ..tasks import spec
from .stages import END, POLL, WINDOW, StageTimer

if TYPE_CHECKING:  # the writer only reads predictor.tasks; no import cycle with video.py
    from .predictor import Predictor


def check_display() -> None:
    """Raise ConfigError unless OpenCV can open a window here (``--show``)."""
    info = cv2.getBuildInformation()
    m = re.search(r"^\s*GUI:\s*(\S+)", info, re.M)
    if m and m.group(1).upper() == "NONE":
        raise ConfigError("--show: this OpenCV build has no GUI support (GUI: NONE, e.g. opencv-python-headless); "
                          "drop --show and open the annotated output written to --out, or install opencv-python")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("--show: no display available (DISPLAY is not set); drop --show and open the annotated "
                          "output written to --out")
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error as e:
        raise ConfigError(f"--show: cannot open a window ({str(e).strip().splitlines()[-1]})") from None


_WRITE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class Writer(threading.Thread):
    """Consume ``(Frame, result)``: draw, encode, show, and write JSONL / COCO / mask outputs."""

    def __init__(self, predictor: Predictor, info: SourceInfo, out_dir: Optional[Path], draw: bool, save_json: bool,
                 show: bool, mask_format: str, timer: StageTimer, maxsize: int,
                 codecs: Sequence[tuple[str, str]], draw_thresh: float) -> None:
        super().__init__(name="visionmtl-writer", daemon=True)
        self.predictor, self.info, self.out_dir, self.timer = predictor, info, out_dir, timer
        self.draw, self.save_json, self.show, self.mask_format = draw, save_json, show, mask_format
        self.codecs, self.draw_thresh = codecs, draw_thresh
        self.q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: Optional[BaseException] = None
        self.quit = False  # the user closed the window / pressed q
        self.video = None
        self.n_images = 0
        self.jsonl: Optional[JsonlWriter] = None
        self.coco: dict[str, CocoResultsWriter] = {}
        self._names: set[str] = set()
        if save_json:
            self.jsonl = JsonlWriter(out_dir / "predictions.jsonl")
            # one COCO results file per task whose type has COCO results (detection: bbox)
            coco = [n for n, t in predictor.tasks.items() if spec(t).coco_iou_type]
            if not info.is_video:
                for n in coco:
                    sfx = "" if len(coco) == 1 else f"_{n}"
                    self.coco[n] = CocoResultsWriter(out_dir / f"coco_results{sfx}.json",
                                                     out_dir / f"coco_images{sfx}.json", predictor.tasks[n])

    # -- producer side ------------------------------------------------------------------------
    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(item, timeout=POLL)
                return
            except queue.Full:
                if not self.is_alive():
                    raise RuntimeError("output thread ended unexpectedly") from self.error

    def finish(self) -> None:
        """Flush the queue, close every output, re-raise an error from the thread."""
        while self.is_alive():  # the thread drains the queue even after an error, so END gets in
            try:
                self.q.put(END, timeout=POLL)
                break
            except queue.Full:
                continue
        self.join()
        self._close()
        if self.error is not None:
            raise self.error

    # -- thread side ----------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is END:
                return
            if self.error is not None:
                continue  # drain so the producer never blocks
            try:
                self._handle(*item)
            except BaseException as e:
                self.error = e

    def _image_name(self, frame: Frame) -> str:
        base = os.path.basename(frame.name) or f"{frame.index:06d}.jpg"
        stem, ext = os.path.splitext(base)
        if ext.lower() not in _WRITE_EXTS:
            ext = ".jpg"
        name = stem + ext
        k = 1
        while name in self._names:
            name = f"{stem}_{k}{ext}"
            k += 1
        self._names.add(name)
        return name

    def _handle(self, frame: Frame, result: dict) -> None:
        drawn = None
        if self.draw or self.show:
            t0 = time.perf_counter()
            drawn = draw_result(frame.image, result, self.predictor.tasks, score_thresh=self.draw_thresh)
            self.timer.add("draw", time.perf_counter() - t0)
        if self.draw and self.out_dir is not None:
            t0 = time.perf_counter()
            if self.info.is_video:
                if self.video is None:
                    h, w = drawn.shape[:2]
                    fps = self.info.fps or 25.0
                    self.video = open_video_writer(self.out_dir / self.info.stem, fps, (w, h), self.codecs)
                self.video.write(drawn)
            else:
                path = self.out_dir / self._image_name(frame)
                if os.path.abspath(path) == os.path.abspath(frame.name):
                    raise DataError(frame.name, "the drawn image would overwrite the input; choose another --out")
                ok = cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise DataError(str(path), "cannot write the drawn image")
                self.n_images += 1
            self.timer.add("encode", time.perf_counter() - t0)
        if self.show:
            cv2.imshow(WINDOW, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.quit = True
        if self.jsonl is not None:
            t0 = time.perf_counter()
            self._write_json(frame, result)
            self.timer.add("json", time.perf_counter() - t0)

    def _write_json(self, frame: Frame, result: dict) -> None:
        h, w = frame.image.shape[:2]
        video = self.info.is_video
        image_id = None if video else frame.index + 1
        stem = f"{self.info.stem}_{frame.index:06d}" if video else \
            os.path.splitext(os.path.basename(frame.name))[0] + f"_{frame.index:06d}"

        def save_mask(task: str, mask: np.ndarray) -> str:
            rel = f"masks/{stem}_{task}.png"
            (self.out_dir / "masks").mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(self.out_dir / rel), np.asarray(mask).astype(np.uint8)):
                raise DataError(str(self.out_dir / rel), "cannot write the mask PNG")
            return rel

        frame_time = None
        if video:  # the container's timestamp when the source read one, else index / fps
            frame_time = frame.time if frame.time is not None else (frame.index / self.info.fps if self.info.fps else None)
        rec = result_to_record(result, self.predictor.tasks, frame.index, frame.name, (h, w), image_id=image_id,
                               frame_time=frame_time, save_mask=save_mask if self.mask_format == "png" else None,
                               is_frame=video)
        self.jsonl.write(rec)
        for name, writer in self.coco.items():
            writer.add(image_id, os.path.basename(frame.name), (h, w), result[name])

    def _close(self) -> None:
        if self.video is not None:
            self.video.close()
        if self.jsonl is not None:
            self.jsonl.close()
        for w in self.coco.values():
            w.close()
        if self.show:
            try:
                cv2.destroyWindow(WINDOW)
            except cv2.error:
                pass

    def outputs(self) -> dict:
        out: dict[str, Any] = {}
        if self.video is not None:
            out.update(video=str(self.video.path), codec=self.video.fourcc, video_frames=self.video.count)
        if self.n_images:
            out.update(images_dir=str(self.out_dir), images=self.n_images)
        if self.jsonl is not None:
            out.update(jsonl=str(self.jsonl.path), records=self.jsonl.count)
        for name, w in self.coco.items():
            sfx = "" if len(self.coco) == 1 else f"_{name}"
            out[f"coco_results{sfx}"] = str(w.results_path)
            out[f"coco_images{sfx}"] = str(w.images_path)
        return out
