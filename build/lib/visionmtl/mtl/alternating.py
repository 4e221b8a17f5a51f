"""Alternating training: each task has its own data, and each step draws one task.

The draw order (``train.alternating.order``) decides how often each task is drawn, from the
number of training images n_t that label it:

* ``round_robin``: tasks in turn (each gets 1/T of the steps);
* ``proportional``: p_t = n_t / sum n (every image seen about once per epoch; the largest
  dataset dominates the shared parameters: the known bias of alternating training);
* ``uniform``: p_t = 1/T;
* ``temperature``: p_t proportional to n_t ** (1/temperature) (temperature 1 is proportional,
  large temperatures approach uniform), the correction used in multilingual and multi-task
  training (e.g. Arivazhagan et al. 2019).

An epoch is ``sum_t len(loader_t)`` steps. Draws are seeded from ``(seed, epoch)`` and every
task's loader restarts each epoch (re-seeded when a small dataset is drawn more often than it
has batches), so an epoch's stream is a function of the epoch alone and ``--resume`` is exact.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch

__all__ = ["TaskStreams", "draw_tasks", "task_probabilities"]


def task_probabilities(order: str, sizes: Mapping[str, int], temperature: float = 2.0) -> dict[str, float]:
    """Per-task draw probability for ``order`` given training images per task."""
    tasks = list(sizes)
    if order in ("round_robin", "uniform"):
        return {t: 1.0 / len(tasks) for t in tasks}
    power = 1.0 if order == "proportional" else 1.0 / temperature
    if order not in ("proportional", "temperature"):
        raise ValueError(f"unknown alternating order {order!r}")
    raw = {t: float(sizes[t]) ** power for t in tasks}
    z = sum(raw.values())
    return {t: v / z for t, v in raw.items()}


def draw_tasks(order: str, sizes: Mapping[str, int], n_steps: int, seed: int, epoch: int,
               temperature: float = 2.0) -> list[str]:
    """The task of each of an epoch's ``n_steps`` steps."""
    tasks = list(sizes)
    if order == "round_robin":
        return [tasks[i % len(tasks)] for i in range(n_steps)]
    p = task_probabilities(order, sizes, temperature)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch * 7 + 1)
    idx = torch.multinomial(torch.tensor([p[t] for t in tasks], dtype=torch.double), n_steps,
                            replacement=True, generator=g)
    return [tasks[i] for i in idx.tolist()]


class TaskStreams:
    """One training loader per task, cycled on demand within an epoch.

    Args:
        loaders: task -> DataLoader over the datasets that label that task (built with
            :func:`visionmtl.data.loader.build_loader`; its sampler has ``set_epoch``).
        sizes: task -> number of training images.
    """

    def __init__(self, loaders: Mapping[str, object], sizes: Mapping[str, int]):
        self.loaders = dict(loaders)
        self.sizes = dict(sizes)
        self._iters: dict[str, Iterator] = {}
        self._cycle: dict[str, int] = {}
        self.epoch = 0

    def __len__(self) -> int:
        """Steps per epoch: the batches of every task's loader."""
        return sum(max(len(ld), 1) for ld in self.loaders.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._iters.clear()
        self._cycle = {t: 0 for t in self.loaders}

    def _restart(self, task: str) -> None:
        loader = self.loaders[task]
        loader.sampler.set_epoch(self.epoch * 1000 + self._cycle[task])
        self._cycle[task] += 1
        self._iters[task] = iter(loader)

    def next(self, task: str):
        """The next batch of ``task``'s data (restarting its loader when it runs out)."""
        if task not in self._iters:
            self._restart(task)
        try:
            return next(self._iters[task])
        except StopIteration:
            self._restart(task)
            return next(self._iters[task])

    def epoch_stream(self, order: str, seed: int, temperature: float) -> Iterator[tuple[list[str], object]]:
        """``([task], batch)`` for every step of the current epoch."""
        for t in draw_tasks(order, self.sizes, len(self), seed, self.epoch, temperature):
            yield [t], self.next(t)


def task_parts(parts: Sequence, task: str) -> list[int]:
    """Indices of the datasets (TaskDatasets) that label ``task``."""
    return [i for i, p in enumerate(parts) if task in p.tasks]
