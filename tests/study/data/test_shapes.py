"""Tests for study/data/shapes.py: the procedural shapes are deterministic, well-formed and their boxes tight."""

from __future__ import annotations

import pytest
import torch

from study.data.shapes import CLASSES_SYNTHETIC, SyntheticShapes


def test_synthetic_is_deterministic_per_index_and_seed():
    a, b = SyntheticShapes(10, 64, seed=3), SyntheticShapes(1000, 64, seed=3)
    for i in (0, 7):
        (ia, ta), (ib, tb) = a[i], b[i]  # dataset length does not change the images
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
        assert torch.equal(a[i][0], ia)  # and drawing twice gives the same image
    assert not torch.equal(SyntheticShapes(10, 64, seed=4)[0][0], a[0][0])
    assert not torch.equal(SyntheticShapes(10, 64, seed=3, stream=1)[0][0], a[0][0])
    assert not torch.equal(a[1][0], a[0][0])
    with pytest.raises(IndexError):
        a[10]


def test_synthetic_shapes_dtypes_and_ranges():
    size, max_objects = 64, 4
    ds = SyntheticShapes(40, size, seed=0, max_objects=max_objects)
    counts, labels_seen = [], set()
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and labels.shape == (len(boxes),)
        assert 1 <= len(boxes) <= max_objects
        assert bool(((labels >= 1) & (labels <= len(CLASSES_SYNTHETIC))).all())
        assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size).all())
        wh = boxes[:, 2:] - boxes[:, :2]
        # Sampling boxes span 10-50 % of the side; a visible shape is at least a couple of pixels and never
        # larger than its sampling box (plus the pixel it may straddle).
        assert bool((wh >= 2).all() and (wh <= 0.5 * size + 1).all()), (i, boxes)
        counts.append(len(boxes))
        labels_seen.update(labels.tolist())
    assert labels_seen == {1, 2, 3} and len(set(counts)) > 1  # all classes and varied object counts


def _tight_box(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("backgrounds", [("noise", "gradient", "stripes"), ("constant",)])
def test_synthetic_boxes_are_tight_around_the_drawn_colour(backgrounds):
    """Each box's edges touch pixels of its shape's colour and no such pixel lies just outside it.

    Shapes are flat colours; textured backgrounds carry per-pixel noise, so the most frequent exact colour inside
    a box (after discounting the background's most frequent colour when it is flat) is the shape's own.
    """
    size = 64
    ds = SyntheticShapes(32, size, seed=1, backgrounds=backgrounds)
    for i in range(len(ds)):
        image, target = ds[i]
        pixels = image.flatten(1).T  # [S*S, 3]
        colours, counts = torch.unique(pixels, dim=0, return_counts=True)
        bg = colours[counts.argmax()] if backgrounds == ("constant",) else None
        for box in target["boxes"].to(torch.int64).tolist():
            x0, y0, x1, y1 = box
            inside = image[:, y0:y1, x0:x1].flatten(1).T
            c, n = torch.unique(inside, dim=0, return_counts=True)
            if bg is not None:
                n = torch.where((c == bg).all(dim=1), 0, n)
            colour = c[n.argmax()]
            assert int(n.max()) >= 0.2 * (x1 - x0) * (y1 - y0)  # the shape fills a good part of its box
            same = (image == colour.view(3, 1, 1)).all(dim=0)  # [S, S]
            # Look one pixel beyond the box: a colour pixel there would mean the box is not tight.
            region = torch.zeros_like(same)
            region[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = True
            assert _tight_box(same & region) == box, (i, box)


def test_synthetic_single_object_on_constant_background_box_equals_foreground():
    size = 64
    ds = SyntheticShapes(8, size, seed=2, max_objects=1, backgrounds=("constant",))
    for i in range(len(ds)):
        image, target = ds[i]
        colours, counts = torch.unique(image.flatten(1).T, dim=0, return_counts=True)
        bg = colours[counts.argmax()]  # one shape covers at most a quarter of the image
        foreground = (image != bg.view(3, 1, 1)).any(dim=0)
        assert target["boxes"][0].tolist() == _tight_box(foreground)


def test_synthetic_labels_name_the_drawn_shape():
    """A shape's fill of its tight box tells it apart: rectangle 1, ellipse ~pi/4, triangle ~1/2."""
    ds = SyntheticShapes(30, 128, seed=3, max_objects=1, backgrounds=("constant",))
    expected = {1: (0.999, 1.0), 2: (0.7, 0.86), 3: (0.4, 0.62)}
    for i in range(len(ds)):
        image, target = ds[i]
        colours, counts = torch.unique(image.flatten(1).T, dim=0, return_counts=True)
        foreground = (image != colours[counts.argmax()].view(3, 1, 1)).any(dim=0)
        x0, y0, x1, y1 = target["boxes"][0].to(torch.int64).tolist()
        fill = float(foreground[y0:y1, x0:x1].float().mean())
        lo, hi = expected[int(target["labels"][0])]
        assert lo <= fill <= hi, (i, CLASSES_SYNTHETIC[int(target["labels"][0]) - 1], fill)
