"""Batching and device-side batch augmentation of in-memory splits.

Small sets live in memory and are batched by index slicing, so a trial never waits on per-sample Python transforms;
augmentation (random crop with padding, horizontal flip, normalisation) runs on the batch on its device, as in
KellerJordan's cifar10-airbench and torchvision's ``references/classification`` GPU transforms.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from study.data.bundle import Split


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
