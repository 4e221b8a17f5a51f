"""An exported visionmtl ONNX file in onnxruntime: :class:`OnnxModel` (the backend of
``Predictor.from_onnx`` and of ``tools/eval.py`` on a ``.onnx`` file).

Everything comes from the file: the graph, and in its ``visionmtl.*`` metadata the resolved
config (task types, classes, the heads' decoding settings), input size, batch and output names.
The host side of decoding is the heads' ``host_results`` on a model skeleton built from that
config (:func:`visionmtl.models.graph.decode_outputs`, the same code the PyTorch predictor runs;
the skeleton's weights are never used).

Outputs of a task with a ``batch`` output (detection, instance) are rows over the whole batch
(``batch`` gives each row's image); the others have one entry per image.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..config import config_from_dict
from ..errors import CheckpointError, ConfigError
from ..models.graph import split_outputs

__all__ = ["OnnxModel", "is_onnx"]

META = "visionmtl."


def is_onnx(path: Union[str, os.PathLike]) -> bool:
    return str(path).lower().endswith(".onnx")


class OnnxModel:
    """An exported model in an onnxruntime CPU session.

    Args:
        path: the ``.onnx`` file ``tools/export.py`` wrote.
        threads: intra-op threads (default ``torch.get_num_threads()``, as the PyTorch path).

    Raises:
        CheckpointError: missing, unreadable or truncated file, or one without visionmtl metadata.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise CheckpointError(f"{self.path}: ONNX model not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # no busy-waiting between runs: spinning pool threads take the cores from the host-side
        # decoding (and from any other library) that runs between two graph runs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf types
            why = " ".join(str(e).split())[:200]
            raise CheckpointError(f"{self.path}: not a readable ONNX model ({why})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META + "config" not in meta:
            raise CheckpointError(f"{self.path}: ONNX model without visionmtl metadata (not written by "
                                  f"tools/export.py); export the checkpoint with tools/export.py")
        self.meta = {k[len(META):]: v for k, v in meta.items() if k.startswith(META)}
        self.cfg = config_from_dict(json.loads(self.meta["config"]), source=self.path)
        self.cfg.model.backbone.weights = "none"
        self.tasks: list[str] = json.loads(self.meta["tasks"])
        self.output_names: list[str] = json.loads(self.meta["outputs"])
        self.imgsz = int(self.meta["imgsz"])
        self.dynamic = json.loads(self.meta.get("dynamic", "false"))
        self.batch = None if self.dynamic else int(self.meta["batch"])
        self.max_stride = int(self.meta.get("max_stride", 32))
        self.precision = self.meta.get("precision", "fp32")
        self.score_thresh: dict[str, float] = json.loads(self.meta.get("score_thresh", "{}"))
        self.fill = np.array([int(round(255 * m)) for m in json.loads(self.meta["mean"])], np.uint8)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.row_tasks = {n.split(".", 1)[0] for n in self.output_names if n.endswith(".batch")}
        self._skeleton = None

    def __repr__(self) -> str:
        shape = "dynamic" if self.dynamic else f"batch {self.batch}, {self.imgsz}x{self.imgsz}"
        return f"OnnxModel({os.path.basename(self.path)}, tasks={self.tasks}, {shape}, {self.precision})"

    @property
    def skeleton(self):
        """A ``MultiTaskModel`` built from the file's config: its heads' host-side decoding."""
        if self._skeleton is None:
            from ..models.build import build_model

            self._skeleton = build_model(self.cfg).eval()
        return self._skeleton

    # ----------------------------------------------------------------------------------------
    def check_input(self, h: int, w: int) -> None:
        """Raise ConfigError when an ``h`` x ``w`` canvas does not fit the graph."""
        if not self.dynamic and (h > self.imgsz or w > self.imgsz):
            raise ConfigError(f"{self.path}: exported for {self.imgsz}x{self.imgsz} inputs, got {h}x{w}; "
                              f"use --imgsz {self.imgsz} or export with --dynamic")

    def feeds(self, images: np.ndarray, sizes: Sequence, conf: float = 0.05) -> list[tuple[dict, int]]:
        """Input feeds for uint8 ``[B, H, W, 3]`` images at detection threshold ``conf``:
        ``[(feed, real images in it)]``; a static
        graph gets its canvas (padded with the mean colour) and its batch (chunks, the last one
        padded with blank images whose rows are dropped)."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        b, h, w = images.shape[:3]
        self.check_input(h, w)
        thr = np.array([conf], np.float32)
        if self.dynamic:
            return [(self._only_inputs({"images": images, "sizes": sizes, "conf": thr}), b)]
        s, n = self.imgsz, self.batch
        out = []
        for k in range(0, b, n):
            chunk = np.empty((n, s, s, 3), np.uint8)
            chunk[:] = self.fill
            real = min(n, b - k)
            chunk[:real, :h, :w] = images[k: k + real]
            sz = np.full((n, 2), s, np.int64)
            sz[:real] = sizes[k: k + real]
            out.append((self._only_inputs({"images": chunk, "sizes": sz, "conf": thr}), real))
        return out

    def _only_inputs(self, feed: dict) -> dict:
        return {k: v for k, v in feed.items() if k in self.inputs}  # a graph without detection has no conf

    def run_raw(self, images: np.ndarray, sizes: Sequence, conf: float = 0.05,
                names: Optional[Sequence[str]] = None) -> dict:
        """``{output name: numpy array}`` for a batch (rows of padded blank images dropped)."""
        names = list(names or self.output_names)
        parts: dict[str, list] = {n: [] for n in names}
        start = 0
        for feed, real in self.feeds(images, sizes, conf):
            values = dict(zip(names, self.session.run(names, feed)))
            for name, v in values.items():
                task = name.split(".", 1)[0]
                if task in self.row_tasks:  # rows of the blank padding images go; image indices shift
                    v = v[values[f"{task}.batch"] < real]
                    if name == f"{task}.batch":
                        v = v + start
                else:
                    v = v[:real]
                parts[name].append(v)
            start += real
        return {n: np.concatenate(v) if len(v) > 1 else v[0] for n, v in parts.items()}

    def run(self, images: np.ndarray, sizes: Sequence, conf: float = 0.05,
            tasks: Optional[Sequence[str]] = None) -> dict:
        """``{task: {key: torch.Tensor}}`` graph outputs of ``tasks`` (default all) at detection
        threshold ``conf``."""
        tasks = list(tasks or self.tasks)
        names = [n for n in self.output_names if n.split(".", 1)[0] in tasks]
        raw = self.run_raw(images, sizes, conf, names)
        return split_outputs(list(raw), [torch.from_numpy(np.ascontiguousarray(v)) for v in raw.values()])
