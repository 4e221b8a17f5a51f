"""Task types: one spec per kind of task (see :mod:`visionmtl.tasks.base` for the contract).

``TASK_TYPES`` is the one place a type is listed; everything else calls :func:`spec`.
"""

from __future__ import annotations

import difflib
from typing import Any, Union

from ..errors import ConfigError
from .base import TaskType
from .classification import ClassificationTask
from .detection import DetectionTask
from .instance import InstanceTask
from .regression import RegressionTask
from .segmentation import SegmentationTask

__all__ = ["TASK_TYPES", "TaskType", "spec"]

TASK_TYPES: dict[str, TaskType] = {
    t.name: t for t in (ClassificationTask(), DetectionTask(), SegmentationTask(), RegressionTask(),
                            InstanceTask())
}


def spec(task: Union[str, Any]) -> TaskType:
    """The spec of a task config (anything with ``.type``) or of a type name.

    Raises:
        ConfigError: an unknown type; the message lists the known ones.
    """
    name = task if isinstance(task, str) else task.type
    try:
        return TASK_TYPES[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(TASK_TYPES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown task type {name!r} (known: {', '.join(TASK_TYPES)}){hint}") from None
