"""Measure the training data pipeline (used by tools/benchmark_data.py)."""

from __future__ import annotations

import logging
import time

import numpy as np

from .collate import Collate
from .loader import build_dataset, build_loader

log = logging.getLogger(__name__)


def loader_speed(cfg, workers: int, batches: int = 30, warmup: int = 3) -> float:
    """Images/s delivered by the train loader with ``workers`` worker processes."""
    ds = build_dataset(cfg, "train")
    loader = build_loader(cfg, "train", ds, workers=workers)
    loader.sampler.set_epoch(0)
    n = 0
    t0 = None
    epoch = 0
    done = 0
    while done < batches + warmup:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            done += 1
            if done == warmup:
                t0 = time.perf_counter()
            elif done > warmup:
                n += len(batch)
            if done >= batches + warmup:
                break
        epoch += 1
    return n / (time.perf_counter() - t0)


def stage_profile(cfg, n: int = 64) -> dict[str, float]:
    """Mean seconds per image for each stage of the pipeline, in this process.

    A bad sample follows ``data.on_bad_sample``: ``error`` stops with the file name, ``skip``
    leaves it out of the timings and counts it (``bad`` in the result).
    """
    ds = build_dataset(cfg, "train")
    part = ds.parts[0]
    adapter = part.adapter
    from ..errors import DataError
    from .base import read_image

    idx = np.arange(min(n, len(part)))
    t = {"decode": 0.0, "annotations": 0.0, "augment": 0.0, "collate": 0.0}
    samples = []
    bad = 0
    for i in idx:
        try:
            t0 = time.perf_counter()
            read_image(adapter.path(int(i)))
            t1 = time.perf_counter()
            image, target = part.load(int(i), geometric=True)
            t2 = time.perf_counter()
            img, tgt = part.transform(image, target, int(i))
            t3 = time.perf_counter()
        except DataError as e:
            if cfg.data.on_bad_sample != "skip":
                raise
            log.warning("skipping bad sample: %s", e)
            bad += 1
            continue
        t["decode"] += t1 - t0
        t["annotations"] += max((t2 - t1) - (t1 - t0), 0.0)  # load() decodes again; keep the rest
        t["augment"] += t3 - t2
        samples.append({"image": img, "target": tgt, "meta": {}})
    if not samples:
        raise DataError("data.train", f"all {bad} profiled samples were bad (data.on_bad_sample: skip)")
    collate = Collate(cfg.tasks, cfg.data.augment.mean, cfg.data.augment.std)
    bs = cfg.data.batch_size
    t0 = time.perf_counter()
    for k in range(0, len(samples), bs):
        collate(samples[k:k + bs])
    t["collate"] = time.perf_counter() - t0
    out = {k: v / len(samples) for k, v in t.items()}
    out["bad"] = bad
    return out
