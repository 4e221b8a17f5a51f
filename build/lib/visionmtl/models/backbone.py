"""ResNet-family backbone with an optional Feature Pyramid Network.

The backbone computes features once per batch and returns a dict keyed by level name:

* ``"c1"``: the stem (conv1, norm, ReLU; stride 2, before the max-pool), for fine detail.
* ``"c2".."c5"``: ResNet stage outputs (stride 4, 8, 16, 32). The deepest built stage (``"c5"``,
  or ``"c4"`` with ``num_stages=3``) is always returned; the others only when asked for.
* ``"p2".."p7"``: FPN outputs (stride ``2**k``, ``fpn_channels`` channels). P2-P5 come from
  :class:`torchvision.ops.FeaturePyramidNetwork` over C3-C5 (plus C2 when ``"p2"`` is asked for);
  P6/P7 come from :class:`torchvision.ops.feature_pyramid_network.LastLevelP6P7` applied to P5
  (FCOS style). When no P-level is asked for, no FPN is built at all.

``num_stages=3`` builds the ResNet only up to ``layer3`` (C4, stride 16): ``layer4`` is neither
built nor run, as torchvision's ``returned_layers`` without the last stage. The FPN then runs over
C2/C3-C4, and P5 and above come from a chain of stride-2 3x3 convs on P4 (ReLU between them), the
way FCOS and RetinaNet build P6/P7. For ResNet-18 ``layer4`` holds 75% of the parameters and,
at 128 px, 23% of the backbone's FLOPs; on small images whose objects are all far smaller than
C4's receptive field it is compute without a use (see the README's shapes figures).

All outputs are float tensors ``[B, C_level, ceil(H/stride), ceil(W/stride)]`` in the input's
dtype (or the autocast dtype) and memory format.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from ..errors import WeightsError

__all__ = ["BACKBONE_NAMES", "LEVEL_STRIDES", "Backbone", "LastLevelConvs", "WeightsError", "load_backbone_state_dict"]

#: torchvision model builders accepted as ``name``.
BACKBONE_NAMES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)

#: Every output level the backbone can produce, with its stride in input pixels.
LEVEL_STRIDES: dict[str, int] = {
    "c1": 2,
    "c2": 4,
    "c3": 8,
    "c4": 16,
    "c5": 32,
    "p2": 4,
    "p3": 8,
    "p4": 16,
    "p5": 32,
    "p6": 64,
    "p7": 128,
}

_STAGE_OF_C = {"c1": "relu", "c2": "layer1", "c3": "layer2", "c4": "layer3", "c5": "layer4"}
_NORMS = ("bn", "frozen_bn", "gn")
_STRIP_PREFIXES = ("module.", "backbone.", "body.")




def _group_norm(channels: int) -> nn.GroupNorm:
    groups = max(g for g in range(1, 33) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _norm_layer(norm: str) -> Any:
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "gn":
        return _group_norm
    raise ValueError(f"unknown backbone norm {norm!r}; valid: {', '.join(_NORMS)}")


def _imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """Fetch torchvision's default ImageNet weights for ``name`` (cached under the torch hub dir)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    url = weights.url
    filename = os.path.basename(urlparse(url).path)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    existed = os.path.isfile(cached)
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, OSError, ...)
        if existed:
            raise WeightsError(
                f"could not load the cached weights {cached} ({type(exc).__name__}: {exc}); "
                f"delete it to download {url} again (or set weights: /path/to/file.pth)"
            ) from exc
        raise WeightsError(
            f"could not download {url} ({type(exc).__name__}: {exc}); "
            f"place the file at {cached} (or set weights: /path/to/file.pth)"
        ) from exc


def _unwrap_checkpoint(obj: Any, path: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state_dict (or a dict with 'state_dict'/'model'), got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            continue
        k = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _STRIP_PREFIXES:
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    stripped = True
        out[k] = value
    return out


def load_backbone_state_dict(model: nn.Module, weights: str, name: str = "resnet") -> list[str]:
    """Load ``weights`` ("imagenet" or a file path) into a torchvision ResNet ``model``.

    File checkpoints are read with ``torch.load(weights_only=True)``; a raw state_dict or a dict
    holding one under ``"state_dict"``/``"model"`` is accepted, ``module.``/``backbone.``/``body.``
    prefixes are stripped and ``fc.*`` entries are ignored. Loading is non-strict, but a
    checkpoint in which no key matches the network raises :class:`WeightsError`.

    Returns:
        The network keys that the checkpoint did not provide.
    """
    if weights == "imagenet":
        state = dict(_imagenet_state_dict(name))
        source = f"imagenet weights for {name}"
    else:
        path = os.path.expanduser(str(weights))
        if not os.path.isfile(path):
            raise WeightsError(f"backbone weights file not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if "weights_only" in str(exc) or "Weights only load failed" in str(exc):
                # torch's advice (retry with weights_only=False) would run code from the file: don't pass it on
                first = "it holds pickled Python objects, not only tensors (save a state_dict instead)"
            raise WeightsError(f"could not read backbone weights {path}: {first}") from None
        state = _unwrap_checkpoint(obj, path)
        source = path
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        sample = ", ".join(list(state)[:5])
        raise WeightsError(f"{source}: no parameter names match {name} (checkpoint keys start with: {sample})")
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in matched if state[k].shape != own[k].shape]
    if bad:
        raise WeightsError(f"{source}: shape mismatch for {name}: " + "; ".join(bad[:5]))
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys)


class LastLevelConvs(ExtraFPNBlock):
    """Extra pyramid levels from the FPN's coarsest output: ``len(names)`` stride-2 3x3 convs.

    The first conv reads the coarsest FPN level, every further one a ReLU of the previous
    output, initialised as :class:`LastLevelP6P7` (Kaiming-uniform, ``a=1``, zero bias).
    """

    def __init__(self, channels: int, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, 2, 1) for _ in self.names)
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.constant_(conv.bias, 0)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p = results[-1]
        for i, conv in enumerate(self.convs):
            p = conv(p if i == 0 else torch.relu(p))
            results.append(p)
        names.extend(self.names)
        return results, names


class Backbone(nn.Module):
    """torchvision ResNet/ResNeXt/Wide-ResNet body plus an optional FPN.

    Args:
        name: torchvision builder name, one of :data:`BACKBONE_NAMES`.
        weights: ``"none"`` (random init), ``"imagenet"`` (torchvision default weights, cached in
            ``<torch hub dir>/checkpoints``) or a path to a ``.pth`` checkpoint.
        levels: output levels to build, from ``c1..c5`` and ``p2..p7``. ``"c5"`` is always
            returned. No P-level -> no FPN.
        fpn_channels: channels of every P-level.
        freeze_stages: ``-1``/``0`` freeze nothing; ``1`` the stem (conv1 + bn1); ``2`` stem +
            layer1; ``3`` stem + layer1-2; ``4`` stem + layer1-3; ``5`` stem + all four layers.
            Frozen parameters get ``requires_grad=False`` and the BatchNorm layers inside frozen
            stages stay in eval mode.
        freeze_bn: keep every BatchNorm2d of the ResNet body in eval mode (running statistics
            never update) with frozen affine parameters.
        norm: normalisation of the ResNet body: ``"bn"`` (BatchNorm2d), ``"frozen_bn"``
            (:class:`torchvision.ops.FrozenBatchNorm2d`) or ``"gn"`` (GroupNorm, <= 32 groups).
        num_stages: ResNet stages built, ``4`` (C2-C5) or ``3`` (C2-C4, no ``layer4``; P5-P7
            from stride-2 convs on P4, see the module docstring).

    Attributes:
        out_channels: channels of each output key.
        strides: stride (input pixels per feature cell) of each output key.
    """

    def __init__(
        self,
        name: str = "resnet18",
        weights: str | None = "none",
        levels: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        fpn_channels: int = 128,
        freeze_stages: int = 0,
        freeze_bn: bool = False,
        norm: str = "bn",
        num_stages: int = 4,
    ) -> None:
        super().__init__()
        if name not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
        if isinstance(levels, str):
            levels = (levels,)
        unknown = [lv for lv in levels if lv not in LEVEL_STRIDES]
        if unknown:
            raise ValueError(f"unknown backbone levels {unknown}; valid: {', '.join(LEVEL_STRIDES)}")
        if not -1 <= int(freeze_stages) <= 5:
            raise ValueError(f"freeze_stages must be in -1..5, got {freeze_stages}")
        if int(num_stages) not in (3, 4):
            raise ValueError(f"num_stages must be 3 or 4, got {num_stages}")
        self.num_stages = int(num_stages)
        deepest = f"c{self.num_stages + 1}"
        too_deep = [lv for lv in levels if lv.startswith("c") and LEVEL_STRIDES[lv] > LEVEL_STRIDES[deepest]]
        if too_deep:
            raise ValueError(f"levels {too_deep} need ResNet stage 4 (layer4), but model.backbone.num_stages is "
                             f"{self.num_stages}; read p5 or {deepest} instead")
        self.name = name
        self.freeze_stages = int(freeze_stages)
        self.freeze_bn = bool(freeze_bn)

        resnet = torchvision.models.get_model(name, weights=None, norm_layer=_norm_layer(norm))
        if weights is not None and str(weights).lower() not in ("none", ""):
            load_backbone_state_dict(resnet, "imagenet" if str(weights).lower() == "imagenet" else str(weights), name)

        requested = set(levels) | {deepest}
        p_levels = sorted((lv for lv in requested if lv.startswith("p")), key=LEVEL_STRIDES.__getitem__)
        fpn_inputs: list[str] = []
        if p_levels:
            fpn_inputs = (["c2"] if "p2" in requested else []) + ["c3", "c4", "c5"][: self.num_stages - 1]
        c_needed = sorted({lv for lv in requested if lv.startswith("c")} | set(fpn_inputs), key=LEVEL_STRIDES.__getitem__)

        stage_channels = {
            c: [m for m in getattr(resnet, stage)[-1].modules() if isinstance(m, nn.Conv2d)][-1].out_channels
            for c, stage in _STAGE_OF_C.items() if c != "c1" and LEVEL_STRIDES[c] <= LEVEL_STRIDES[deepest]
        }
        stage_channels["c1"] = resnet.conv1.out_channels
        self.body = IntermediateLayerGetter(resnet, return_layers={_STAGE_OF_C[c]: c for c in c_needed})
        self._fpn_inputs = tuple(fpn_inputs)
        self.fpn: FeaturePyramidNetwork | None = None
        if p_levels:
            above = [f"p{k}" for k in range(self.num_stages + 2, int(p_levels[-1][1:]) + 1)]
            if not above:
                extra = None
            elif self.num_stages == 4:
                extra = LastLevelP6P7(fpn_channels, fpn_channels)
            else:
                extra = LastLevelConvs(fpn_channels, above)
            self.fpn = FeaturePyramidNetwork([stage_channels[c] for c in fpn_inputs], fpn_channels, extra_blocks=extra)

        self.levels: tuple[str, ...] = tuple(sorted(requested, key=lambda lv: (LEVEL_STRIDES[lv], lv[0] == "p")))
        self.out_channels: dict[str, int] = {
            lv: (fpn_channels if lv.startswith("p") else stage_channels[lv]) for lv in self.levels
        }
        self.strides: dict[str, int] = {lv: LEVEL_STRIDES[lv] for lv in self.levels}

        self._frozen_norms: list[nn.Module] = []
        self._apply_freezing()

    # ------------------------------------------------------------------ freezing
    def _stage_modules(self) -> list[list[nn.Module]]:
        body = self.body
        stages: list[list[nn.Module]] = [[body.conv1, body.bn1]]
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            stages.append([getattr(body, stage)] if hasattr(body, stage) else [])
        return stages

    def _apply_freezing(self) -> None:
        frozen_norms: list[nn.Module] = []
        norm_types = (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d)
        for stage in self._stage_modules()[: max(self.freeze_stages, 0)]:
            for module in stage:
                for p in module.parameters():
                    p.requires_grad_(False)
                frozen_norms.extend(m for m in module.modules() if isinstance(m, norm_types))
        if self.freeze_bn:
            for m in self.body.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)
                    frozen_norms.append(m)
        seen: set[int] = set()
        self._frozen_norms = [m for m in frozen_norms if not (id(m) in seen or seen.add(id(m)))]
        for m in self._frozen_norms:
            m.eval()

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode; frozen normalisation layers always stay in eval mode."""
        super().train(mode)
        for m in self._frozen_norms:
            m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Compute features.

        Args:
            x: float images ``[B, 3, H, W]`` (any memory format).

        Returns:
            ``{level: [B, out_channels[level], ceil(H/s), ceil(W/s)]}`` for every level in
            :attr:`levels` (``s`` = :attr:`strides` ``[level]``).
        """
        feats = self.body(x)
        out: dict[str, Tensor] = {}
        if self.fpn is not None:
            fpn_in = OrderedDict(("p" + c[1:], feats[c]) for c in self._fpn_inputs)
            pyramid = self.fpn(fpn_in)
            for lv, f in pyramid.items():
                if lv in self.strides:
                    out[lv] = f
        for lv in self.levels:
            if lv.startswith("c"):
                out[lv] = feats[lv]
        return {lv: out[lv] for lv in self.levels}
