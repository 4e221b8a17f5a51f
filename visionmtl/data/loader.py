"""DataLoader factory: workers, pinned memory, persistent seeded workers, mixing, DDP sharding."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from .collate import Collate
from .dataset import build_datasets
from .sampler import EpochSampler, MultiDataset
from .transforms import build_transforms


log = logging.getLogger(__name__)
_TOLD: set = set()  # worker caps already logged in this process


def _cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def usable_workers(requested: int, world: int = 1, cuda: bool | None = None) -> int:
    """``requested`` loader workers, capped by the CPUs the model's own threads leave free.

    When the model computes on the CPU, its ``torch.get_num_threads()`` threads per rank keep
    their cores, and workers only get the rest. A worker that pre-empts one compute thread
    stalls the others at the next barrier (measured in docs/results.md, "Measurements behind
    design choices").
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    cap = _cpus() // max(world, 1) - (0 if cuda else torch.get_num_threads())
    return max(0, min(int(requested), cap))


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed.

    Augmentation itself is seeded per sample (see data/sampler.py); this covers anything else.
    (OpenCV's thread count is left alone: ``cv2.setNumThreads`` in a forked worker can deadlock
    on the pool the parent's OpenCV calls started.)
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def build_dataset(cfg, split: str) -> MultiDataset:
    """All datasets of ``cfg.data.<split>`` behind one index, with the split's transforms."""
    train = split == "train"
    tf = build_transforms(cfg.data.img_size if train else cfg.data.eval_size, cfg.data.augment, train=train)
    return MultiDataset(build_datasets(cfg, split, tf), seed=cfg.train.seed)


def build_loader(cfg, split: str, dataset: MultiDataset | None = None, shuffle: bool | None = None,
                 workers: int | None = None, ratios: list[float] | None = None) -> DataLoader:
    """The loader for ``split``; call ``loader.sampler.set_epoch(e)`` each epoch.

    Training datasets are shuffled and, when their ``ratio`` differs, mixed by ratio (each
    dataset's share of the batch is proportional to its ratio). Under DDP each rank reads its shard.
    ``ratios`` overrides the config's (one per part of ``dataset``). ``workers`` overrides
    ``data.workers`` as given; the config's value is capped by :func:`usable_workers`.
    """
    train = split == "train"
    ds = dataset if dataset is not None else build_dataset(cfg, split)
    shuffle = train if shuffle is None else shuffle
    rank, world = dist_info()
    bs = cfg.data.batch_size if train or not cfg.data.val_batch_size else cfg.data.val_batch_size
    weights = None
    ratios = ratios if ratios is not None else [d.ratio for d in getattr(cfg.data, split)]
    if train and len(set(ratios)) > 1:
        weights = torch.cat([torch.full((len(p),), r / len(p), dtype=torch.double) for p, r in zip(ds.parts, ratios)])
    sampler = EpochSampler(len(ds), shuffle=shuffle, seed=cfg.train.seed, weights=weights,
                           rank=rank, world=world, drop_last=False)
    if workers is None:  # the config's count is capped; an explicit one (benchmarks) is not
        workers = usable_workers(cfg.data.workers, world)
        if workers < cfg.data.workers and (cfg.data.workers, workers) not in _TOLD:
            _TOLD.add((cfg.data.workers, workers))  # the train and val loaders would say it twice
            log.info("data.workers %d -> %d: %d CPUs for %d rank(s) computing with %d threads each",
                     cfg.data.workers, workers, _cpus(), world, torch.get_num_threads())
    return DataLoader(
        ds,
        batch_size=bs,
        sampler=sampler,
        num_workers=workers,
        collate_fn=Collate(cfg.tasks, cfg.data.augment.mean, cfg.data.augment.std),
        pin_memory=torch.cuda.is_available(),
        drop_last=train and len(sampler) >= bs,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        prefetch_factor=4 if workers > 0 else None,
    )
