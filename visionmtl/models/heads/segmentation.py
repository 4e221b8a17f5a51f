"""Semantic segmentation heads: Semantic FPN (Panoptic FPN) or DeepLabV3+-style ASPP.

``kind="fpn"`` (default levels ``p2..p5``): every level goes through
``max(1, log2(stride / out_stride))`` x (3x3 conv, GroupNorm, ReLU, 2x bilinear upsample
except after a level already at the output stride), the branches are summed and a 1x1 conv
classifies at the finest level's stride (4 for P2).

``kind="aspp"`` (default levels ``("c2", "c5")``, i.e. DeepLabV3+ on the ResNet stages, no FPN
needed): :class:`torchvision.models.segmentation.deeplabv3.ASPP` (its BatchNorms replaced by
GroupNorm so batch size 1 trains) on the coarsest level, upsampled and concatenated with a
48-channel 1x1 projection of the finest level, then two 3x3 conv blocks and a 1x1 classifier at
the finest level's stride. With a single level (e.g. ``("c5",)``) it is plain DeepLabV3 at that
level's stride.

``detail`` (e.g. ``"c1"``, the ResNet stem at stride 2) adds a light decoder step after either
kind: the fused features are reduced to ``detail_channels`` by a 1x1 conv, bilinearly upsampled
to the detail level, concatenated with a 1x1 projection of that level (``detail_channels // 2``
channels) and fused by one 3x3 conv block, so the classifier runs at the detail level's stride.
The stem's edges sharpen boundaries and corners that stride-4 logits round off.

``region_loss`` adds a term that scores whole regions rather than pixels, averaged over the
classes present in the batch so a small shape counts as much as the background:
``"lovasz"`` is the Lovasz-softmax loss (Berman et al., CVPR 2018), a convex surrogate of
per-class IoU, i.e. of mIoU itself; ``"dice"`` is the soft Dice loss. Both are weighted by
``region_weight`` and reported as the terms ``lovasz`` / ``dice``.

``ohem_thresh`` (> 0) switches the cross-entropy to online hard example mining over pixels, as
MMSegmentation's ``OHEMPixelSampler``: only pixels whose predicted probability of their true
class is at most ``ohem_thresh`` count, and at least the ``ohem_min_kept`` fraction of the
batch's labelled pixels (the hardest ones). Easy background, most of every image, then stops
diluting the loss of small objects and edges.

``class_weight`` (one positive number per class, as MMSegmentation's ``CrossEntropyLoss``)
weights each pixel's cross-entropy by its true class; the loss is the weighted mean
``sum(w_y * ce) / sum(w_y)``, as ``F.cross_entropy(weight=...)``. With OHEM the hard pixels are
still chosen by their unweighted probability. ``tools/dataset_info.py`` prints ENet's weights
``1 / ln(1.02 + p_c)`` (normalised to mean 1) for a mask dataset, ready to paste.

Logits stay at the output stride in :meth:`forward`; :meth:`loss` and :meth:`predict` upsample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP, ASPPPooling

from .common import group_norm, hw_list


__all__ = ["SegmentationHead"]

_DEFAULT_LEVELS = {"fpn": ("p2", "p3", "p4", "p5"), "aspp": ("c2", "c5")}
_LEVEL_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}


def _conv_gn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), group_norm(cout), nn.ReLU(inplace=True))


def _bn_to_gn(module: nn.Module) -> None:
    """Replace BatchNorm2d by GroupNorm; in ASPP's 1x1 image-pooling branch by GroupNorm(1, C)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            pooled = isinstance(module, ASPPPooling)
            setattr(module, name, nn.GroupNorm(1, child.num_features) if pooled else group_norm(child.num_features))
        else:
            _bn_to_gn(child)


def lovasz_softmax(probs: Tensor, labels: Tensor) -> Tensor:
    """Lovasz-softmax loss over the classes present in ``labels``.

    Args:
        probs: float ``[P, C]`` class probabilities of ``P`` pixels.
        labels: int64 ``[P]`` in ``[0, C)``.

    Returns:
        Scalar: mean over present classes of the Lovasz extension of ``1 - IoU`` applied to the
        sorted absolute errors ``|[labels == c] - probs[:, c]|``.
    """
    present = labels.unique()
    if present.numel() == 0:
        return probs.sum() * 0
    # all present classes in one [K, P] sort: 2-3x faster on CPU than a loop over classes
    fg = F.one_hot(labels, probs.shape[1]).to(probs.dtype).T[present]
    errors, perm = torch.sort((fg - probs.T[present]).abs(), dim=1, descending=True)
    fg = fg.gather(1, perm)
    gts = fg.sum(1, keepdim=True)
    jaccard = 1.0 - (gts - fg.cumsum(1)) / (gts + (1.0 - fg).cumsum(1))
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)  # Lovasz extension weights
    return (errors * grad).sum(1).mean()


def soft_dice(probs: Tensor, labels: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss ``1 - 2|P∩G| / (|P| + |G|)`` averaged over the classes present in ``labels``.

    Args: as :func:`lovasz_softmax`.
    """
    present = labels.unique()
    if present.numel() == 0:
        return probs.sum() * 0
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    inter = (probs * onehot).sum(0)
    denom = probs.sum(0) + onehot.sum(0)
    dice = 1.0 - (2.0 * inter + eps) / (denom + eps)
    return dice[present].mean()


_REGION_LOSSES = {"lovasz": lovasz_softmax, "dice": soft_dice}


def default_levels(kind: str = "fpn") -> tuple[str, ...]:
    """Feature levels a segmentation head of ``kind`` reads by default."""
    if kind not in _DEFAULT_LEVELS:
        raise ValueError(f"unknown segmentation head kind {kind!r}; valid: {', '.join(_DEFAULT_LEVELS)}")
    return _DEFAULT_LEVELS[kind]


class _FPNBranch(nn.Module):
    def __init__(self, cin: int, channels: int, n_up: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_conv_gn_relu(cin if i == 0 else channels, channels) for i in range(max(n_up, 1)))
        self.n_up = n_up

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        for block in self.blocks:
            x = block(x)
            if self.n_up > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class SegmentationHead(nn.Module):
    """Semantic segmentation head.

    Args:
        task: task name (for messages); the loss term is ``ce``.
        in_channels: channels of the input levels: one int for all, or ``{level: channels}``.
        num_classes: number of classes ``C``.
        levels: feature keys read, finest first (default per ``kind``, see module docstring).
        channels: internal width.
        kind: ``"fpn"`` (Semantic FPN) or ``"aspp"`` (DeepLabV3+).
        ignore_index: target value excluded from the loss.
        strides: stride of each level (``None``: from the level names, ``pk``/``ck`` -> ``2**k``).
        atrous_rates: ASPP dilations (``None``: ``(6, 12, 18)`` scaled by ``16 / stride``).
        detail: a level finer than ``levels`` (``"c1"``) for the detail decoder step, or ``None``.
        detail_channels: width of the detail decoder step.
        region_loss: ``None``, ``"lovasz"`` or ``"dice"``: a region term added to the pixel CE.
        region_weight: its weight.
        ohem_thresh: OHEM probability threshold in ``(0, 1]``; 0 = plain cross-entropy.
        ohem_min_kept: fraction of labelled pixels OHEM keeps at least, in ``(0, 1]``.
        class_weight: ``None`` or one positive cross-entropy weight per class.
    """

    def __init__(
        self,
        task: str,
        in_channels: int | Mapping[str, int],
        num_classes: int,
        levels: Sequence[str] | None = None,
        channels: int = 128,
        kind: str = "fpn",
        ignore_index: int = 255,
        strides: Sequence[int] | None = None,
        atrous_rates: Sequence[int] | None = None,
        detail: str | None = None,
        detail_channels: int = 32,
        region_loss: str | None = None,
        region_weight: float = 1.0,
        ohem_thresh: float = 0.0,
        ohem_min_kept: float = 0.1,
        class_weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"task '{task}': head has zero classes")
        if region_loss is not None and region_loss not in _REGION_LOSSES:
            raise ValueError(f"task '{task}': unknown region_loss {region_loss!r}; valid: {', '.join(_REGION_LOSSES)} or null")
        self.region_loss = region_loss
        self.region_weight = float(region_weight)
        if not 0.0 <= ohem_thresh <= 1.0 or not 0.0 < ohem_min_kept <= 1.0:
            raise ValueError(f"task '{task}': ohem_thresh must be in [0, 1] and ohem_min_kept in (0, 1], "
                             f"got {ohem_thresh} and {ohem_min_kept}")
        self.ohem_thresh, self.ohem_min_kept = float(ohem_thresh), float(ohem_min_kept)
        if class_weight is not None:
            class_weight = [float(w) for w in class_weight]
            if len(class_weight) != num_classes or min(class_weight) <= 0:
                raise ValueError(f"task '{task}': class_weight needs {num_classes} positive numbers (one per class), "
                                 f"got {class_weight}")
            # not persistent: a checkpoint loads into a head with other (or no) weights
            self.register_buffer("class_weight", torch.tensor(class_weight), persistent=False)
        else:
            self.class_weight = None
        if isinstance(levels, str):
            levels = (levels,)
        self.levels = tuple(levels) if levels else default_levels(kind)
        if strides is None:
            strides = [2 ** int(lv[1:]) for lv in self.levels]
        self.strides = tuple(int(s) for s in strides)
        if len(self.strides) != len(self.levels):
            raise ValueError(f"segmentation head: {len(self.levels)} levels but {len(self.strides)} strides")
        order = sorted(range(len(self.levels)), key=lambda i: self.strides[i])
        self.levels = tuple(self.levels[i] for i in order)
        self.strides = tuple(self.strides[i] for i in order)
        self.task = task
        self.kind = kind
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.out_stride = self.strides[0]
        cin = {lv: int(in_channels[lv]) for lv in self.levels} if isinstance(in_channels, Mapping) else {lv: int(in_channels) for lv in self.levels}

        if kind == "fpn":
            self.branches = nn.ModuleList(
                _FPNBranch(cin[lv], channels, int(round(math.log2(s / self.out_stride)))) for lv, s in zip(self.levels, self.strides)
            )
            self.classifier = nn.Conv2d(channels, num_classes, 1)
        elif kind == "aspp":
            high = self.levels[-1]
            if atrous_rates is None:
                f = 16.0 / self.strides[-1]
                atrous_rates = tuple(max(1, int(round(r * f))) for r in (6, 12, 18))
            self.aspp = ASPP(cin[high], list(atrous_rates), channels)
            _bn_to_gn(self.aspp)
            if len(self.levels) > 1:
                self.low_proj = _conv_gn_relu(cin[self.levels[0]], 48, k=1)
                fuse_in = channels + 48
            else:
                self.low_proj = None
                fuse_in = channels
            self.fuse = nn.Sequential(_conv_gn_relu(fuse_in, channels), _conv_gn_relu(channels, channels))
            self.classifier = nn.Conv2d(channels, num_classes, 1)
        else:
            raise ValueError(f"unknown segmentation head kind {kind!r}; valid: {', '.join(_DEFAULT_LEVELS)}")

        self.detail = detail or None
        if self.detail is not None:
            d_stride = 2 ** int(self.detail[1:])
            if d_stride >= self.out_stride:
                raise ValueError(
                    f"segmentation head: detail level {self.detail!r} (stride {d_stride}) must be finer than "
                    f"the finest of {list(self.levels)} (stride {self.out_stride})"
                )
            d_in = int(in_channels[self.detail]) if isinstance(in_channels, Mapping) else int(in_channels)
            dc = int(detail_channels)
            self.detail_reduce = _conv_gn_relu(channels, dc, k=1)
            self.detail_proj = _conv_gn_relu(d_in, max(dc // 2, 1), k=1)
            self.detail_fuse = _conv_gn_relu(dc + max(dc // 2, 1), dc)
            self.classifier = nn.Conv2d(dc, num_classes, 1)
            self.out_stride = d_stride

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Args: ``features[level]`` float ``[B, C_l, H/s_l, W/s_l]``.

        Returns:
            ``{"logits": [B, num_classes, H/out_stride, W/out_stride]}`` (``out_stride`` = the
            finest level's stride, 4 by default, or the ``detail`` level's).
        """
        finest = features[self.levels[0]]
        size = (finest.shape[-2], finest.shape[-1])
        if self.kind == "fpn":
            x = None
            for lv, branch in zip(self.levels, self.branches):
                y = branch(features[lv], size)
                x = y if x is None else x + y
        else:
            x = self.aspp(features[self.levels[-1]])
            if self.low_proj is not None:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                x = torch.cat([x, self.low_proj(finest)], dim=1)
            x = self.fuse(x)
        if self.detail is not None:
            d = features[self.detail]
            x = F.interpolate(self.detail_reduce(x), size=d.shape[-2:], mode="bilinear", align_corners=False)
            x = self.detail_fuse(torch.cat([x, self.detail_proj(d)], dim=1))
        return {"logits": self.classifier(x)}

    def loss(self, raw: Mapping[str, Tensor], targets: Sequence[Mapping], has: Tensor) -> dict[str, Tensor]:
        """Pixel cross-entropy (and the ``region_loss`` term) over images whose ``has`` is true.

        Args:
            raw: output of :meth:`forward`.
            targets: per-image dicts with ``mask`` int64 ``[H, W]`` (padded batch size, 255 =
                ignore).
            has: bool ``[B]``.

        Returns:
            ``{"ce": scalar float32}``: mean over non-ignored pixels of the labelled
            images (logits bilinearly upsampled to the mask size); ``0 * logits.sum()`` when none.
            With ``region_loss``, also the term ``<region_loss>`` over the same pixels,
            times ``region_weight``.
        """
        logits = raw["logits"]
        key = "ce"
        rkey = str(self.region_loss)
        idx = [i for i, h in enumerate(has.tolist()) if h]
        if not idx:
            zero = logits.sum() * 0
            return {key: zero, rkey: zero} if self.region_loss else {key: zero}
        masks = torch.stack([torch.as_tensor(targets[i]["mask"]) for i in idx]).to(device=logits.device, dtype=torch.int64)
        sel = logits if len(idx) == logits.shape[0] else logits[torch.as_tensor(idx, device=logits.device)]
        sel = F.interpolate(sel.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        keep = masks != self.ignore_index
        if self.ohem_thresh > 0:
            out = {key: self._ohem_ce(sel, masks, keep)}
        else:
            w = None if self.class_weight is None else self.class_weight.float()
            total = F.cross_entropy(sel, masks, weight=w, ignore_index=self.ignore_index, reduction="sum")
            # the weighted mean, as reduction="mean", but 0 (not NaN) when every pixel is ignored
            denom = keep.sum() if w is None else w[masks[keep]].sum()
            out = {key: total / denom.float().clamp_min(1e-12)}
        if self.region_loss:
            probs = sel.softmax(dim=1).permute(0, 2, 3, 1)[keep]  # [P, C] over non-ignored pixels
            out[rkey] = self.region_weight * _REGION_LOSSES[self.region_loss](probs, masks[keep])
        return out

    def _ohem_ce(self, logits: Tensor, masks: Tensor, keep: Tensor) -> Tensor:
        """Mean cross-entropy over the hard pixels: true-class probability <= the threshold, or
        among the ``ohem_min_kept`` fraction with the lowest; weighted by ``class_weight`` if set."""
        ce = F.cross_entropy(logits, masks, ignore_index=self.ignore_index, reduction="none")[keep]
        if ce.numel() == 0:
            return logits.sum() * 0
        with torch.no_grad():
            k = max(1, int(math.ceil(self.ohem_min_kept * ce.numel())))
            # p_true = exp(-ce); the k-th smallest p_true is exp(-(k-th largest ce))
            kth = ce.topk(k, sorted=False).values.min()
            hard = ce >= torch.minimum(kth, ce.new_tensor(-math.log(self.ohem_thresh)))
        if self.class_weight is None:
            return ce[hard].mean()
        w = self.class_weight.float()[masks[keep][hard]]
        return (w * ce[hard]).sum() / w.sum()

    @torch.no_grad()
    def predict(
        self,
        raw: Mapping[str, Tensor],
        image_sizes: Sequence | Tensor,
        orig_sizes: Sequence | Tensor | None = None,
    ) -> list[dict[str, Tensor]]:
        """Per-image class masks.

        Logits are bilinearly upsampled by ``out_stride`` over the valid region and cropped to
        ``image_sizes[i]``. When ``orig_sizes[i]`` is smaller (evaluation at a larger input
        size), the logits are bilinearly resized down to it before the arg-max, as
        MMSegmentation does; when it is larger (e.g. video frames), the arg-maxed label map is
        nearest-resized up, which costs a fraction of resizing ``C`` logit maps to full frames
        (docs/results.md, "Measurements behind design choices").

        Returns:
            One dict per image: ``{"mask": int64 [h, w]}`` (original size when given, else the
            input region size).
        """
        return self.host_results(self.graph_outputs(raw), image_sizes, orig_sizes)

    def graph_outputs(self, raw: Mapping[str, Tensor], sizes=None, min_score=None, given=None) -> dict[str, Tensor]:
        """The exported part: ``logits`` ``[B, C, H / out_stride, W / out_stride]``."""
        return {"logits": raw["logits"].float()}

    def host_results(self, out: Mapping[str, Tensor], image_sizes, orig_sizes=None, min_score=None,
                     given=None) -> list[dict[str, Tensor]]:
        """Per-image label maps from :meth:`graph_outputs` (see :meth:`predict`)."""
        logits = out["logits"]
        b = logits.shape[0]
        s = self.out_stride
        sizes = hw_list(image_sizes, b)
        origs = hw_list(orig_sizes, b)
        results = []
        for i in range(b):
            h, w = sizes[i]
            hc, wc = min(math.ceil(h / s), logits.shape[-2]), min(math.ceil(w / s), logits.shape[-1])
            region = logits[i : i + 1, :, :hc, :wc].float()
            up = F.interpolate(region, size=(hc * s, wc * s), mode="bilinear", align_corners=False)[..., :h, :w]
            orig = tuple(origs[i]) if origs is not None else (h, w)
            if orig != (h, w) and orig[0] * orig[1] <= h * w:
                up = F.interpolate(up, size=orig, mode="bilinear", align_corners=False)
            mask = up.argmax(dim=1)[0]  # [h, w] or orig
            if tuple(mask.shape) != orig:
                # nearest up-sampling of the label map; uint8 resizes 5x faster than float here
                small = mask.to(torch.uint8) if logits.shape[1] <= 256 else mask.float()
                mask = F.interpolate(small[None, None], size=orig, mode="nearest-exact")[0, 0]
            results.append({"mask": mask.to(torch.int64)})
        return results
