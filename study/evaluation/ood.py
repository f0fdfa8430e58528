"""Out-of-distribution detection with the maximum softmax probability (the CutMix paper's Table 12).

Detector: Hendrycks & Gimpel 2017, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples"
(arXiv 1610.02136): score = max softmax probability, no temperature and no input perturbation; the
in-distribution test set is the **positive** class. Metrics, as in ODIN (Liang et al. 2018, arXiv 1706.02690) and
the CutMix paper, all in percent:

* ``tnr95``: true-negative rate (OOD rejected) at the highest threshold whose true-positive rate is >= 95 %
  (the best TNR among operating points with TPR >= 0.95);
* ``auroc``: area under the ROC curve;
* ``detacc``: detection accuracy, ``max over thresholds of (TPR + TNR) / 2``.

They come from torchmetrics' exact ``BinaryROC``/``BinaryAUROC`` (``thresholds=None``). torchmetrics passes scores
outside [0, 1] through a sigmoid per call; softmax probabilities are inside, so they are used as they are (tested
against scikit-learn). OOD sets that need no download: ODIN's noise sets, Uniform U[0, 1] and Gaussian N(0.5, 1)
clamped to [0, 1], drawn per pixel in pixel space (then normalised like any input), and any image tensor (other
datasets, a local folder read by ``study.data.cub.read_image_folder``), resized to the in-distribution size.

Each set is reported on its own, with a percentile bootstrap interval of its AUROC (:func:`bootstrap_auroc`): a
ReLU network maps far-from-data inputs such as noise to one confident cluster (Hein et al., CVPR 2019), so a
noise set's AUROC says where that cluster landed and belongs among sanity checks, not beside near-OOD sets (the
generator's clutter-only images and held-out classes, ``study.evaluation.inputs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import binary_auroc, binary_roc

from study.evaluation.common import check_images, predict_logits, to_unit
from study.metric_names import EvaluationError

__all__ = ["NOISE_SETS", "bootstrap_auroc", "max_softmax", "noise_images", "ood_metrics", "ood_scores",
           "prepare_ood_images", "softmax_confidence"]

NOISE_SETS = ("uniform", "gaussian")
_BOOT_CHUNK = 100  # bootstrap resamples per step: [100, distinct scores] float64 tensors


def noise_images(kind: str, n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """ODIN's synthetic OOD sets: float32 ``[n, C, H, W]`` pixel-space images in [0, 1].

    ``uniform``: i.i.d. U[0, 1] per pixel; ``gaussian``: i.i.d. N(0.5, 1) per pixel, clamped to [0, 1].
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.rand(n, *shape, generator=g)
    if kind == "gaussian":
        return (0.5 + torch.randn(n, *shape, generator=g)).clamp_(0.0, 1.0)
    raise EvaluationError(f"noise set {kind!r} is not allowed (one of: {', '.join(NOISE_SETS)})")


def prepare_ood_images(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Any pixel-space image tensor ``[N, c, h, w]`` (uint8 or float in [0, 1]) as float32 ``[N, C, H, W]``:
    grey replicated to 3 channels, RGB averaged to 1, resized (bilinear, antialiased when shrinking)."""
    check_images(images, "OOD images")
    x = to_unit(images)
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise EvaluationError(f"OOD images with {x.shape[1]} channels are not allowed (1 or {c})")
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > w or x.shape[-2] > h).clamp_(0.0, 1.0)
    return x.contiguous()


def max_softmax(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
                batch_size: int = 256, device: str | torch.device | None = None) -> torch.Tensor:
    """Maximum softmax probability float64 ``[N]`` of pixel-space images (float64, so that confident predictions
    keep distinct scores instead of tying at float32's 1.0)."""
    return softmax_confidence(predict_logits(model, images, mean, std, batch_size=batch_size, device=device))


def softmax_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max-softmax score float64 ``[N]`` of logits ``[N, K]``, computed in float64."""
    return torch.softmax(logits.double(), dim=1).amax(dim=1)


def ood_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """``{"auroc", "tnr95", "detacc"}`` (percent) of detector scores, higher = more in-distribution.

    Args:
        in_scores: float ``[N_in]`` scores of in-distribution images (positives), in [0, 1].
        out_scores: float ``[N_out]`` scores of OOD images (negatives), in [0, 1].
    """
    if in_scores.ndim != 1 or out_scores.ndim != 1 or not len(in_scores) or not len(out_scores):
        raise EvaluationError(f"OOD scores of shapes {tuple(in_scores.shape)}, {tuple(out_scores.shape)} are not "
                              "allowed (two non-empty 1-D tensors)")
    scores = torch.cat([in_scores, out_scores]).double()
    if bool(torch.isnan(scores).any()) or float(scores.min()) < 0 or float(scores.max()) > 1:
        raise EvaluationError("OOD scores outside [0, 1] are not allowed (probabilities: torchmetrics would apply a "
                              "sigmoid)")
    target = torch.cat([torch.ones(len(in_scores)), torch.zeros(len(out_scores))]).long()
    fpr, tpr, _ = binary_roc(scores, target, thresholds=None)
    tnr = 1.0 - fpr
    ok = tpr >= 0.95
    return {
        "auroc": 100.0 * float(binary_auroc(scores, target, thresholds=None)),
        "tnr95": 100.0 * float(tnr[ok].max()) if bool(ok.any()) else 0.0,
        "detacc": 100.0 * float((0.5 * (tpr + tnr)).max()),
    }


def ood_scores(model: nn.Module, in_images: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
               ood_sets: Mapping[str, torch.Tensor] | None = None, noise: Sequence[str] = NOISE_SETS,
               noise_count: int | None = None, seed: int = 0, batch_size: int = 256,
               device: str | torch.device | None = None, in_scores: torch.Tensor | None = None,
               bootstrap: int = 0) -> dict[str, dict[str, float]]:
    """Max-softmax OOD metrics of ``model`` for every OOD set: ``{set name: {"auroc", "tnr95", "detacc"}}``.

    Args:
        in_images: the in-distribution test images (pixel space), the positives.
        ood_sets: extra named OOD image tensors (any size and 1 or 3 channels; resized to the in-distribution
            shape). Names must not clash with ``noise``.
        noise: which of ODIN's noise sets to add ("uniform", "gaussian"); ``noise_count`` images each (default:
            as many as ``in_images``), drawn from ``seed``.
        in_scores: the in-distribution max-softmax scores if already computed (saves a forward pass).
        bootstrap: resamples of :func:`bootstrap_auroc` for each set's ``auroc_lo`` / ``auroc_hi`` (0: none).
    """
    check_images(in_images)
    shape = tuple(in_images.shape[1:])
    sets = dict(ood_sets or {})
    clash = sorted(set(sets) & set(noise))
    if clash:
        raise EvaluationError(f"OOD set names {clash} are not allowed (reserved for the noise sets)")
    count = len(in_images) if noise_count is None else int(noise_count)
    for i, kind in enumerate(noise):
        sets[kind] = noise_images(kind, count, shape, seed + i)
    if in_scores is None:
        in_scores = max_softmax(model, in_images, mean, std, batch_size=batch_size, device=device)
    out = {}
    for name, imgs in sets.items():
        x = prepare_ood_images(imgs, shape)
        scores = max_softmax(model, x, mean, std, batch_size=batch_size, device=device)
        out[name] = ood_metrics(in_scores, scores)
        if bootstrap:
            lo, hi = bootstrap_auroc(in_scores, scores, n_boot=bootstrap, seed=seed)
            out[name].update({"auroc_lo": lo, "auroc_hi": hi})
    return out


def bootstrap_auroc(in_scores: torch.Tensor, out_scores: torch.Tensor, *, n_boot: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (percent) of the AUROC of ``in_scores`` (positives) against ``out_scores``:
    both sets resampled with replacement, ``n_boot`` times, all at once.

    AUROC = P(in > out) + P(in = out) / 2 (Mann-Whitney), computed per resample from multinomial counts over the
    sorted distinct scores, so ties count half as in torchmetrics' exact AUROC: float64 ``[n_boot, U]`` work, no
    loop over resamples.
    """
    if in_scores.ndim != 1 or out_scores.ndim != 1 or not len(in_scores) or not len(out_scores) or n_boot < 1:
        raise EvaluationError(f"OOD scores of shapes {tuple(in_scores.shape)}, {tuple(out_scores.shape)} with "
                              f"n_boot={n_boot} are not allowed (two non-empty 1-D tensors, n_boot >= 1)")
    values, inverse = torch.unique(torch.cat([in_scores, out_scores]).double(), return_inverse=True)
    u, n_in, n_out = len(values), len(in_scores), len(out_scores)
    g = torch.Generator().manual_seed(seed)
    auc = []
    for b in range(0, n_boot, _BOOT_CHUNK):  # chunks of resamples bound the [chunk, U] memory
        k = min(_BOOT_CHUNK, n_boot - b)
        c_in, c_out = (torch.zeros(k, u, dtype=torch.float64).scatter_add_(
            1, ids[torch.randint(0, n, (k, n), generator=g)], torch.ones(k, n, dtype=torch.float64))
            for ids, n in ((inverse[:n_in], n_in), (inverse[n_in:], n_out)))
        below = c_out.cumsum(1) - c_out  # OOD draws strictly below each distinct score
        auc.append((c_in * (below + 0.5 * c_out)).sum(1) / (n_in * n_out))
    auc = torch.cat(auc)
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(auc, q).tolist()
    return 100.0 * lo, 100.0 * hi
