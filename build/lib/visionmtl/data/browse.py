"""Render augmented samples with their targets (what ``tools/browse_dataset.py`` writes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..draw import draw_labels
from ..files import write_image
from ..tasks import spec
from .loader import build_dataset


def denormalize(image: torch.Tensor, mean, std) -> np.ndarray:
    """[3,H,W] uint8, or float32 normalised -> HxWx3 uint8 RGB."""
    if image.dtype == torch.uint8:
        return np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    img = image.permute(1, 2, 0).numpy() * np.asarray(std) + np.asarray(mean)
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def render_sample(sample: dict, tasks: dict, mean, std) -> np.ndarray:
    """The sample's image with every task's target drawn by its spec (masks, then boxes, then text)."""
    img = denormalize(sample["image"], mean, std)
    t = sample["target"]
    lines = [f"{sample['meta']['dataset']}: {Path(sample['meta']['path']).name}"]
    for name in sorted(tasks, key=lambda n: spec(tasks[n]).draw_layer):
        img, more = spec(tasks[name]).draw_target(img, name, tasks[name], t)
        lines += more
    return draw_labels(img, lines)


def browse(cfg, split: str, num: int, out: str, seed: int = 0) -> list[Path]:
    ds = build_dataset(cfg, split)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds), size=min(num, len(ds)), replace=False)
    paths = []
    for k, i in enumerate(idx):
        sample = ds[(seed, int(i))]
        if sample is None:
            continue
        img = render_sample(sample, cfg.tasks, cfg.data.augment.mean, cfg.data.augment.std)
        p = out_dir / f"{k:03d}_{Path(sample['meta']['path']).stem}.jpg"
        write_image(p, img)
        paths.append(p)
    return paths
