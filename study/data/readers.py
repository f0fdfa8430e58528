"""Readers of the datasets held in memory: scikit-learn's digits, the synthetic templates and shapes, CIFAR-10/100
and ImageNet-style folders.

Nothing is downloaded: CIFAR and image folders are read from ``data.root`` and a missing dataset raises
``DataError`` saying what to put where.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from study.config.schema import DataConfig
from study.data.bundle import (
    CIFAR_DIRS,
    CIFAR_FILES,
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    DataError,
    Split,
    boxes_from_masks,
    stratified_split,
)
from study.data.shapes import CLASSES_SYNTHETIC, SyntheticShapes


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N,C,h,w] -> uint8 [N,C,size,size], bilinear with antialiasing when shrinking."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=images.shape[-1] > size)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _from_arrays(name: str, x: np.ndarray, y: np.ndarray, cfg: DataConfig, fractions: tuple[float, float, float],
                 num_classes: int, class_names: tuple[str, ...], masks: torch.Tensor | None = None) -> DataBundle:
    images = torch.from_numpy(np.ascontiguousarray(x))
    labels = torch.from_numpy(y.astype(np.int64))
    resized = images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size
    images = _resize_uint8(images, cfg.image_size)
    boxes = None
    if masks is not None:  # object masks (bool [N, h, w]) follow the resize: area-resampled, kept where >= half
        if resized:
            area = F.interpolate(masks[:, None].float(), size=(cfg.image_size, cfg.image_size), mode="area")[:, 0]
            masks = (area >= 0.5) | ((area == area.flatten(1).amax(1)[:, None, None]) & (area > 0))
        boxes = boxes_from_masks(masks)
    splits = [Split(images[i].contiguous(), labels[i], None if boxes is None else boxes[i],
                    None if masks is None else masks[i]) for i in stratified_split(y, fractions, cfg.split_seed)]
    mean = tuple(float(v) for v in images.float().mean((0, 2, 3)) / 255.0)
    std = tuple(float(v) for v in images.float().std((0, 2, 3)) / 255.0)
    return DataBundle(name, *splits, num_classes, mean, std, class_names)


def load_digits(cfg: DataConfig) -> DataBundle:
    """scikit-learn's 1,797 real 8x8 digits (values 0..16), scaled to uint8, upsampled to `image_size`,
    grey replicated to 3 channels (so every model and the detection export see RGB), split 60/20/20."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)[:, None].repeat(3, axis=1)
    return _from_arrays("digits", x, d.target, cfg, (0.6, 0.2, 0.2), 10, tuple(str(i) for i in range(10)))


def load_synthetic(cfg: DataConfig) -> DataBundle:
    """Generated classes of any count and size: each class is a smooth random colour template; a sample is its
    template randomly shifted, scaled in contrast and noised. Learnable but not trivial, deterministic."""
    n_train, n_val, n_test = cfg.synthetic_sizes
    n = n_train + n_val + n_test
    k, s = cfg.num_classes, cfg.image_size
    g = torch.Generator().manual_seed(cfg.split_seed)
    coarse = torch.rand(k, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(2 * s, 2 * s), mode="bicubic", align_corners=False)
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=g)]
    oy = torch.randint(0, s + 1, (n,), generator=g)
    ox = torch.randint(0, s + 1, (n,), generator=g)
    rows = oy[:, None] + torch.arange(s)[None]
    cols = ox[:, None] + torch.arange(s)[None]
    t = templates[labels[:, None, None, None], torch.arange(3)[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    x = (t - 0.5) * contrast + 0.5 + 0.15 * torch.randn(n, 3, s, s, generator=g)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    images = x.numpy()
    fr = (n_train / n, n_val / n, n_test / n)
    return _from_arrays("synthetic", images, labels.numpy(), cfg, fr, k, tuple(f"class{i}" for i in range(k)))


def load_shapes(cfg: DataConfig) -> DataBundle:
    """Classification of single coloured shapes (rectangle, ellipse, triangle) on textured backgrounds, drawn by
    the same generator as the synthetic detection set (`study.data.shapes.SyntheticShapes`, stream 2, disjoint from
    the detection splits). A backbone pretrained here has seen the objects a shapes detector must find: the
    controlled transfer experiment of the detect stage. Sizes from `data.synthetic_sizes`; splits carry each
    shape's visible mask and its tight box."""
    n = sum(cfg.synthetic_sizes)
    ds = SyntheticShapes(n, max(16, cfg.image_size), seed=cfg.split_seed, max_objects=1, stream=2)
    rendered = [ds.render(i) for i in range(n)]
    x = (torch.stack([r[0] for r in rendered]) * 255).round().to(torch.uint8).numpy()
    labels = np.asarray([int(r[1]["labels"][0]) - 1 for r in rendered])
    masks = torch.cat([r[2][:1] for r in rendered])  # [n, S, S]: one shape per image
    fr = tuple(k / n for k in cfg.synthetic_sizes)
    return _from_arrays("shapes", x, labels, cfg, fr, len(CLASSES_SYNTHETIC), CLASSES_SYNTHETIC, masks)


def load_cifar(cfg: DataConfig) -> DataBundle:
    """CIFAR-10/100 from `data.root` with torchvision's readers (never downloading). Test is the official test
    set; val is `val_fraction` of the official train set, stratified and fixed by `split_seed`."""
    import torchvision

    name = cfg.name
    if not cfg.root:
        raise DataError(f"data.root is empty for data.name={name} (set data.root to the directory holding "
                        f"{CIFAR_DIRS[name]}/)")
    root = Path(cfg.root).expanduser()
    folder = root / CIFAR_DIRS[name]
    if not folder.is_dir():
        raise DataError(f"{name} not found under {root}: expected {folder}/ with {CIFAR_FILES[name]} (download "
                        f"the python version from https://www.cs.toronto.edu/~kriz/cifar.html and extract it there)")
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError:  # torchvision's "not found or corrupted" (md5 mismatch); its advice is to download
        raise DataError(f"{name} under {folder} is incomplete or corrupted (expected {CIFAR_FILES[name]} with their "
                        "published checksums; re-extract the archive there)") from None
    xtr = np.asarray(train.data).transpose(0, 3, 1, 2)
    ytr = np.asarray(train.targets)
    tr_idx, va_idx = stratified_split(ytr, (1 - cfg.val_fraction, cfg.val_fraction), cfg.split_seed)
    k = len(train.classes)
    mean, std = CIFAR_MEAN[name], CIFAR_STD[name]

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(_resize_uint8(torch.from_numpy(np.ascontiguousarray(x)), cfg.image_size),
                     torch.from_numpy(y.astype(np.int64)))

    return DataBundle(name, split(xtr[tr_idx], ytr[tr_idx]), split(xtr[va_idx], ytr[va_idx]),
                      split(np.asarray(test.data).transpose(0, 3, 1, 2), np.asarray(test.targets)), k, mean, std,
                      tuple(train.classes))


def load_imagefolder(cfg: DataConfig) -> DataBundle:
    """ImageNet-style `root/train/<class>/*.jpg` and `root/val/<class>/*.jpg`: decoded once, resized (shorter side
    to 1.14 x image_size) and centre-cropped to `image_size`, held in memory as uint8. `val` is the test split;
    `val_fraction` of train is held out for model selection. For full ImageNet use a machine with the memory for
    it (1.28 M x 3 x 224 x 224 bytes is 193 GB): this loader targets subsets and small custom datasets."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if not cfg.root:
        raise DataError("data.root is empty for data.name=imagefolder (set data.root to a directory with train/ and "
                        "val/ holding one sub-directory of images per class)")
    root = Path(cfg.root).expanduser()
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(f"imagefolder not found: expected {root / sub}/<class>/<image> (ImageNet layout: train/ "
                            "and val/ with one sub-directory per class)")
    tf = v2.Compose([v2.PILToTensor(), v2.Resize(int(round(cfg.image_size * 1.14)), antialias=True),
                     v2.CenterCrop(cfg.image_size)])

    def read(sub: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        try:
            ds = ImageFolder(str(root / sub), transform=tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"imagefolder {root / sub}: {exc}") from None
        loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=min(8, max(1, _cpus() - 1)))
        xs, ys = zip(*loader)
        x = torch.cat(xs)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return x, torch.cat(ys), ds.classes

    xtr, ytr, classes = read("train")
    xte, yte, test_classes = read("val")
    if test_classes != classes:
        raise DataError(f"imagefolder {root}: val/ classes differ from train/ classes (use the same class folders)")
    tr_idx, va_idx = stratified_split(ytr.numpy(), (1 - cfg.val_fraction, cfg.val_fraction), cfg.split_seed)
    return DataBundle("imagefolder", Split(xtr[tr_idx], ytr[tr_idx]), Split(xtr[va_idx], ytr[va_idx]),
                      Split(xte, yte), len(classes), IMAGENET_MEAN, IMAGENET_STD, tuple(classes))


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
