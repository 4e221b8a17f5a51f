"""Drawing a whole prediction: every head's result over the image, through its task spec.

The primitives (boxes, mask overlays, text) live in :mod:`visionmtl.draw` and are re-exported
here. Detections that carry ``track_ids`` are labelled ``#id`` and coloured by track, so one
object keeps its colour through a video.
"""

from __future__ import annotations

import numpy as np

from ..draw import (_line_height, _text, draw_boxes, draw_labels, draw_mask, palette, text_scale,  # noqa: F401
                    to_numpy)
from ..tasks import spec

__all__ = ["draw_boxes", "draw_labels", "draw_mask", "draw_result", "palette", "text_scale"]


def draw_result(img: np.ndarray, result: dict, tasks: dict, score_thresh: float = 0.3) -> np.ndarray:
    """Draw every head's output of one prediction ``{task: {...}}`` over ``img`` (original pixels).

    Tasks draw in their spec's layer order: masks first (with their legend), then boxes with
    ``score >= score_thresh`` (``#id`` when the result has ``track_ids``), then one text line
    per image-level task (top classes and probabilities, regression values).
    """
    out = img.copy()
    lines: list[str] = []
    order = sorted((n for n in tasks if result.get(n) is not None), key=lambda n: spec(tasks[n]).draw_layer)
    for name in order:
        out, more = spec(tasks[name]).draw(out, name, tasks[name], result[name], score_thresh)
        lines += more
    scale = text_scale(out)
    step = _line_height(scale)
    for k, text in enumerate(lines):
        _text(out, text, (2, step * (k + 1)), (30, 30, 30), scale)
    return out
