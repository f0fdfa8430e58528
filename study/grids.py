"""Image grids: a batch of training samples with their (mixed) soft targets, and images with their ground-truth
boxes (PNG files), written through study.plots.save_figure (matplotlib, Agg backend).

Every function writes one PNG file, creates missing parent directories and returns the path written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from study.plots import plt, save_figure

__all__ = ["BOX_COLOUR", "save_box_grid", "save_sample_grid"]


# ---------------------------------------------------------------------------------------------------------------
# Sample grid


def _caption(row: np.ndarray, class_names: Sequence[str] | None) -> str:
    """Top-2 classes of a soft target with their weights, "3:0.62 7:0.38"; the runner-up only when it stands
    above the label-smoothing floor (the row's minimum), so one-hot and smoothed targets show one class."""
    order = np.argsort(-row, kind="stable")[:2]
    floor = float(row.min()) if row.size > 2 else 0.0
    parts = []
    for rank, k in enumerate(order):
        if rank == 1 and row[k] <= floor + 5e-3:
            break
        name = class_names[k] if class_names is not None and k < len(class_names) else str(int(k))
        parts.append(f"{name}:{row[k]:.2f}")
    return " ".join(parts)


def save_sample_grid(images: torch.Tensor, path: str | Path, targets: torch.Tensor | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None, nrow: int = 8,
                     class_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """A grid of images, each tile captioned with the top-2 classes of its soft target.

    Args:
        images: ``[B, C, H, W]`` with C = 1 or 3; uint8 (0-255) or floating. Floating images normalised per
            channel are restored with ``mean``/``std`` (sequences of C floats); floating images without them are
            shown as they are when they lie in [0, 1], and min-max scaled over the batch otherwise.
        path: the PNG to write.
        targets: optional ``[B, K]`` soft targets (rows of a mixer's output); a ``[B]`` int64 tensor of class
            indices is accepted too and shown as one-hot.
        nrow: tiles per row.
        class_names: optional K names used in the captions instead of class indices.
        title: optional figure title.

    Returns:
        ``path`` as a Path.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images of shape {shape} are not allowed ([B, C, H, W] with C = 1 or 3)")
    batch, channels = images.shape[:2]
    if nrow < 1:
        raise ValueError(f"nrow={nrow} is not allowed (>= 1)")
    x = images.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
        if mean is not None or std is not None:
            m = torch.as_tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32)
            s = torch.as_tensor(std if std is not None else [1.0] * channels, dtype=torch.float32)
            if m.numel() != channels or s.numel() != channels:
                raise ValueError(f"mean/std of lengths {m.numel()}/{s.numel()} are not allowed ({channels} values)")
            x = x * s.view(1, -1, 1, 1) + m.view(1, -1, 1, 1)
        elif batch and (x.min() < 0 or x.max() > 1):
            lo, hi = x.min(), x.max()
            x = (x - lo) / (hi - lo).clamp_min(1e-12)
    x = x.clamp(0, 1)

    rows_t = None
    if targets is not None:
        t = targets.detach().cpu()
        if t.ndim == 1:
            t = torch.nn.functional.one_hot(t.long(), int(t.max()) + 1 if t.numel() else 1)
        if t.ndim != 2 or t.shape[0] != batch:
            raise ValueError(f"targets of shape {tuple(targets.shape)} are not allowed ([{batch}, K] or [{batch}])")
        rows_t = t.double().numpy()

    cols = max(1, min(nrow, batch))
    rows = max(1, math.ceil(batch / cols))
    height, width = x.shape[2], x.shape[3]
    pad = max(1, round(0.06 * max(height, width)))
    # One composite image on one Axes: a grid of 64 tiles renders in a fraction of the time of 64 subplots.
    canvas = np.ones((rows * (height + pad) + pad, cols * (width + pad) + pad, 3), dtype=np.float32)
    tiles = x.permute(0, 2, 3, 1).numpy()
    if channels == 1:
        tiles = np.repeat(tiles, 3, axis=3)
    for i in range(batch):
        r, c = divmod(i, cols)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        canvas[top:top + height, left:left + width] = tiles[i]

    tile_in = 1.15  # inches per tile: room for a caption of two classes at 6 pt
    caption_in = 0.18 if rows_t is not None else 0.0
    fig = plt.figure(figsize=(cols * tile_in, rows * (tile_in * height / width + caption_in) + (0.3 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    if rows_t is not None:
        for i in range(batch):
            r, c = divmod(i, cols)
            ax.text(pad + c * (width + pad) + width / 2, pad + r * (height + pad) + height + pad * 0.1,
                    _caption(rows_t[i], class_names), ha="center", va="top", fontsize=6,
                    bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 0.5})
    if title:
        fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# Sample grid with ground-truth boxes

BOX_COLOUR = "#ff2d2d"


def save_box_grid(images: torch.Tensor | Sequence[torch.Tensor], boxes: torch.Tensor | Sequence[torch.Tensor],
                  path: str | Path, labels: torch.Tensor | Sequence[torch.Tensor] | None = None, *,
                  class_names: Sequence[str] | None = None, label_offset: int = 0, nrow: int = 8,
                  title: str | None = None) -> Path:
    """A grid of images with their ground-truth boxes drawn, each box's class written above it.

    ``images``: ``[B, C, H, W]`` (C = 1 or 3) or B ``[C, H, W]`` of one size, uint8 or floating in [0, 1].
    ``boxes``: int64 ``[B, 4]``, one box per image as ``[x0, y0, x1, y1]`` *inclusive* pixel indices
    (``Split.boxes``), or B float ``[N_i, 4]`` xyxy with pixel i covering [i, i + 1) (detection targets): integer
    boxes are read as inclusive, floating ones as half-open, each source's own convention. ``labels``: ``[B]`` or
    B ``[N_i]``, named by ``class_names[label - label_offset]`` (``label_offset=1`` for detection targets).
    Returns ``path``.
    """
    from matplotlib.patches import Rectangle

    if not isinstance(images, torch.Tensor):
        images = torch.stack(list(images)) if len(images) else torch.zeros(0, 3, 1, 1)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or nrow < 1:
        raise ValueError(f"images of shape {tuple(images.shape)}, nrow={nrow} are not allowed ([B, C, H, W] with "
                         "C = 1 or 3, nrow >= 1)")
    batch, channels, height, width = images.shape
    if isinstance(boxes, torch.Tensor):
        if boxes.shape != (batch, 4):
            raise ValueError(f"boxes of shape {tuple(boxes.shape)} are not allowed ([{batch}, 4], or a list of "
                             f"{batch} [N, 4])")
        boxes, labels = list(boxes[:, None]), None if labels is None else [torch.as_tensor(v) for v in labels]
    per_image = [torch.as_tensor(b).reshape(-1, 4) for b in boxes]
    per_label = None if labels is None else [torch.as_tensor(v).reshape(-1) for v in labels]
    if len(per_image) != batch or (per_label is not None and list(map(len, per_label)) != list(map(len, per_image))):
        raise ValueError(f"{len(per_image)} box sets and labels for {batch} images are not allowed (one per image, "
                         "one label per box)")
    x = images.detach().cpu()
    tiles = (x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    tiles = np.repeat(tiles, 3, axis=3) if channels == 1 else tiles
    cols = max(1, min(nrow, batch))
    rows = max(1, math.ceil(batch / cols))
    pad = max(2, round(0.12 * max(height, width)))  # room above each tile for the labels of boxes at its top
    canvas = np.ones((rows * (height + pad) + pad, cols * (width + pad) + pad, 3), dtype=np.float32)
    corners = [(pad + (i // cols) * (height + pad), pad + (i % cols) * (width + pad)) for i in range(batch)]
    for (top, left), tile in zip(corners, tiles):
        canvas[top:top + height, left:left + width] = tile
    tile_in = 1.3 if max(height, width) > 48 else 1.0
    fig = plt.figure(figsize=(cols * tile_in, rows * tile_in * (height + pad) / (width + pad) + (0.3 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for i, ((top, left), image_boxes) in enumerate(zip(corners, per_image)):
        last = 1 if not torch.is_floating_point(image_boxes) else 0  # inclusive: the box ends at x1 + 1
        for j, (x0, y0, x1, y1) in enumerate(image_boxes.double().tolist()):
            # imshow centres pixel i at i, so pixel edges sit at half-integers.
            ax.add_patch(Rectangle((left + x0 - 0.5, top + y0 - 0.5), x1 + last - x0, y1 + last - y0, fill=False,
                                   edgecolor=BOX_COLOUR, linewidth=1.0))
            if per_label is not None:
                k = int(per_label[i][j]) - label_offset
                name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)
                ax.text(left + x0 - 0.5, top + y0 - 0.5, name, ha="left", va="bottom", fontsize=6, color="white",
                        bbox={"facecolor": BOX_COLOUR, "alpha": 0.85, "linewidth": 0, "pad": 0.4})
    if title:
        fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    return save_figure(fig, path)
