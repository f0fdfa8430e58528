"""Streaming input for ImageNet-size folders: decode per batch, never hold the decoded dataset.

``data.name: imagefolder`` with ``data.streaming: true`` reads the ImageNet layout (``root/train/<class>/*.jpg``,
``root/val/<class>/*.jpg``) or a manifest (``root/train.csv``, ``root/val.csv``: ``relative/path,class`` per line)
and keeps only file paths (one numpy byte-string array: forked DataLoader workers share it without the
copy-on-write growth a Python list of str causes, pytorch/pytorch#13246) and int64 labels. Each batch is read and
decoded in ``torch.utils.data.DataLoader`` worker processes with ``torchvision.io.decode_image`` (libjpeg-turbo),
cropped to a fixed ``image_size`` square (train: RandomResizedCrop, scale 0.08-1 and ratio 3/4-4/3 as in
torchvision's ``references/classification`` and the CutMix paper's ImageNet recipe; val/test: shorter side to
1.14 x size, centre crop, as ``study.data.readers.load_imagefolder``) and handed to the engine as uint8 ``[B, 3, S,
S]``.
Everything after that is the in-memory path unchanged: ``study.data.BatchAugment`` (flip, optional pad-crop,
normalise) and CutMix run on the batch, on the device.

Why DataLoader workers: measured with ``bench/streaming.py`` (224 px crops from 384-1,024 generated JPEGs of
300-500 px, batch 64) on this 2-core machine, which other jobs kept at a load of ~8, so only the ordering is solid:
``stream`` (this module) 150-335 img/s, torchvision ``ImageFolder`` + PIL + ``v2.RandomResizedCrop`` 120-160 img/s
(stream 1.3-1.5x faster at equal workers), Ray Data ``read_images`` + ``iter_torch_batches`` 25-55 img/s (3-8x
slower). Hence:
- DataLoader + ``decode_image`` (libjpeg-turbo, tensor resize) beats the PIL pipeline, runs one decode process
  per core given (worker scaling is not measurable on this loaded 2-core machine; ``bench/gpu.py`` measures it
  with up to 16 workers), needs nothing beyond torch/torchvision, and keeps exact resume: the batch order is the
  engine's seeded permutation and each sample's crop comes from a generator seeded by (epoch seed, sample index),
  so a resumed, re-sharded or differently-parallel epoch sees the same crops.
- Ray Data works here but its per-epoch planning, task scheduling and Arrow conversion cost more than decoding
  small files, every batch takes an object-store copy, and its block order is its own, which breaks the
  (seed, epoch) order that exact resume depends on. It is the better choice when decoding must run on *other* nodes
  than the trainer (CPU-only preprocessing nodes feeding GPU nodes).
- GPU decode (``torchvision.io.decode_jpeg(list, device="cuda")``, batched nvJPEG; TorchCodec is its successor)
  cannot be measured without a GPU; ``bench/gpu.py`` times it on a lent device. It frees CPU cores but still reads
  files on the CPU and competes with training for the GPU: worth it where a node has few CPU cores per GPU.

Memory: at most ``loader_workers * prefetch_factor`` batches are decoded ahead (2 per worker by default) besides
the batch in use, whatever the folder size; the bundle itself holds paths and labels only.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from study.config.schema import DataConfig
from study.data.batches import iterate_batches
from study.data.bundle import IMAGENET_MEAN, IMAGENET_STD, DataBundle, DataError, Split, stratified_split

RESIZE_RATIO = 1.14  # eval: shorter side to 1.14 x image_size, then centre crop (256/224 ~ 1.143)
RRC_SCALE = (0.08, 1.0)  # RandomResizedCrop area fraction (torchvision, Szegedy et al. 2015)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------------------------
# Batch order: shared by in-memory and streaming splits, and by data-parallel ranks


def batch_indices(n: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                  rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """Index batches (int64 1-D) in `study.data.iterate_batches`' order; rank `rank` of `world` gets its contiguous
    slice of every global batch of `batch_size` (the slices of all ranks concatenated are the global batch)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield idx.tensor_split(world)[rank] if world > 1 else idx


def iterate_split(split: Split | FileSplit, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                  rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (uint8 [b,C,H,W], int64 [b]) of an in-memory `Split` or a streaming `FileSplit`, optionally this
    rank's shard of each global batch. One process (world=1) on a `Split` is exactly `iterate_batches`."""
    if isinstance(split, FileSplit):
        yield from split.iter_batches(batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                                      world=world)
    elif world == 1:
        yield from iterate_batches(split, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        for idx in batch_indices(len(split), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                                 world=world):
            if len(idx):
                yield split.images[idx], split.labels[idx]


# ---------------------------------------------------------------------------------------------------------------
# Decoding one file (runs in DataLoader workers)


def random_resized_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box, torchvision's algorithm (10 tries, then the centre crop at the
    clamped ratio) with the draws taken from `generator`, all 10 tries in one vectorized draw."""
    area = height * width
    u = torch.rand(4, 10, generator=generator, dtype=torch.float64)
    scale = RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[0]
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.sqrt(area * scale * ratio).round()
    h = torch.sqrt(area * scale / ratio).round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    if bool(ok.any()):
        k = int(ok.nonzero()[0, 0])
        hh, ww = int(h[k]), int(w[k])
        top = int((u[2, k] * (height - hh + 1)).floor())
        left = int((u[3, k] * (width - ww + 1)).floor())
        return top, left, hh, ww
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        ww, hh = width, int(round(width / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
        hh, ww = height, int(round(height * RRC_RATIO[1]))
    else:
        ww, hh = width, height
    return (height - hh) // 2, (width - ww) // 2, hh, ww


def decode_crop(data: torch.Tensor, size: int, train: bool, seed: int = 0) -> torch.Tensor:
    """Encoded file bytes (uint8 1-D) -> uint8 [3, size, size]: RandomResizedCrop (train, draws seeded by `seed`)
    or shorter side to RESIZE_RATIO x size and centre crop (eval). Grey, CMYK and alpha images become RGB."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    img = decode_image(data, mode=ImageReadMode.RGB)
    h, w = img.shape[-2:]
    if train:
        top, left, hh, ww = random_resized_box(h, w, torch.Generator().manual_seed(seed))
        return TF.resized_crop(img, top, left, hh, ww, [size, size], antialias=True)
    img = TF.resize(img, int(round(size * RESIZE_RATIO)), antialias=True)
    return TF.center_crop(img, [size, size])


class _DecodeDataset(torch.utils.data.Dataset):
    """Map-style dataset over file paths. Items are (index, epoch seed) pairs from `_BatchSampler`, so workers need
    no per-epoch state and a sample's crop is a function of (seed, index) alone."""

    def __init__(self, paths: np.ndarray, labels: torch.Tensor, size: int, train: bool):
        self.paths, self.labels, self.size, self.train = paths, labels, size, train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.io import read_file

        index, seed = item
        path = self.paths[index].decode()
        try:
            img = decode_crop(read_file(path), self.size, self.train, (seed * 1_000_003 + index) % (2**63))
        except RuntimeError as exc:  # torchvision raises RuntimeError for unreadable or non-image files
            raise DataError(f"cannot decode {path} ({str(exc).splitlines()[0][:120]})") from None
        return img, self.labels[index]


class _BatchSampler:
    """Lists of (index, seed) per batch, produced lazily from index tensors (no per-sample list for the epoch)."""

    def __init__(self, batches: list[torch.Tensor], seed: int):
        self.batches, self.seed = batches, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for idx in self.batches:
            yield [(i, self.seed) for i in idx.tolist()]


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a decode worker is one process on one core: no intra-op thread pools


def auto_workers() -> int:
    """Decode processes when data.loader_workers=-1: the training process's CPU share (Ray sets OMP_NUM_THREADS
    from the actor's CPUs, which torch's thread count follows), at most 16."""
    return max(1, min(16, torch.get_num_threads()))


# ---------------------------------------------------------------------------------------------------------------
# Splits and the bundle


@dataclass(frozen=True, eq=False)
class FileSplit:
    """One split as files. paths: numpy byte strings [N] (absolute); labels: int64 [N]; images are decoded per
    batch to uint8 [B, 3, image_size, image_size] (`train` picks RandomResizedCrop over the centre crop)."""

    paths: np.ndarray
    labels: torch.Tensor
    image_size: int
    train: bool
    workers: int = -1  # decode processes; -1 auto (auto_workers), 0 in the calling process
    prefetch_factor: int = 2

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray, train: bool | None = None) -> FileSplit:
        return FileSplit(self.paths[idx], self.labels[torch.as_tensor(idx, dtype=torch.long)], self.image_size,
                         self.train if train is None else train, self.workers, self.prefetch_factor)

    def iter_batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False, rank: int = 0,
                     world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decoded batches (uint8 [b,3,S,S], int64 [b]) in `batch_indices` order (this rank's shards)."""
        batches = [b for b in batch_indices(len(self), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                            rank=rank, world=world) if len(b)]
        if not batches:
            return
        workers = auto_workers() if self.workers < 0 else self.workers
        workers = min(workers, len(batches))
        loader = torch.utils.data.DataLoader(
            _DecodeDataset(self.paths, self.labels, self.image_size, self.train),
            batch_sampler=_BatchSampler(batches, seed), num_workers=workers,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            worker_init_fn=_one_thread if workers > 0 else None,
            pin_memory=torch.cuda.is_available())
        yield from loader


@dataclass(frozen=True, eq=False)
class StreamingBundle(DataBundle):
    """A `DataBundle` whose splits are `FileSplit`s: the engine iterates them through `iterate_split`."""

    size: int = 224

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> int:
        return self.size

    def merged_train_val(self) -> StreamingBundle:
        tr, va = self.train, self.val
        merged = FileSplit(np.concatenate([tr.paths, va.paths]), torch.cat([tr.labels, va.labels]), tr.image_size,
                           True, tr.workers, tr.prefetch_factor)
        return StreamingBundle(self.name, merged, self.val, self.test, self.num_classes, self.mean, self.std,
                               self.class_names, self.size)


def index_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(paths bytes [N], class names per file [N], sorted class names) of `folder/<class>/<files>`, sorted."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DataError(f"imagefolder {folder}: no class sub-directories (expected {folder}/<class>/<image>)")
    paths, names = [], []
    for c in classes:
        for dirpath, _, files in sorted(os.walk(folder / c, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, f))
                    names.append(c)
    if not paths:
        raise DataError(f"imagefolder {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under its classes")
    return np.array([p.encode() for p in paths], dtype=np.bytes_), np.array(names), classes


def read_manifest(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(paths bytes [N], class names [N], sorted class names) of a `relative/path,class` CSV (no header), with paths
    relative to the manifest's directory (absolute paths are kept)."""
    paths, names = [], []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 2 or not row[0] or not row[1]:
                raise DataError(f"manifest {path} line {lineno}: expected `relative/path,class`, got {row!r}")
            paths.append(os.path.join(path.parent, row[0]))
            names.append(row[1])
    if not paths:
        raise DataError(f"manifest {path} lists no images (one `relative/path,class` per line)")
    return np.array([p.encode() for p in paths], dtype=np.bytes_), np.array(names), sorted(set(names))


def _read(root: Path, sub: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if (root / sub).is_dir():
        return index_folder(root / sub)
    if (root / f"{sub}.csv").is_file():
        return read_manifest(root / f"{sub}.csv")
    raise DataError(f"imagefolder not found: expected {root / sub}/<class>/<image> or a manifest {root / sub}.csv "
                    "(`relative/path,class` per line)")


def load_imagefolder_stream(cfg: DataConfig) -> StreamingBundle:
    """The `imagefolder` dataset (same splits: `val_fraction` of train stratified by `split_seed` for model
    selection, val/ as the test split) as file lists, decoded per batch. Raises DataError with one line."""
    if not cfg.root:
        raise DataError("data.root is empty for data.name=imagefolder (set data.root to a directory with train/ and "
                        "val/ holding one sub-directory of images per class, or train.csv and val.csv manifests)")
    root = Path(cfg.root).expanduser()
    tr_paths, tr_names, classes = _read(root, "train")
    te_paths, te_names, te_classes = _read(root, "val")
    unknown = sorted(set(te_classes) - set(classes))
    if unknown:
        raise DataError(f"imagefolder {root}: val has classes that train lacks ({', '.join(unknown[:3])}; use the "
                        "same classes)")
    to_idx = {c: i for i, c in enumerate(classes)}
    ytr = np.array([to_idx[n] for n in tr_names], dtype=np.int64)
    yte = np.array([to_idx[n] for n in te_names], dtype=np.int64)
    workers = cfg.loader_workers
    train = FileSplit(tr_paths, torch.from_numpy(ytr), cfg.image_size, True, workers)
    test = FileSplit(te_paths, torch.from_numpy(yte), cfg.image_size, False, workers)
    tr_idx, va_idx = stratified_split(ytr, (1 - cfg.val_fraction, cfg.val_fraction), cfg.split_seed)
    return StreamingBundle("imagefolder", train.subset(tr_idx), train.subset(va_idx, train=False), test, len(classes),
                           IMAGENET_MEAN, IMAGENET_STD, tuple(classes), cfg.image_size)
