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
batch and size, as the reference the end-to-end FPS is compared against. The writer thread is
in :mod:`visionmtl.inference.writer`, the shared stage names and timer in
:mod:`visionmtl.inference.stages`.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigError
from .outputs import VIDEO_CODECS
from .predictor import PreparedBatch, Predictor
from .sources import Frame, Source, open_source
from .stages import END, POLL, STAGES, WINDOW, StageTimer
from .tracking import apply_tracking, followers_of, make_trackers
from .writer import Writer, check_display

log = logging.getLogger("visionmtl")

__all__ = ["StageTimer", "predict_stream", "run_video", "model_only_fps", "check_display", "format_summary",
           "write_video", "STAGES", "WINDOW"]

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
            self._put(END)

    def _put(self, item: Any) -> None:
        while not self.stop_event.is_set():
            try:
                self.q.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    def get(self, stop: Optional[threading.Event] = None) -> Any:
        """Next item, or ``END`` once this stage has ended (or ``stop`` is set) and nothing is left."""
        while True:
            try:
                return self.q.get(timeout=POLL)
            except queue.Empty:
                if (stop is not None and stop.is_set()) or (not self.is_alive() and self.q.empty()):
                    return END

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
            self.join(POLL)
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

    def __init__(self, reader: _Reader, predictor: Predictor, timer: StageTimer, maxsize: int,
                 min_score: Optional[float] = None) -> None:
        super().__init__("visionmtl-model", maxsize)
        self.reader, self.predictor, self.timer = reader, predictor, timer
        self.min_score = min_score  # an ONNX graph's detection threshold (its NMS runs inside)

    def produce(self) -> None:
        p = self.predictor
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            item = self.reader.get(self.stop_event)
            self.timer.add("wait_input", time.perf_counter() - t0)
            if item is END:
                return
            if isinstance(item, _Failure):
                self._put(item)
                return
            frames, prepared = item
            t0 = time.perf_counter()
            if p.onnx is None:
                with torch.inference_mode():
                    x = p.normalize(prepared.images)
            t1 = time.perf_counter()
            raw = p.forward(prepared, self.min_score) if p.onnx is not None else p.run_model(x)
            _sync(p.device)
            t2 = time.perf_counter()
            self.timer.add("preprocess", t1 - t0)
            self.timer.add("model", t2 - t1)
            self._put((frames, prepared, raw))
            self.timer.add("wait_output", time.perf_counter() - t2)


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
    trackers = make_trackers(predictor, track_buffer) if track else {}
    followers = followers_of(predictor) if track else {}
    min_score = min(0.1, predictor.conf) if trackers else None
    reader = _Reader(src, predictor, batch, max_frames, timer, maxsize=max(2, queue_size or 4))
    worker = _ModelWorker(reader, predictor, timer, maxsize=2, min_score=min_score)
    reader.start()
    worker.start()
    try:
        while True:
            item = worker.get()
            if item is END:
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
                    apply_tracking(r, trackers, predictor.conf, followers)
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
def stream(predictor: Predictor, source: Any, batch: int = 1, track: bool = False, track_buffer: int = 30,
           max_frames: Optional[int] = None) -> Iterator[tuple[int, np.ndarray, dict]]:
    """Yield ``(frame_index, frame RGB, result)`` over a source spec or ``Source`` object.

    Decoding and preprocessing run in a background thread (:func:`predict_stream`); with
    ``track`` detection results carry ``track_ids``.
    """
    for frame, result in predict_stream(predictor, source, batch=batch, track=track, track_buffer=track_buffer,
                                        max_frames=max_frames):
        yield frame.index, frame.image, result


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
        ``{"frames", "failed_frames", "missing_frames", "gaps", "reconnects", "wall_s", "fps", "batch",
        "stages": {stage: {"total_s", "ms_per_frame"}}, "model_wait_input_s", "model_wait_output_s",
        "wait_writer_s",
        "source": {...}, "outputs": {...}, "device", "precision", "imgsz", "tasks"}``; ``gaps`` lists
        ``{"start", "frames"}`` for each stretch of a video lost inside it (``failed_frames`` in all).
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
            writer = Writer(predictor, info, out, draw_files, save_json, show, mask_format, timer,
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
        "gaps": [{"start": int(a), "frames": int(k)} for a, k in getattr(src, "gaps", [])],
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
        "precision": (predictor.onnx.precision if predictor.onnx is not None
                      else str(predictor.amp_dtype).replace("torch.", "") if predictor.amp_dtype else "fp32"),
        "backend": "onnxruntime" if predictor.onnx is not None else "torch",
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
    gaps = summary.get("gaps") or []
    if gaps:
        shown = ", ".join(f"{g['start']}-{g['start'] + g['frames'] - 1}" for g in gaps[:10])
        lines.append(f"  frames lost at {shown}" + (f" and {len(gaps) - 10} more gaps" if len(gaps) > 10 else ""))
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
        tensors.append(predictor.normalize(pb.images) if predictor.onnx is None else pb.images)
    iters = n_batches if iters is None else max(1, int(iters))

    def step(k: int) -> None:
        if predictor.onnx is not None:  # the graph normalises and decodes inside
            raw = predictor.forward(prepared[k % n_batches])
        else:
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
