"""Localization priors (issue 16, point 2): the centre-Gaussian map on planted boxes against a hand computation,
its one-map fast path against wsolevaluation's per-image reference, and the float64 uint8 levels (point 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.evaluation.wsol import (
    centre_gaussian_map,
    max_box_acc,
    prior_max_box_acc,
    reference_max_box_acc,
    to_uint8_maps,
)
from study.metric_names import EvaluationError

# Planted ground truth on a 4x4 image: the whole image, the central 2x2, the central 2x2 grown to the far border
# (wsolevaluation's [x, y, min(x+w, W-1), min(y+h, H-1)] box of the central 2x2 component) and one corner pixel.
PLANTED = np.array([[0, 0, 3, 3], [1, 1, 2, 2], [1, 1, 3, 3], [0, 0, 0, 0]])


def test_centre_map_by_hand():
    # Squared distances from the centre (1.5, 1.5): 0.5 inside, 2.5 on the edges, 4.5 at the corners; with sigma =
    # 0.25 of the side 4, exp(-d2 / 2) min-max normalised gives 1, (e^-1.25 - e^-2.25) / (e^-0.25 - e^-2.25) and 0.
    edge = (np.exp(-1.25) - np.exp(-2.25)) / (np.exp(-0.25) - np.exp(-2.25))
    expected = np.array([[0, edge, edge, 0], [edge, 1, 1, edge], [edge, 1, 1, edge], [0, edge, edge, 0]])
    m = centre_gaussian_map((4, 4))
    assert m.dtype == np.float64 and np.allclose(m, expected, atol=1e-12)
    assert to_uint8_maps(m[None])[0].tolist() == [[0, 68, 68, 0], [68, 255, 255, 68], [68, 255, 255, 68],
                                                   [0, 68, 68, 0]]  # int(0.2689 * 255) = 68
    with pytest.raises(EvaluationError):
        centre_gaussian_map((4, 4), 0.0)


def test_centre_prior_on_planted_boxes_by_hand():
    # Thresholds 0, 0.1, ..., 0.9 on levels int(tau * 255): tau <= 0.2 keeps every pixel but the corners (one
    # component, box [0, 0, 3, 3]); tau >= 0.3 keeps the centre 2x2 (box [1, 1, 3, 3] after the +1 end).
    # IoU of the planted boxes with [0, 0, 3, 3]: 1, 4/16, 9/16, 1/16; with [1, 1, 3, 3]: 9/16, 4/9, 1, 0.
    # delta 0.3: max(2/4, 3/4) = 75 %; delta 0.5: max(2/4, 2/4) = 50 %; delta 0.7: max(1/4, 1/4) = 25 %.
    res = prior_max_box_acc(centre_gaussian_map((4, 4)), PLANTED, cam_curve_interval=0.1)
    assert res.per_iou == {0.3: 75.0, 0.5: 50.0, 0.7: 25.0}
    assert res.value == pytest.approx(50.0)
    assert res.curves[0.3] == [50.0] * 3 + [75.0] * 7
    assert res.best_threshold[0.3] == pytest.approx(0.3)


@pytest.mark.parametrize("size", [(24, 24), (17, 23)])
def test_one_map_path_equals_the_reference_on_copies(size):
    g = torch.Generator().manual_seed(0)
    n = 60
    h, w = size
    lo = torch.stack([torch.randint(0, w // 2, (n,), generator=g), torch.randint(0, h // 2, (n,), generator=g)], 1)
    hi = lo + torch.stack([torch.randint(1, w // 2, (n,), generator=g), torch.randint(1, h // 2, (n,), generator=g)], 1)
    boxes = torch.cat([lo, hi], dim=1)
    m = centre_gaussian_map(size, 0.2)
    copies = np.broadcast_to(m, (n, h, w)).copy()
    fast = prior_max_box_acc(m, boxes, cam_curve_interval=0.02)
    assert fast.curves == reference_max_box_acc(copies, boxes, cam_curve_interval=0.02).curves
    assert fast.curves == max_box_acc(copies, boxes, cam_curve_interval=0.02).curves


def test_uint8_levels_are_computed_in_float64():
    # A float64 map with a plateau just below 1: float32 rounds 1 - 1e-9 up to 1.0 (level 255); the reference
    # uint8(s * 255) in float64 truncates 254.99999975 to 254.
    plateau = np.full((1, 6, 6), 1 - 1e-9)
    plateau[0, 0, 0] = 0.0
    plateau[0, 2:4, 2:4] = 1.0
    reference = (plateau * 255).astype(np.uint8)
    assert (reference == 254).sum() == 31
    assert np.array_equal(to_uint8_maps(plateau), reference)
    assert not np.array_equal((plateau.astype(np.float32) * np.float32(255)).astype(np.uint8), reference)
    assert np.array_equal(to_uint8_maps(torch.from_numpy(plateau)), reference)
    # The plateau is one level below the peak: at tau = 0.997 (level int(0.997 * 255) = 254) only the 2x2 peak is
    # foreground; with the float32 cast the whole plateau would be, and the box would change.
    box = np.array([[2, 2, 3, 3]])  # the 2x2 peak as wsolevaluation boxes it: [2, 2, min(4, 5), min(4, 5)] -> IoU 4/9
    acc = max_box_acc(plateau, box, cam_curve_interval=0.001, iou_thresholds=(0.4,))
    assert acc.curves[0.4][997] == 100.0
    # float32 maps: the float64 product truncates like the float32 one on every value near every level.
    k = (np.arange(256) / 255.0).astype(np.float32)
    near = np.concatenate([np.nextafter(k, np.float32(0)), k, np.nextafter(k, np.float32(2))])
    near = near[(near >= 0) & (near <= 1)][None, None]
    assert np.array_equal(to_uint8_maps(near), (near * np.float32(255)).astype(np.uint8))
