"""Drawing a whole prediction: every head's result over the image, through its task spec.

The primitives (boxes, mask overlays, text) live in :mod:`visionmtl.draw` and are re-exported
here. Detections that carry ``track_ids`` are labelled ``#id`` and coloured by track, so one
object keeps its colour through a video.
"""

from __future__ import annotations

import numpy as np

from ..data.browse import draw_targets  # noqa: F401  (ground truth, drawn as draw_result draws a prediction)
from ..draw import (_line_height, _text, draw_boxes, draw_labels, draw_mask, palette, text_scale,  # noqa: F401
                    to_numpy)
from ..tasks import spec

__all__ = ["draw_boxes", "draw_labels", "draw_mask", "draw_result", "draw_targets", "palette", "rescale_result",
           "side_by_side", "text_scale"]


def draw_result(img: np.ndarray, result: dict, tasks: dict, score_thresh: float = 0.3,
                text_strip: bool = False) -> np.ndarray:
    """Draw every head's output of one prediction ``{task: {...}}`` over ``img`` (original pixels).

    Tasks draw in their spec's layer order: masks first (with their legend), then boxes with
    ``score >= score_thresh`` (``#id`` when the result has ``track_ids``), then one text line
    per image-level task (top classes and probabilities, regression values): over the image's top
    left, or with ``text_strip`` in a white band added above it, where it hides nothing.
    """
    out = img.copy()
    lines: list[str] = []
    order = sorted((n for n in tasks if result.get(n) is not None), key=lambda n: spec(tasks[n]).draw_layer)
    for name in order:
        out, more = spec(tasks[name]).draw(out, name, tasks[name], result[name], score_thresh)
        lines += more
    return draw_labels(out, lines, strip=text_strip)


def rescale_result(result: dict, scale: float, orig_hw: tuple[int, int]) -> dict:
    """A prediction ``{task: {...}}`` in the pixels of the image resized by ``scale``: boxes and
    points scaled, every array shaped like the image (``[H,W]`` or ``[N,H,W]`` masks, any dtype)
    resized nearest-neighbour. Other values are shared, not copied."""
    h, w = orig_hw
    rows = np.minimum(np.arange(max(1, round(h * scale))) * h // max(1, round(h * scale)), h - 1)
    cols = np.minimum(np.arange(max(1, round(w * scale))) * w // max(1, round(w * scale)), w - 1)
    out: dict = {}
    for task, r in result.items():
        if not isinstance(r, dict):
            out[task] = r
            continue
        new = dict(r)
        for k, v in r.items():
            if not isinstance(v, np.ndarray):
                continue
            if k in ("boxes", "points", "keypoints"):
                new[k] = v * scale
            elif v.ndim >= 2 and v.shape[-2:] == (h, w):
                new[k] = v[..., rows[:, None], cols[None, :]]
        out[task] = new
    return out


def side_by_side(panels: list[np.ndarray], titles: list[str], gap: int = 6) -> np.ndarray:
    """Panels (RGB uint8) in one row, each under its title, on white."""
    h = max(p.shape[0] for p in panels)
    scale = text_scale(panels[0])
    top = _line_height(scale) + 4
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((h + top, width, 3), 255, np.uint8)
    x = 0
    for p, title in zip(panels, titles):
        canvas[top:top + p.shape[0], x:x + p.shape[1]] = p
        _text(canvas, title, (x + 2, top - 3), (30, 30, 30), scale)
        x += p.shape[1] + gap
    return canvas
