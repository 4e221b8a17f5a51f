"""Evaluate an exported ``.onnx`` file on a config's data (``tools/eval.py CONFIG MODEL.onnx``).

The loader, the evaluators and the metrics are the checkpoint path's
(:func:`visionmtl.engine.evaluate.evaluate`); only the network differs: each normalised batch is
turned back into the uint8 pixels it came from (exact: the loader normalises uint8 images), run
through onnxruntime, and decoded by the heads' ``host_results``.
"""

from __future__ import annotations

import torch

from ..config import load_config
from ..data.loader import build_loader
from ..engine.checkpoint import CheckpointError
from ..engine.evaluate import evaluate
from ..models.graph import decode_outputs
from .onnx_model import OnnxModel

__all__ = ["evaluate_onnx"]


class _OnnxNet:
    """What :func:`evaluate` calls on a model: ``net(images)`` then ``net.predict(raw, sizes, origs)``."""

    training = False

    def __init__(self, model: OnnxModel, mean, std) -> None:
        self.model = model
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    def eval(self) -> "_OnnxNet":
        return self

    def train(self, mode: bool = True) -> "_OnnxNet":
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images  # the graph runs in predict(), which knows each image's valid size

    def predict(self, images: torch.Tensor, sizes, origs) -> list[dict]:
        pixels = (images.float().cpu() * self.std + self.mean).round().clamp(0, 255).to(torch.uint8)
        out = self.model.run(pixels.permute(0, 2, 3, 1).contiguous().numpy(), sizes, conf=0.0)
        return decode_outputs(self.model.skeleton.heads, out, sizes, origs)


def evaluate_onnx(config: str, path: str, overrides=(), split: str = "val", plots=None) -> dict:
    """``{task: metrics}`` of the ONNX model on ``config``'s ``split`` (the file's tasks must be the config's)."""
    cfg = load_config(config, list(overrides))
    model = OnnxModel(path)
    mine = {n: list(t.classes) for n, t in cfg.tasks.items()}
    theirs = {n: list(model.cfg.tasks[n].classes) for n in model.tasks}
    if mine != theirs:
        brief = lambda d: "{" + ", ".join(f"{k}: {len(v)} classes" for k, v in d.items()) + "}"  # noqa: E731
        raise CheckpointError(f"{path}: exported for tasks/classes {brief(theirs)}, "
                              f"but {config} configures {brief(mine)}")
    if split == "train":
        from ..engine.evaluate_tool import _eval_loader_for_train

        loader = _eval_loader_for_train(cfg)
    else:
        loader = build_loader(cfg, split, shuffle=False)
    net = _OnnxNet(model, cfg.data.augment.mean, cfg.data.augment.std)
    return evaluate(net, loader, cfg.tasks, torch.device("cpu"), None, channels_last=False, plots=plots)
