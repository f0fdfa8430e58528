"""The in-memory data model every dataset becomes: `Split` and `DataBundle`, the one data error, the stratified
split and the normalisation constants.

Every dataset becomes uint8 images ``[N, 3, H, W]`` and int64 labels ``[N]`` with fixed train/val/test splits
(readers in ``study.data.readers``, generators in ``study.data.cluttered_digits`` / ``shapes``, the dispatch in
``study.data.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
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
