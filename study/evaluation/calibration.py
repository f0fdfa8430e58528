"""Classification quality from logits: top-1/top-5 error, negative log-likelihood and calibration.

Expected calibration error (ECE) follows Guo et al. 2017, "On Calibration of Modern Neural Networks" (arXiv
1706.04599), Eq. 3: ``M = 15`` equal-width confidence bins over [0, 1], ``ECE = sum_m |B_m|/n * |acc(B_m) -
conf(B_m)|`` where the confidence of a sample is its top-1 softmax probability.

Bins are right-closed, ``(l, u]``: Guo et al.'s ``B_m = ((m - 1)/M, m/M]``, as in their code (gpleiss/
temperature_scaling's ``_ECELoss``: ``conf > lower & conf <= upper``), so a confidence of exactly 1.0 falls in the
last bin. torchmetrics' ``multiclass_calibration_error`` is *not* this convention: its bins are ``[l, u)``
(``torch.bucketize(right=True)`` over the M + 1 edges) with a bin of its own for a confidence of exactly 1.0. The
two agree except for confidences on an inner edge and saturated ones (the tests pin both edges). Mixing methods
change calibration (Mixup and CutMix are often found less over-confident), which is why the stage reports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from study.evaluation.common import check_labels
from study.metric_names import EvaluationError

__all__ = ["Reliability", "classification_metrics", "reliability"]


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data of ``n_bins`` equal-width confidence bins (all lists of floats, length n_bins).

    ``bin_lower``/``bin_upper``: bin edges in [0, 1]; ``confidence``: mean top-1 probability in the bin;
    ``accuracy``: fraction of correct top-1 predictions in the bin (both NaN for an empty bin); ``count``: samples
    in the bin; ``ece``: expected calibration error in percent.
    """

    bin_lower: list[float]
    bin_upper: list[float]
    confidence: list[float]
    accuracy: list[float]
    count: list[int]
    ece: float

    def to_dict(self) -> dict:
        return asdict(self)


def reliability(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> Reliability:
    """Bin samples by top-1 confidence (Guo et al. 2017): float ``[N, K]`` logits and int64 ``[N]`` labels."""
    if n_bins < 1:
        raise EvaluationError(f"n_bins={n_bins} is not allowed (>= 1)")
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # (l, u] bins: bucketize(right=False) returns i with edges[i-1] < c <= edges[i]; confidences are > 0.
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    n = max(int(labels.shape[0]), 1)
    ece = float((conf_sum - acc_sum).abs().sum()) / n * 100.0
    safe = count.clamp_min(1)
    empty = count == 0
    mean_conf = torch.where(empty, torch.nan, conf_sum / safe)
    mean_acc = torch.where(empty, torch.nan, acc_sum / safe)
    return Reliability(edges[:-1].tolist(), edges[1:].tolist(), mean_conf.tolist(), mean_acc.tolist(),
                       [int(c) for c in count.tolist()], ece)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
                           ) -> tuple[dict[str, float], Reliability]:
    """Top-1/top-5 error and calibration of float ``[N, K]`` logits against int64 ``[N]`` labels.

    Returns ``({"top1_err", "top5_err", "nll", "ece"}, reliability)``: errors and ECE in percent, ``nll`` the
    mean cross-entropy in nats. With fewer than 5 classes top-5 error is top-K error (0).
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise EvaluationError(f"logits of shape {tuple(logits.shape)} are not allowed ([N, K] with N >= 1)")
    check_labels(labels, logits.shape[0], logits.shape[1])
    logits = logits.float()
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == labels[:, None]
    rel = reliability(logits, labels, n_bins)
    metrics = {
        "top1_err": 100.0 * float((~hit[:, 0]).double().mean()),
        "top5_err": 100.0 * float((~hit.any(dim=1)).double().mean()),
        "nll": float(F.cross_entropy(logits.double(), labels)),
        "ece": rel.ece,
    }
    return metrics, rel
