"""Instance masks on a detector's boxes: a Mask R-CNN RoI head or YOLACT-style prototypes.

Both kinds turn a box into ``mask_size`` x ``mask_size`` mask logits (per class, or one
class-agnostic channel), which the loss compares with the ground-truth mask resampled into the
same box (binary cross-entropy, as Mask R-CNN) and prediction pastes back into the image
(:func:`paste_masks`, the 0.5 threshold). Targets are cut with ``roi_align(aligned=True)`` and
pasted with the same pixel-centre convention (detectron2's), so a mask that fills its box
comes back filling exactly that box:

* ``kind="roi"`` (Mask R-CNN, He et al. 2017): ``roi_align`` with MultiScaleRoIAlign's level choice
  pools ``roi_size`` x ``roi_size`` features of each box from the FPN level its size selects
  (the canonical 224 px box on level 4), ``num_convs`` 3x3 convs, a 2x transposed conv and a
  1x1 classifier. The FCN runs on the boxes, so it runs in :meth:`loss` and :meth:`predict`;
  :meth:`forward` passes the pyramid through.
* ``kind="proto"`` (YOLACT, Bolya et al. 2019; YOLOv8-seg): ``num_protos`` prototype masks at
  stride 4 from the finest level (two 3x3 convs, 2x upsample, a 3x3 conv, a 1x1 conv) computed in
  :meth:`forward`; each box's coefficients come from its pooled 7x7 features (a linear layer,
  tanh), and its mask is the coefficient-weighted sum of the prototypes RoI-aligned to the box.
  Class-agnostic.

Training pools on the ground-truth boxes (``instance_boxes``, input pixels) of the labelled
images, against ``instance_masks`` uint8 ``[N, M, M]`` (the data pipeline resamples each mask into
its box, data/transforms.py); prediction pools on the boxes of the detection task it names
(``given``: that task's per-image results), so one detector serves both tasks.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

from .common import group_norm, hw_list, rescale_boxes

__all__ = ["InstanceHead", "paste_masks"]

KINDS = ("roi", "proto")


class InstanceHead(nn.Module):
    """Per-box instance masks; see the module docstring.

    Args:
        task: task name (for messages).
        in_channels: channels of the pyramid levels.
        num_classes: classes (the detection task's; class-specific masks for ``kind="roi"``).
        levels: pyramid levels pooled from (the first one also feeds the prototypes).
        strides: their strides.
        detection: the detection task whose boxes prediction reads.
        kind: ``"roi"`` or ``"proto"``.
        mask_size: side of the per-box mask (28, as Mask R-CNN).
        roi_size: side of the pooled features (14 for ``roi``; ``proto`` pools 7 for coefficients).
        channels: width of the mask FCN / prototype branch.
        num_convs: 3x3 convs of the RoI FCN.
        num_protos: prototypes of ``kind="proto"``.
        class_agnostic: one mask per box whatever its class (``proto`` always is).
        mask_thresh: probability at which a pasted mask pixel is foreground.
        sampling_ratio: RoIAlign samples per bin side (2, as Mask R-CNN; 1 costs less).
    """

    def __init__(self, task: str, in_channels: int, num_classes: int, levels: Sequence[str], strides: Sequence[int],
                 detection: str = "", kind: str = "roi", mask_size: int = 28, roi_size: int = 14, channels: int = 128,
                 num_convs: int = 2, num_protos: int = 16, class_agnostic: bool = False, mask_thresh: float = 0.5,
                 sampling_ratio: int = 2):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"task '{task}': unknown instance head kind {kind!r}; valid: {', '.join(KINDS)}")
        self.task, self.kind, self.after = task, kind, detection
        self.levels, self.strides = list(levels), list(strides)
        self.mask_size, self.mask_thresh = int(mask_size), float(mask_thresh)
        self.num_classes = int(num_classes)
        self.class_agnostic = bool(class_agnostic) or kind == "proto"
        out = 1 if self.class_agnostic else self.num_classes
        pool = int(roi_size) if kind == "roi" else 7
        self.pool_size, self.sampling_ratio = pool, int(sampling_ratio)
        # MultiScaleRoIAlign's level choice (FPN eq. 1: the canonical 224 px box on level 4)
        lo, hi = (int(math.log2(s)) for s in (self.strides[0], self.strides[-1]))
        self.mapper = LevelMapper(lo, hi)
        if kind == "roi":
            convs, c = [], in_channels
            for _ in range(num_convs):
                convs += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
                c = channels
            self.fcn = nn.Sequential(*convs)
            self.up = nn.ConvTranspose2d(c, channels, 2, stride=2)
            self.logits = nn.Conv2d(channels, out, 1)
            if pool * 2 != self.mask_size:
                raise ValueError(f"task '{task}': an roi head's mask_size must be 2 x roi_size ({2 * pool}), "
                                 f"got {mask_size}")
        else:
            self.proto = nn.Sequential(
                nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(channels, channels, 3, padding=1, bias=False), group_norm(channels), nn.ReLU(inplace=True),
                nn.Conv2d(channels, num_protos, 1))
            self.proto_stride = self.strides[0] / 2
            self.coeff = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * pool * pool, channels),
                                       nn.ReLU(inplace=True), nn.Linear(channels, num_protos), nn.Tanh())
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ forward
    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raw = {lv: features[lv] for lv in self.levels}
        if self.kind == "proto":
            raw["protos"] = self.proto(features[self.levels[0]])
        return raw

    def _pool(self, feats: Mapping[str, Tensor], rois: Tensor) -> Tensor:
        """``pool_size`` x ``pool_size`` features of each RoI (``[R, 5]``: image index, xyxy input
        pixels) from the level its size selects, as :class:`torchvision.ops.MultiScaleRoIAlign`
        (``roi_align``, ``aligned=False``). While ``torch.export`` traces, every level pools every
        RoI and a ``where`` keeps the right one (static shapes; the same values)."""
        level = self.mapper([rois[:, 1:]]) if len(self.levels) > 1 else None
        first = feats[self.levels[0]]
        out = first.new_zeros((rois.shape[0], first.shape[1], self.pool_size, self.pool_size))
        for i, (lv, stride) in enumerate(zip(self.levels, self.strides)):
            if level is None:
                return roi_align(feats[lv], rois, self.pool_size, 1.0 / stride, self.sampling_ratio)
            if torch.compiler.is_exporting():
                pooled = roi_align(feats[lv], rois, self.pool_size, 1.0 / stride, self.sampling_ratio)
                out = torch.where((level == i)[:, None, None, None], pooled, out)
            else:
                idx = torch.where(level == i)[0]
                out[idx] = roi_align(feats[lv], rois[idx], self.pool_size, 1.0 / stride, self.sampling_ratio)
        return out

    def _roi_logits(self, raw: Mapping[str, Tensor], rois: Tensor, labels: Tensor) -> Tensor:
        """Mask logits ``[R, M, M]`` of every RoI (``rois`` ``[R, 5]``, ``labels`` ``[R]``)."""
        # pooling in fp32 (RoIAlign has no bf16 kernel on every device); the mask FCN in the
        # precision the features came in (the step's autocast ended before the loss)
        low = raw[self.levels[0]].dtype
        feats = {lv: raw[lv].float() for lv in self.levels}
        rois = rois.float()
        pooled = self._pool(feats, rois)
        lowp = low in (torch.bfloat16, torch.float16)
        with torch.autocast(pooled.device.type, dtype=low) if lowp else nullcontext():
            if self.kind == "roi":
                x = self.logits(F.relu(self.up(self.fcn(pooled)))).float()
                if self.class_agnostic:
                    return x[:, 0]
                m = self.mask_size
                return x.gather(1, labels.to(torch.int64).view(-1, 1, 1, 1).expand(-1, 1, m, m))[:, 0]
            coeff = self.coeff(pooled).float()  # [R, K]
        protos = roi_align(raw["protos"].float(), rois, self.mask_size, 1.0 / self.proto_stride,
                           sampling_ratio=2, aligned=True)  # [R, K, M, M]
        return torch.einsum("rk,rkhw->rhw", coeff, protos)

    @staticmethod
    def _rois(boxes: Sequence[Tensor]) -> Tensor:
        """Per-image boxes -> ``[R, 5]`` RoIs (image index first), in image order."""
        return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b.float()], 1) for i, b in enumerate(boxes)])

    # ------------------------------------------------------------------ loss
    def loss(self, raw: Mapping[str, Tensor], targets: Sequence[Mapping], has: Tensor) -> dict[str, Tensor]:
        """BCE of each labelled instance's mask logits in its ground-truth box, averaged over
        instances; exactly 0 (still attached) when the batch labels no instance."""
        feat = raw[self.levels[0]]
        zero = sum(v.sum() for v in raw.values()) * 0.0
        flags = has.tolist()
        boxes, labels, masks = [], [], []
        for i, t in enumerate(targets):
            if flags[i] and "instance_masks" in t and len(t["instance_masks"]):
                boxes.append(t["instance_boxes"].to(feat.device, torch.float32))
                labels.append(t["instance_labels"].to(feat.device))
                masks.append(t["instance_masks"].to(feat.device))
            else:
                boxes.append(feat.new_zeros((0, 4), dtype=torch.float32))
        if not labels:
            return {"mask": zero}
        logits = self._roi_logits(raw, self._rois(boxes), torch.cat(labels))
        target = torch.cat(masks).to(logits.dtype)
        return {"mask": F.binary_cross_entropy_with_logits(logits, target) + zero}

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def predict(self, raw: Mapping[str, Tensor], image_sizes: Sequence | Tensor,
                orig_sizes: Sequence | Tensor | None = None, given: Sequence[Mapping] | None = None) -> list[dict]:
        """Masks for the detection task's results ``given`` (one dict per image: ``boxes`` in
        original pixels when ``orig_sizes`` is given, else input pixels; ``scores``, ``labels``).

        Returns per image ``boxes``/``scores``/``labels`` (the detections) and ``masks`` uint8
        ``[N, h, w]`` (0/1) in the same pixels as the boxes.
        """
        if given is None:
            raise ValueError(f"task '{self.task}': instance masks need the detection task's results "
                             f"('{self.after}'); predict the model as a whole")
        n = len(given)
        sizes, origs = hw_list(image_sizes, n), hw_list(orig_sizes, n)
        feat = raw[self.levels[0]]
        boxes_in = []
        for i, det in enumerate(given):
            b = det["boxes"].to(feat.device, torch.float32)
            boxes_in.append(rescale_boxes(b, origs[i], sizes[i]) if origs is not None else b)
        labels = torch.cat([d["labels"].to(feat.device) for d in given]) if n else feat.new_zeros(0, dtype=torch.long)
        probs = self._roi_logits(raw, self._rois(boxes_in), labels).sigmoid() if len(labels) else None
        counts = [len(d["boxes"]) for d in given]
        parts = list(probs.split(counts)) if probs is not None else [None] * n
        return self._pasted(parts, given, sizes, origs)

    def graph_outputs(self, raw: Mapping[str, Tensor], sizes=None, min_score=None,
                      given: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The exported part: ``masks`` float32 ``[K, M, M]``, the mask probabilities of the
        detection task's graph outputs ``given`` (flat rows: ``boxes`` in input pixels, ``labels``,
        ``batch``), with its ``batch`` and ``scores`` alongside, row for row."""
        if given is None:
            raise ValueError(f"task '{self.task}': instance masks need the detection task '{self.after}'")
        rois = torch.cat([given["batch"].to(torch.float32)[:, None], given["boxes"].float()], dim=1)
        probs = self._roi_logits(raw, rois, given["labels"]).sigmoid()
        return {"masks": probs, "batch": given["batch"], "scores": given["scores"]}

    def host_results(self, out: Mapping[str, Tensor], image_sizes, orig_sizes=None, min_score=None,
                     given: Sequence[Mapping] | None = None) -> list[dict]:
        """Per-image results from :meth:`graph_outputs`: each image's rows (at ``score >=
        min_score``, the detection task's own selection) pasted into ``given``'s boxes (that
        task's per-image results, the same rows in the same order)."""
        n = len(image_sizes)
        sizes, origs = hw_list(image_sizes, n), hw_list(orig_sizes, n)
        parts = []
        for i in range(n):
            sel = out["batch"] == i
            if min_score is not None:
                sel &= out["scores"].float() >= float(min_score)
            parts.append(out["masks"][sel].float())
        return self._pasted(parts, given, sizes, origs)

    def _pasted(self, parts: Sequence[Tensor | None], given: Sequence[Mapping], sizes, origs) -> list[dict]:
        out = []
        for i, det in enumerate(given):
            size = origs[i] if origs is not None else sizes[i]
            probs = parts[i]
            if probs is not None and len(probs):
                pasted = paste_masks(probs, det["boxes"].to(probs.device).float(), size)
                masks = (pasted >= self.mask_thresh).to(torch.uint8)
            else:
                masks = torch.zeros((0, *size), dtype=torch.uint8, device=det["boxes"].device)
            out.append({"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"], "masks": masks})
        return out


def paste_masks(masks: Tensor, boxes: Tensor, size: Sequence[int], chunk_pixels: int = 1 << 22) -> Tensor:
    """Per-box masks ``[N, M, M]`` (probabilities) resampled into their boxes on an image of
    ``size = (h, w)``: float ``[N, h, w]``, 0 outside each box.

    Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``; bilinear sampling
    (``grid_sample``, ``align_corners=False``, zeros outside the mask), the inverse of
    ``roi_align(aligned=True)`` (detectron2's convention). Boxes go through ``grid_sample``
    together, in chunks of at most ``chunk_pixels`` output pixels.
    """
    h, w = int(size[0]), int(size[1])
    n = len(masks)
    out = masks.new_zeros((n, h, w))
    if n == 0:
        return out
    boxes = boxes.to(masks.dtype)
    x0, y0, x1, y1 = boxes.unbind(1)
    bw, bh = (x1 - x0).clamp(min=1e-3), (y1 - y0).clamp(min=1e-3)
    xs = torch.arange(w, device=masks.device, dtype=masks.dtype) + 0.5
    ys = torch.arange(h, device=masks.device, dtype=masks.dtype) + 0.5
    step = max(1, chunk_pixels // (h * w))
    for i in range(0, n, step):
        sl = slice(i, i + step)
        gx = ((xs[None] - x0[sl, None]) / bw[sl, None] * 2 - 1)[:, None, :].expand(-1, h, w)
        gy = ((ys[None] - y0[sl, None]) / bh[sl, None] * 2 - 1)[:, :, None].expand(-1, h, w)
        out[sl] = F.grid_sample(masks[sl, None], torch.stack([gx, gy], -1), align_corners=False)[:, 0]
    return out
