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
