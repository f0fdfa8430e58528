"""Tests of study.augment: the CutMix contract (docs/architecture.md section 3), proved from the outputs alone.

Images are built so that every pixel value is distinct and encodes (sample, position): value = i * P + p with
P = C * H * W. Reading a mixed batch back then tells, for every pixel, which sample it came from and from where,
so the box, the partner and the "same place" property are recovered without looking inside the mixer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from study.augment import (
    CutMix,
    Cutout,
    MixUp,
    NoMix,
    build_mixer,
    one_hot,
    soft_target_cross_entropy,
)
from study.config.schema import CutMixConfig

torch.set_num_threads(1)

MODES = ("batch", "sample")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coded(batch: int, channels: int = 3, height: int = 16, width: int = 16, dtype=torch.float32,
          device="cpu") -> torch.Tensor:
    """Distinct-valued images: pixel (i, c, y, x) holds i * P + (c * H + y) * W + x, exactly representable."""
    exact = {torch.uint8: 256, torch.bfloat16: 256, torch.float16: 2048}.get(dtype, 2**24)  # largest exact integer
    assert batch * channels * height * width <= exact
    return torch.arange(batch * channels * height * width, dtype=torch.float64).view(
        batch, channels, height, width).to(dtype).to(device)


def read_boxes(images: torch.Tensor, mixed: torch.Tensor) -> list[tuple[int | None, tuple[int, int, int, int] | None]]:
    """Per sample: (partner, box) recovered from the pixels, asserting the CutMix pixel contract on the way.

    Every pixel must come from its own position; the pixels taken from another sample must all come from one
    partner and fill exactly one axis-aligned rectangle, the same in every channel. (None, None) when unchanged.
    """
    batch, channels, height, width = images.shape
    per = channels * height * width
    values = mixed.to(torch.float64).cpu()
    source = torch.div(values, per, rounding_mode="floor").long()
    place = (values - source * per).long()
    assert torch.equal(place, torch.arange(per).view(1, channels, height, width).expand_as(place)), "moved pixels"
    out = []
    for i in range(batch):
        changed = source[i] != i
        assert torch.equal(changed, changed[:1].expand_as(changed)), "channels mixed differently"
        changed = changed[0]
        if not changed.any():
            out.append((None, None))
            continue
        partners = source[i, 0][changed].unique()
        assert partners.numel() == 1, f"sample {i} took pixels from several samples {partners.tolist()}"
        rows = changed.any(dim=1).nonzero().flatten()
        cols = changed.any(dim=0).nonzero().flatten()
        y1, y2, x1, x2 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        assert int(changed.sum()) == (y2 - y1) * (x2 - x1), f"sample {i}: changed pixels are not one rectangle"
        out.append((int(partners), (y1, y2, x1, x2)))
    return out


def expected_targets(labels: torch.Tensor, boxes, num_classes: int, smoothing: float, height: int,
                     width: int) -> torch.Tensor:
    """(1 - a) onehot(y_i) + a onehot(y_partner), a = box area / (H W), then label smoothing; float64."""
    target = torch.zeros(len(boxes), num_classes, dtype=torch.float64)
    for i, (partner, box) in enumerate(boxes):
        y = int(labels[i])
        if partner is None:  # empty box, or the sample drew itself: one-hot either way
            target[i, y] = 1.0
            continue
        a = (box[1] - box[0]) * (box[3] - box[2]) / (height * width)
        target[i, y] += 1.0 - a
        target[i, int(labels[partner])] += a
    return target * (1.0 - smoothing) + smoothing / num_classes


def check_cutmix_call(mixer, images, labels, num_classes, smoothing, generator):
    before = images.clone()
    mixed, targets = mixer(images, labels, generator)
    assert torch.equal(images, before), "input modified in place"
    assert mixed.shape == images.shape and mixed.dtype == images.dtype and mixed.device == images.device
    boxes = read_boxes(images, mixed)
    want = expected_targets(labels.cpu(), boxes, num_classes, smoothing, images.shape[2], images.shape[3])
    assert targets.shape == (images.shape[0], num_classes)
    torch.testing.assert_close(targets.cpu().to(torch.float64), want, rtol=0, atol=2e-6)
    torch.testing.assert_close(targets.sum(dim=1).cpu().to(torch.float64), torch.ones(len(boxes), dtype=torch.float64),
                               rtol=0, atol=2e-6)
    return boxes


# ---------------------------------------------------------------------------------------------------------------
# CutMix: pixels and targets


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("mode", MODES)
def test_cutmix_pastes_one_partner_rectangle_and_weights_targets_by_its_area(mode, smoothing):
    num_classes = 5
    batch_rects, seen_partners = [], 0
    for seed in range(12):
        images = coded(16, 3, 16, 16)
        labels = torch.randint(0, num_classes, (16,), generator=gen(100 + seed))
        mixer = CutMix(alpha=1.0, prob=1.0, mode=mode, num_classes=num_classes, label_smoothing=smoothing)
        boxes = check_cutmix_call(mixer, images, labels, num_classes, smoothing, gen(seed))
        rects = {box for _, box in boxes if box is not None}
        partners = [p for p, _ in boxes if p is not None]
        assert len(partners) == len(set(partners)), "partners are not a permutation"
        seen_partners += len(partners)
        if mode == "batch":
            assert len(rects) <= 1, f"batch mode used several boxes: {rects}"
            batch_rects += list(rects)
        else:
            assert len(rects) >= 2 or len(partners) < 2, "sample mode drew one box for all"
    assert seen_partners > 50  # the checks above ran on real mixes, not on empty boxes
    if mode == "batch":
        assert len(set(batch_rects)) >= 5, "the box does not vary between calls"


def test_cutmix_sample_mode_boxes_differ_within_a_batch():
    images = coded(32, 1, 32, 32)
    mixed, _ = CutMix(1.0, 1.0, "sample", num_classes=4)(images, torch.zeros(32, dtype=torch.int64), gen(0))
    rects = [box for _, box in read_boxes(images, mixed) if box is not None]
    assert len(rects) >= 20 and len(set(rects)) >= 0.8 * len(rects)


@pytest.mark.parametrize("mode", MODES)
def test_channels_last_and_odd_sizes(mode):
    images = coded(6, 3, 11, 7)
    labels = torch.arange(6)
    mixer = CutMix(2.0, 1.0, mode, num_classes=6)
    check_cutmix_call(mixer, images, labels, 6, 0.0, gen(3))
    cl = images.contiguous(memory_format=torch.channels_last)
    mixed_cl, t_cl = mixer(cl, labels, gen(3))
    mixed, t = mixer(images, labels, gen(3))
    assert mixed_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(mixed_cl, mixed) and torch.equal(t_cl, t)


@pytest.mark.parametrize("mode", MODES)
def test_many_classes(mode):
    """Past 1024 classes the targets are scattered rather than looked up: same contract, same range check."""
    images, labels = coded(8, 1, 8, 8), torch.tensor([0, 1999, 5, 7, 1999, 3, 2, 1000])
    mixer = CutMix(1.0, 1.0, mode, num_classes=2000, label_smoothing=0.1)
    check_cutmix_call(mixer, images, labels, 2000, 0.1, gen(0))
    with pytest.raises(ValueError, match=r"labels in \[0, 2000\] .*K=2000"):
        mixer(images, torch.tensor([0, 2000, 5, 7, 1, 3, 2, 1]), gen(0))


def test_batch_of_one_is_unchanged_with_one_hot_target():
    images = coded(1, 3, 8, 8)
    for mode in MODES:
        mixed, targets = CutMix(1.0, 1.0, mode, num_classes=3)(images, torch.tensor([2]), gen(0))
        assert torch.equal(mixed, images) and torch.equal(targets, torch.tensor([[0.0, 0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------------------------
# prob, alpha and the generator reach what they control


@pytest.mark.parametrize("mode", MODES)
def test_prob_zero_is_identity(mode):
    images, labels = coded(8), torch.arange(8) % 3
    mixer = CutMix(alpha=1.0, prob=0.0, mode=mode, num_classes=3, label_smoothing=0.1)
    for seed in range(20):
        mixed, targets = mixer(images, labels, gen(seed))
        assert torch.equal(mixed, images)
        torch.testing.assert_close(targets, F.one_hot(labels, 3).float() * 0.9 + 0.1 / 3)


def mixed_calls(mixer, calls: int) -> int:
    # 16 samples: an identity permutation (a mixing call that changes nothing) has odds 1/16!.
    images, labels = coded(16, 1, 16, 16), torch.arange(16) % 4
    count = 0
    for seed in range(calls):
        mixed, _ = mixer(images, labels, gen(seed))
        count += int(not torch.equal(mixed, images))
    return count


@pytest.mark.parametrize("mode", MODES)
def test_prob_one_always_mixes_and_prob_is_the_per_call_rate(mode):
    # alpha=4 keeps lambda near 0.5, so a mixing call never draws an empty box here.
    assert mixed_calls(CutMix(4.0, 1.0, mode, num_classes=4), 60) == 60
    # Binomial(400, p) within 4 standard deviations; 0.2 and 0.7 are 25 sd apart, so a lost prob fails.
    for prob in (0.2, 0.7):
        count = mixed_calls(build_mixer(CutMixConfig(alpha=4.0, prob=prob, mode=mode), 4), 400)
        assert abs(count - 400 * prob) <= 4 * math.sqrt(400 * prob * (1 - prob)), (prob, count)


def reference_areas(alpha: float, size: int, n: int, batch: int, seed: int) -> np.ndarray:
    """Clipped box area fractions of the paper's sampler (lambda ~ Beta(alpha, alpha), side sqrt(1 - lambda)),
    by Monte Carlo with NumPy's own Beta; a 1/batch share reads 0 because a sample may draw itself."""
    rng = np.random.default_rng(seed)
    cut = (size * np.sqrt(1.0 - rng.beta(alpha, alpha, n))).astype(np.int64)
    lo = rng.integers(0, size, (2, n)) - cut // 2
    sides = np.clip(lo + cut, 0, size) - np.clip(lo, 0, size)
    area = sides[0] * sides[1] / size**2
    area[rng.random(n) < 1.0 / batch] = 0.0
    return area


def area_stats(area: np.ndarray) -> np.ndarray:
    return np.array([area.mean(), area.std(), (area < 0.05).mean()])


@pytest.mark.parametrize("mode", MODES)
def test_alpha_from_the_config_reaches_the_box_sampler(mode):
    size = 32
    batch, calls = (256, 24) if mode == "sample" else (8, 400)
    images = coded(batch, 1, size, size)
    labels = torch.zeros(batch, dtype=torch.int64)
    measured = {}
    for alpha in (0.1, 1.0, 4.0):
        mixer = build_mixer(CutMixConfig(alpha=alpha, prob=1.0, mode=mode), 2)
        areas = []
        for seed in range(calls):
            mixed, _ = mixer(images, labels, gen(seed))
            frac = (mixed != images)[:, 0].sum(dim=(1, 2)).double() / size**2
            areas.append(frac.numpy() if mode == "sample" else frac.max().numpy()[None])
        measured[alpha] = area_stats(np.concatenate(areas))
        n = batch * calls if mode == "sample" else calls
        ref = area_stats(reference_areas(alpha, size, 400_000, batch if mode == "sample" else 10**9, seed=1))
        # Four standard errors of the measured statistics (std's error taken as that of the mean).
        tol = 4 * np.array([ref[1], ref[1], math.sqrt(ref[2] * (1 - ref[2]) + 1e-4)]) / math.sqrt(n)
        assert (abs(measured[alpha] - ref) <= tol + 1e-3).all(), (alpha, measured[alpha], ref, tol)
    # The test can fail: a sampler that ignored alpha would give alpha=0.1 and alpha=4 the same share of
    # near-empty boxes, but they are many tolerances apart (about 0.39 vs 0.001).
    assert measured[0.1][2] - measured[4.0][2] > 0.25
    assert measured[0.1][1] > measured[4.0][1] + 0.08


@pytest.mark.parametrize("cls", [CutMix, MixUp, Cutout])
@pytest.mark.parametrize("mode", MODES)
def test_same_generator_seed_same_output_and_seeds_differ(cls, mode):
    images, labels = torch.rand(8, 3, 16, 16, generator=gen(0)), torch.arange(8) % 4
    mixer = cls(prob=1.0, mode=mode, num_classes=4)
    a = mixer(images, labels, gen(7))
    b = mixer(images, labels, gen(7))
    c = mixer(images, labels, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(5)
    d = mixer(images, labels)
    torch.manual_seed(5)
    e = mixer(images, labels)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


# ---------------------------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", MODES)
def test_dtypes_mix_like_float32(dtype, mode):
    images = coded(4, 1, 8, 8, dtype)
    labels = torch.tensor([0, 1, 2, 0])
    mixer = CutMix(1.0, 1.0, mode, num_classes=3, label_smoothing=0.05)
    found = 0
    for seed in range(6):
        boxes = check_cutmix_call(mixer, images, labels, 3, 0.05, gen(seed))
        found += sum(box is not None for _, box in boxes)
        mixed, targets = mixer(images, labels, gen(seed))
        mixed32, targets32 = mixer(images.float(), labels, gen(seed))
        assert mixed.dtype == dtype and torch.equal(mixed.float(), mixed32)
        assert targets.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(targets.float(), targets32)
    assert found > 0


# ---------------------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(("make", "match"), [
    (lambda: CutMix(alpha=0.0, num_classes=3), r"alpha=0\.0 .*alpha > 0"),
    (lambda: CutMix(alpha=-1, num_classes=3), r"alpha=-1 "),
    (lambda: CutMix(alpha=float("nan"), num_classes=3), r"alpha=nan "),
    (lambda: CutMix(prob=1.5, num_classes=3), r"prob=1\.5 .*0 <= prob <= 1"),
    (lambda: CutMix(prob=-0.1, num_classes=3), r"prob=-0\.1 "),
    (lambda: CutMix(mode="elem", num_classes=3), r"mode='elem' .*batch, sample"),
    (lambda: CutMix(num_classes=1), r"num_classes=1 .*>= 2"),
    (lambda: CutMix(num_classes=3, label_smoothing=1.0), r"label_smoothing=1\.0 "),
    (lambda: MixUp(alpha=0.0, num_classes=3), r"alpha=0\.0 "),
    (lambda: Cutout(size=0.0, num_classes=3), r"size=0\.0 .*0 < size <= 1"),
    (lambda: Cutout(size=1.5, num_classes=3), r"size=1\.5 "),
    (lambda: NoMix(num_classes=0), r"num_classes=0 "),
    (lambda: build_mixer(CutMixConfig(method="ricap"), 3), r"cutmix.method='ricap' .*cutmix, mixup, cutout, none"),
    (lambda: one_hot(torch.tensor([0, 3]), 3), r"labels in \[0, 3\] .*K=3"),
])
def test_bad_arguments_raise_value_error_naming_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("images", "labels", "match"), [
    (torch.zeros(2, 8, 8), torch.tensor([0, 1]), r"images.shape=\(2, 8, 8\) .*\[B, C, H, W\]"),
    (torch.zeros(2, 1, 8, 8, dtype=torch.int32), torch.tensor([0, 1]), r"images.dtype=torch.int32 "),
    (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64), r"images.shape=\(0, 1, 8, 8\) "),
    (torch.zeros(2, 1, 8, 8), torch.tensor([0, 1], dtype=torch.int32), r"labels.dtype=torch.int32 .*int64"),
    (torch.zeros(2, 1, 8, 8), torch.tensor([[0, 1]]), r"labels.shape=\(1, 2\) "),
    (torch.zeros(2, 1, 8, 8), torch.tensor([0, 1, 2]), r"labels.shape=\(3,\) .*\[2\]"),
    (torch.zeros(2, 1, 8, 8), torch.tensor([0, 3]), r"labels in \[0, 3\] .*K=3"),
    (torch.zeros(2, 1, 8, 8), torch.tensor([-1, 0]), r"labels in \[-1, 0\] "),
    ([[0.0]], torch.tensor([0]), r"images of type list "),
])
def test_bad_batches_raise_value_error(mode, images, labels, match):
    for mixer in (CutMix(1.0, 1.0, mode, num_classes=3), CutMix(1.0, 0.0, mode, num_classes=3),
                  MixUp(1.0, 1.0, mode, num_classes=3), Cutout(0.5, 1.0, mode, num_classes=3), NoMix(num_classes=3)):
        with pytest.raises(ValueError, match=match):
            mixer(images, labels, gen(0))


def test_bad_generator_raises():
    with pytest.raises(ValueError, match=r"generator of type int "):
        CutMix(num_classes=3)(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), 7)


# ---------------------------------------------------------------------------------------------------------------
# MixUp, Cutout, NoMix, build_mixer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_mixup_blends_each_sample_with_its_partner_by_the_target_weight(mode, dtype):
    batch = 8
    images = (torch.rand(batch, 3, 8, 8, generator=gen(1)) * 255).round().to(dtype)
    labels = torch.arange(batch)  # one class per sample: the target row names the partner
    before = images.clone()
    mixed, targets = MixUp(1.0, 1.0, mode, num_classes=batch, label_smoothing=0.0)(images, labels, gen(2))
    assert torch.equal(images, before) and mixed.dtype == dtype
    torch.testing.assert_close(targets.sum(1), torch.ones(batch))
    weights = set()
    for i in range(batch):
        others = [j for j in range(batch) if j != i and targets[i, j] > 0]
        assert len(others) <= 1
        j = others[0] if others else i
        a = float(targets[i, j]) if others else 0.0
        assert abs(float(targets[i, i]) - (1 - a)) < 1e-6
        want = (1 - a) * images[i].double() + a * images[j].double()
        tol = 0.5 + 1e-3 if dtype == torch.uint8 else 1e-3  # uint8 rounds to the nearest integer
        assert (mixed[i].double() - want).abs().max() <= tol
        if others:
            weights.add(round(a, 6))
    assert len(weights) == 1 if mode == "batch" else len(weights) > 1


def read_cutout(images, mixed):
    """Per sample: the zeroed rectangle (or None), asserting everything else is untouched."""
    out = []
    for i in range(images.shape[0]):
        zero = mixed[i] == 0
        assert torch.equal(zero, zero[:1].expand_as(zero))
        assert torch.equal(mixed[i][~zero], images[i][~zero])
        zero = zero[0]
        if not zero.any():
            out.append(None)
            continue
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        box = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
        assert int(zero.sum()) == (box[1] - box[0]) * (box[3] - box[2])
        out.append(box)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_cutout_zeroes_one_clipped_square_and_keeps_targets(mode):
    images = coded(16, 3, 16, 16) + 1  # no zero pixels before cutout
    labels = torch.arange(16) % 4
    side = round(0.25 * 16)
    mixed, targets = Cutout(0.25, 1.0, mode, num_classes=4, label_smoothing=0.1)(images, labels, gen(0))
    boxes = read_cutout(images, mixed)
    assert all(box is not None for box in boxes)
    for y1, y2, x1, x2 in boxes:
        assert y2 - y1 <= side and x2 - x1 <= side
        assert (y2 - y1 == side or y1 == 0 or y2 == 16) and (x2 - x1 == side or x1 == 0 or x2 == 16)
    assert len(set(boxes)) == 1 if mode == "batch" else len(set(boxes)) > 4
    torch.testing.assert_close(targets, F.one_hot(labels, 4).float() * 0.9 + 0.1 / 4)


def test_nomix_is_identity_with_one_hot_targets():
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 2, 1, 2])
    mixed, targets = NoMix(num_classes=3, label_smoothing=0.3)(images, labels)
    assert mixed is images
    torch.testing.assert_close(targets, F.one_hot(labels, 3).float() * 0.7 + 0.1)


@pytest.mark.parametrize(("cfg", "cls", "attrs"), [
    (CutMixConfig(), CutMix, {"alpha": 1.0, "prob": 0.5, "mode": "batch"}),
    (CutMixConfig(alpha=0.3, prob=0.8, mode="sample", label_smoothing=0.1), CutMix,
     {"alpha": 0.3, "prob": 0.8, "mode": "sample", "label_smoothing": 0.1}),
    (CutMixConfig(method="mixup", alpha=0.2, prob=1.0), MixUp, {"alpha": 0.2, "prob": 1.0}),
    (CutMixConfig(method="cutout", cutout_size=0.25, prob=0.9, mode="sample"), Cutout,
     {"size": 0.25, "prob": 0.9, "mode": "sample"}),
    (CutMixConfig(method="none", label_smoothing=0.2), NoMix, {"label_smoothing": 0.2}),
    (CutMixConfig(method="cutmix", prob=0.0), NoMix, {}),
])
def test_build_mixer_maps_the_config(cfg, cls, attrs):
    mixer = build_mixer(cfg, 7)
    assert type(mixer) is cls and mixer.num_classes == 7
    for key, value in attrs.items():
        assert getattr(mixer, key) == value


# ---------------------------------------------------------------------------------------------------------------
# one_hot and the loss


def test_one_hot_and_soft_target_cross_entropy_match_torch():
    logits = torch.randn(6, 4, generator=gen(0))
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    for s in (0.0, 0.2):
        targets = one_hot(labels, 4, s)
        assert targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
        torch.testing.assert_close(soft_target_cross_entropy(logits, targets),
                                   F.cross_entropy(logits, labels, label_smoothing=s))
    assert one_hot(labels, 4, dtype=torch.float64).dtype == torch.float64
    half = soft_target_cross_entropy(logits.half(), one_hot(labels, 4))
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match=r"logits.shape=\(6, 4\) and soft_targets.shape=\(6, 3\)"):
        soft_target_cross_entropy(logits, torch.zeros(6, 3))


def test_loss_of_mixed_targets_is_the_area_weighted_loss():
    images, labels = coded(8), torch.arange(8) % 5
    mixed, targets = CutMix(1.0, 1.0, "sample", num_classes=5)(images, labels, gen(4))
    logits = torch.randn(8, 5, generator=gen(1))
    boxes = read_boxes(images, mixed)
    want = 0.0
    for i, (partner, box) in enumerate(boxes):
        ce = F.cross_entropy(logits[i:i + 1], labels[i:i + 1])
        if partner is None:
            want += float(ce)
            continue
        a = (box[1] - box[0]) * (box[3] - box[2]) / 256
        want += (1 - a) * float(ce) + a * float(F.cross_entropy(logits[i:i + 1], labels[partner:partner + 1]))
    assert abs(float(soft_target_cross_entropy(logits, targets)) - want / 8) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Cost: the number of torch ops per call does not grow with the batch


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cls", [CutMix, MixUp, Cutout])
@pytest.mark.parametrize("mode", MODES)
def test_op_count_does_not_grow_with_batch_size(cls, mode):
    counts = []
    for batch in (8, 128):
        images, labels = torch.rand(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
        mixer = cls(prob=1.0, mode=mode, num_classes=10)
        mixer(images, labels, gen(0))  # per-batch-size set-up is not per-call work
        with OpCounter() as counter:
            mixer(images, labels, gen(1))
        counts.append(counter.count)
    assert counts[0] == counts[1] and counts[0] < 40, counts


# ---------------------------------------------------------------------------------------------------------------
# CUDA


@CUDA
@pytest.mark.parametrize("cls", [CutMix, MixUp, Cutout])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu_under_the_same_cpu_generator(cls, mode):
    images, labels = coded(16, 3, 16, 16), torch.arange(16) % 5
    mixer = cls(prob=1.0, mode=mode, num_classes=5)
    want, want_t = mixer(images, labels, gen(3))
    got, got_t = mixer(images.cuda(), labels.cuda(), gen(3))
    assert got.is_cuda and got_t.is_cuda
    # Copies are exact on every device; MixUp's blend may round differently in the last bit.
    torch.testing.assert_close(got.cpu(), want, rtol=1e-6 if cls is MixUp else 0, atol=0)
    torch.testing.assert_close(got_t.cpu(), want_t)


@CUDA
@pytest.mark.parametrize("mode", MODES)
def test_cuda_contract_with_a_cuda_generator(mode):
    images, labels = coded(16, 3, 16, 16, device="cuda"), (torch.arange(16) % 5).cuda()
    mixer = CutMix(1.0, 1.0, mode, num_classes=5, label_smoothing=0.1)
    boxes = check_cutmix_call(mixer, images, labels, 5, 0.1, torch.Generator("cuda").manual_seed(0))
    assert any(box is not None for _, box in boxes)
    a = mixer(images, labels, torch.Generator("cuda").manual_seed(1))
    b = mixer(images, labels, torch.Generator("cuda").manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
