"""The inference API: ``Predictor.from_checkpoint(path)(images) -> results in original pixels``.

Preprocessing matches evaluation (``visionmtl.data.transforms`` + ``collate``): the longest side
is resized to ``imgsz`` with ``cv2.INTER_LINEAR``, the batch is padded bottom/right to a
multiple of 32 with the mean colour and normalised with the config's mean/std. The CPU part
(:meth:`Predictor.prepare`: resize + pad into one uint8 ``[B,H,W,3]`` tensor, pinned on CUDA)
is separate from the device part (:meth:`Predictor.forward`: one uint8 host-to-device copy,
normalisation on the device, a channels-last forward under ``inference_mode`` and autocast
where it pays off) and :meth:`Predictor.postprocess` (head decoding, score filtering, numpy),
so a pipeline can run them in different threads (see :mod:`visionmtl.inference.video`).

``Predictor.from_onnx(path)`` (or ``from_checkpoint`` on a ``.onnx`` file) runs a
``tools/export.py`` file in onnxruntime: the same ``prepare``; ``forward`` runs the graph (model,
normalisation and the heads' ``graph_outputs`` inside); the same ``postprocess`` (the heads'
``host_results``, :func:`visionmtl.models.graph.decode_outputs`).

Results are one dict per image, ``{task: {...}}`` with numpy arrays in original pixels:
detection ``boxes`` float32 [K,4] xyxy / ``scores`` [K] / ``labels`` int64 [K] (``score >= conf``),
classification ``probs`` float32 [C] / ``scores`` (same) / ``labels`` int64, segmentation
``mask`` uint8 [H,W] (class index per pixel).
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from ..config import Config, ConfigError
from ..data.base import read_image
from ..engine.checkpoint import load_trained
from ..engine.runtime import pick_amp, pick_device
from ..models.graph import decode_outputs, graph_outputs
from ..models.tta import merge_flip
from ..tasks import spec
from .onnx_model import OnnxModel
from .results import Result

__all__ = ["PreparedBatch", "Predictor", "parse_tasks", "to_rgb_uint8"]

ImageLike = Union[np.ndarray, str, os.PathLike]


@dataclass
class PreparedBatch:
    """A preprocessed batch on the host.

    ``images`` uint8 ``[B,H,W,3]`` (resized, padded to multiples of 32 with the mean colour;
    pinned when the predictor runs on CUDA), ``input_sizes`` the resized ``(h, w)`` per image,
    ``orig_sizes`` the original ``(h, w)`` per image.
    """

    images: torch.Tensor
    input_sizes: list[tuple[int, int]]
    orig_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.input_sizes)


def parse_tasks(tasks: Optional[Union[str, Sequence[str]]], cfg: Config) -> list[str]:
    """Task names to run, in the checkpoint's order; a name may also be a head type.

    Raises:
        ConfigError: a name the checkpoint has no head for.
    """
    if tasks is None or (isinstance(tasks, str) and not tasks.strip()):
        return list(cfg.tasks)
    wanted = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    chosen: list[str] = []
    for w in wanted:
        if not w:
            continue
        if w in cfg.tasks:
            names = [w]
        else:  # a task type ("detection") names every task of that type
            names = [n for n, t in cfg.tasks.items() if spec(t).name == w]
        if not names:
            have = ", ".join(f"{n} ({t.type})" for n, t in cfg.tasks.items())
            raise ConfigError(f"--tasks: the checkpoint has no head '{w}'; it has: {have}")
        chosen += [n for n in names if n not in chosen]
    return [n for n in cfg.tasks if n in chosen]


def to_rgb_uint8(img: np.ndarray, what: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB from HxW grey, HxWx3 or HxWx4 (alpha dropped) uint8 arrays."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 pixels, got {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])
    raise ValueError(f"{what}: expected an HxWx3 RGB array, got shape {img.shape}")


class GraphOut(dict):
    """Graph outputs ``{task: {key: Tensor}}`` of a batch (an exported model's, already decoded in graph)."""


class FlipRaw(dict):
    """Raw head outputs ``{task: raw}`` of a batch, with those of its mirror (flip TTA)."""

    def __init__(self, raw: dict, mirror: dict, width: int) -> None:
        super().__init__(raw)
        self.mirror = mirror
        self.width = int(width)


class Predictor:
    """Run a trained multi-task model on RGB images.

    Args:
        model: a trained ``MultiTaskModel`` (moved to ``device`` and put in eval mode here).
        cfg: its config (task class lists, image size, normalisation).
        device: where to run.
        tasks: task names (or head types) to run, default all; ``"cls,det"`` or a list.
        conf: detection score threshold of the results.
        imgsz: longest input side (default ``cfg.data.eval_size``: ``eval_img_size``, else ``img_size``).
        amp: autocast precision: ``"off"`` (default: fp32 on every device, so that a result
            does not depend on which CPU or GPU computed it), ``"auto"`` (the trainer's rule: bf16
            or fp16 on CUDA, bf16 on CPUs with AMX / AVX512-BF16), ``"bf16"`` or ``"fp16"``.
        half: the older spelling of ``amp``: fp16 on CUDA, bf16 on a CPU.
        channels_last: run the model in channels-last memory format.
        batch_size: images per forward pass when called with a list.
        flip: horizontal-flip test-time augmentation (the model runs on each batch and its
            mirror; models/tta.py merges them); default the config's ``data.eval_flip``.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, device: Union[str, torch.device] = "cpu",
                 tasks: Optional[Union[str, Sequence[str]]] = None, conf: float = 0.3, imgsz: Optional[int] = None,
                 half: bool = False, channels_last: bool = True, batch_size: int = 8,
                 flip: Optional[bool] = None, onnx: Optional[OnnxModel] = None, amp: str = "off") -> None:
        self.onnx = onnx
        self.device = torch.device(device)
        self.cfg = cfg
        self.task_names = parse_tasks(tasks, cfg)
        self.tasks = {n: cfg.tasks[n] for n in self.task_names}
        if not 0.0 <= conf <= 1.0:
            raise ConfigError(f"--conf must be in [0, 1], got {conf}")
        self.conf = float(conf)
        self.imgsz = int(imgsz or (onnx.imgsz if onnx is not None else cfg.data.eval_size))
        if self.imgsz < 32:
            raise ConfigError(f"--imgsz must be at least 32, got {self.imgsz}")
        if half and amp == "off":
            amp = "fp16" if self.device.type == "cuda" else "bf16"
        if onnx is not None:
            self._check_onnx(onnx, amp != "off", flip)
        self.batch_size = max(1, int(batch_size))
        self.flip = bool(cfg.data.eval_flip if flip is None else flip)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.amp_dtype = pick_amp(amp, self.device, "--amp")  # "off" -> None: fp32
        aug = cfg.data.augment
        self.mean = torch.tensor(aug.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(aug.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255.0)
        self.fill = np.array([int(round(255 * m)) for m in aug.mean], np.uint8)
        self.pin = self.device.type == "cuda"

    def _check_onnx(self, onnx: OnnxModel, half: bool, flip: Optional[bool]) -> None:
        if self.device.type != "cpu":
            raise ConfigError(f"--device {self.device}: an ONNX model runs on the CPU (onnxruntime's CPU provider)")
        if half:
            raise ConfigError(f"--amp: {onnx.path} runs in the precision it was exported in ({onnx.precision})")
        if flip:
            raise ConfigError("--flip: flip test-time augmentation needs the PyTorch model (a checkpoint)")
        self.flip = False
        missing = [t for t in self.task_names if t not in onnx.tasks]
        if missing:
            raise ConfigError(f"--tasks: {onnx.path} was exported without {', '.join(missing)}; it has "
                              f"{', '.join(onnx.tasks)}")
        onnx.check_input(self.imgsz, self.imgsz)

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, path: Union[str, os.PathLike], tasks: Optional[Union[str, Sequence[str]]] = None,
                  conf: float = 0.3, imgsz: Optional[int] = None, threads: Optional[int] = None,
                  **kwargs: Any) -> "Predictor":
        """An onnxruntime predictor for a file ``tools/export.py`` wrote: the same pre- and
        post-processing as :meth:`from_checkpoint`, the network and in-graph decoding in ONNX.

        Raises:
            CheckpointError: missing, unreadable or truncated file, or no visionmtl metadata.
            ConfigError: a task the file lacks, an input size it cannot take, ``half``/``flip``.
        """
        device = kwargs.pop("device", "cpu")
        if str(device) not in ("auto", "cpu"):
            raise ConfigError(f"--device {device}: an ONNX model runs on the CPU (onnxruntime's CPU provider)")
        model = OnnxModel(path, threads)
        return cls(model.skeleton, model.cfg, "cpu", tasks=model.tasks if tasks is None else tasks, conf=conf,
                   imgsz=imgsz, channels_last=False, onnx=model, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "auto",
                        tasks: Optional[Union[str, Sequence[str]]] = None, conf: float = 0.3,
                        imgsz: Optional[int] = None, half: bool = False, amp: str = "off",
                        **kwargs: Any) -> "Predictor":
        """Load a checkpoint that carries its config and class names (``Trainer`` writes these).

        Raises:
            CheckpointError: missing, unreadable, no config, or weights that do not fit.
            ConfigError: an unavailable device or a task the checkpoint has no head for.

        An ``.onnx`` file goes to :meth:`from_onnx`.
        """
        if str(path).lower().endswith(".onnx"):
            return cls.from_onnx(path, device=device, tasks=tasks, conf=conf, imgsz=imgsz, half=half, amp=amp,
                                 **kwargs)
        try:
            dev = pick_device(str(device))
        except RuntimeError as e:
            raise ConfigError(f"--device {device}: {e}") from None
        model, cfg, _ = load_trained(str(path), "cpu")
        return cls(model, cfg, dev, tasks=tasks, conf=conf, imgsz=imgsz, half=half, amp=amp, **kwargs)

    def __repr__(self) -> str:
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        if self.onnx is not None:
            return (f"Predictor(tasks={self.task_names}, onnxruntime {self.onnx.precision} "
                    f"{os.path.basename(self.onnx.path)}, imgsz={self.imgsz}, conf={self.conf})")
        return (f"Predictor(tasks={self.task_names}, device={self.device}, imgsz={self.imgsz}, conf={self.conf}, "
                f"precision={amp}{', flip' if self.flip else ''})")

    def autocast(self):
        """Autocast context for the forward pass (a no-op in fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """Resized ``(h, w)`` of an ``h x w`` image: longest side to ``imgsz``, aspect kept."""
        s = self.imgsz / max(h, w)
        return max(1, round(h * s)), max(1, round(w * s))

    # ----------------------------------------------------------------------------------------
    def prepare(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        """Resize and pad RGB uint8 images into one uint8 ``[B,H,W,3]`` tensor (host side)."""
        if len(images) == 0:
            raise ValueError("prepare() needs at least one image")
        resized, in_sizes, orig_sizes = [], [], []
        for img in images:
            h, w = img.shape[:2]
            nh, nw = self.input_size(h, w)
            resized.append(img if (nh, nw) == (h, w) else cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR))
            in_sizes.append((nh, nw))
            orig_sizes.append((h, w))
        H = math.ceil(max(s[0] for s in in_sizes) / 32) * 32
        W = math.ceil(max(s[1] for s in in_sizes) / 32) * 32
        batch = torch.empty((len(images), H, W, 3), dtype=torch.uint8, pin_memory=self.pin)
        arr = batch.numpy()
        for i, (r, (nh, nw)) in enumerate(zip(resized, in_sizes)):
            arr[i, :nh, :nw] = r
            if nh < H:
                arr[i, nh:] = self.fill
            if nw < W:
                arr[i, :nh, nw:] = self.fill
        return PreparedBatch(batch, in_sizes, orig_sizes)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B,H,W,3]`` (host) -> normalised float ``[B,3,H,W]`` on the device (channels last)."""
        x = images.to(self.device, non_blocking=self.pin).permute(0, 3, 1, 2).float()  # NHWC memory = channels last
        x = x.sub_(self.mean).mul_(self.inv_std)
        return x.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def forward(self, batch: PreparedBatch, min_score: Optional[float] = None) -> dict[str, dict[str, torch.Tensor]]:
        """Raw head outputs of the selected tasks for a prepared batch; for an ONNX model its graph
        outputs, decoded inside at detection threshold ``min_score`` (default ``conf``)."""
        if self.onnx is not None:
            thr = self.conf if min_score is None else float(min_score)
            return GraphOut(self.onnx.run(batch.images.numpy(), batch.input_sizes, thr, self.task_names))
        return self.run_model(self.normalize(batch.images))

    @torch.inference_mode()
    def run_model(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Backbone + the selected heads on a normalised device tensor ``[B,3,H,W]``.

        With ``flip`` the result also carries the mirrored batch's outputs (``FlipRaw.mirror``).
        """
        with self.autocast():
            feats = self.model.backbone(x)
            raw = {t: self.model.heads[t](feats) for t in self.task_names}
            if not self.flip:
                return raw
            feats = self.model.backbone(x.flip(-1))
            return FlipRaw(raw, mirror={t: self.model.heads[t](feats) for t in self.task_names}, width=x.shape[-1])

    @torch.inference_mode()
    def postprocess(self, raw: dict, batch: PreparedBatch, min_score: Optional[float] = None) -> list[dict]:
        """Decode raw outputs into per-image numpy results in original pixels.

        Args:
            min_score: detection score threshold (default ``conf``).
        """
        thr = self.conf if min_score is None else float(min_score)
        if isinstance(raw, FlipRaw):  # detection candidates below thr never reach NMS
            decoded = merge_flip(self.model.heads, raw, raw.mirror, raw.width, batch.input_sizes, batch.orig_sizes,
                                 min_score=thr, types={n: t.type for n, t in self.tasks.items()})
        else:
            if not isinstance(raw, GraphOut):  # the exported graph's part, run here by PyTorch
                sizes = torch.as_tensor(batch.input_sizes, dtype=torch.int64)
                raw = graph_outputs(self.model, raw, sizes, min_score=thr)
            decoded = decode_outputs(self.model.heads, raw, batch.input_sizes, batch.orig_sizes, min_score=thr)
        return [{n: spec(self.tasks[n]).to_numpy(self.tasks[n], d[n], thr) for n in self.task_names} for d in decoded]

    # ----------------------------------------------------------------------------------------
    def predict_batch(self, images: Sequence[np.ndarray], min_score: Optional[float] = None) -> list[dict]:
        """prepare -> forward -> postprocess for RGB uint8 arrays, one pass."""
        batch = self.prepare(images)
        return self.postprocess(self.forward(batch, min_score), batch, min_score)

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]]) -> Union[Result, list[Result]]:
        """Predict one image (array or path) -> :class:`Result`, or a list of them -> a list.

        A ``Result`` is the ``{task: {...}}`` dict that can also ``plot()``, ``save(path)`` and
        ``to_json()`` itself.

        Arrays are HxWx3 uint8 **RGB** (grey and RGBA are converted); paths are read with OpenCV.
        """
        single = isinstance(images, (np.ndarray, str, os.PathLike))
        items = [images] if single else list(images)
        arrays = [read_image(str(x)) if isinstance(x, (str, os.PathLike)) else to_rgb_uint8(x, f"image {i}")
                  for i, x in enumerate(items)]
        paths = [str(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
        out: list[Result] = []
        for k in range(0, len(arrays), self.batch_size):
            chunk = arrays[k: k + self.batch_size]
            out += [Result(r, img, self.tasks, self.conf, p)
                    for r, img, p in zip(self.predict_batch(chunk), chunk, paths[k: k + self.batch_size])]
        return out[0] if single else out
