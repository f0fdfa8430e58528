"""Metric names and their optimisation modes, and the evaluations' error types: a leaf module (no torch), so the
config's validation, the search and the evaluations share one definition.

Names are the flat ones `study.evaluation.suite` returns (percent unless said): see its module docstring.
"""

from __future__ import annotations

__all__ = ["EPOCH_METRICS", "EVALUATIONS", "REPORTED", "CAMError", "EvaluationError", "fgsm_name", "metric_mode"]

# Metrics every training epoch reports (study.training.engine), what `search.metric` may name besides EPOCH_METRICS.
REPORTED = ("val/top1_err", "val/top5_err", "val/loss", "test/top1_err", "test/top5_err", "test/loss", "train/loss")


class EvaluationError(ValueError):
    """Bad input to an evaluation (shapes, dtypes, ranges, a missing requirement). One line: what and what is
    allowed. The CLI maps it to exit code 2."""


class CAMError(EvaluationError):
    """A model whose head is not global average pooling + one linear layer was asked for class activation maps."""



EVALUATIONS = ("classification", "localization", "occlusion", "in_between", "fgsm", "ood")

# Per-epoch metrics `epoch_metrics` can compute -> optimisation mode (what `search.metric` may name, on val).
EPOCH_METRICS: dict[str, str] = {
    "top1_err": "min", "top5_err": "min", "nll": "min", "ece": "min", "maxboxacc_v2": "max", "top1_loc": "max",
    "gt_known_loc": "max", "fgsm_acc": "max", "occlusion_center_err": "min",
}
_MAX_PREFIXES = ("maxboxacc", "top1_loc", "gt_known_loc", "random_cam", "fgsm_acc", "ood_")
# loc_whole_image: % of images whose top-1 Loc box is the whole image (a degenerate box); loc_best_sigma: the sigma
# GT-known Loc is best at (a setting, never a table column: listed so every metric has a mode)
_MIN_PREFIXES = ("top1_err", "top5_err", "nll", "ece", "occlusion", "in_between", "loc_whole_image", "loc_best_sigma")


def metric_mode(name: str) -> str:
    """"max" or "min": whether a larger value of metric ``name`` (from this module) is better."""
    base = name.split("/")[-1]
    if base.startswith(_MAX_PREFIXES):
        return "max"
    if base.startswith(_MIN_PREFIXES):
        return "min"
    raise EvaluationError(f"unknown evaluation metric {name!r} (names such as: {', '.join(EPOCH_METRICS)})")


def fgsm_name(eps: float) -> str:
    """Metric name of FGSM accuracy at ``eps``: ``fgsm_acc_eps0.031`` for 8/255."""
    return f"fgsm_acc_eps{eps:.3f}"
