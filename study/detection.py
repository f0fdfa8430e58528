"""Detection transfer: fine-tune a Faster R-CNN with FPN on an exported backbone and report COCO-style mAP.

The CutMix paper (Yun et al., 2019, arXiv:1905.04899, sec. 4.2) shows that a CutMix-pretrained ImageNet
backbone transfers to Pascal VOC detection with Faster R-CNN (Ren et al., 2015, arXiv:1506.01497) and to
MS-COCO captioning. This module is the stage that repeats the detection half of that claim for our backbones:

* datasets in one format, ``(image float32 [3, H, W] in [0, 1], {"boxes": float32 [N, 4] xyxy pixels,
  "labels": int64 [N]})``: :func:`voc_dataset` (Pascal VOC read from a local root, never downloaded) here, and
  the procedural sets, generated in their own modules and chosen by :func:`detection_datasets`:
  ``study.data.cluttered_digits.DigitScenes`` (the default: scenes of the classification default's digits) and
  ``study.data.shapes.SyntheticShapes`` (coloured shapes);
* :func:`build_detector`: torchvision's ``FasterRCNN`` over any FPN backbone (Lin et al., 2017,
  arXiv:1612.03144) with anchors, RoI levels and sampling budgets sized for small images on a CPU;
* :func:`train_one_epoch`, :func:`evaluate_map` and :func:`finetune`, written after torchvision's
  ``references/detection`` (``engine.py``, ``train.py``: SGD, momentum 0.9, wd 1e-4, linear warm-up;
  our schedule then follows a cosine instead of steps), with mAP from torchmetrics' ``MeanAveragePrecision``
  on the pycocotools backend (COCO mAP@[.5:.95], plus mAP@.5, the VOC-style number the paper reports).

Box convention: pixel ``i`` covers ``[i, i + 1)``, so a shape whose leftmost drawn column is ``x0`` and
rightmost ``x1`` has ``x_min = x0`` and ``x_max = x1 + 1``. VOC's 1-based inclusive boxes are converted to
the same convention (``x_min - 1``, ``x_max``), as detectron2's VOC loader does.

Plain PyTorch + torchvision + torchmetrics: no MLflow, no Ray here (``pipelines/`` wires those).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from study.config.schema import DetectConfig, build
from study.data.cluttered_digits import CLASSES_DIGITS, DigitScenes
from study.data.shapes import CLASSES_SYNTHETIC, SyntheticShapes
from study.data.voc import VOC_CLASSES, DetectionDataError, _voc_archive, voc_dataset

__all__ = [
    "VOC_CLASSES",
    "DetectionDataError",
    "MapMeter",
    "build_detector",
    "collate",
    "detection_datasets",
    "evaluate_map",
    "finetune",
    "make_loader",
    "train_one_epoch",
    "voc_dataset",
]

Target = dict[str, torch.Tensor]

# ---------------------------------------------------------------------------------------------------------------
# Model


def _feature_levels(backbone: nn.Module, image_size: int) -> OrderedDict[str, int]:
    """Names of the backbone's output maps with their strides, from one dummy forward pass.

    The pass runs in eval mode and without gradients, so BatchNorm running statistics of a pretrained
    backbone are not touched by the dummy input.
    """
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        backbone.train(was_training)
    if isinstance(out, torch.Tensor):
        out = OrderedDict([("0", out)])  # FasterRCNN wraps a single map the same way
    levels = OrderedDict((str(name), max(1, round(image_size / fm.shape[-1]))) for name, fm in out.items())
    strides = list(levels.values())
    if strides != sorted(strides):
        raise ValueError(f"backbone feature maps must go from fine to coarse, got strides {levels}")
    return levels


def _anchor_sizes(num_levels: int, image_size: int,
                  scale: tuple[float, float] = (1 / 16, 1.0)) -> tuple[tuple[int, ...], ...]:
    """Anchor sides from ``scale[0]`` to ``scale[1]`` times image_size, geometric, spread fine-to-coarse over levels.

    torchvision's defaults (32..512 over 5 levels) suit 800-px images; at 128 px they would miss small
    objects. About one size per octave of ``scale``: the default 1/16..1 gives 5 sizes, so 5 levels get one size
    each (8, 16, 32, 64, 128 at 128 px); fewer levels get ``ceil(5 / levels)`` sizes each, so the octave coverage
    stays similar (the RPN head needs the same number of anchors at every level). A dataset whose objects span a
    known range passes it (``SyntheticShapes.object_scale``, 0.1..0.5: 6, 14, 32 px on one level at 64 px), so
    no anchor is spent on sizes that never match an object.
    """
    lo, hi = scale[0] * image_size, scale[1] * image_size
    if not 0 < lo <= hi:
        raise ValueError(f"anchor scale {scale} is not allowed (0 < smallest <= largest, fractions of image_size)")
    octaves = max(2, round(math.log2(hi / lo)) + 1)
    per_level = math.ceil(octaves / num_levels)
    n = num_levels * per_level
    sizes = [max(1, round(lo * (hi / lo) ** (j / max(1, n - 1)))) for j in range(n)]
    return tuple(tuple(sizes[i * per_level:(i + 1) * per_level]) for i in range(num_levels))


class FinestLevels(nn.Module):
    """A feature-pyramid backbone limited to its ``levels`` finest maps, for both the RPN and the RoI head.

    :func:`study.fpn.load_backbone` pads a 1-3 level pyramid to five maps by stride-2 subsampling of its
    coarsest map (torchvision's five-level convention). Those extra maps hold nothing the map they subsample
    lacks, only fewer positions: at 64 px, anchors on their 2x2 or 4x4 grids sit up to half an object away from
    it, and a 25-px RoI pooled from a stride-16 copy covers 1.5 cells. With them a ResNet-20 detector on 64-px
    shapes reached mAP@0.5 < 0.01 in 4 epochs; with the computed level alone (every anchor size on it: the
    single-map RPN of Faster R-CNN, Ren et al. 2015, 9 anchors per position) ~0.4-0.7 in 6.

    ``body`` is the wrapped backbone; its ``out_channels`` is passed through.
    """

    def __init__(self, backbone: nn.Module, levels: int) -> None:
        super().__init__()
        self.body = backbone
        self.levels = levels
        self.out_channels = backbone.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = self.body(x)
        if isinstance(out, torch.Tensor):
            out = OrderedDict([("0", out)])
        return OrderedDict(list(out.items())[: self.levels])


def build_detector(backbone: nn.Module, num_classes: int, image_size: int = 128, *,
                   levels: int | None = None,
                   anchor_sizes: tuple[tuple[int, ...], ...] | None = None,
                   anchor_scale: tuple[float, float] = (1 / 16, 1.0),
                   aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
                   rpn_batch_size_per_image: int = 128,
                   rpn_pre_nms_top_n_train: int = 500, rpn_post_nms_top_n_train: int = 500,
                   rpn_pre_nms_top_n_test: int = 250, rpn_post_nms_top_n_test: int = 250,
                   box_batch_size_per_image: int = 64,
                   representation_size: int = 1024,
                   **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN (Ren et al., 2015) with FPN RoI pooling (Lin et al., 2017) over ``backbone``.

    Args:
        backbone: module with an ``out_channels`` int whose forward maps ``[B, 3, H, W]`` to an OrderedDict
            of feature maps ordered fine to coarse, each ``[B, out_channels, H/stride, W/stride]`` (e.g.
            ``resnet_fpn_backbone(backbone_name="resnet18", weights=None)``, whose extra ``"pool"`` level
            feeds only the RPN, or our own 3-4 level FPN).
        num_classes: including background (3 shapes -> 4, VOC -> 21).
        image_size: images are resized so the longer side is ``image_size`` (``min_size = max_size``).
        levels: use only the ``levels`` finest maps, for the RPN and the RoI head (:class:`FinestLevels`);
            None: all of them. The pipeline passes the number of stages the backbone computes, dropping
            ``load_backbone``'s subsampled padding levels.
        anchor_sizes: per-level anchor sides in pixels; default :func:`_anchor_sizes` for the actual
            number of levels, found by one dummy forward pass.
        anchor_scale: smallest and largest default anchor side as fractions of ``image_size`` (1/16..1 for
            unknown data; ``SyntheticShapes.object_scale`` = 0.1..0.5 for the shapes).
        rpn_* / box_batch_size_per_image: sampling budgets. torchvision's defaults (RPN 256 anchors and
            2000/1000 proposals per image, 512 RoIs per image) are sized for 800-px COCO images with dozens
            of objects; at 128 px an image holds ~4 k anchors and a handful of objects, so 128 anchors,
            500 train / 250 test proposals and 64 RoIs per image (up to 16 positives) lose little. On a CPU
            the RoI head dominates (RoIAlign's backward and the 12.8 M-weight fc6 scale with the RoI count):
            R18-FPN, batch 8 at 128 px, one CPU thread: 7.4 s per step with torchvision's budgets, 2.1 s
            with 128 RoIs per image, ~1.45 s with these defaults.
        representation_size: width of the box head's two fully connected layers (torchvision's TwoMLPHead;
            1024 as in FPN). 256 cuts another ~30 % of a CPU step at some cost in capacity.
        **kwargs: passed to ``FasterRCNN`` (e.g. ``image_mean``/``image_std`` to match the backbone's
            pre-training normalisation, ``box_score_thresh``, ``box_detections_per_img``).

    The RoI level of a box follows FPN eq. (1), ``k = floor(k0 + log2(sqrt(wh) / c))``, with torchvision's
    geometry scaled to the image (``c = 224 * image_size / 800``, ``k0 = 4`` or the coarsest level if lower),
    so objects spread over the pyramid as they would at 800 px instead of all landing on the finest map.
    """
    if not isinstance(getattr(backbone, "out_channels", None), int):
        raise ValueError("backbone needs an int attribute out_channels (the FPN's channel count)")
    if levels is not None:
        if levels < 1:
            raise ValueError(f"levels={levels} is not allowed (>= 1 feature maps, or None for all)")
        backbone = FinestLevels(backbone, levels)
    strides = _feature_levels(backbone, image_size)
    if anchor_sizes is None:
        anchor_sizes = _anchor_sizes(len(strides), image_size, anchor_scale)
    if len(anchor_sizes) != len(strides):
        raise ValueError(f"anchor_sizes has {len(anchor_sizes)} levels, the backbone returns {len(strides)}")
    anchor_generator = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=(aspect_ratios,) * len(strides))
    # torchvision's LastLevelMaxPool adds "pool" (stride-2 subsampled P5) for the RPN only (FPN paper sec. 4.1).
    roi_names = [name for name in strides if name != "pool"] or list(strides)
    coarsest = int(math.log2(strides[roi_names[-1]]))
    roi_pool = MultiScaleRoIAlign(featmap_names=roi_names, output_size=7, sampling_ratio=2,
                                  canonical_scale=max(1, round(224 * image_size / 800)),
                                  canonical_level=min(4, coarsest))
    if "box_head" not in kwargs:
        resolution = roi_pool.output_size[0]
        kwargs["box_head"] = TwoMLPHead(backbone.out_channels * resolution**2, representation_size)
        if "box_predictor" not in kwargs:
            kwargs["box_predictor"] = FastRCNNPredictor(representation_size, num_classes)
            num_classes = None  # FasterRCNN refuses num_classes together with a box_predictor
    return FasterRCNN(
        backbone, num_classes=num_classes, min_size=image_size, max_size=image_size,
        rpn_anchor_generator=anchor_generator, box_roi_pool=roi_pool,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_batch_size_per_image=box_batch_size_per_image, **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------
# Data loading


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """``[(image, target), ...]`` -> ``(images, targets)`` lists; images may differ in size (no stacking)."""
    return [item[0] for item in batch], [item[1] for item in batch]


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A DataLoader with :func:`collate` whose shuffle order is fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def _to_device(images: list[torch.Tensor], targets: list[Target], device: torch.device | str
               ) -> tuple[list[torch.Tensor], list[Target]]:
    non_blocking = torch.device(device).type == "cuda"
    return ([im.to(device, non_blocking=non_blocking) for im in images],
            [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in targets])


# ---------------------------------------------------------------------------------------------------------------
# Training and evaluation


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device | str, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    log: Callable[[str], Any] | None = None, log_every: int = 10) -> dict[str, float]:
    """One pass over ``loader``; ``scheduler`` (if any) steps every iteration.

    Returns the mean over iterations of each loss torchvision reports (``loss_classifier``, ``loss_box_reg``,
    ``loss_objectness``, ``loss_rpn_box_reg``) and of their sum ``loss``. Raises ``FloatingPointError`` on a
    non-finite loss, as torchvision's reference stops there (training on from NaN wastes the budget).
    """
    model.train()
    sums: dict[str, float] = {}
    n = 0
    for it, (images, targets) in enumerate(loader):
        images, targets = _to_device(images, targets, device)
        losses = model(images, targets)
        loss = sum(losses.values())
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite detection loss at iteration {it}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + value
        n += 1
        if log is not None and log_every > 0 and (it + 1) % log_every == 0:
            log(f"  iter {it + 1}/{len(loader)} loss {sums['loss'] / n:.4f} lr {optimizer.param_groups[0]['lr']:.2e}")
    return {k: v / max(1, n) for k, v in sums.items()}


class MapMeter:
    """COCO-style box mAP accumulated over batches (torchmetrics ``MeanAveragePrecision``, pycocotools backend).

    ``update(preds, targets)`` takes per-image dicts: preds ``boxes`` float [M, 4] xyxy, ``scores`` float [M],
    ``labels`` int64 [M]; targets ``boxes`` float [N, 4], ``labels`` int64 [N] and optionally ``difficult``
    bool [N], passed on as ``iscrowd`` so those objects are ignored. Tensors may live on any device.
    ``compute()`` returns floats ``map`` (mAP@[.5:.95]), ``map_50``, ``map_75``; -1 when there was no object.
    """

    def __init__(self) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def update(self, preds: Sequence[Target], targets: Sequence[Target]) -> None:
        p = [{k: pred[k].detach().cpu() for k in ("boxes", "scores", "labels")} for pred in preds]
        t = []
        for tgt in targets:
            item = {"boxes": tgt["boxes"].detach().cpu(), "labels": tgt["labels"].detach().cpu()}
            if "difficult" in tgt:
                item["iscrowd"] = tgt["difficult"].detach().cpu().to(torch.int64)
            t.append(item)
        self.metric.update(p, t)

    def compute(self) -> dict[str, float]:
        result = self.metric.compute()
        return {k: float(result[k]) for k in ("map", "map_50", "map_75")}


@torch.no_grad()
def evaluate_map(model: nn.Module, loader: DataLoader, device: torch.device | str) -> dict[str, float]:
    """Run ``model`` in eval mode over ``loader``: ``{"map", "map_50", "map_75"}`` as floats (see MapMeter).

    Predicted boxes come back in each input image's own pixel coordinates (torchvision's transform undoes its
    resize), so they compare with the dataset's targets directly.
    """
    model.eval()
    meter = MapMeter()
    for images, targets in loader:
        images = [im.to(device) for im in images]
        meter.update(model(images), targets)
    return meter.compute()


def _warmup_cosine(optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int,
                   warmup_factor: float = 1e-3) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: linear from ``warmup_factor`` to 1 of the base lr over ``warmup_iters`` (``LinearLR``,
    as torchvision's detection reference warms up), then cosine to 0 at ``total_iters`` (``CosineAnnealingLR``),
    joined by ``SequentialLR``. ``warmup_iters >= 1``."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    ramp = LinearLR(optimizer, start_factor=warmup_factor, end_factor=1.0, total_iters=warmup_iters)
    decay = CosineAnnealingLR(optimizer, T_max=max(1, total_iters - warmup_iters), eta_min=0.0)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup_iters])


def finetune(model: nn.Module, train_ds: Dataset, val_ds: Dataset, cfg: DetectConfig,
             device: torch.device | str = "cpu", log: Callable[[str], Any] = print) -> Iterator[dict[str, float]]:
    """Fine-tune a detector and yield one dict per epoch.

    SGD (momentum 0.9, weight decay 1e-4, lr ``cfg.lr``) on trainable parameters, per-iteration schedule:
    linear warm-up over the first epoch (at most a quarter of training) then cosine to 0 over ``cfg.epochs``.
    Seeds torch's global RNG (RPN/RoI sampling, ``hflip``) and the shuffle order with ``cfg.seed``; seed before
    :func:`build_detector` too for reproducible head initialisation.

    Yields ``{"epoch": 1.., "train/loss", "val/map", "val/map_50", "val/map_75", "wall_s"}``, with ``wall_s`` the
    seconds this epoch took (training plus evaluation).
    """
    torch.manual_seed(cfg.seed)
    model.to(device)
    train_loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed)
    val_loader = make_loader(val_ds, cfg.batch_size, shuffle=False, seed=cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    total = cfg.epochs * len(train_loader)
    warmup = max(1, min(len(train_loader), total // 4))
    scheduler = _warmup_cosine(optimizer, total, warmup)
    log(f"detect: {len(train_ds)} train / {len(val_ds)} val images, {len(train_loader)} iterations/epoch "
        f"x {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, device {device}")
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        train = train_one_epoch(model, train_loader, optimizer, device, scheduler, log=log)
        val = evaluate_map(model, val_loader, device)
        row = {"epoch": epoch, "train/loss": train["loss"], "val/map": val["map"], "val/map_50": val["map_50"],
               "val/map_75": val["map_75"], "wall_s": time.perf_counter() - start}
        log(f"detect epoch {epoch}/{cfg.epochs}: loss {row['train/loss']:.4f} mAP {row['val/map']:.4f} "
            f"mAP@.5 {row['val/map_50']:.4f} ({row['wall_s']:.1f} s)")
        yield row


def detection_datasets(cfg: DetectConfig, split_seed: int = 0) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """``(train_ds, val_ds, class_names)`` for ``cfg.data``; ``num_classes`` for the detector is ``len + 1``.

    ``cluttered_digits``: ``DigitScenes`` of ``cfg.num_train`` / ``cfg.num_val`` images at ``cfg.image_size``,
    scene layout drawn from ``cfg.seed``; train scenes use the digits of the classification set's *train*
    identities and val scenes those of its *test* identities, both split by ``split_seed`` (pass the run's
    ``data.split_seed``, so no val digit was seen by the pretrained backbone). ``synthetic``: ``SyntheticShapes``
    of the same sizes, disjoint streams of ``cfg.seed``. ``voc``: ``trainval`` (with horizontal flips) for
    training and, for 2007, ``test`` for validation (the paper's protocol tests on VOC 2007 test), ``val`` for
    the other years; the full sets, since ``num_train``/``num_val`` size the generated data only.
    """
    if cfg.data == "cluttered_digits":
        train = DigitScenes(cfg.num_train, cfg.image_size, seed=cfg.seed, split="train", split_seed=split_seed)
        val = DigitScenes(cfg.num_val, cfg.image_size, seed=cfg.seed, split="test", split_seed=split_seed)
        return train, val, CLASSES_DIGITS
    if cfg.data == "synthetic":
        train = SyntheticShapes(cfg.num_train, cfg.image_size, seed=cfg.seed, stream=0)
        val = SyntheticShapes(cfg.num_val, cfg.image_size, seed=cfg.seed, stream=1)
        return train, val, CLASSES_SYNTHETIC
    if cfg.data == "voc":
        if not cfg.root:
            raise DetectionDataError("detect.root is empty: set it to the directory holding VOCdevkit/ "
                                     f"(e.g. --set detect.root=/data/voc), with {_voc_archive(cfg.year, 'trainval')} "
                                     "extracted there")
        train = voc_dataset(cfg.root, cfg.year, "trainval", hflip=True)
        val = voc_dataset(cfg.root, cfg.year, "test" if cfg.year == "2007" else "val")
        return train, val, VOC_CLASSES
    raise DetectionDataError(f"detect.data={cfg.data!r} is not supported (one of: cluttered_digits, synthetic, voc)")


# ---------------------------------------------------------------------------------------------------------------
# The transfer detector of the detect stage


def pyramid_stages(strides: list[int]) -> list[int] | None:
    """1-based stages fed to the FPN: those of stride >= 4, as torchvision's FPN starts at C2 (stride 4).

    A CIFAR network's stride-1 and stride-2 stages would put 256-channel pyramid maps at full or half image size:
    at 64 px a ResNet-20 detector's step takes twice as long with its stride-2 level, and objects of 6-32 px are
    pooled from the stride-4 map anyway. A network with no stage that deep keeps its deepest stage; None when the
    manifest lists no strides (then every stage is returned).
    """
    if not strides:
        return None
    return [i + 1 for i, st in enumerate(strides) if st >= 4] or [len(strides)]


def finetune_transfer(export_dir: str | Path, d: DetectConfig, datasets, *, random_init: bool, log=print,
                      manifest: dict | None = None) -> tuple[list[dict[str, float]], nn.Module]:
    """The transfer detector: Faster R-CNN (FPN) on the exported backbone, or on the same architecture randomly
    initialised (the control: every layer trainable, live BatchNorm), with the same head initialisation, data and
    budget; fine-tuned with `finetune`. Returns (per-epoch rows, model)."""
    from study.export import read_manifest  # lazy: pulls safetensors
    from study.fpn import load_backbone

    train_ds, val_ds, classes = datasets
    torch.manual_seed(d.seed)  # the same head initialisation for the pretrained run and its control
    manifest = manifest or read_manifest(export_dir)
    layers = None if d.trainable_layers < 0 else d.trainable_layers
    if random_init:
        # The control trains every layer: frozen random early layers would handicap it and flatter transfer.
        layers = len(manifest["stage_names"]) + 1
    returned = pyramid_stages(manifest.get("feature_strides") or [])
    backbone = load_backbone(export_dir, trainable_layers=layers, random_init=random_init, returned_layers=returned)
    norm = backbone.manifest.get("normalisation") or {}
    extra = {"image_mean": norm["mean"], "image_std": norm["std"]} if norm.get("mean") else {}
    # Only the levels the network computes: load_backbone's padding levels are subsampled copies (see FinestLevels).
    # Anchors span the dataset's object sizes when it states them (SyntheticShapes: 0.1-0.5 of the side).
    if hasattr(train_ds, "object_scale"):
        extra["anchor_scale"] = tuple(train_ds.object_scale)
    model = build_detector(backbone, len(classes) + 1, d.image_size, levels=len(returned) if returned else None,
                           representation_size=d.representation_size, box_batch_size_per_image=d.rois_per_image,
                           **extra)
    rows = list(finetune(model, train_ds, val_ds, d, device="cuda" if torch.cuda.is_available() else "cpu", log=log))
    return rows, model


def finetune_task(export_dir: str, detect: dict, random_init: bool, save_to: str | None = None,
                  split_seed: int = 0) -> dict[str, Any]:
    """`finetune_transfer` as one Ray task of the detect stage: builds the datasets itself (deterministic from the
    config; nothing large crosses the wire), fine-tunes, saves the detector's state_dict to `save_to` if given, and
    returns the per-epoch rows."""
    d = build(DetectConfig, detect, "detect.")
    rows, model = finetune_transfer(export_dir, d, detection_datasets(d, split_seed), random_init=random_init,
                                    log=lambda line: None)
    if save_to:
        torch.save(model.state_dict(), save_to)
    return {"rows": rows}
