"""Small pieces shared by the heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def hw_list(sizes: Sequence | Tensor | None, n: int) -> list[tuple[int, int]] | None:
    """``(h, w)`` per image as a list of int pairs (``None`` passes through); checks the count."""
    if sizes is None:
        return None
    if isinstance(sizes, Tensor):
        sizes = sizes.tolist()
    out = [(int(s[0]), int(s[1])) for s in sizes]
    if len(out) != n:
        raise ValueError(f"got {len(out)} image sizes for a batch of {n}")
    return out


def rescale_boxes(boxes: Tensor, size: Sequence[int], orig: Sequence[int]) -> Tensor:
    """xyxy ``boxes`` in a ``size = (h, w)`` input mapped to ``orig = (oh, ow)`` pixels (per-axis scale)."""
    (h, w), (oh, ow) = size, orig
    return boxes * boxes.new_tensor([ow / w, oh / h, ow / w, oh / h])


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups (<= 32) dividing ``channels`` that keeps >= 4 channels per group."""
    groups = max(g for g in range(1, 33) if channels % g == 0 and (channels // g >= 4 or g == 1))
    return nn.GroupNorm(groups, channels)
