"""Epoch-aware sampling over several datasets.

``MultiDataset`` concatenates TaskDatasets. ``EpochSampler`` yields ``(epoch, index)`` keys, so
each sample's augmentation is seeded from ``(seed, epoch, index)``: the stream is identical for
any number of workers, with persistent workers, and after ``--resume``. Shuffling, ratio-weighted
mixing and distributed sharding are all derived from ``(seed, epoch)``.
"""

from __future__ import annotations

import bisect
import math
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import Dataset, Sampler


class MultiDataset(Dataset):
    """Concatenation of TaskDatasets that accepts ``int`` or ``(epoch, int)`` keys."""

    def __init__(self, parts: Sequence, seed: int = 0):
        if not parts:
            raise ValueError("MultiDataset needs at least one dataset")
        self.parts = list(parts)
        self.seed = seed
        self.offsets = [0]
        for p in self.parts:
            self.offsets.append(self.offsets[-1] + len(p))

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        k = bisect.bisect_right(self.offsets, i) - 1
        return k, i - self.offsets[k]

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        k, j = self.locate(i)
        sample_seed = (self.seed * 1_000_003 + epoch * 7_919 + i) % 2**32
        return self.parts[k].get(j, sample_seed)


class EpochSampler(Sampler):
    """Shuffled (optionally ratio-weighted, optionally sharded) ``(epoch, index)`` keys.

    weights: per-sample weights for mixing datasets by ratio (sampling with replacement), or None.
    rank/world: shard for DistributedDataParallel; every rank gets ``ceil(n / world)`` keys.
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, weights: Optional[torch.Tensor] = None,
                 rank: int = 0, world: int = 1, drop_last: bool = False):
        self.n, self.shuffle, self.seed, self.weights = n, shuffle, seed, weights
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch = 0
        self.per_rank = n // world if drop_last else math.ceil(n / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        idx = idx.tolist()
        total = self.per_rank * self.world
        if total > len(idx):
            idx += idx[: total - len(idx)]
        return idx[self.rank:total:self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.order()])

    def __len__(self) -> int:
        return self.per_rank
