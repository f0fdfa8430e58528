"""Robustness evaluations of the CutMix paper (Yun et al. 2019, arXiv 1905.04899, Section 4.3.3, Fig. 5, Table 11).

* Occlusion (Fig. 5a): top-1 error when a centred square hole of side ``s`` is filled (*centre* occlusion) or
  everything outside it is filled (*boundary* occlusion), ``s`` from 0 to the image side. The paper fills with
  "zeros" without naming the space; here the fill is **zero in normalised space, i.e. the dataset mean colour**
  (what a zero-padded crop in ``study.data.BatchAugment`` shows the model too). The summary number is the area
  under the error curve over the normalised hole side ``s / side`` in [0, 1] (trapezoid), in percent.
* In-between class (Fig. 5b): pairs of test images of different classes mixed Mixup-style,
  ``x = (1 - lam) * x_a + lam * x_b``, and CutMix-style, image a with a centred square of image b covering a
  fraction ``lam`` of the area (side ``round(sqrt(lam) * side)``); the metric is the rate (%) at which the
  prediction is *neither* class, per ``lam``, and its mean over the ``lam`` grid.
* FGSM (Table 11; Goodfellow et al. 2015, arXiv 1412.6572): ``x_adv = clamp(x + eps * sign(grad_x CE(f(x), y)),
  0, 1)``, white box, cross-entropy on the true label, ``x`` and ``eps`` in **[0, 1] pixel space** (the gradient
  flows through the normalisation; ``eps = 8/255`` is the paper's), clamped to valid pixels. One gradient per
  image serves every ``eps``; ``eps = 0`` reproduces clean accuracy exactly.

All functions take pixel-space images (uint8 or float in [0, 1]) and labels, batch internally, and return plain
Python lists/floats (JSON-ready) in dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from study.evaluation.common import Normalise, batch_ranges, check_images, check_labels, eval_mode, resolve, to_unit
from study.metric_names import EvaluationError

__all__ = ["DEFAULT_FGSM_EPS", "FGSMCurve", "InBetweenCurves", "OcclusionCurves", "default_hole_sizes",
           "fgsm_curve", "fgsm_perturb", "in_between_curves", "occlusion_curves"]

DEFAULT_FGSM_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


def _auc(x: Sequence[float], y: Sequence[float]) -> float:
    """Trapezoid area under y(x) with x rescaled to [0, 1]."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < 2 or xs[-1] == xs[0]:
        return float(ys.mean()) if len(ys) else float("nan")
    return float(np.trapezoid(ys, (xs - xs[0]) / (xs[-1] - xs[0])))


def default_hole_sizes(side: int, steps: int = 9) -> list[int]:
    """``steps`` hole sides evenly spaced from 0 to ``side`` (inclusive), rounded to pixels, unique."""
    return sorted({int(round(v)) for v in np.linspace(0, side, steps)})


def _centre_box(side_h: int, side_w: int, s: int) -> tuple[int, int]:
    """Top-left corner of a centred s x s square (s <= both sides)."""
    return (side_h - s) // 2, (side_w - s) // 2


@dataclass(frozen=True)
class OcclusionCurves:
    """``hole_size`` (pixels), ``center_err`` and ``boundary_err`` (top-1 error %, one per size), and the areas
    under both curves over ``hole_size / side`` (``center_auc``, ``boundary_auc``, %)."""

    hole_size: list[int]
    center_err: list[float]
    boundary_err: list[float]
    center_auc: float
    boundary_auc: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def occlusion_curves(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                     std: Sequence[float], *, hole_sizes: Sequence[int] | None = None, batch_size: int = 256,
                     device: str | torch.device | None = None) -> OcclusionCurves:
    """Top-1 error under centre and boundary occlusion for each hole side in ``hole_sizes`` (default: 9 sizes
    from 0 to the image side). Hole side 0 means no centre occlusion and *full* boundary occlusion (a mean-colour
    image); side = image side means the reverse."""
    check_images(images)
    n, c, h, w = images.shape
    check_labels(labels, n)
    sizes = default_hole_sizes(min(h, w)) if hole_sizes is None else [int(s) for s in hole_sizes]
    if not sizes or any(s < 0 or s > min(h, w) for s in sizes):
        raise EvaluationError(f"hole_sizes={list(sizes)} are not allowed (0 <= size <= {min(h, w)})")
    dev = resolve(model, device)
    norm = Normalise(mean, std, c, dev)
    inside = torch.zeros(len(sizes), 1, 1, h, w, dtype=torch.bool, device=dev)  # [S, 1, 1, H, W]
    for i, s in enumerate(sizes):
        top, left = _centre_box(h, w, s)
        inside[i, ..., top:top + s, left:left + s] = True
    wrong = torch.zeros(2, len(sizes), dtype=torch.float64)
    keeps = [(~inside[i], inside[i]) for i in range(len(sizes))]  # mode 0: centre filled, 1: boundary filled
    kinds = [[2 * bool(k.all()) + bool((~k).all()) for k in pair] for pair in keeps]  # 2: clean, 1: all filled
    with eval_mode(model):
        # A fully filled image is the same mean-colour image for every input: one forward serves them all.
        blank = model(torch.zeros(1, c, h, w, device=dev)).argmax(dim=1)
        for sl in batch_ranges(n, batch_size):
            z = norm(to_unit(images[sl].to(dev)))
            y = labels[sl].to(dev)
            clean = None
            for i in range(len(sizes)):  # one batched forward per (mode, size): sizes are a short list
                for mode, keep in enumerate(keeps[i]):
                    if kinds[i][mode] == 2:  # nothing occluded: the clean prediction, computed once per batch
                        clean = model(z).argmax(dim=1) if clean is None else clean
                        pred = clean
                    elif kinds[i][mode] == 1:
                        pred = blank.expand(len(y))
                    else:
                        pred = model(z * keep).argmax(dim=1)  # zero in normalised space = the mean colour
                    wrong[mode, i] += float((pred != y).sum())
    err = (100.0 * wrong / max(n, 1)).tolist()
    return OcclusionCurves(sizes, err[0], err[1], _auc(sizes, err[0]), _auc(sizes, err[1]))


@dataclass(frozen=True)
class InBetweenCurves:
    """``ratio``: the partner's share lam; ``mixup_neither``/``cutmix_neither``: % of pairs predicted as neither
    class at each lam; ``mixup_mean``/``cutmix_mean``: their means over the grid; ``pairs``: pairs used."""

    ratio: list[float]
    mixup_neither: list[float]
    cutmix_neither: list[float]
    mixup_mean: float
    cutmix_mean: float
    pairs: int

    def to_dict(self) -> dict:
        return asdict(self)


def _pairs(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (a, b) pairing every image with a random partner of a different class (fixed by ``seed``)."""
    n = labels.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a = torch.arange(n)
    keep = labels[a] != labels[perm]
    return a[keep], perm[keep]


@torch.no_grad()
def in_between_curves(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                      std: Sequence[float], *, steps: int = 11, seed: int = 0, batch_size: int = 256,
                      device: str | torch.device | None = None) -> InBetweenCurves:
    """Rate of predicting neither class of a mixed pair, for Mixup-style blends and CutMix-style centred patches,
    at ``steps`` values of lam evenly spaced in [0, 1]. Pairs: each image with a random partner of another class."""
    check_images(images)
    n, c, h, w = images.shape
    check_labels(labels, n)
    if steps < 2:
        raise EvaluationError(f"steps={steps} is not allowed (>= 2)")
    ia, ib = _pairs(labels, seed)
    if len(ia) == 0:
        raise EvaluationError("in-between-class evaluation needs images of at least two classes")
    lams = np.linspace(0.0, 1.0, steps)
    dev = resolve(model, device)
    norm = Normalise(mean, std, c, dev)
    patch = torch.zeros(steps, 1, 1, h, w, dtype=torch.bool, device=dev)
    for i, lam in enumerate(lams):
        s = int(round(float(np.sqrt(lam)) * min(h, w)))
        top, left = _centre_box(h, w, s)
        patch[i, ..., top:top + s, left:left + s] = True
    neither = torch.zeros(2, steps, dtype=torch.float64)
    with eval_mode(model):
        for sl in batch_ranges(len(ia), batch_size):
            xa = to_unit(images[ia[sl]].to(dev))
            xb = to_unit(images[ib[sl]].to(dev))
            ya, yb = labels[ia[sl]].to(dev), labels[ib[sl]].to(dev)
            plain: dict[int, torch.Tensor] = {}  # predictions of the unmixed a (0) and b (1), computed once
            for i, lam in enumerate(lams):
                for mode in (0, 1):
                    # lam = 0 (an empty patch) is image a itself, lam = 1 (a full patch) image b: bit-identical
                    # inputs, so their predictions are reused rather than recomputed.
                    whole = 0 if lam == 0 else 1 if lam == 1 else None
                    if whole is not None:
                        if whole not in plain:
                            plain[whole] = model(norm(xb if whole else xa)).argmax(dim=1)
                        pred = plain[whole]
                    else:
                        x = (1 - lam) * xa + lam * xb if mode == 0 else torch.where(patch[i], xb, xa)
                        pred = model(norm(x)).argmax(dim=1)
                    neither[mode, i] += float(((pred != ya) & (pred != yb)).sum())
    rate = (100.0 * neither / len(ia)).tolist()
    return InBetweenCurves(lams.tolist(), rate[0], rate[1], float(np.mean(rate[0])), float(np.mean(rate[1])),
                           int(len(ia)))


def fgsm_perturb(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float | Sequence[float],
                 mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """FGSM adversarial images for one batch already on the model's device.

    Args:
        images: pixel-space ``[B, C, H, W]`` (uint8 or float in [0, 1]). labels: int64 ``[B]``.
        eps: one step size or several, in [0, 1] pixel units.
    Returns:
        float32 ``[E, B, C, H, W]`` in [0, 1] (``E`` = number of eps), ``clamp(x + eps * sign(grad), 0, 1)`` with
        the gradient of the summed cross-entropy of the model (in eval mode) w.r.t. the pixel-space input.
    """
    eps_list = [float(eps)] if np.isscalar(eps) else [float(e) for e in eps]
    if not eps_list or any(not 0 <= e <= 1 for e in eps_list):
        raise EvaluationError(f"fgsm eps={eps_list} are not allowed (values in [0, 1], pixel space)")
    x = to_unit(images).detach().requires_grad_(True)
    norm = Normalise(mean, std, x.shape[1], x.device)
    with torch.enable_grad():
        # Summed (not averaged) loss: each image's gradient is its own loss's, never scaled towards underflow.
        loss = F.cross_entropy(model(norm(x)).float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    step = grad.sign()
    return torch.stack([(x.detach() + e * step).clamp_(0.0, 1.0) for e in eps_list])


@dataclass(frozen=True)
class FGSMCurve:
    """``eps`` (pixel units in [0, 1]) and top-1 ``acc`` (%) under FGSM at each."""

    eps: list[float]
    acc: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def fgsm_curve(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
               std: Sequence[float], *, eps: Sequence[float] = DEFAULT_FGSM_EPS, batch_size: int = 256,
               device: str | torch.device | None = None) -> FGSMCurve:
    """Top-1 accuracy (%) under white-box FGSM at each ``eps`` (one gradient per image for all of them)."""
    check_images(images)
    n = images.shape[0]
    check_labels(labels, n)
    dev = resolve(model, device)
    norm = Normalise(mean, std, images.shape[1], dev)
    eps = [float(e) for e in eps]
    right = torch.zeros(len(eps), dtype=torch.float64)
    with eval_mode(model):
        for sl in batch_ranges(n, batch_size):
            x, y = images[sl].to(dev), labels[sl].to(dev)
            adv = fgsm_perturb(model, x, y, eps, mean, std)
            with torch.no_grad():
                for i in range(len(eps)):
                    right[i] += float((model(norm(adv[i])).argmax(dim=1) == y).sum())
    return FGSMCurve(eps, (100.0 * right / max(n, 1)).tolist())
