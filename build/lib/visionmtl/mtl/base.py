"""What every balancing method has: task names, config weights, logged weights, hooks, state."""

from __future__ import annotations

from torch import nn


class MethodBase:
    """Tasks, fixed config weights, ``last_weights`` and the no-op hooks a method may override.

    Args:
        tasks: ordered names of all tasks.
        weights: fixed per-task weights from the config (default 1.0 each).
    """

    name: str = ""
    needs_grads: bool = False

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        if not tasks:
            raise ValueError(f"a {type(self).__name__} needs at least one task")
        unknown = set(weights or {}) - set(tasks)
        if unknown:
            raise ValueError(f"weights given for unknown tasks {sorted(unknown)}; tasks are {tasks}")
        self.tasks = list(tasks)
        self.task_weights = {t: float((weights or {}).get(t, 1.0)) for t in self.tasks}
        self.last_weights: dict[str, float] = {}  # effective weight per active task at the last call

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters (added to the optimiser without weight decay)."""
        return []

    def epoch_end(self, mean_losses: dict[str, float]) -> None:
        """Called with the epoch's mean unweighted loss per task."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
