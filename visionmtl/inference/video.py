"""The threaded inference pipeline for videos, webcams, streams and image sets.

Four stages run concurrently, joined by bounded queues, so the model does not wait on I/O::

    reader thread          model thread              caller thread              writer thread
    decode frames     ──▶  H2D copy (uint8)     ──▶  postprocess (decode   ──▶  draw results
    resize + pad           normalise on device       boxes, masks -> numpy)     encode video / images
    (batched, pinned)      forward (batched)         tracking (in order)        JSONL / COCO records

Every stage is timed (:class:`StageTimer`); :func:`run_video` returns a summary with seconds
and ms per frame for ``decode``, ``preprocess``, ``model``, ``postprocess`` (plus ``track``),
``draw``, ``encode`` and ``json``, how long the model thread waited for input and for
postprocessing, and the end-to-end FPS. With ``draw=False`` nothing is drawn or encoded.
:func:`model_only_fps` times the forward pass alone on pre-loaded device tensors, at the same
batch and size, as the reference the end-to-end FPS is compared against.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import sys
import threading
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigError
from ..data.errors import DataError
from .draw import draw_result
from .outputs import VIDEO_CODECS, CocoResultsWriter, JsonlWriter, open_video_writer, result_to_record
from .predictor import PreparedBatch, Predictor
from .sources import Frame, Source, SourceInfo, open_source
from .track import ByteTracker

log = logging.getLogger("visionmtl")

__all__ = ["StageTimer", "predict_stream", "run_video", "model_only_fps", "check_display", "format_summary",
           "write_video", "STAGES", "WINDOW"]

STAGES = ("decode", "preprocess", "model", "postprocess", "track", "draw", "encode", "json")
WINDOW = "visionmtl"
_END = object()
_POLL = 0.1  # seconds between checks of stop flags while blocked on a queue


class StageTimer:
    """Seconds spent per named stage, summed over threads."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.totals[stage] += seconds

    def __getitem__(self, stage: str) -> float:
        return self.totals.get(stage, 0.0)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Background stages: reader (decode + CPU preprocessing) and model worker (device work)
# --------------------------------------------------------------------------------------------
class _Stage(threading.Thread):
    """A daemon thread producing into a bounded queue; never blocks forever once stopped."""

    def __init__(self, name: str, maxsize: int) -> None:
        super().__init__(name=name, daemon=True)
        self.q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.stop_event = threading.Event()

    def produce(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            self.produce()
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Failure(e))
        finally:
            self._put(_END)

    def _put(self, item: Any) -> None:
        while not self.stop_event.is_set():
            try:
                self.q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def get(self, stop: Optional[threading.Event] = None) -> Any:
        """Next item, or ``_END`` once this stage has ended (or ``stop`` is set) and nothing is left."""
        while True:
            try:
                return self.q.get(timeout=_POLL)
            except queue.Empty:
                if (stop is not None and stop.is_set()) or (not self.is_alive() and self.q.empty()):
                    return _END

    def stop(self, timeout: float = 15.0) -> bool:
        """Ask the thread to end, unblock it, and wait; True when it has ended."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        while self.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    self.q.get_nowait()
            except queue.Empty:
                pass
            self.join(_POLL)
        return not self.is_alive()


class _Reader(_Stage):
    """Iterate a source, group frames into batches, ``predictor.prepare`` them (CPU), queue them."""

    def __init__(self, source: Source, predictor: Predictor, batch: int, max_frames: Optional[int],
                 timer: StageTimer, maxsize: int) -> None:
        super().__init__("visionmtl-reader", maxsize)
        self.source, self.predictor, self.batch, self.max_frames, self.timer = source, predictor, batch, max_frames, timer

    def produce(self) -> None:
        frames: list[Frame] = []
        n = 0
        it = iter(self.source)
        while not self.stop_event.is_set():
            if self.max_frames is not None and n >= self.max_frames:
                break
            t0 = time.perf_counter()
            try:
                frame = next(it)
            except StopIteration:
                break
            finally:
                self.timer.add("decode", time.perf_counter() - t0)
            frames.append(frame)
            n += 1
            if len(frames) == self.batch:
                self._emit(frames)
                frames = []
        if frames and not self.stop_event.is_set():
            self._emit(frames)

    def _emit(self, frames: list[Frame]) -> None:
        t0 = time.perf_counter()
        prepared = self.predictor.prepare([f.image for f in frames])
        self.timer.add("preprocess", time.perf_counter() - t0)
        self._put((frames, prepared))


class _ModelWorker(_Stage):
    """Host-to-device copy, normalisation and the forward pass, batch after batch.

    Runs in its own thread so that postprocessing, tracking and output of batch ``n`` overlap
    the forward pass of batch ``n + 1``. ``wait_input`` is the time it waited for the reader,
    ``wait_output`` the time it waited for the consumer (both ~0 when the model is the bottleneck).
    """

    def __init__(self, reader: _Reader, predictor: Predictor, timer: StageTimer, maxsize: int) -> None:
        super().__init__("visionmtl-model", maxsize)
        self.reader, self.predictor, self.timer = reader, predictor, timer

    def produce(self) -> None:
        p = self.predictor
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            item = self.reader.get(self.stop_event)
            self.timer.add("wait_input", time.perf_counter() - t0)
            if item is _END:
                return
            if isinstance(item, _Failure):
                self._put(item)
                return
            frames, prepared = item
            t0 = time.perf_counter()
            with torch.inference_mode():
                x = p.normalize(prepared.images)
            t1 = time.perf_counter()
            raw = p.run_model(x)
            _sync(p.device)
            t2 = time.perf_counter()
            self.timer.add("preprocess", t1 - t0)
            self.timer.add("model", t2 - t1)
            self._put((frames, prepared, raw))
            self.timer.add("wait_output", time.perf_counter() - t2)


def _make_trackers(predictor: Predictor, track_buffer: int) -> dict[str, ByteTracker]:
    low = min(0.1, predictor.conf)
    return {n: ByteTracker(track_thresh=max(predictor.conf, low), low_thresh=low, track_buffer=track_buffer)
            for n, t in predictor.tasks.items() if t.type == "detection"}


def _apply_tracking(result: dict, trackers: dict[str, ByteTracker], conf: float) -> None:
    """Give detections track ids; keep boxes above ``conf`` or continuing a track (low-score boxes)."""
    for name, tracker in trackers.items():
        r = result.get(name)
        if r is None:
            continue
        ids = tracker.update(r["boxes"], r["scores"], r["labels"])
        keep = (r["scores"] >= conf) | (ids >= 0)
        result[name] = {"boxes": r["boxes"][keep], "scores": r["scores"][keep], "labels": r["labels"][keep],
                        "track_ids": ids[keep]}


def predict_stream(predictor: Predictor, source: Any, batch: int = 1, max_frames: Optional[int] = None,
                   track: bool = False, track_buffer: int = 30, timer: Optional[StageTimer] = None,
                   queue_size: Optional[int] = None) -> Iterator[tuple[Frame, dict]]:
    """Yield ``(Frame, result)`` for every decoded frame, in order.

    A reader thread decodes and preprocesses (resize + pad) batches into a bounded queue; a
    model thread copies them to the device, normalises and runs the forward pass into a second
    bounded queue; this generator postprocesses (and tracks) in the caller's thread, so the
    forward pass of the next batch overlaps the postprocessing of this one. With ``track``,
    detection results get ``track_ids`` (ByteTrack; ``conf`` is the high-score threshold, boxes
    down to ``min(0.1, conf)`` take part in association and are kept when they continue a track).

    Args:
        source: a spec for :func:`open_source` or an opened :class:`Source` (closed here only
            when opened here).
        batch: frames per forward pass.
        max_frames: stop after this many frames.
        timer: collects per-stage seconds (``decode``, ``preprocess``, ``model``, ...).
        queue_size: batches buffered between reader and model (default 4; 2 between model
            and postprocessing, which bounds the device memory held by raw outputs).
    """
    own = not isinstance(source, Source)
    src = open_source(source) if own else source
    timer = timer if timer is not None else StageTimer()
    batch = max(1, int(batch))
    trackers = _make_trackers(predictor, track_buffer) if track else {}
    min_score = min(0.1, predictor.conf) if trackers else None
    reader = _Reader(src, predictor, batch, max_frames, timer, maxsize=max(2, queue_size or 4))
    worker = _ModelWorker(reader, predictor, timer, maxsize=2)
    reader.start()
    worker.start()
    try:
        while True:
            item = worker.get()
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.exc
            frames, prepared, raw = item
            t0 = time.perf_counter()
            results = predictor.postprocess(raw, prepared, min_score)
            del raw
            t1 = time.perf_counter()
            timer.add("postprocess", t1 - t0)
            if trackers:
                for r in results:
                    _apply_tracking(r, trackers, predictor.conf)
                timer.add("track", time.perf_counter() - t1)
            for f, r in zip(frames, results):
                yield f, r
    finally:
        worker.stop_event.set()
        reader.stop_event.set()
        worker_ended = worker.stop()
        reader_ended = reader.stop()
        if own and worker_ended and reader_ended:
            src.close()


# --------------------------------------------------------------------------------------------
# Writer: drawing, encoding and structured outputs in a background thread
# --------------------------------------------------------------------------------------------
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


class _Writer(threading.Thread):
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
            dets = [n for n, t in predictor.tasks.items() if t.type == "detection"]
            if not info.is_video:
                for n in dets:
                    sfx = "" if len(dets) == 1 else f"_{n}"
                    self.coco[n] = CocoResultsWriter(out_dir / f"coco_results{sfx}.json",
                                                     out_dir / f"coco_images{sfx}.json", predictor.tasks[n].classes)

    # -- producer side ------------------------------------------------------------------------
    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put(item, timeout=_POLL)
                return
            except queue.Full:
                if not self.is_alive():
                    raise RuntimeError("output thread ended unexpectedly") from self.error

    def finish(self) -> None:
        """Flush the queue, close every output, re-raise an error from the thread."""
        while self.is_alive():  # the thread drains the queue even after an error, so _END gets in
            try:
                self.q.put(_END, timeout=_POLL)
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
            if item is _END:
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
        mask_path = None
        if self.mask_format == "png":
            for name, r in result.items():
                if self.predictor.tasks[name].type == "segmentation":
                    stem = f"{self.info.stem}_{frame.index:06d}" if video else \
                        os.path.splitext(os.path.basename(frame.name))[0] + f"_{frame.index:06d}"
                    rel = f"masks/{stem}_{name}.png"
                    (self.out_dir / "masks").mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(self.out_dir / rel), np.asarray(r["mask"]).astype(np.uint8))
                    mask_path = rel
        frame_time = frame.index / self.info.fps if video and self.info.fps else None
        rec = result_to_record(result, self.predictor.tasks, frame.index, frame.name, (h, w), image_id=image_id,
                               frame_time=frame_time, mask_format=self.mask_format, mask_path=mask_path,
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


# --------------------------------------------------------------------------------------------
def run_video(predictor: Predictor, source: Any, out_dir: Optional[str | os.PathLike] = None, *, batch: int = 1,
              draw: bool = True, save_json: bool = False, show: bool = False, track: bool = False,
              track_buffer: int = 30, max_frames: Optional[int] = None, mask_format: str = "rle",
              progress: bool = True, queue_size: Optional[int] = None, warmup: bool = True,
              codecs: Sequence[tuple[str, str]] = VIDEO_CODECS) -> dict:
    """Run the threaded pipeline over any source and return a summary dict.

    Outputs under ``out_dir``: the annotated video ``<stem>.mp4`` (``mp4v``; ``.avi``/MJPG
    where that is unavailable) for video sources or one drawn image per input for image sets
    (``draw``); ``predictions.jsonl`` and, for image sets with a detection head,
    ``coco_results.json`` + ``coco_images.json`` (``save_json``); ``masks/*.png`` with
    ``mask_format="png"``.

    Args:
        predictor: the model wrapper.
        source: a spec for :func:`open_source` or an opened :class:`Source`.
        out_dir: output folder (needed for ``draw`` to write files and for ``save_json``).
        batch: frames per forward pass.
        draw: draw and encode results; ``False`` skips both entirely.
        save_json: write JSONL records (and COCO results for image sets).
        show: display frames in a window (needs an OpenCV build with GUI and a display).
        track: ByteTrack ids on detections (videos, webcams, streams).
        track_buffer: frames a lost track survives.
        max_frames: stop after this many frames.
        mask_format: ``rle`` (inline COCO RLE) or ``png`` (files under ``masks/``).
        progress: show a tqdm bar (frames, FPS).
        queue_size: batches buffered between stages.
        warmup: one untimed forward pass at the video's size before the clock starts.

    Returns:
        ``{"frames", "failed_frames", "missing_frames", "reconnects", "wall_s", "fps", "batch",
        "stages": {stage: {"total_s", "ms_per_frame"}}, "model_wait_input_s", "model_wait_output_s",
        "wait_writer_s",
        "source": {...}, "outputs": {...}, "device", "precision", "imgsz", "tasks"}``.
    """
    if mask_format not in ("rle", "png"):
        raise ConfigError(f"mask format must be 'rle' or 'png', got {mask_format!r}")
    if show:
        check_display()
    out = Path(out_dir) if out_dir is not None else None
    if save_json and out is None:
        raise ConfigError("saving JSON needs an output folder")
    own = not isinstance(source, Source)
    src = open_source(source) if own else source
    info = src.info
    try:
        if track and not info.is_video:
            log.warning("--track applies to videos, webcams and streams; ignored for %s", info.kind)
            track = False
        draw_files = draw and out is not None
        if out is not None and (draw_files or save_json):
            out.mkdir(parents=True, exist_ok=True)
        if warmup and info.size is not None:
            w, h = info.size
            warm = predictor.prepare([np.zeros((h, w, 3), np.uint8)] * max(1, batch))
            predictor.postprocess(predictor.forward(warm), warm)
            _sync(predictor.device)
        timer = StageTimer()
        writer = None
        if draw_files or save_json or show:
            writer = _Writer(predictor, info, out, draw_files, save_json, show, mask_format, timer,
                             maxsize=max(4, 2 * batch + 2), codecs=codecs, draw_thresh=0.0)
            writer.start()
        total = info.frame_count
        if max_frames is not None:
            total = min(total, max_frames) if total else max_frames
        bar = tqdm(total=total or None, unit="frame", desc=info.stem, disable=not progress, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0, leave=False)
        n = 0
        t_start = time.perf_counter()
        interrupted = False
        try:
            stream = closing(predict_stream(predictor, src, batch=batch, max_frames=max_frames, track=track,
                                            track_buffer=track_buffer, timer=timer, queue_size=queue_size))
            with stream as frames:
                for frame, result in frames:
                    n += 1
                    if writer is not None:
                        t0 = time.perf_counter()
                        writer.put((frame, result))
                        timer.add("wait_writer", time.perf_counter() - t0)
                        if writer.quit:
                            break
                    bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            bar.close()
            if writer is not None:
                try:
                    writer.finish()
                except BaseException:
                    if not interrupted:
                        raise
        wall = time.perf_counter() - t_start
    finally:
        if own:
            src.close()

    stages = {s: {"total_s": round(timer[s], 4), "ms_per_frame": round(1000 * timer[s] / max(n, 1), 3)}
              for s in STAGES if s in timer.totals}
    summary: dict[str, Any] = {
        "frames": n,
        "failed_frames": int(src.stats.get("failed", 0)),
        "missing_frames": int(src.stats.get("missing", 0)),
        "reconnects": int(src.stats.get("reconnects", 0)),
        "wall_s": round(wall, 4),
        "fps": round(n / wall, 3) if wall > 0 else 0.0,
        "batch": batch,
        "stages": stages,
        "model_wait_input_s": round(timer["wait_input"], 4),
        "model_wait_output_s": round(timer["wait_output"], 4),
        "wait_writer_s": round(timer["wait_writer"], 4),
        "source": {"kind": info.kind, "spec": info.spec, "fps": info.fps, "size": info.size,
                   "frame_count": info.frame_count},
        "outputs": writer.outputs() if writer is not None else {},
        "device": str(predictor.device),
        "precision": str(predictor.amp_dtype).replace("torch.", "") if predictor.amp_dtype else "fp32",
        "imgsz": predictor.imgsz,
        "tasks": list(predictor.task_names),
        "draw": bool(draw_files),
        "track": bool(track),
    }
    return summary


def format_summary(summary: dict) -> str:
    """A human-readable table of a :func:`run_video` summary."""
    n = summary["frames"]
    lines = [f"{n} frames in {summary['wall_s']:.2f} s: {summary['fps']:.1f} FPS end-to-end "
             f"(batch {summary['batch']}, {summary['device']}, {summary['precision']}, imgsz {summary['imgsz']})"]
    extra = [f"{summary[k]} {k.replace('_', ' ')}" for k in ("failed_frames", "missing_frames", "reconnects")
             if summary.get(k)]
    if extra:
        lines.append("input problems: " + ", ".join(extra))
    lines.append(f"  {'stage':<12}{'total s':>9}{'ms/frame':>10}   (stages overlap: reader, model, postprocess and "
                 "writer threads)")
    for s, v in summary["stages"].items():
        lines.append(f"  {s:<12}{v['total_s']:>9.3f}{v['ms_per_frame']:>10.2f}")
    lines.append(f"  model thread waited {summary['model_wait_input_s']:.3f} s for input and "
                 f"{summary['model_wait_output_s']:.3f} s for postprocessing; postprocessing waited "
                 f"{summary['wait_writer_s']:.3f} s for the writer")
    for k, v in summary["outputs"].items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)


def model_only_fps(predictor: Predictor, frames: Sequence[np.ndarray], batch: int = 1, iters: Optional[int] = None,
                   warmup: int = 2, postprocess: bool = False) -> float:
    """Frames per second of the model forward pass alone, at the pipeline's batch and size.

    ``frames`` (RGB uint8) are preprocessed and normalised onto the device up front, grouped
    into full batches of ``batch`` (cycling through the frames); after ``warmup`` untimed
    batches, ``iters`` batches (default: enough to cover the frames once) are timed with a
    device synchronisation at the end. ``postprocess`` adds head decoding (still no I/O).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("model_only_fps needs at least one frame")
    batch = max(1, int(batch))
    n_batches = max(1, math.ceil(len(frames) / batch))
    prepared: list[PreparedBatch] = []
    tensors: list[torch.Tensor] = []
    for k in range(n_batches):
        group = [frames[(k * batch + j) % len(frames)] for j in range(batch)]
        pb = predictor.prepare(group)
        prepared.append(pb)
        tensors.append(predictor.normalize(pb.images))
    iters = n_batches if iters is None else max(1, int(iters))

    def step(k: int) -> None:
        raw = predictor.run_model(tensors[k % n_batches])
        if postprocess:
            predictor.postprocess(raw, prepared[k % n_batches])

    for k in range(warmup):
        step(k)
    _sync(predictor.device)
    t0 = time.perf_counter()
    for k in range(iters):
        step(k)
    _sync(predictor.device)
    return iters * batch / (time.perf_counter() - t0)


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 10.0,
                fourcc: str = "mp4v") -> Path:
    """Write RGB frames to ``path`` with ``cv2.VideoWriter`` (tests, synthetic sequences)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a {fourcc} video writer for {path}")
    try:
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
