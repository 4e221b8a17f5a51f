"""The inference graph: what an exported model computes, and what the PyTorch predictor runs.

Decoding is split in two at every head (the head contract in ``docs/design.md``):

* ``head.graph_outputs(raw, sizes, min_score=None, given=None) -> {key: Tensor}``: the part with
  no per-image Python (traceable by ``torch.export``): probabilities, scores, boxes in input
  pixels, top-k candidates and class-wise NMS, mask logits. ``sizes`` int64 ``[B, 2]`` is each
  image's valid (un-padded) input region; ``given`` the graph outputs of the task the head's
  ``after`` names (instance masks on the detector's boxes).
* ``head.host_results(out, image_sizes, orig_sizes, min_score, given) -> [per-image dict]``:
  selecting each image's rows, rescaling to original pixels, pasting masks, the arg-max of a
  resized label map. It reads the head's configuration, never its weights.

The two drivers, :func:`graph_outputs` and :func:`decode_outputs`, live in
:mod:`visionmtl.models.multitask` (``MultiTaskModel.predict`` is the one followed by the other).

:class:`InferenceGraph` is backbone + heads + the first part, on uint8 ``[B, H, W, 3]`` RGB
images (normalisation inside), returning the outputs flat as ``task.key`` (ONNX output names).
:func:`decode_outputs` is the second part for a whole batch; the PyTorch predictor and the
onnxruntime one both call it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .multitask import decode_outputs, graph_outputs, predict_order

__all__ = ["InferenceGraph", "decode_outputs", "graph_outputs", "split_outputs"]


def split_outputs(names: Sequence[str], values: Sequence) -> dict[str, dict]:
    """Flat ``task.key`` outputs -> ``{task: {key: value}}``."""
    out: dict[str, dict] = {}
    for name, v in zip(names, values):
        task, key = name.split(".", 1)
        out.setdefault(task, {})[key] = v
    return out


class InferenceGraph(nn.Module):
    """Backbone + the selected heads + in-graph decoding, as one module to export.

    Args:
        model: a ``MultiTaskModel`` (eval mode).
        tasks: the tasks to compute (a head whose ``after`` names another task needs it too).
        mean, std: the config's normalisation (``data.augment``), on the 0-1 scale.

    ``forward(images uint8 [B, H, W, 3], sizes int64 [B, 2], conf float32 [1]) -> tuple`` in
    :attr:`output_names` order; ``conf`` is the detection confidence threshold (candidates below
    it never reach NMS; each head's ``score_thresh`` is the floor).
    """

    def __init__(self, model: nn.Module, tasks: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.tasks = predict_order(model.heads, tasks)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0))
        self.output_names: list[str] = []

    def outputs(self, images: Tensor, sizes: Tensor, conf: Tensor) -> dict[str, dict[str, Tensor]]:
        """``{task: {key: Tensor}}`` for uint8 NHWC ``images``."""
        x = (images.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        raw = self.model.forward_heads(self.model.features(x), self.tasks)
        return graph_outputs(self.model, raw, sizes, conf)

    def forward(self, images: Tensor, sizes: Tensor, conf: Tensor) -> tuple[Tensor, ...]:
        out = self.outputs(images, sizes, conf)
        names = [f"{t}.{k}" for t in self.tasks for k in out[t]]
        if not torch.compiler.is_exporting():
            self.output_names = names
        return tuple(out[t][k] for t in self.tasks for k in out[t])
