"""Render augmented samples with their targets (what ``tools/browse_dataset.py`` writes)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ..inference.draw import draw_boxes, draw_labels, draw_mask
from .loader import build_dataset


def denormalize(image: torch.Tensor, mean, std) -> np.ndarray:
    """[3,H,W] uint8, or float32 normalised -> HxWx3 uint8 RGB."""
    if image.dtype == torch.uint8:
        return np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    img = image.permute(1, 2, 0).numpy() * np.asarray(std) + np.asarray(mean)
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def render_sample(sample: dict, tasks: dict, mean, std) -> np.ndarray:
    img = denormalize(sample["image"], mean, std)
    t = sample["target"]
    lines = [f"{sample['meta']['dataset']}: {Path(sample['meta']['path']).name}"]
    for name, task in tasks.items():
        if task.type == "segmentation" and "mask" in t:
            img = draw_mask(img, t["mask"].numpy(), task.classes)
    for name, task in tasks.items():
        if task.type == "detection" and "boxes" in t:
            img = draw_boxes(img, t["boxes"].numpy(), t["box_labels"].numpy(), task.classes)
        if task.type == "classification":
            if task.attr and task.attr in t.get("attrs", {}):
                lines.append(f"{name}: {task.classes[t['attrs'][task.attr]]}")
            elif not task.attr and "labels" in t:
                lines.append(f"{name}: " + (", ".join(task.classes[i] for i in t["labels"].tolist()) or "(none)"))
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
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths
