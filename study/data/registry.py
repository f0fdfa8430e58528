"""The dataset registry: `data.name` -> its loader, and `load_data`, the one entry point.

The names are `study.config.schema.DATASETS` (the config validates against them); a test checks that every one
has a loader here.
"""

from __future__ import annotations

from collections.abc import Callable

from study.config.schema import DataConfig
from study.data.bundle import DataBundle, DataError
from study.data.cluttered_digits import load_cluttered_digits
from study.data.cub import load_cub_bundle
from study.data.readers import load_cifar, load_digits, load_imagefolder, load_shapes, load_synthetic
from study.data.streaming import load_imagefolder_stream

LOADERS: dict[str, Callable[[DataConfig], DataBundle]] = {
    "digits": load_digits, "cluttered_digits": load_cluttered_digits, "synthetic": load_synthetic,
    "shapes": load_shapes, "cifar10": load_cifar, "cifar100": load_cifar, "imagefolder": load_imagefolder,
    "cub": load_cub_bundle,
}


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the configured dataset with its fixed splits. Raises DataError with a one-line message."""
    if cfg.name not in LOADERS:
        raise DataError(f"data.name={cfg.name!r} is not allowed (one of: {', '.join(LOADERS)})")
    if cfg.streaming:  # file lists decoded per batch in DataLoader workers (study.data.streaming)
        if cfg.name != "imagefolder":
            raise DataError(f"data.streaming=true is not allowed for data.name={cfg.name} (only imagefolder)")
        return load_imagefolder_stream(cfg)
    return LOADERS[cfg.name](cfg)
