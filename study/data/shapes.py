"""Procedural coloured shapes with exact boxes and masks: the `shapes` classification set and the `synthetic`
detection set of the pipeline.

Filled rectangles, ellipses and triangles on textured backgrounds (smooth colour noise, gradients, stripes), in
the spirit of the synthetic "shapes" datasets used to test detectors (e.g. matterport's Mask R-CNN shapes sample),
drawn in torch from a per-image numpy generator so any image of any dataset length renders identically anywhere.
Items follow the detection format of ``study.detection``: ``(image float32 [3, S, S] in [0, 1],
{"boxes": float32 [N, 4] xyxy pixels, half-open, "labels": int64 [N] 1-based})``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["BACKGROUNDS", "CLASSES_SYNTHETIC", "SyntheticShapes"]

Target = dict[str, torch.Tensor]

CLASSES_SYNTHETIC = ("rectangle", "ellipse", "triangle")
BACKGROUNDS = ("noise", "gradient", "stripes", "constant")


class SyntheticShapes(Dataset):
    """Coloured filled rectangles, ellipses and triangles on textured backgrounds, with exact tight boxes.

    Image ``index`` is drawn from ``numpy.random.default_rng([seed, stream, index])``, so any index of any
    length of dataset renders the same image every time, in any process, and ``stream`` gives disjoint
    splits (train 0, val 1) for one seed. Each image holds 1..``max_objects`` shapes whose sampling boxes
    span 10-50 % of the side per axis and overlap any earlier one by at most 15 % of the smaller box;
    later shapes are painted over earlier ones and every box is the tight box of the shape's *visible* pixels.

    Args:
        num_images: dataset length.
        image_size: side ``S`` in pixels (>= 16).
        seed: base seed.
        max_objects: most shapes per image (>= 1).
        stream: independent sub-stream of ``seed`` (``detection_datasets`` uses 0 for train, 1 for val).
        backgrounds: background kinds to choose from: ``noise`` (smooth colour noise), ``gradient``
            (linear ramp between two colours), ``stripes`` (sinusoidal two-colour stripes), ``constant``
            (one flat colour, no noise; handy for tests). The textured kinds add per-pixel noise (std 0.03).

    Returns per item ``(image, target)``: ``image`` float32 ``[3, S, S]`` in [0, 1]; ``target["boxes"]``
    float32 ``[N, 4]`` xyxy in pixels (integers, ``0 <= x_min < x_max <= S``), ``target["labels"]`` int64
    ``[N]`` in 1..3 (index into ``CLASSES_SYNTHETIC`` plus one; 0 is the detector's background).
    """

    classes = CLASSES_SYNTHETIC
    object_scale = (0.1, 0.5)  # sampling-box sides as fractions of image_size (detectors size anchors by it)

    def __init__(self, num_images: int, image_size: int = 128, seed: int = 0, max_objects: int = 4, *,
                 stream: int = 0, backgrounds: Sequence[str] = ("noise", "gradient", "stripes")) -> None:
        if num_images < 0 or image_size < 16 or max_objects < 1 or seed < 0 or stream < 0:
            raise ValueError(f"SyntheticShapes(num_images={num_images}, image_size={image_size}, seed={seed}, "
                             f"max_objects={max_objects}, stream={stream}) (sizes >= 0, image_size >= 16, "
                             "max_objects >= 1, seeds >= 0)")
        bad = [b for b in backgrounds if b not in BACKGROUNDS]
        if bad or not backgrounds:
            raise ValueError(f"backgrounds={list(backgrounds)} (a non-empty list of: {', '.join(BACKGROUNDS)})")
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.max_objects = max_objects
        self.stream = stream
        self.backgrounds = tuple(backgrounds)
        # Pixel-centre coordinates, [S, S] each, shared by every render.
        c = torch.arange(image_size, dtype=torch.float32) + 0.5
        self._yy, self._xx = torch.meshgrid(c, c, indexing="ij")

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        image, target, _ = self.render(index)
        return image, target

    # -- drawing ---------------------------------------------------------------------------------------------

    def render(self, index: int) -> tuple[torch.Tensor, Target, torch.Tensor]:
        """``(image [3,S,S] float32, target, visible [N,S,S] bool)``: ``visible[k]`` marks object k's pixels."""
        rng = np.random.default_rng([self.seed, self.stream, index])
        s = self.image_size
        background = self._background(rng)
        boxes = self._place_boxes(rng)  # float64 [K, 4] sampling boxes, xyxy in pixels
        k = len(boxes)
        labels = torch.as_tensor(rng.integers(1, len(CLASSES_SYNTHETIC) + 1, size=k), dtype=torch.int64)
        masks = self._shape_masks(torch.as_tensor(boxes, dtype=torch.float32), labels, rng)  # [K, S, S] bool

        # Paint in order: the owner of a pixel is the last shape covering it (0: background).
        order = torch.arange(1, k + 1).view(k, 1, 1)
        owner = (masks * order).amax(dim=0)  # [S, S] int64
        visible = owner.unsqueeze(0) == order  # [K, S, S]
        colours = self._colours(rng, k, background.mean(dim=(1, 2)))  # [K, 3]
        palette = torch.cat([torch.zeros(1, 3), colours]).T  # [3, K+1]; column 0 unused
        image = torch.where(owner > 0, palette[:, owner], background)

        # Tight boxes of the visible pixels (pixel i covers [i, i+1)). The overlap limit keeps each non-empty.
        cols, rows = visible.any(dim=1), visible.any(dim=2)  # [K, S] each
        x0 = cols.int().argmax(dim=1)
        x1 = s - cols.flip(1).int().argmax(dim=1)
        y0 = rows.int().argmax(dim=1)
        y1 = s - rows.flip(1).int().argmax(dim=1)
        keep = visible.flatten(1).any(dim=1)
        box_t = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
        target = {"boxes": box_t[keep], "labels": labels[keep]}
        return image.contiguous(), target, visible[keep]

    def _background(self, rng: np.random.Generator) -> torch.Tensor:
        s = self.image_size
        kind = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        c0, c1 = (torch.as_tensor(rng.uniform(0, 1, size=(3, 1, 1)), dtype=torch.float32) for _ in range(2))
        if kind == "constant":
            return c0.expand(3, s, s).clone()
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        theta = rng.uniform(0, 2 * math.pi)
        proj = self._xx * math.cos(theta) + self._yy * math.sin(theta)  # [S, S], pixels along a random direction
        if kind == "noise":
            # Smooth colour blobs: a coarse random grid upsampled, so texture has structure at several scales.
            cells = int(rng.integers(2, 9))
            coarse = torch.rand(1, 3, cells, cells, generator=gen)
            bg = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)[0]
        elif kind == "gradient":
            t = (proj - proj.min()) / (proj.max() - proj.min())
            bg = c0 * (1 - t) + c1 * t
        else:  # stripes
            period = rng.uniform(s / 16, s / 4)
            t = 0.5 + 0.5 * torch.sin(2 * math.pi * proj / period + rng.uniform(0, 2 * math.pi))
            bg = c0 * (1 - t) + c1 * t
        bg = bg + 0.03 * torch.randn(3, s, s, generator=gen)
        return bg.clamp(0, 1)

    def _place_boxes(self, rng: np.random.Generator) -> np.ndarray:
        """Sampling boxes with sides in [0.1, 0.5]*S, rejected if they overlap an earlier one by > 15 %."""
        s = self.image_size
        n = int(rng.integers(1, self.max_objects + 1))
        placed: list[np.ndarray] = []
        for _ in range(50 * n):  # rejection sampling; a few tries per object suffice at <= 4 objects
            if len(placed) == n:
                break
            w, h = rng.uniform(0.1 * s, 0.5 * s, size=2)
            x, y = rng.uniform(0, s - w), rng.uniform(0, s - h)
            box = np.array([x, y, x + w, y + h])
            if all(_overlap_fraction(box, other) <= 0.15 for other in placed):
                placed.append(box)
        return np.stack(placed)

    def _shape_masks(self, boxes: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Masks ``[K, S, S]`` bool for all K objects at once; each shape is inscribed in its sampling box."""
        k = len(boxes)
        x0, y0, x1, y1 = (boxes[:, i].view(k, 1, 1) for i in range(4))
        xx, yy = self._xx, self._yy
        rect = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        ellipse = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        # Triangle: apex at a random point of one random side of the box, base on the opposite side. Built in
        # box-normalised coordinates (u, v in [0, 1], apex on v = 0), then a random quarter turn.
        u, v = (xx - x0) / (x1 - x0), (yy - y0) / (y1 - y0)
        turn = torch.as_tensor(rng.integers(0, 4, size=k)).view(k, 1, 1)
        u, v = (torch.where(turn % 2 == 1, v, u), torch.where(turn % 2 == 1, u, v))  # swap axes on odd turns
        v = torch.where(turn >= 2, 1 - v, v)  # flip apex to the far side on turns 2 and 3
        apex = torch.as_tensor(rng.uniform(0, 1, size=k), dtype=torch.float32).view(k, 1, 1)
        inside_box = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        # Inside when between the two lines from the apex (apex, 0) to the base corners (0, 1) and (1, 1).
        triangle = inside_box & (u >= apex * (1 - v)) & (u <= apex + (1 - apex) * v)
        return torch.where((labels == 1).view(k, 1, 1), rect, torch.where((labels == 2).view(k, 1, 1), ellipse,
                                                                          triangle))

    @staticmethod
    def _colours(rng: np.random.Generator, k: int, bg_mean: torch.Tensor) -> torch.Tensor:
        """k RGB colours at least 0.35 (Euclidean) from the background's mean colour, so shapes stand out."""
        out = []
        for _ in range(k):
            for _ in range(100):
                c = torch.as_tensor(rng.uniform(0, 1, size=3), dtype=torch.float32)
                if torch.linalg.vector_norm(c - bg_mean) >= 0.35:
                    break
            out.append(c)
        return torch.stack(out)


def _overlap_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area of two xyxy boxes over the smaller box's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / small)
