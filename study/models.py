"""Model registry: the architectures of the CutMix paper, each split into a backbone and a classification head.

CutMix (Yun et al. 2019, arXiv 1905.04899) reports CIFAR results on PyramidNet-200 (alpha-tilde = 240, 26.8M
parameters) and on lighter networks (PyramidNet-110 with alpha-tilde = 64, CIFAR ResNets), and ImageNet results on
ResNet-50/101; its public code is clovaai/CutMix-PyTorch. The models here follow the public references:

* ``resnet8/20/56/110``: He et al. 2016, "Deep Residual Learning for Image Recognition" (arXiv 1512.03385),
  Section 4.2: 3 stages of 16/32/64 channels, 2n+2n+2n basic blocks, **option A** shortcuts (identity, with
  stride-2 subsampling and zero-padded extra channels, so shortcuts add no parameters), as in
  akamaster/pytorch_resnet_cifar10 (ResNet-20 = 0.27M parameters; ResNet-8, n = 1, 0.078M: the embedded
  default's cheap second architecture).
* ``resnet18/34/50/101``: torchvision's ImageNet ResNets (``torchvision.models.resnetXX``), unchanged, so the
  backbone's state_dict keys are torchvision's and load into ``resnet_fpn_backbone(...).body``.
* ``resnet18_cifar/resnet50_cifar``: the same torchvision modules with a 3x3 stride-1 stem and no max-pool for
  32x32 inputs (kuangliu/pytorch-cifar style). The key names stay torchvision's; only ``conv1.weight`` has a
  different shape ([64, C, 3, 3]), which ``study.fpn.load_backbone`` handles.
* ``pyramidnet/pyramidnet110/pyramidnet200``: Han et al. 2017, "Deep Pyramidal Residual Networks" (arXiv
  1610.02915), bottleneck variant, following dyhan0920/PyramidNet-PyTorch (the code CutMix-PyTorch copies):
  additive widening by alpha-tilde / (3n) per block, BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN blocks with
  4x output channels, zero-padded identity shortcuts with 2x2 average pooling when downsampling, no ReLU after
  the stem and a final BN-ReLU. depth = 9n + 2.
* ``cnn``: a small fast plain CNN (conv-BN-ReLU stages with max-pooling) for CPU runs; ``model.cam_stride``
  sets the stride of its last feature map (8 by default; 4 keeps a 6x6 CAM at 24 px, the embedded default).

:func:`cam_size` gives the CAM (last feature map) size of any built model at an input size: 3x3 for ``cnn`` and
6x6 for ``cnn`` with cam_stride 4 at 24 px; 8x8 for the CIFAR ResNets and PyramidNets at 32 px (stride 4, their
paper shapes); 7x7 for the torchvision ResNets at 224 px (stride 32; 32x32 inputs give 1x1, 4x4 for *_cifar).

Every model is a :class:`Classifier` = ``head(backbone(x))``. The backbone maps an image batch to its last
feature map and carries the pyramid metadata (``stage_names``, ``stage_channels``, ``stage_strides``) that
``study.fpn`` needs to build a detection FPN over it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from study.config.schema import MODEL_NAMES, ModelConfig

FAMILIES = ("torchvision-resnet", "cifar-resnet", "pyramidnet", "cnn")

# Blocks per stage n of the CIFAR ResNets (depth = 6n + 2).
_CIFAR_RESNET_N = {"resnet8": 1, "resnet20": 3, "resnet56": 9, "resnet110": 18}
# Fixed (depth, default alpha-tilde) of the named PyramidNets; "pyramidnet" takes both from the config.
_PYRAMIDNETS = {"pyramidnet": (110, 64.0), "pyramidnet110": (110, 64.0), "pyramidnet200": (200, 240.0)}
_TORCHVISION = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50", "resnet101": "resnet101",
                "resnet18_cifar": "resnet18", "resnet50_cifar": "resnet50"}


# ---------------------------------------------------------------------------------------------------------------
# Backbone and head


class Backbone(nn.Sequential):
    """An image-to-feature-map network: its direct children run in order.

    Input: float ``[B, in_channels, H, W]``. Output: the last feature map, float ``[B, C', H/s, W/s]`` with
    ``C' = stage_channels[-1]`` and ``s = stage_strides[-1]``.

    Attributes:
        family: one of :data:`FAMILIES`; ``"torchvision-resnet"`` means the state_dict keys are torchvision's.
        stage_names: names of direct children whose outputs are the pyramid levels, shallow to deep.
        stage_channels: channels of each of those outputs.
        stage_strides: spatial stride of each output with respect to the input image.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], *, family: str, stage_names: list[str],
                 stage_channels: list[int], stage_strides: list[int]) -> None:
        super().__init__(layers)
        if family not in FAMILIES:
            raise ValueError(f"family={family!r} is not allowed (one of: {', '.join(FAMILIES)})")
        missing = [n for n in stage_names if n not in layers]
        if missing or not (len(stage_names) == len(stage_channels) == len(stage_strides)):
            raise ValueError(f"bad stage metadata: {stage_names}, {stage_channels}, {stage_strides}")
        self.family = family
        self.stage_names = list(stage_names)
        self.stage_channels = [int(c) for c in stage_channels]
        self.stage_strides = [int(s) for s in stage_strides]

    @property
    def out_channels(self) -> int:
        return self.stage_channels[-1]


class Head(nn.Module):
    """Global average pooling + flatten + linear: float ``[B, C, h, w]`` -> logits float ``[B, num_classes]``."""

    def __init__(self, in_features: int, num_classes: int, fc: nn.Linear | None = None) -> None:
        super().__init__()
        self.fc = fc if fc is not None else nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # adaptive pool + flatten (not .view) keeps channels_last inputs working.
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Classifier(nn.Module):
    """``logits = head(backbone(x))``; x float ``[B, in_channels, H, W]`` -> logits float ``[B, num_classes]``."""

    def __init__(self, arch: str, backbone: Backbone, head: Head, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.arch = arch
        self.backbone = backbone
        self.head = head
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)

    @property
    def family(self) -> str:
        return self.backbone.family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# ---------------------------------------------------------------------------------------------------------------
# Small CNN


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _cnn(cfg: ModelConfig, num_classes: int, in_channels: int) -> tuple[Backbone, Head]:
    """stem conv(w), then three conv-BN-ReLU stages of 2w, 4w, 8w channels, each followed by a max-pool.

    The pools halve the map (2x2, stride 2) until the stride reaches ``cfg.cam_stride`` (0 means 8: three
    halvings, a 3x3 map at 24 px); past it a pool is 3x3 with stride 1 and padding 1, which keeps the local max
    but not the subsampling, in the manner of wsolevaluation's ``large_feature_map`` (the last ResNet stages at
    stride 1 for CAMs: Choe et al., CVPR 2020). cam_stride 4 gives a 6x6 map at 24 px at the same conv cost
    (the pool follows the last conv) and the same parameters, so every cam_stride loads the same state_dict.
    """
    w = cfg.width
    target = cfg.cam_stride or 8
    pools: list[nn.Module] = []
    strides: list[int] = []
    stride = 1
    for _ in range(3):
        if stride < target:
            pools.append(nn.MaxPool2d(2))
            stride *= 2
        else:
            pools.append(nn.MaxPool2d(3, stride=1, padding=1))
        strides.append(stride)
    layers = OrderedDict(
        stem=nn.Sequential(*_conv_bn_relu(in_channels, w)),
        layer1=nn.Sequential(*_conv_bn_relu(w, 2 * w), pools[0]),
        layer2=nn.Sequential(*_conv_bn_relu(2 * w, 4 * w), pools[1]),
        layer3=nn.Sequential(*_conv_bn_relu(4 * w, 8 * w), pools[2]),
    )
    backbone = Backbone(layers, family="cnn", stage_names=["layer1", "layer2", "layer3"],
                        stage_channels=[2 * w, 4 * w, 8 * w], stage_strides=strides)
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return backbone, Head(8 * w, num_classes)


# ---------------------------------------------------------------------------------------------------------------
# CIFAR ResNets, He et al. 2016 (option A shortcuts)


class CifarBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. Option A shortcut: identity, subsampled by 2 and zero-padded
    in channels when the shape changes (parameter-free, as in the paper's CIFAR experiments)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.stride = stride
        self.pad = planes - inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        if self.pad > 0:
            # F.pad on dim 1 pads channels (the last pair of the pad tuple is the channel dimension).
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
        return self.relu(out + shortcut)


def _cifar_resnet(arch: str, num_classes: int, in_channels: int) -> tuple[Backbone, Head]:
    n = _CIFAR_RESNET_N[arch]
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(16), relu=nn.ReLU(inplace=True))
    inplanes = 16
    for i, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        blocks = [CifarBasicBlock(inplanes, planes, stride)] + [CifarBasicBlock(planes, planes) for _ in range(n - 1)]
        layers[f"layer{i}"] = nn.Sequential(*blocks)
        inplanes = planes
    backbone = Backbone(layers, family="cifar-resnet", stage_names=["layer1", "layer2", "layer3"],
                        stage_channels=[16, 32, 64], stage_strides=[1, 2, 4])
    head = Head(64, num_classes)
    # akamaster/pytorch_resnet_cifar10 `_weights_init`: kaiming_normal_ (fan_in) on convs and the classifier.
    for m in [*backbone.modules(), *head.modules()]:
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight)
    return backbone, head


# ---------------------------------------------------------------------------------------------------------------
# PyramidNet, Han et al. 2017 (bottleneck), after dyhan0920/PyramidNet-PyTorch


class PyramidBottleneck(nn.Module):
    """BN-conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, plus a zero-padded identity shortcut.

    The shortcut is ``downsample(x)`` (2x2 average pooling) when the block strides, and its missing channels are
    zeros, so widening costs no shortcut parameters (Han et al. 2017, Section 3.2, "zero-padded identity").
    """

    outchannel_ratio = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.outchannel_ratio, kernel_size=1, bias=False)
        self.bn4 = nn.BatchNorm2d(planes * self.outchannel_ratio)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        out = self.bn4(out)
        shortcut = self.downsample(x) if self.downsample is not None else x
        extra = out.shape[1] - shortcut.shape[1]
        if extra > 0:
            # The reference allocates torch.cuda.FloatTensor zeros; F.pad is device-, dtype- and layout-agnostic.
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra))
        return out + shortcut


def pyramidnet_valid_depths(limit: int = 300) -> list[int]:
    """Depths a bottleneck PyramidNet can have: 9n + 2 (3 stages of n blocks, 3 convs each, + stem + fc)."""
    return list(range(11, limit + 1, 9))


def _pyramidnet(arch: str, cfg: ModelConfig, num_classes: int, in_channels: int) -> tuple[Backbone, Head]:
    fixed_depth, default_alpha = _PYRAMIDNETS[arch]
    if arch == "pyramidnet":
        depth = cfg.depth or fixed_depth
    else:
        if cfg.depth not in (0, fixed_depth):
            raise ValueError(f"model.depth={cfg.depth} contradicts model.arch={arch!r} (depth {fixed_depth}); "
                             f"use model.arch=pyramidnet to choose the depth")
        depth = fixed_depth
    alpha = float(cfg.widen or default_alpha)
    if depth < 11 or (depth - 2) % 9 != 0:
        below = max([d for d in pyramidnet_valid_depths(depth) if d < depth], default=None)
        near = ", ".join(str(d) for d in (below, (below or 2) + 9) if d)
        raise ValueError(f"model.depth={depth} is not valid for a bottleneck PyramidNet ((depth - 2) % 9 == 0: "
                         f"11, 20, 29, ..., 110, ..., 164, ..., 200, ..., 272; nearest: {near})")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"model.widen={alpha} is not allowed (alpha-tilde > 0)")
    n = (depth - 2) // 9
    addrate = alpha / (3 * n)  # additive widening: every block adds alpha/(3n) bottleneck channels

    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(16))
    # The reference keeps the running width as a float and rounds per block; doing the same reproduces its
    # channel counts (and so its parameter counts and state_dict shapes) exactly.
    featuremap_dim = 16.0
    in_dim = 16
    stage_channels = []
    for i, stride in enumerate([1, 2, 2], start=1):
        downsample = nn.AvgPool2d((2, 2), stride=(2, 2), ceil_mode=True) if stride != 1 else None
        featuremap_dim += addrate
        blocks = [PyramidBottleneck(in_dim, int(round(featuremap_dim)), stride, downsample)]
        for _ in range(1, n):
            nxt = featuremap_dim + addrate
            blocks.append(PyramidBottleneck(int(round(featuremap_dim)) * 4, int(round(nxt)), 1))
            featuremap_dim = nxt
        in_dim = int(round(featuremap_dim)) * 4
        layers[f"layer{i}"] = nn.Sequential(*blocks)
        stage_channels.append(in_dim)
    layers["bn_final"] = nn.BatchNorm2d(in_dim)
    layers["relu_final"] = nn.ReLU(inplace=True)
    # The last pyramid level is taken after the final BN-ReLU (what the classifier sees); the first two are the
    # pre-activation residual stream, which is all a pre-activation network has at those depths.
    backbone = Backbone(layers, family="pyramidnet", stage_names=["layer1", "layer2", "relu_final"],
                        stage_channels=stage_channels, stage_strides=[1, 2, 4])
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            # Reference: normal(0, sqrt(2 / (k*k*out_channels))), i.e. He/kaiming normal with fan_out.
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return backbone, Head(in_dim, num_classes)  # the reference leaves fc at PyTorch's default init


# ---------------------------------------------------------------------------------------------------------------
# torchvision ResNets


def _torchvision_resnet(arch: str, num_classes: int, in_channels: int) -> tuple[Backbone, Head]:
    # Late, on purpose: importing torchvision imports torch._dynamo (through torchvision.ops.roi_align), ~1.7 CPU-s
    # in every process that builds a model (each trial actor, Ray task and CLI call); only these ResNets need it.
    import torchvision.models

    name = _TORCHVISION[arch]
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)  # kaiming init (fan_out)
    cifar = arch.endswith("_cifar")
    if cifar or in_channels != 3:
        k, s, p = (3, 1, 1) if cifar else (7, 2, 3)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=k, stride=s, padding=p, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    if cifar:
        net.maxpool = nn.Identity()  # a 32x32 image must not shrink to 8x8 before layer1
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    layers = OrderedDict((n, getattr(net, n)) for n in names)
    expansion = 4 if name in ("resnet50", "resnet101") else 1
    base = 1 if cifar else 4
    backbone = Backbone(layers, family="torchvision-resnet", stage_names=names[4:],
                        stage_channels=[64 * expansion * 2**i for i in range(4)],
                        stage_strides=[base * 2**i for i in range(4)])
    return backbone, Head(net.fc.in_features, num_classes, fc=net.fc)


# ---------------------------------------------------------------------------------------------------------------
# Registry


def _builders() -> dict[str, Callable[[ModelConfig, int, int], tuple[Backbone, Head]]]:
    out: dict[str, Callable[[ModelConfig, int, int], tuple[Backbone, Head]]] = {"cnn": _cnn}
    for a in _CIFAR_RESNET_N:
        out[a] = lambda cfg, k, c, a=a: _cifar_resnet(a, k, c)
    for a in _TORCHVISION:
        out[a] = lambda cfg, k, c, a=a: _torchvision_resnet(a, k, c)
    for a in _PYRAMIDNETS:
        out[a] = lambda cfg, k, c, a=a: _pyramidnet(a, cfg, k, c)
    assert set(out) == set(MODEL_NAMES)
    return out


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> Classifier:
    """Build ``cfg.arch`` for ``num_classes`` classes and ``in_channels``-channel images (float [B, C, H, W]).

    ``cfg.depth`` and ``cfg.widen`` (alpha-tilde) apply to the PyramidNets, ``cfg.width`` and ``cfg.cam_stride`` to
    ``cnn``; the other architectures have fixed shapes (their paper's: :func:`cam_size` reports their CAM).
    Raises ValueError for an unknown arch or an impossible depth.
    """

    if cfg.arch not in MODEL_NAMES:
        raise ValueError(f"model.arch={cfg.arch!r} is not allowed (one of: {', '.join(MODEL_NAMES)})")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes={num_classes}, in_channels={in_channels} are not allowed (>= 1)")
    backbone, head = _builders()[cfg.arch](cfg, num_classes, in_channels)
    return Classifier(cfg.arch, backbone, head, in_channels, num_classes)


def cam_size(model: Classifier, image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the model's last feature map, the map CAMs are computed on, for an input of `image_size` pixels
    (a side, or (H, W)). Measured with one forward pass of a zero image through the backbone (exact for any
    padding and rounding), in eval mode and without gradients; the model's mode is restored."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.backbone(torch.zeros(1, model.in_channels, h, w, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
