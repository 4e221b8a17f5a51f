"""FCOS-style anchor-free dense detection head over FPN levels.

Per level the head runs a shared classification tower and a shared box tower
(``num_convs`` x (3x3 conv, GroupNorm, ReLU)); the classification tower feeds a ``C``-way
logits conv, the box tower an ``ltrb`` distance conv (``relu(scale_l * x) * stride_l``, FCOS
"norm_reg_targets" style, so the output is in input pixels) and a centerness conv.

Points (anchor centres) follow the FCOS convention ``(x * stride + stride // 2,
y * stride + stride // 2)`` for feature cell ``(x, y)``; level ``l`` covers the object sizes
``max(l, t, r, b)`` in ``[4 * stride_l, 8 * stride_l]``, the first level starting at -1 and the
last one unbounded (``(-1,64), (64,128), (128,256), (256,512), (512,inf)`` for P3-P7).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, generalized_box_iou_loss, nms, sigmoid_focal_loss

from .common import group_norm, hw_list, rescale_boxes

__all__ = ["DetectionHead", "Scale"]

_DEFAULT_LEVELS = ("p3", "p4", "p5", "p6", "p7")


def _level_stride(level: str) -> int:
    return 2 ** int(level[1:])


def _reduce_mean(t: Tensor) -> Tensor:
    """Average ``t`` over data-parallel ranks when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return t


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class DetectionHead(nn.Module):
    """FCOS detection head.

    Args:
        task: task name (for messages); the loss terms are ``cls``, ``box``, ``ctr``.
        in_channels: channels of every input level.
        num_classes: number of object classes ``C``.
        strides: stride of each level; ``None`` derives ``2**k`` from level names ``pk``
            (``(8, 16, 32, 64, 128)`` for the default levels).
        levels: feature keys the head reads, finest first.
        num_convs: 3x3 conv blocks in each tower.
        channels: tower width (``None`` = ``in_channels``).
        norm: ``"gn"`` (GroupNorm with <= 32 groups dividing ``channels``) or ``"none"``.
        center_sampling_radius: positives must lie within ``radius * stride`` of the box centre
            (clipped to the box); ``0`` uses the whole box.
        focal_alpha, focal_gamma: sigmoid focal loss parameters.
        prior_prob: initial foreground probability (classification bias init).
        score_thresh: minimum ``sqrt(cls_prob * centerness)`` kept in :meth:`predict`.
        nms_thresh: class-wise NMS IoU threshold.
        topk_candidates: candidates kept per level before NMS.
        max_det: detections kept per image.
        box_loss_weight: multiplier of the GIoU loss.
        quality: ``"centerness"`` (FCOS centerness branch) or ``"none"``.
    """

    def __init__(
        self,
        task: str,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int] | None = None,
        levels: Sequence[str] = _DEFAULT_LEVELS,
        num_convs: int = 2,
        channels: int | None = None,
        norm: str = "gn",
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        prior_prob: float = 0.01,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        topk_candidates: int = 1000,
        max_det: int = 100,
        box_loss_weight: float = 1.0,
        quality: str = "centerness",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"task '{task}': head has zero classes")
        if isinstance(levels, str):
            levels = (levels,)
        self.levels = tuple(levels)
        if strides is None:
            strides = [_level_stride(lv) for lv in self.levels]
        self.strides = tuple(int(s) for s in strides)
        if len(self.strides) != len(self.levels):
            raise ValueError(f"detection head: {len(self.levels)} levels but {len(self.strides)} strides")
        if norm not in ("gn", "none"):
            raise ValueError(f"detection head norm must be 'gn' or 'none', got {norm!r}")
        if quality not in ("centerness", "none"):
            raise ValueError(f"detection head quality must be 'centerness' or 'none', got {quality!r}")
        self.task = task
        self.num_classes = int(num_classes)
        self.center_sampling_radius = float(center_sampling_radius)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.topk_candidates = int(topk_candidates)
        self.max_det = int(max_det)
        self.box_loss_weight = float(box_loss_weight)
        self.quality = quality

        channels = int(channels or in_channels)
        self.cls_tower = self._tower(in_channels, channels, num_convs, norm)
        self.box_tower = self._tower(in_channels, channels, num_convs, norm)
        pred_in = channels if num_convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(pred_in, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(pred_in, 4, 3, padding=1)
        self.centerness = nn.Conv2d(pred_in, 1, 3, padding=1) if quality == "centerness" else None
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.levels)
        for module in [self.cls_tower, self.box_tower, self.cls_logits, self.bbox_pred, self.centerness]:
            if module is None:
                continue
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.01)
                    nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

        lo = [4.0 * s for s in self.strides]
        hi = [8.0 * s for s in self.strides]
        lo[0], hi[-1] = -1.0, math.inf
        self.size_ranges: tuple[tuple[float, float], ...] = tuple(zip(lo, hi))
        self._points_cache: dict[tuple, Tensor] = {}

    @staticmethod
    def _tower(in_channels: int, channels: int, num_convs: int, norm: str) -> nn.Sequential:
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_convs):
            layers.append(nn.Conv2d(c, channels, 3, padding=1))
            if norm == "gn":
                layers.append(group_norm(channels))
            layers.append(nn.ReLU(inplace=True))
            c = channels
        return nn.Sequential(*layers)

    # ------------------------------------------------------------------ points
    def points(self, shapes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
        """Point centres for feature maps of the given ``(h, w)`` shapes, one per level.

        Returns:
            float32 ``[sum h*w, 2]`` as ``(x, y)`` in input pixels, level-major, row-major inside
            a level (matches ``feature.flatten(2)``).
        """
        exporting = torch.compiler.is_exporting()  # symbolic sizes: no int(), no cache
        key = None if exporting else (tuple(tuple(int(v) for v in s) for s in shapes), str(device),
                                      torch.is_inference_mode_enabled())
        cached = self._points_cache.get(key) if key else None
        if cached is not None:
            return cached
        pts = []
        for (h, w), s in zip(shapes, self.strides):
            xs = torch.arange(w, device=device, dtype=torch.float32) * s + s // 2
            ys = torch.arange(h, device=device, dtype=torch.float32) * s + s // 2
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            pts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
        out = torch.cat(pts, dim=0)
        if exporting:
            return out
        if len(self._points_cache) > 32:
            self._points_cache.clear()
        self._points_cache[key] = out
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Dense predictions on every level.

        Args:
            features: ``{level: [B, in_channels, h_l, w_l]}`` for each of :attr:`levels`.

        Returns:
            ``cls_logits`` ``[B, N, C]``, ``box_regression`` ``[B, N, 4]`` (``l, t, r, b``
            distances in input pixels, >= 0), ``centerness`` ``[B, N]`` logits (when
            ``quality == "centerness"``), ``points`` float32 ``[N, 2]`` and ``level_sizes``
            int64 ``[L]`` (CPU) with ``N = sum(level_sizes) = sum h_l * w_l``.
        """
        cls_out, box_out, ctr_out, shapes = [], [], [], []
        for lvl, (name, stride) in enumerate(zip(self.levels, self.strides)):
            x = features[name]
            shapes.append((x.shape[-2], x.shape[-1]))
            ct = self.cls_tower(x)
            bt = self.box_tower(x)
            cls_out.append(self.cls_logits(ct).flatten(2).transpose(1, 2))
            reg = F.relu(self.scales[lvl](self.bbox_pred(bt))) * stride
            box_out.append(reg.flatten(2).transpose(1, 2))
            if self.centerness is not None:
                ctr_out.append(self.centerness(bt).flatten(1))
        device = cls_out[0].device
        raw = {
            "cls_logits": torch.cat(cls_out, dim=1),
            "box_regression": torch.cat(box_out, dim=1),
            "points": self.points(shapes, device),
            # a list of (symbolic) ints while torch.export traces the model
            "level_sizes": ([h * w for h, w in shapes] if torch.compiler.is_exporting()
                            else torch.tensor([h * w for h, w in shapes], dtype=torch.int64)),
        }
        if ctr_out:
            raw["centerness"] = torch.cat(ctr_out, dim=1)
        return raw

    # ------------------------------------------------------------------ targets
    def _per_point(self, level_sizes: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        counts = torch.as_tensor(list(level_sizes), device=device)
        strides = torch.repeat_interleave(torch.tensor(self.strides, dtype=torch.float32, device=device), counts)
        lo = torch.repeat_interleave(torch.tensor([r[0] for r in self.size_ranges], device=device), counts)
        hi = torch.repeat_interleave(torch.tensor([r[1] for r in self.size_ranges], device=device), counts)
        return strides, lo, hi

    def assign(self, points: Tensor, level_sizes: Sequence[int] | Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """FCOS target assignment for one image (vectorised over points and boxes).

        A point is a candidate for a box when it lies inside the centre region
        (``center_sampling_radius * stride`` around the box centre, clipped to the box) and the
        box's ``max(l, t, r, b)`` at that point is inside the level's size range; a point with
        several candidates takes the smallest-area box.

        Args:
            points: float32 ``[N, 2]`` point centres ``(x, y)``.
            level_sizes: points per level (``L`` ints, summing to ``N``).
            boxes: float ``[M, 4]`` xyxy pixels.
            labels: int64 ``[M]``.

        Returns:
            ``labels`` int64 ``[N]`` (class id, ``-1`` = background) and ``reg`` float32
            ``[N, 4]`` target ``l, t, r, b`` distances (meaningful at positives).
        """
        if isinstance(level_sizes, Tensor):
            level_sizes = level_sizes.tolist()
        device = points.device
        n = points.shape[0]
        boxes = boxes.to(device=device, dtype=torch.float32).reshape(-1, 4)
        labels = labels.to(device=device, dtype=torch.int64).reshape(-1)
        if boxes.shape[0] == 0:
            return torch.full((n,), -1, dtype=torch.int64, device=device), points.new_zeros((n, 4))
        strides, lo, hi = self._per_point(level_sizes, device)
        px, py = points[:, 0, None], points[:, 1, None]  # [N, 1]
        x1, y1, x2, y2 = boxes.unbind(1)  # [M]
        reg = torch.stack([px - x1, py - y1, x2 - px, y2 - py], dim=2)  # [N, M, 4]
        if self.center_sampling_radius > 0:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            rad = strides[:, None] * self.center_sampling_radius  # [N, 1]
            cx1 = torch.maximum(cx - rad, x1)
            cy1 = torch.maximum(cy - rad, y1)
            cx2 = torch.minimum(cx + rad, x2)
            cy2 = torch.minimum(cy + rad, y2)
            inside = torch.stack([px - cx1, py - cy1, cx2 - px, cy2 - py], dim=2).amin(dim=2) > 0
        else:
            inside = reg.amin(dim=2) > 0
        max_reg = reg.amax(dim=2)
        in_range = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
        area = (x2 - x1) * (y2 - y1)
        cand = torch.where(inside & in_range, area[None, :].expand_as(max_reg), torch.full_like(max_reg, math.inf))
        min_area, gt_idx = cand.min(dim=1)
        pos = torch.isfinite(min_area)
        tgt_labels = torch.where(pos, labels[gt_idx], torch.full_like(gt_idx, -1))
        tgt_reg = reg[torch.arange(n, device=device), gt_idx]
        return tgt_labels, tgt_reg

    @staticmethod
    def _centerness_target(reg: Tensor) -> Tensor:
        lr, tb = reg[:, [0, 2]], reg[:, [1, 3]]
        ratio = (lr.amin(1) / lr.amax(1).clamp_min(1e-6)) * (tb.amin(1) / tb.amax(1).clamp_min(1e-6))
        return ratio.clamp_min(0).sqrt()

    @staticmethod
    def _decode(points: Tensor, reg: Tensor) -> Tensor:
        return torch.cat([points - reg[:, :2], points + reg[:, 2:]], dim=1)

    # ------------------------------------------------------------------ loss
    def loss(self, raw: Mapping[str, Tensor], targets: Sequence[Mapping], has: Tensor) -> dict[str, Tensor]:
        """Focal + GIoU + centerness losses over images whose ``has`` is true.

        Args:
            raw: output of :meth:`forward`.
            targets: per-image dicts with ``boxes`` float32 ``[M, 4]`` and ``box_labels`` int64
                ``[M]`` (read only where ``has`` is true; ``M`` may be 0).
            has: bool ``[B]``.

        Returns:
            float32 scalars ``cls`` (focal, sum / max(1, #positives)),
            ``box`` (centerness-weighted GIoU, ``box_loss_weight`` applied) and
            ``ctr`` (BCE on positives, when ``quality == "centerness"``). Box and
            centerness losses are ``0 * sum(...)`` when there is no positive; all are when no
            image has the label.
        """
        cls_logits = raw["cls_logits"]
        box_reg = raw["box_regression"]
        ctr_logits = raw.get("centerness")
        points = raw["points"]
        level_sizes = raw["level_sizes"].tolist()
        device = cls_logits.device
        k_cls, k_box, k_ctr = "cls", "box", "ctr"

        idx = [i for i, h in enumerate(has.tolist()) if h]
        labels_t, reg_t = [], []
        for i in idx:
            t = targets[i]
            lab, reg = self.assign(points, level_sizes, t["boxes"], t["box_labels"])
            labels_t.append(lab)
            reg_t.append(reg)
        if idx:
            labels_all = torch.stack(labels_t)  # [b, N]
            reg_all = torch.stack(reg_t)  # [b, N, 4]
            pos = labels_all >= 0
            ctr_t = self._centerness_target(reg_all[pos]) if self.quality == "centerness" else None
            n_pos = pos.sum().float()
            w_sum = ctr_t.sum() if ctr_t is not None else n_pos
        else:
            n_pos = torch.zeros((), device=device)
            w_sum = torch.zeros((), device=device)
        stats = _reduce_mean(torch.stack([n_pos, w_sum]).float())
        norm_pos = stats[0].clamp_min(1.0)
        norm_w = stats[1].clamp_min(1e-6)

        zero_box = box_reg.sum() * 0
        if not idx:
            out = {k_cls: cls_logits.sum() * 0, k_box: zero_box}
            if ctr_logits is not None:
                out[k_ctr] = ctr_logits.sum() * 0
            return out

        sel = torch.as_tensor(idx, device=device)
        all_sel = len(idx) == cls_logits.shape[0]
        cls_sel = (cls_logits if all_sel else cls_logits[sel]).float()  # [b, N, C]
        cls_target = torch.zeros_like(cls_sel)
        pos_b, pos_n = pos.nonzero(as_tuple=True)
        cls_target[pos_b, pos_n, labels_all[pos_b, pos_n]] = 1.0
        loss_cls = sigmoid_focal_loss(cls_sel, cls_target, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")
        out = {k_cls: loss_cls / norm_pos}

        if pos_b.numel() == 0:
            out[k_box] = zero_box
            if ctr_logits is not None:
                out[k_ctr] = zero_box
            return out

        orig_b = sel[pos_b]
        pts = points[pos_n]
        pred_reg = box_reg[orig_b, pos_n].float()
        tgt_reg = reg_all[pos_b, pos_n]
        giou = generalized_box_iou_loss(self._decode(pts, pred_reg), self._decode(pts, tgt_reg), reduction="none")
        if ctr_t is not None:
            out[k_box] = self.box_loss_weight * (giou * ctr_t).sum() / norm_w
            ctr_pred = ctr_logits[orig_b, pos_n].float()
            out[k_ctr] = F.binary_cross_entropy_with_logits(ctr_pred, ctr_t, reduction="sum") / norm_pos
        else:
            out[k_box] = self.box_loss_weight * giou.sum() / norm_pos
        return out

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def predict(
        self,
        raw: Mapping[str, Tensor],
        image_sizes: Sequence | Tensor,
        orig_sizes: Sequence | Tensor | None = None,
        min_score: float | None = None,
    ) -> list[dict[str, Tensor]]:
        """Decode detections per image: :meth:`graph_outputs` then :meth:`host_results`.

        Args:
            raw: output of :meth:`forward`.
            image_sizes: ``(h, w)`` per image, the valid (un-padded) input region.
            orig_sizes: optional ``(h, w)`` per image in original pixels; boxes are scaled by
                ``orig / image_size`` per axis and clipped to it.
            min_score: drop candidates below this score before NMS when it is above
                ``score_thresh`` (inference at a confidence threshold). The result equals
                filtering the full output by it, since a box is only suppressed by a
                higher-scoring one, at a fraction of the NMS cost.

        Returns:
            One dict per image: ``boxes`` float32 ``[K, 4]`` xyxy, ``scores`` float32 ``[K]``,
            ``labels`` int64 ``[K]``, ``K <= max_det``, sorted by decreasing score.
        """
        b = raw["cls_logits"].shape[0]
        sizes = torch.as_tensor(hw_list(image_sizes, b), dtype=torch.int64)
        return self.host_results(self.graph_outputs(raw, sizes, min_score), image_sizes, orig_sizes)

    def graph_outputs(self, raw: Mapping[str, Tensor], sizes: Tensor, min_score: float | None = None,
                      given: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The part of decoding an exported graph holds (traceable by ``torch.export``): scores,
        boxes in input pixels, per-level top-k candidates, clipping, class-wise NMS and
        ``max_det`` per image, for the whole batch at once.

        Per image and level the candidates are the ``topk_candidates`` best (point, class) scores
        above the threshold (``score_thresh``, or ``min_score`` when higher: a float, or a tensor
        when it is a graph input); boxes are clipped to
        the image's valid region ``sizes`` (int64 ``[B, 2]`` as ``(h, w)``), those under 0.01 px
        dropped, and NMS runs per image and class (each class shifted along x, each image along
        y, so that no two groups overlap).

        Returns (flat over the batch, each image's rows by decreasing score):
            ``boxes`` float32 ``[K, 4]`` input pixels, ``scores`` ``[K]``, ``labels`` int64 ``[K]``,
            ``batch`` int64 ``[K]`` (the image index).
        """
        cls = raw["cls_logits"].float()
        reg = raw["box_regression"].float()
        points = raw["points"]
        level_sizes = raw["level_sizes"]
        if isinstance(level_sizes, Tensor):
            level_sizes = level_sizes.tolist()
        b, _, c = cls.shape
        prob = torch.sigmoid(cls)
        if "centerness" in raw:
            prob = (prob * torch.sigmoid(raw["centerness"].float())[..., None]).sqrt()
        vals, idxs, start = [], [], 0
        for n in level_sizes:
            flat = prob[:, start: start + n].reshape(b, -1)  # [B, n * C]
            v, i = flat.topk(min(self.topk_candidates, n * c), dim=1)
            vals.append(v)
            idxs.append(i + start * c)
            start += n
        scores, idx = torch.cat(vals, 1), torch.cat(idxs, 1)  # [B, k]
        point = torch.div(idx, c, rounding_mode="floor")
        labels = idx - point * c
        boxes = torch.cat([points[None] - reg[..., :2], points[None] + reg[..., 2:]], dim=-1)  # [B, N, 4]
        boxes = torch.gather(boxes, 1, point[..., None].expand(-1, -1, 4))
        hw = sizes.to(boxes.device, torch.float32)
        limit = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)[:, None]  # [B, 1, 4]
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        wh = boxes[..., 2:] - boxes[..., :2]
        keep = self._above(scores, min_score) & (wh >= 1e-2).all(-1)
        bi, ci = keep.nonzero(as_tuple=True)
        boxes, scores, labels = boxes[bi, ci], scores[bi, ci], labels[bi, ci]
        span = hw.max() + 1  # boxes lie in [0, span): shifted groups never overlap
        shift = torch.stack([labels * span, bi * span, labels * span, bi * span], dim=1)
        keep = nms(boxes + shift, scores, self.nms_thresh)  # by decreasing score
        bi = bi[keep]
        first = bi[:, None] == torch.arange(b, device=bi.device)[None]  # [K, B]
        rank = (first.cumsum(0) * first).sum(1) - 1  # position among its image's detections
        keep = keep[rank < self.max_det]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "batch": bi[rank < self.max_det]}

    def _above(self, scores: Tensor, min_score: float | Tensor | None) -> Tensor:
        """Candidates kept: ``score > score_thresh``, or ``score >= min_score`` when that is higher
        (as the caller filters); ``min_score`` may be a graph input (a 0-d or ``[1]`` tensor)."""
        if isinstance(min_score, Tensor):
            m = min_score.to(scores.dtype).reshape(())
            higher = m > self.score_thresh
            return (higher & (scores >= m)) | (~higher & (scores > self.score_thresh))
        if min_score is not None and float(min_score) > self.score_thresh:
            return scores >= float(min_score)
        return scores > self.score_thresh

    def host_results(self, out: Mapping[str, Tensor], image_sizes: Sequence | Tensor,
                     orig_sizes: Sequence | Tensor | None = None, min_score: float | None = None,
                     given: Sequence[Mapping] | None = None) -> list[dict[str, Tensor]]:
        """Per-image detections from :meth:`graph_outputs` (or an exported graph's): the rows of
        each image at ``score >= min_score``, boxes rescaled to ``orig_sizes`` and clipped."""
        n = len(image_sizes)
        sizes, origs = hw_list(image_sizes, n), hw_list(orig_sizes, n)
        batch, scores = out["batch"], out["scores"].float()
        results = []
        for i in range(n):
            sel = batch == i
            if min_score is not None:
                sel &= scores >= float(min_score)
            boxes = out["boxes"][sel].float()
            if origs is not None:
                oh, ow = origs[i]
                boxes = clip_boxes_to_image(rescale_boxes(boxes, sizes[i], (oh, ow)), (oh, ow))
            results.append({"boxes": boxes, "scores": scores[sel], "labels": out["labels"][sel].to(torch.int64)})
        return results
