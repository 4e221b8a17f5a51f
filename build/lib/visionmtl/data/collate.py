"""Batching: pad images to a common size divisible by 32, targets through their task spec, and record ``has``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..tasks import spec


@dataclass
class Batch:
    """A multi-task batch.

    images: float32 [B,3,H,W], H and W multiples of 32, padded bottom/right with 0.
    targets: list of per-image target dicts (tensors; masks uint8 [H,W] padded with 255).
    has: task name -> bool [B], whether each image carries that task's label.
    meta: per-image dicts (path, dataset, image_id, orig_size, input_size).
    n_bad: samples dropped by ``on_bad_sample: skip`` while building this batch.
    """

    images: torch.Tensor
    targets: list[dict]
    has: dict[str, torch.Tensor]
    meta: list[dict] = field(default_factory=list)
    n_bad: int = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device, non_blocking: bool = True, memory_format=torch.contiguous_format) -> "Batch":
        def mv(v):
            if isinstance(v, torch.Tensor):
                return v.to(device, non_blocking=non_blocking)
            return v

        return Batch(
            images=self.images.to(device, non_blocking=non_blocking, memory_format=memory_format),
            targets=[{k: mv(v) for k, v in t.items()} for t in self.targets],
            has={k: v.to(device, non_blocking=non_blocking) for k, v in self.has.items()},
            meta=self.meta,
            n_bad=self.n_bad,
        )

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), [{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v)
                                                 for k, v in t.items()} for t in self.targets],
                     {k: v.pin_memory() for k, v in self.has.items()}, self.meta, self.n_bad)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Collate:
    """``Collate(tasks, mean, std)(samples) -> Batch``; ``None`` samples are dropped and counted.

    Samples carry uint8 [3,h,w] images; the batch is padded (with the mean colour, i.e. 0 after
    normalisation) and normalised to float32 in one vectorised step.
    """

    def __init__(self, tasks: dict, mean=IMAGENET_MEAN, std=IMAGENET_STD, size_divisor: int = 32):
        self.tasks = tasks
        self.kinds = list({spec(t).name: spec(t) for t in tasks.values()}.values())
        self.size_divisor = size_divisor
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.fill = torch.tensor([int(round(255 * m)) for m in mean], dtype=torch.uint8).view(3, 1, 1)

    def __call__(self, samples: list[Optional[dict]]) -> Batch:
        good = [s for s in samples if s is not None]
        n_bad = len(samples) - len(good)
        d = self.size_divisor
        if not good:
            return Batch(torch.zeros(0, 3, d, d), [], {t: torch.zeros(0, dtype=torch.bool) for t in self.tasks}, [], n_bad)
        H = max(s["image"].shape[1] for s in good)
        W = max(s["image"].shape[2] for s in good)
        H, W = math.ceil(H / d) * d, math.ceil(W / d) * d
        images = torch.empty((len(good), 3, H, W), dtype=torch.uint8)
        targets = []
        for i, s in enumerate(good):
            img = s["image"]
            h, w = img.shape[1], img.shape[2]
            if h < H or w < W:
                images[i] = self.fill
            images[i, :, :h, :w] = img
            t = dict(s["target"])
            for kind in self.kinds:  # each type pads its own keys (segmentation: masks with 255)
                kind.collate(t, (H, W))
            targets.append(t)
        images = images.float().sub_(self.mean).mul_(self.inv_std)
        has = {name: torch.tensor([spec(task).has_label(task, t) for t in targets], dtype=torch.bool)
               for name, task in self.tasks.items()}
        return Batch(images, targets, has, [s["meta"] for s in good], n_bad)
