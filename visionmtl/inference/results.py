"""One image's prediction that can show itself: :class:`Result`, what ``Predictor`` returns.

A :class:`Result` is the plain ``{task: {...}}`` dict of numpy arrays in original pixels (code
that indexes it is unchanged) that also keeps its image, so that, as Ultralytics' ``Results``,
it can draw (:meth:`Result.plot`), save (:meth:`Result.save`) and serialise
(:meth:`Result.to_json`) itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

__all__ = ["Result"]


class Result(dict):
    """``{task: {...}}`` for one image, with the image and what drawing needs.

    Attributes:
        image: the RGB uint8 image it was predicted on (original pixels; not copied).
        tasks: task name -> TaskConfig of the predicted tasks.
        conf: the detection score threshold the prediction used.
        path: the image file, when predicted from a path.
    """

    def __init__(self, data: Mapping[str, Any], image: np.ndarray, tasks: Mapping[str, Any], conf: float,
                 path: Optional[str] = None) -> None:
        super().__init__(data)
        self.image = image
        self.tasks = dict(tasks)
        self.conf = float(conf)
        self.path = path

    def plot(self, conf: Optional[float] = None, min_size: int = 0, text_strip: bool = False) -> np.ndarray:
        """The image with every task's result drawn (RGB uint8, a new array).

        Args:
            conf: draw detections scoring at least this (default the prediction's ``conf``).
            min_size: upscale a smaller image so its longest side is at least this first (results
                rescaled with it), so that small images stay readable.
            text_strip: image-level text in a band above the image instead of over it.
        """
        from .draw import draw_result, rescale_result

        img, result = self.image, dict(self)
        h, w = img.shape[:2]
        if min_size and max(h, w) < min_size:
            import cv2

            s = min_size / max(h, w)
            result = rescale_result(result, s, (h, w))
            img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
        return draw_result(img, result, self.tasks, self.conf if conf is None else conf, text_strip=text_strip)

    def save(self, filename: str | os.PathLike, **plot_kwargs: Any) -> Path:
        """Write :meth:`plot` to ``filename`` (format from its extension, written atomically)."""
        from ..files import write_image

        path = Path(filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, self.plot(**plot_kwargs))
        return path

    def to_json(self, index: int = 0) -> dict:
        """The JSON record ``--save-json`` writes for this image (boxes in original pixels, masks RLE)."""
        from .outputs import result_to_record

        name = os.path.basename(self.path) if self.path else f"image{index}"
        return result_to_record(self, self.tasks, index, name, self.image.shape[:2])

    def __repr__(self) -> str:
        parts = []
        for n, r in self.items():
            shown = {k: (f"array{tuple(v.shape)}" if isinstance(v, np.ndarray) else v) for k, v in r.items()}
            parts.append(f"{n}: {shown}")
        return f"Result({self.image.shape[1]}x{self.image.shape[0]}; " + "; ".join(parts) + ")"
