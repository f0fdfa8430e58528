"""Datasets and device-side batch augmentation.

Every dataset becomes uint8 images ``[N, 3, H, W]`` and int64 labels ``[N]`` with fixed train/val/test splits.
Small sets (digits, synthetic, CIFAR) live in memory and are batched by index slicing, so a trial never waits
on per-sample Python transforms; ImageNet-style folders decode in DataLoader workers to a fixed size and share
the same device-side augmentation (random crop with padding, horizontal flip, normalisation), as in
KellerJordan's cifar10-airbench and torchvision's ``references/classification`` GPU transforms.

Nothing is downloaded: CIFAR and image folders are read from ``data.root`` and a missing dataset raises
``DataError`` saying what to put where.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from study.config import DataConfig

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {"cifar10": "data_batch_1..5, test_batch", "cifar100": "train, test, meta"}


class DataError(ValueError):
    """A dataset that cannot be read. One line: what is missing and where to put it."""


@dataclass(frozen=True)
class Split:
    """One split in memory. images: uint8 [N, C, H, W]; labels: int64 [N]. Datasets that know where their object
    is (cluttered_digits, shapes) also give boxes: int64 [N, 4] ``[x0, y0, x1, y1]`` *inclusive* pixel indices
    (clovaai/wsolevaluation's convention), tight around masks: bool [N, H, W] of the object's pixels; else None."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _cat_optional(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return torch.cat([a, b]) if a is not None and b is not None else None


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes int64 [N, 4] ``[x0, y0, x1, y1]`` (inclusive pixel indices) of bool masks [N, H, W];
    an empty mask gives ``[-1, -1, -1, -1]``."""
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # [N, W], [N, H]
    w, h = cols.shape[1], rows.shape[1]
    box = torch.stack([cols.int().argmax(1), rows.int().argmax(1), w - 1 - cols.flip(1).int().argmax(1),
                       h - 1 - rows.flip(1).int().argmax(1)], dim=1).to(torch.int64)
    return torch.where(masks.flatten(1).any(1)[:, None], box, torch.full_like(box, -1))


@dataclass(frozen=True)
class DataBundle:
    """Splits plus what a model and the augmentation need to know about them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def merged_train_val(self) -> DataBundle:
        """Train and val as one training split (the retrain stage trains on both, keeps test held out)."""
        merged = Split(torch.cat([self.train.images, self.val.images]), torch.cat([self.train.labels, self.val.labels]),
                       _cat_optional(self.train.boxes, self.val.boxes), _cat_optional(self.train.masks, self.val.masks))
        return DataBundle(self.name, merged, self.val, self.test, self.num_classes, self.mean, self.std,
                          self.class_names)


def iterate_batches(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0,
                    drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (uint8 [B,C,H,W], int64 [B]) by index slicing.

    The shuffle order comes from a generator seeded with `seed` alone, so an epoch's order is a pure function
    of (seed, epoch) when the caller passes a per-epoch seed: that is what makes checkpoint resume exact.
    """
    n = len(split)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield split.images[idx], split.labels[idx]


# ---------------------------------------------------------------------------------------------------------------
# Device-side augmentation


class BatchAugment:
    """Random crop with zero padding, horizontal flip and normalisation for a whole batch on its device.

    `__call__(images uint8|float [B,C,H,W], generator) -> float32 [B,C,H,W]` normalised. Offsets and flips are
    drawn per sample on the CPU generator (cheap, device-independent, reproducible) and applied with one
    gather: no Python loop over samples.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], pad: int = 4, hflip: bool = True,
                 train: bool = True):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.pad, self.hflip, self.train = pad, hflip, train

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,C,H,W] (0..255) -> float32 normalised."""
        x = images.float()
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.normalise(images)
        if not self.train or (self.pad == 0 and not self.hflip):
            return x
        b, _, h, w = x.shape
        p = self.pad
        dev = x.device
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
        flip = (torch.rand(b, generator=generator) < 0.5).to(dev) if self.hflip else torch.zeros(b, dtype=torch.bool,
                                                                                                   device=dev)
        # Padding after normalisation fills with zero, i.e. the dataset mean colour: no black frame to learn.
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = oy[:, None] + torch.arange(h, device=dev)[None, :]  # [B, H]
        cols = torch.arange(w, device=dev)[None, :]
        cols = torch.where(flip[:, None], w - 1 - cols, cols) + ox[:, None]  # [B, W], flipped in the same gather
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


# ---------------------------------------------------------------------------------------------------------------
# Datasets


def _stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Index arrays per split, stratified by class, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        start = 0
        for i, end in enumerate(bounds):
            parts[i].append(idx[start:end])
            start = end
    return [np.sort(np.concatenate(p)) for p in parts]


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
                    None if masks is None else masks[i]) for i in _stratified_split(y, fractions, cfg.split_seed)]
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
    the same generator as the synthetic detection set (`study.shapes.SyntheticShapes`, stream 2, disjoint from
    the detection splits). A backbone pretrained here has seen the objects a shapes detector must find: the
    controlled transfer experiment of the detect stage. Sizes from `data.synthetic_sizes`; splits carry each
    shape's visible mask and its tight box."""
    from study.shapes import CLASSES_SYNTHETIC, SyntheticShapes

    n = sum(cfg.synthetic_sizes)
    ds = SyntheticShapes(n, max(16, cfg.image_size), seed=cfg.split_seed, max_objects=1, stream=2)
    rendered = [ds.render(i) for i in range(n)]
    x = (torch.stack([r[0] for r in rendered]) * 255).round().to(torch.uint8).numpy()
    labels = np.asarray([int(r[1]["labels"][0]) - 1 for r in rendered])
    masks = torch.cat([r[2][:1] for r in rendered])  # [n, S, S]: one shape per image
    fr = tuple(k / n for k in cfg.synthetic_sizes)
    return _from_arrays("shapes", x, labels, cfg, fr, len(CLASSES_SYNTHETIC), CLASSES_SYNTHETIC, masks)


def load_cluttered_digits(cfg: DataConfig) -> DataBundle:
    """sklearn's real digit strokes on procedural clutter, with boxes and masks: see `study.cluttered_digits`."""
    from study.cluttered_digits import load_cluttered_digits as load

    return load(cfg)


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
    tr_idx, va_idx = _stratified_split(ytr, (1 - cfg.val_fraction, cfg.val_fraction), cfg.split_seed)
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
    tr_idx, va_idx = _stratified_split(ytr.numpy(), (1 - cfg.val_fraction, cfg.val_fraction), cfg.split_seed)
    return DataBundle("imagefolder", Split(xtr[tr_idx], ytr[tr_idx]), Split(xtr[va_idx], ytr[va_idx]),
                      Split(xte, yte), len(classes), IMAGENET_MEAN, IMAGENET_STD, tuple(classes))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


LOADERS = {"digits": load_digits, "cluttered_digits": load_cluttered_digits,
           "synthetic": load_synthetic, "shapes": load_shapes, "cifar10": load_cifar,
           "cifar100": load_cifar,
           "imagefolder": load_imagefolder, "cub": lambda cfg: _cub(cfg)}


def _cub(cfg: DataConfig) -> DataBundle:
    from study.box_data import load_cub_bundle  # late: box_data imports this module

    return load_cub_bundle(cfg)


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the configured dataset with its fixed splits. Raises DataError with a one-line message."""
    if cfg.name not in LOADERS:
        raise DataError(f"data.name={cfg.name!r} is not allowed (one of: {', '.join(LOADERS)})")
    if cfg.streaming:  # file lists decoded per batch in DataLoader workers (study.streaming)
        if cfg.name != "imagefolder":
            raise DataError(f"data.streaming=true is not allowed for data.name={cfg.name} (only imagefolder)")
        from study.streaming import load_imagefolder_stream

        return load_imagefolder_stream(cfg)
    return LOADERS[cfg.name](cfg)
