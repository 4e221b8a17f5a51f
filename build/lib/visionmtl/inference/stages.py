"""Shared pieces of the inference pipeline's threads: stage names, the stop sentinel, the timer."""

from __future__ import annotations

import threading
from collections import defaultdict

STAGES = ("decode", "preprocess", "model", "postprocess", "track", "draw", "encode", "json")
WINDOW = "visionmtl"
END = object()  # end of stream, passed along the queues
POLL = 0.1  # seconds between checks of stop flags while blocked on a queue


class StageTimer:
    """Seconds spent per named stage, summed over threads."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.totals[stage] += seconds

    def __getitem__(self, stage: str) -> float:
        return self.totals.get(stage, 0.0)
