"""The near-OOD sets' contract (issue 16, point 3): clutter-only images are the test images without their digit,
held-out classes never reach training, and the evaluate stage's OOD sets carry their kinds."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from study.config.load import load_config
from study.config.schema import ConfigError
from study.data.cluttered_digits import (
    _glyphs,
    _pools,
    clutter_only_images,
    held_out_class_images,
    load_cluttered_digits,
    render_split,
    split_identities,
)
from study.evaluation.inputs import ood_sets

SMALL = ["data.name=cluttered_digits", "data.image_size=24", "data.synthetic_sizes=[200,50,300]"]


def test_clutter_only_is_the_test_split_without_its_digit():
    cfg = load_config(None, SMALL).data
    test = load_cluttered_digits(cfg).test
    clutter = clutter_only_images(cfg, 120)
    assert clutter.images.shape == (120, 3, 24, 24) and clutter.images.dtype == torch.uint8
    assert not clutter.masks.any() and (clutter.boxes == -1).all()
    diff = (clutter.images != test.images[:120]).any(dim=1)  # [n, S, S] pixels that changed
    # Every change lies on the digit that was left out: within its half-maximum mask grown by 5 px (faint strokes
    # below half the maximum opacity reach that far: 5 of 15,297 changed pixels lie 4-5 px out, none beyond).
    grown = F.max_pool2d(test.masks[:120, None].float(), 11, stride=1, padding=5)[:, 0] > 0
    assert not (diff & ~grown).any()
    assert diff.float().mean() < 0.3  # the background and the fragments elsewhere are the test image's own
    assert (diff & test.masks[:120]).flatten(1).any(1).float().mean() > 0.95  # and the digit is gone
    assert torch.equal(clutter.labels, test.labels[:120])  # the digits left out, for the record
    assert torch.equal(clutter_only_images(cfg).images[:120], clutter.images)  # the first n of the whole split


def test_render_split_without_target_keeps_the_random_stream():
    pool = split_identities(0)["test"]
    full = render_split(pool, 50, 16, 123, clutter=3)
    empty = render_split(pool, 50, 16, 123, clutter=3, with_target=False)
    assert torch.equal(full.identities, empty.identities)
    assert torch.equal(full.fragment_identities, empty.fragment_identities)
    same = (full.images == empty.images).all(dim=1)
    assert same.float().mean() > 0.6 and not same.all()


def test_held_out_classes_are_out_of_every_split_and_form_the_ood_set():
    cfg = load_config(None, [*SMALL, "data.ood_classes=[7,9]"]).data
    data = load_cluttered_digits(cfg)
    assert data.num_classes == 8 and data.class_names == ("0", "1", "2", "3", "4", "5", "6", "8")
    for split in (data.train, data.val, data.test):
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) == 7  # relabelled 0..7
    _, glyph_labels = _glyphs()
    for name, pool in _pools(cfg).items():
        assert not torch.isin(glyph_labels[pool], torch.tensor([7, 9])).any(), name
    held = held_out_class_images(cfg, 100)
    assert held.images.shape == (100, 3, 24, 24)
    assert set(glyph_labels[held.identities].tolist()) == {7, 9}
    assert torch.isin(held.identities, split_identities(cfg.split_seed)["test"]).all()  # never trained on
    assert torch.isin(held.fragment_identities, held.identities.unique()).all()
    # The default (nothing held out) is the same data as before the option existed: ten classes.
    assert load_cluttered_digits(dataclasses.replace(cfg, ood_classes=())).num_classes == 10


@pytest.mark.parametrize("bad", ["data.ood_classes=[3,3]", "data.ood_classes=[10]",
                                 "data.ood_classes=[0,1,2,3,4,5,6,7,8]"])
def test_ood_classes_validation(bad):
    with pytest.raises(ConfigError, match="data.ood_classes"):
        load_config(None, [*SMALL, bad])
    with pytest.raises(ConfigError, match="cluttered_digits only"):
        load_config(None, ["data.name=digits", "data.ood_classes=[1]"])


def test_evaluate_ood_sets_and_their_kinds():
    cfg = load_config(None, [*SMALL, "data.ood_classes=[9]"]).data
    sets, kinds = ood_sets(cfg, 24, 80)
    assert kinds == {"clutter": "near", "held_out": "near", "shapes": "far"}
    assert all(x.shape[0] == 80 and x.dtype == torch.uint8 for x in sets.values())
