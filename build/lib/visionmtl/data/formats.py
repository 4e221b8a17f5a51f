"""Dataset formats: ``type:`` of a dataset entry -> adapter class, and its argument check.

Torch-free, so ``load_config`` checks every dataset entry's keys before anything heavy loads.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import BaseAdapter
from .coco import CocoAdapter
from .folder import CsvLabelsAdapter, ImageFolderAdapter
from .masks import MaskFolderAdapter
from .voc import VocAdapter
from .yolo import YoloAdapter

__all__ = ["ADAPTER_TYPES", "adapter_class", "check_adapter_args"]

ADAPTER_TYPES: dict[str, type[BaseAdapter]] = {
    "coco": CocoAdapter, "masks": MaskFolderAdapter, "folder": ImageFolderAdapter, "csv": CsvLabelsAdapter,
    "voc": VocAdapter,
    "yolo": YoloAdapter,
}


def adapter_class(kind: str, where: str) -> type[BaseAdapter]:
    """The adapter class of dataset ``type: kind``; ConfigError naming ``where`` when unknown."""
    if kind not in ADAPTER_TYPES:
        close = difflib.get_close_matches(kind, list(ADAPTER_TYPES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown dataset type '{kind}' (valid: {', '.join(ADAPTER_TYPES)}){hint}")
    return ADAPTER_TYPES[kind]


def check_adapter_args(kind: str, args: Mapping[str, Any], where: str) -> type[BaseAdapter]:
    """Check a dataset entry's adapter keys against the adapter's constructor; return the class."""
    cls = adapter_class(kind, where)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p != "self"]
    for k in args:
        if k not in params:
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{where}: unknown key '{k}' for dataset type '{kind}'{hint}")
    return cls
