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


def draw_targets(img: np.ndarray, target: dict, tasks: dict, title: str = "", text_strip: bool = False) -> np.ndarray:
    """Every task's ground truth (tensors, the dataset's format, in ``img``'s pixels) drawn by its
    spec over a copy of ``img``: masks, then boxes, then one text line per image-level task
    (after ``title``), over the image or in a band above it."""
    img = img.copy()
    lines = [title] if title else []
    for name in sorted(tasks, key=lambda n: spec(tasks[n]).draw_layer):
        img, more = spec(tasks[name]).draw_target(img, name, tasks[name], target)
        lines += more
    return draw_labels(img, lines, strip=text_strip)


def render_sample(sample: dict, tasks: dict, mean, std) -> np.ndarray:
    """The sample's image with every task's target drawn by its spec (masks, then boxes, then text)."""
    title = f"{sample['meta']['dataset']}: {Path(sample['meta']['path']).name}"
    return draw_targets(denormalize(sample["image"], mean, std), sample["target"], tasks, title)


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
