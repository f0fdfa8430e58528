"""Checks of the PNGs the pipeline writes: a real, non-blank image, and how much of it is one colour."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np


def assert_png(path: Path) -> np.ndarray:
    path = Path(path)
    assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 20 and pixels.shape[1] > 20
    assert pixels.std() > 0, "a blank image"
    return pixels


def colour_share(pixels: np.ndarray, hex_colour: str, tol: float = 0.03) -> float:
    """Fraction of the pixels within `tol` (per RGB channel, 0-1 scale) of a colour such as "#1f77b4"."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return float((np.abs(pixels[..., :3] - rgb).max(axis=-1) < tol).mean())
