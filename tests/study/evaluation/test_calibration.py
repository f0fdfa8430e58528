"""Classification metrics: errors against a hand count, ECE and its bins against torchmetrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from study.evaluation.calibration import classification_metrics, reliability
from study.metric_names import EvaluationError


def test_errors_and_nll_by_hand():
    ranks = torch.tensor([5.0, 4, 3, 2, 1, 0])  # class c has the (6 - c)-th highest logit: no ties
    logits = torch.stack([ranks, ranks.roll(1), ranks.roll(2), ranks])
    labels = torch.tensor([0, 3, 0, 5])  # right; 3rd of 6; 5th of 6; last of 6
    m, _ = classification_metrics(logits, labels)
    assert m["top1_err"] == 75.0
    assert m["top5_err"] == 25.0
    assert m["nll"] == pytest.approx(float(F.cross_entropy(logits, labels)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(500, 7, generator=g)
    labels = torch.randint(0, 7, (500,), generator=g)
    rel = reliability(logits, labels, n_bins=15)
    ref = multiclass_calibration_error(torch.softmax(logits, 1), labels, num_classes=7, n_bins=15, norm="l1")
    assert rel.ece == pytest.approx(100 * float(ref), abs=1e-4)
    assert sum(rel.count) == 500 and len(rel.accuracy) == 15


def test_reliability_bins_perfectly_calibrated_and_empty():
    # Two classes, confidence exactly 0.75 (logit gap ln 3) and 3 of 4 right: one bin, zero gap.
    logits = torch.tensor([[torch.log(torch.tensor(3.0)), 0.0]] * 4)
    rel = reliability(logits, torch.tensor([0, 0, 0, 1]), n_bins=10)
    full = [i for i, c in enumerate(rel.count) if c]
    assert full == [7] and rel.ece == pytest.approx(0, abs=1e-5)  # 0.75 lies in (0.7, 0.8]
    assert rel.confidence[7] == pytest.approx(0.75) and rel.accuracy[7] == pytest.approx(0.75)
    assert all(v != v for i, v in enumerate(rel.accuracy) if i != 7)  # NaN for empty bins


def test_bad_inputs():
    with pytest.raises(EvaluationError, match="labels"):
        classification_metrics(torch.zeros(3, 4), torch.tensor([0, 1, 9]))
    with pytest.raises(EvaluationError, match="logits"):
        classification_metrics(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(EvaluationError, match="labels"):
        classification_metrics(torch.zeros(3, 4), torch.tensor([0.0, 1, 2]))


def _two_class(confidences: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, 2] whose top-1 softmax probability is each confidence (class 0 on top), labels right or wrong."""
    c = torch.tensor(confidences, dtype=torch.float64)
    gap = torch.where(c >= 1, torch.full_like(c, 100.0), torch.log(c / (1 - c)))  # softmax(100, 0) == 1.0 exactly
    logits = torch.stack([gap, torch.zeros_like(gap)], dim=1)
    return logits, torch.tensor([0 if ok else 1 for ok in correct])


def test_ece_bins_are_guo_right_closed_not_torchmetrics_left_closed():
    # An inner edge: two wrong predictions at exactly 0.5 (equal logits) and two right ones at 0.55, 10 bins.
    # Guo et al.'s (l, u]: 0.5 in (0.4, 0.5] (gap 0.5), 0.55 in (0.5, 0.6] (gap 0.45): ECE (0.5 + 0.45) / 2 = 47.5 %.
    # torchmetrics' [l, u): all four in [0.5, 0.6): accuracy 0.5, confidence 0.525: ECE 2.5 %.
    logits, labels = _two_class([0.5, 0.5, 0.55, 0.55], [False, False, True, True])
    logits[:2] = 0.0
    rel = reliability(logits, labels, n_bins=10)
    assert rel.count[4] == 2 and rel.count[5] == 2 and rel.ece == pytest.approx(47.5)
    tm = multiclass_calibration_error(torch.softmax(logits, 1).float(), labels, num_classes=2, n_bins=10, norm="l1")
    assert 100 * float(tm) == pytest.approx(2.5, abs=1e-4)
    # Saturated confidences: two at exactly 1.0 (one right), two right at 0.95. Guo: one bin (0.9, 1.0], accuracy
    # 0.75, confidence 0.975: 22.5 %. torchmetrics puts 1.0 in a bin of its own: (0.05 + 0.5) / 2 = 27.5 %.
    logits, labels = _two_class([1.0, 1.0, 0.95, 0.95], [True, False, True, True])
    rel = reliability(logits, labels, n_bins=10)
    assert torch.softmax(logits, 1).amax(1)[:2].tolist() == [1.0, 1.0]
    assert rel.count[9] == 4 and rel.ece == pytest.approx(22.5)
    tm = multiclass_calibration_error(torch.softmax(logits, 1).float(), labels, num_classes=2, n_bins=10, norm="l1")
    assert 100 * float(tm) == pytest.approx(27.5, abs=1e-4)
