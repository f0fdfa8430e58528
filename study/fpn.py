"""Load an export (study.export's ``export/`` directory) back as a detection feature pyramid.

:func:`load_backbone` verifies the sha256 first (study.export.verify_export), rebuilds the architecture from the
manifest, loads the weights strictly and wraps the network in torchvision's ``BackboneWithFPN`` (Lin et al. 2017
FPN; torchvision ``models/detection/backbone_utils.py``) with frozen BatchNorm, exactly like
``resnet_fpn_backbone`` does for torchvision's own weights. A backbone of fewer than five stages gets the missing
pyramid levels by stride-2 max pooling (:class:`MaxPoolLevels`). Every failure a user can cause raises
study.export's :class:`ExportError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file as _st_load
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from study.config.schema import ModelConfig
from study.export import (
    FPN_CHANNELS,
    MANIFEST,
    NUM_FPN_LEVELS,
    PT_FILE,
    RERUN,
    SAFETENSORS_FILE,
    ExportError,
    first_line,
    read_manifest,
    verify_export,
)
from study.models import Backbone, build_model

__all__ = ["MaxPoolLevels", "freeze_batchnorm", "load_backbone"]




class MaxPoolLevels(ExtraFPNBlock):
    """Extra FPN levels by stride-2 subsampling of the coarsest map (torchvision's ``LastLevelMaxPool``, repeated).

    torchvision's ``FasterRCNN`` defaults need five maps named "0".."3" and "pool"; a 3-stage CIFAR network
    gives three, so two more levels ("3", "pool") are appended. With four stages this is ``LastLevelMaxPool``.
    """

    def __init__(self, num_levels: int = 1) -> None:
        super().__init__()
        self.num_levels = num_levels

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor],
                names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        first = len(names)
        for j in range(self.num_levels):
            results.append(nn.functional.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
            names.append("pool" if j == self.num_levels - 1 else str(first + j))
        return results, names


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d (in place) by torchvision's FrozenBatchNorm2d with the same statistics.

    Detection trains with a few images per batch, too few for batch statistics; torchvision's detection
    backbones use frozen BN for this reason (maskrcnn-benchmark issue 267).
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.track_running_stats:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def _stage_groups(backbone: Backbone) -> list[list[str]]:
    """Children of the backbone grouped as [stem, stage 1, ..., stage n]. The stem is everything before the first
    stage; stage k also owns the children between stage k-1 and itself (so PyramidNet's final BN belongs to its
    last stage), and the last stage owns any children after it."""
    names = [name for name, _ in backbone.named_children()]
    idx = [names.index(s) for s in backbone.stage_names]
    groups = [names[: idx[0]], [names[idx[0]]]]
    for prev, cur in zip(idx, idx[1:]):
        groups.append(names[prev + 1: cur + 1])
    groups[-1].extend(names[idx[-1] + 1:])
    return groups


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return _st_load(str(path), device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling/safetensors errors come in many types
        raise ExportError(f"cannot read export file {path} ({first_line(exc)}; {RERUN})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:  # the mmdet/mmengine layout
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"export file {path} does not hold a state_dict of tensors ({RERUN})")
    return dict(obj)


def load_backbone(path: str | Path, trainable_layers: int | None = None,
                  returned_layers: list[int] | None = None, random_init: bool = False) -> BackboneWithFPN:
    """Load an exported backbone as a detection feature pyramid (torchvision ``BackboneWithFPN``).

    Args:
        path: an export directory (``backbone.safetensors`` is read, no unpickling) or one of its files
            (``backbone.pt``, ``backbone.safetensors``, ``backbone_mmdet.pth``). Its sha256 is checked first.
        trainable_layers: how many stages, counted from the deepest, keep ``requires_grad``; the stem counts as one
            more, so ``len(stages) + 1`` trains everything and 0 freezes the whole backbone, as in torchvision's
            ``resnet_fpn_backbone`` (for the 4-stage ResNets: 0..5; layer4, layer3, layer2, layer1, then
            conv1/bn1). None means all stages but the first (torchvision's default of 3 for ResNets, 2 for the
            3-stage CIFAR networks). The FPN itself is always trainable.
        returned_layers: 1-based stage indices fed to the FPN (default: all stages), like torchvision's.
        random_init: build the same architecture and pyramid but keep its fresh random weights and live
            BatchNorm: the control of a transfer experiment (same detector, same budget, no pretraining). Pass
            ``trainable_layers=len(stages) + 1`` to train all of it. The files are still verified.

    Returns:
        A ``BackboneWithFPN`` with ``out_channels == 256``; ``forward(images float [B, C, H, W])`` returns an
        OrderedDict of float ``[B, 256, H/s, W/s]`` maps named "0", "1", ... and "pool" (padded to five maps
        with stride-2 subsampling when the network has fewer stages, so ``FasterRCNN(backbone, num_classes=...)``
        works with its default anchors and RoI pooler). BatchNorm is frozen (``FrozenBatchNorm2d``), as in
        torchvision's detection backbones. The manifest is attached as ``.manifest``.

    Raises ExportError for anything wrong with the files (never a deep torch traceback).
    """
    path = Path(path)
    if path.is_dir():
        export_dir = path
        manifest = read_manifest(export_dir)
        name = SAFETENSORS_FILE if SAFETENSORS_FILE in manifest["files"] else PT_FILE
    elif path.is_file():
        export_dir, name = path.parent, path.name
    else:
        raise ExportError(f"export not found: {path} (give an export directory or its backbone.pt)")
    manifest = verify_export(export_dir, files=[name])
    state = _read_state(export_dir / name)

    try:
        model_cfg = ModelConfig(**manifest["model"])
        model = build_model(model_cfg, int(manifest["num_classes"]), int(manifest["in_channels"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{export_dir / MANIFEST} does not describe a known model ({first_line(exc)})") from None
    backbone: Backbone = model.backbone
    try:
        if not random_init:
            backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"weights in {export_dir / name} do not fit model.arch={model_cfg.arch!r} "
                          f"({first_line(exc)}; {RERUN})") from None
    if list(manifest.get("stage_names", backbone.stage_names)) != backbone.stage_names:
        raise ExportError(f"{export_dir / MANIFEST} stage_names {manifest['stage_names']} differ from the "
                          f"architecture's {backbone.stage_names} (export made by another version; {RERUN})")
    if not random_init:
        # Pretrained statistics are kept, as torchvision's detection backbones do; a random control keeps live
        # BatchNorm (frozen random statistics would be an identity and handicap the control).
        freeze_batchnorm(backbone)

    stages = backbone.stage_names
    n = len(stages)
    if trainable_layers is None:
        trainable_layers = max(n - 1, 0)
    if not 0 <= trainable_layers <= n + 1:
        raise ExportError(f"trainable_layers={trainable_layers} is not allowed (0..{n + 1} for {model_cfg.arch})")
    groups = _stage_groups(backbone)
    trainable = {c for g in (groups[-trainable_layers:] if trainable_layers else []) for c in g}
    for child_name, child in backbone.named_children():
        child.requires_grad_(child_name in trainable)

    returned = list(range(1, n + 1)) if returned_layers is None else [int(k) for k in returned_layers]
    if not returned or sorted(set(returned)) != returned or returned[0] < 1 or returned[-1] > n:
        raise ExportError(f"returned_layers={returned_layers} is not allowed (increasing stage numbers in 1..{n})")
    return_layers = {stages[k - 1]: str(i) for i, k in enumerate(returned)}
    in_channels_list = [backbone.stage_channels[k - 1] for k in returned]
    extra = max(1, NUM_FPN_LEVELS - len(returned))
    extra_blocks = LastLevelMaxPool() if extra == 1 else MaxPoolLevels(extra)
    fpn = BackboneWithFPN(backbone, return_layers, in_channels_list, FPN_CHANNELS, extra_blocks=extra_blocks)
    fpn.manifest = manifest
    return fpn
