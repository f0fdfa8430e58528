"""The CutMix paper's evaluations of a trained classifier, as one call (``evaluate_model``) or a cheap per-epoch
subset (``epoch_metrics``), returning flat metric names for MLflow, tables and ``search.metric``.

The pieces live in sibling modules, each usable alone: ``study.evaluation.calibration`` (top-1/top-5 error, NLL, ECE),
``study.evaluation.wsol`` (CAM, MaxBoxAccV2, top-1 Loc), ``study.evaluation.robustness`` (occlusion, in-between
class, FGSM),
``study.evaluation.ood`` (max-softmax OOD detection), ``study.evaluation.plots`` (pictures), ``study.data.cub`` (CUB
/ ImageNet
readers). See Yun et al. 2019 (arXiv 1905.04899), Sections 4.2-4.3, and ``/shared/REFERENCES.md``.

Metric names (percent unless said; ``study.metric_names.metric_mode`` gives each one's mode): ``top1_err``,
``top5_err``, ``nll``
(nats), ``ece``; ``maxboxacc_v2``, ``maxboxacc_iou0.3/0.5/0.7``, ``top1_loc``, ``gt_known_loc``,
``random_cam_maxboxacc_v2`` (the random-CAM baseline on the same boxes); ``occlusion_center_auc``,
``occlusion_boundary_auc``; ``in_between_mixup``, ``in_between_cutmix`` (mean rate of predicting neither class);
``fgsm_acc_eps{e:.3f}`` per eps (``fgsm_acc_eps0.031`` is 8/255); ``ood_{set}_{auroc|tnr95|detacc}`` per OOD set,
with ``ood_{set}_auroc_lo|hi``, its bootstrap 95 % interval (no mean over sets: a noise set and a near-OOD set
answer different questions, see ``study.evaluation.ood``); ``maxboxacc_v2_centre_prior`` (the centre-Gaussian
prior on the same boxes) and ``maxboxacc_v2_over_prior`` (the model minus it); ``loc_whole_image`` (% of images
whose top-1 Loc box at ``loc_sigma`` is the whole image), ``gt_known_loc_best`` (GT-known Loc at the best sigma
of ``wsol.LOC_SIGMAS``, chosen on this split as MaxBoxAcc's tau), ``loc_best_sigma`` and
``gt_known_loc_best_centre_prior`` (the centre prior at its own best sigma). Names avoid characters MLflow rejects
(such as ``@``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from study.checkpoint import load_checkpoint
from study.config.load import from_dict
from study.evaluation.calibration import classification_metrics
from study.evaluation.common import check_images, check_labels, predict_logits, resolve
from study.evaluation.ood import NOISE_SETS, ood_scores, softmax_confidence
from study.evaluation.robustness import DEFAULT_FGSM_EPS, fgsm_curve, in_between_curves, occlusion_curves
from study.evaluation.wsol import (
    CENTRE_SIGMA,
    DEFAULT_IOU_THRESHOLDS,
    cam_head,
    centre_gaussian_map,
    class_activation_maps,
    gt_known_sweep,
    max_box_acc,
    prior_max_box_acc,
    random_cam_baseline,
    scoremaps,
    top1_loc,
    whole_image,
)
from study.metric_names import EPOCH_METRICS, EVALUATIONS, CAMError, EvaluationError, fgsm_name
from study.models import build_model

__all__ = ["EvaluationResult", "epoch_metrics", "evaluate_model"]

@dataclass
class EvaluationResult:
    """``metrics``: flat name -> float. ``curves``: JSON-ready data behind the pictures (``reliability``,
    ``maxboxacc``, ``occlusion``, ``in_between``, ``fgsm``, ``ood``). ``seconds``: wall time per evaluation.
    ``examples``: tensors for the CAM grid (``images`` uint8, ``scoremaps`` float [n, H, W], ``gt_boxes``,
    ``pred_boxes`` int64 [n, 4] or [n, M, 4], ``labels``, ``preds``), empty without localization.
    ``predictions``: per image, ``labels`` and ``preds`` int64 [N], ``correct`` bool [N], ``confidence`` float64 [N]
    (max softmax), for paired tests between models. ``info``: ``cam_size`` [h, w] (absent without localization),
    ``image_size`` [H, W], ``num_in`` (in-distribution images of the OOD scores), ``ood_kinds`` (set -> near / far /
    noise), ``prior_sigma``."""

    metrics: dict[str, float]
    curves: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _supports_cam(model: nn.Module) -> bool:
    try:
        cam_head(model)
        return True
    except CAMError:
        return False


def evaluate_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                   std: Sequence[float], *, boxes: torch.Tensor | None = None,
                   evaluations: Sequence[str] | None = None, ood_sets: Mapping[str, torch.Tensor] | None = None,
                   ood_noise: Sequence[str] = NOISE_SETS, fgsm_eps: Sequence[float] = DEFAULT_FGSM_EPS,
                   hole_sizes: Sequence[int] | None = None, mix_steps: int = 6, cam_curve_interval: float = 0.01,
                   iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS, loc_sigma: float = 0.15,
                   n_bins: int = 15, robustness_images: int | None = 1000, random_cam_images: int | None = 2000,
                   ood_kinds: Mapping[str, str] | None = None, ood_images: int | None = 2000,
                   ood_bootstrap: int = 1000, prior_sigma: float = CENTRE_SIGMA, n_examples: int = 16, seed: int = 0,
                   batch_size: int = 256, device: str | torch.device | None = None) -> EvaluationResult:
    """Run the paper's evaluations on one split.

    Args:
        model: a classifier on normalised input (``study.models.Classifier`` for localization).
        images: pixel-space uint8 ``[N, C, H, W]`` (or float in [0, 1]); labels: int64 ``[N]``.
        mean, std: the normalisation the model was trained with (C floats in [0, 1] units).
        boxes: int64 ``[N, 4]`` / ``[N, M, 4]`` inclusive pixel boxes; needed for localization.
        evaluations: subset of :data:`EVALUATIONS`. Default: all, except localization when there are no boxes
            or the model has no GAP + linear head. Naming localization explicitly without them raises.
        ood_sets / ood_noise: extra named OOD image tensors and the ODIN noise sets to add. ``ood_kinds``: each
            extra set's kind ("near" or "far", default "far"; the noise sets are "noise"), recorded in ``info``.
            All ``images`` are the in-distribution side; ``ood_images`` noise images per noise set (None: as many
            as ``images``); ``ood_bootstrap`` resamples for each set's AUROC interval (0: none).
        fgsm_eps: FGSM step sizes in [0, 1] pixel units. hole_sizes: occlusion sides (default 9 from 0 to side).
        mix_steps: lam values for the in-between curves. cam_curve_interval: MaxBoxAcc threshold step
            (wsolevaluation's paper setting is 0.001: the same 8-bit binarisations, 2.5x the work of 0.01).
        robustness_images: occlusion, in-between and FGSM use the first this-many images (None: all), as
            their curves cost one forward pass per point (1000 images: about +-1.5 points of error).
        random_cam_images: the random-CAM baseline uses the boxes of the first this-many images (None: all; 0:
            skip it, as the evaluate stage does: it computes the baseline once for all models of one CAM size).
        prior_sigma: the centre-Gaussian prior's standard deviation, a fraction of the image side.
        seed: in-between pairs, noise sets and the random-CAM baseline.
    Returns:
        EvaluationResult (metric names in the module docstring).
    """
    check_images(images)
    n = images.shape[0]
    check_labels(labels, n)
    if n == 0:
        raise EvaluationError("an empty split cannot be evaluated (N >= 1 images)")
    unknown = sorted(set(evaluations or ()) - set(EVALUATIONS))
    if unknown:
        raise EvaluationError(f"evaluations {unknown} are not allowed (any of: {', '.join(EVALUATIONS)})")
    cam_ok = _supports_cam(model)
    if evaluations is None:
        todo = [e for e in EVALUATIONS if e != "localization" or (boxes is not None and cam_ok)]
    else:
        todo = list(evaluations)
        if "localization" in todo:
            if boxes is None:
                raise EvaluationError("localization needs ground-truth boxes and this split has none (a dataset with "
                                      "boxes: cluttered_digits, shapes, CUB-200-2011, ImageNet val with box XMLs)")
            cam_head(model)  # raises CAMError with its one-line message
    dev = resolve(model, device)
    out = EvaluationResult({})
    tick = time.perf_counter()

    # One forward pass for classification and CAMs (the logits come from the same features).
    if cam_ok and "localization" in todo:
        check_labels(labels, n, cam_head(model)[2].out_features)  # before the CAMs index the head's rows
        cams, logits = class_activation_maps(model, images, labels, mean, std, batch_size=batch_size, device=dev)
    else:
        cams, logits = None, predict_logits(model, images, mean, std, batch_size=batch_size, device=dev)
    check_labels(labels, n, logits.shape[1])
    preds = logits.argmax(dim=1)
    confidence = softmax_confidence(logits)
    out.predictions = {"labels": labels.cpu(), "preds": preds, "correct": preds == labels.cpu(),
                       "confidence": confidence}
    out.info["image_size"] = list(images.shape[-2:])
    if "classification" in todo:
        metrics, rel = classification_metrics(logits, labels, n_bins)
        out.metrics.update(metrics)
        out.curves["reliability"] = rel.to_dict()
    tick = _lap(out, "classification", tick)

    if cams is not None:
        size = tuple(images.shape[-2:])
        maps = scoremaps(cams, size)
        mba = max_box_acc(maps, boxes, cam_curve_interval=cam_curve_interval, iou_thresholds=iou_thresholds)
        loc, pred_boxes = top1_loc(maps, boxes, preds == labels, sigma=loc_sigma)
        prior = prior_max_box_acc(centre_gaussian_map(size, prior_sigma), boxes, cam_curve_interval=cam_curve_interval,
                                  iou_thresholds=iou_thresholds)
        out.metrics.update(mba.metrics())
        out.metrics.update(loc)
        # The paper's sigma kept; how often its box is the whole image, and GT-known Loc at the best sigma of a
        # sweep (study.evaluation.wsol.gt_known_sweep), the model's and the centre prior's (issue 26).
        out.metrics["loc_whole_image"] = 100.0 * float(whole_image(pred_boxes, size).mean()) if n else 0.0
        sweep = gt_known_sweep(maps, boxes)
        prior_sweep = gt_known_sweep(centre_gaussian_map(size, prior_sigma), boxes)
        out.metrics["gt_known_loc_best"] = sweep["best"]
        out.metrics["loc_best_sigma"] = sweep["best_sigma"]
        out.metrics["gt_known_loc_best_centre_prior"] = prior_sweep["best"]
        out.curves["loc_sigma_sweep"] = {"model": sweep, "centre_prior": prior_sweep}
        out.metrics["maxboxacc_v2_centre_prior"] = prior.value
        out.metrics["maxboxacc_v2_over_prior"] = mba.value - prior.value
        nr = n if random_cam_images is None else min(n, int(random_cam_images))
        if nr:
            rnd = random_cam_baseline(boxes[:nr], size, tuple(cams.shape[-2:]), seed=seed,
                                      cam_curve_interval=cam_curve_interval, iou_thresholds=iou_thresholds)
            out.metrics["random_cam_maxboxacc_v2"] = rnd.value
        out.info.update({"cam_size": list(cams.shape[-2:]), "prior_sigma": float(prior_sigma)})
        out.curves["centre_prior"] = {f"iou{d:g}": v for d, v in prior.per_iou.items()}
        out.curves["maxboxacc"] = {"threshold": mba.thresholds,
                                   **{f"iou{d:g}": v for d, v in mba.curves.items()},
                                   "best_threshold": {f"iou{d:g}": v for d, v in mba.best_threshold.items()}}
        k = min(n_examples, n)
        out.examples = {"images": images[:k].cpu(), "scoremaps": maps[:k], "gt_boxes": torch.as_tensor(boxes[:k]),
                        "pred_boxes": torch.from_numpy(pred_boxes[:k]), "labels": labels[:k], "preds": preds[:k]}
        tick = _lap(out, "localization", tick)

    r = n if robustness_images is None else min(n, int(robustness_images))
    rx, ry = images[:r], labels[:r]
    common = {"batch_size": batch_size, "device": dev}
    if "occlusion" in todo:
        occ = occlusion_curves(model, rx, ry, mean, std, hole_sizes=hole_sizes, **common)
        out.metrics.update({"occlusion_center_auc": occ.center_auc, "occlusion_boundary_auc": occ.boundary_auc})
        out.curves["occlusion"] = occ.to_dict()
        tick = _lap(out, "occlusion", tick)
    if "in_between" in todo:
        ib = in_between_curves(model, rx, ry, mean, std, steps=mix_steps, seed=seed, **common)
        out.metrics.update({"in_between_mixup": ib.mixup_mean, "in_between_cutmix": ib.cutmix_mean})
        out.curves["in_between"] = ib.to_dict()
        tick = _lap(out, "in_between", tick)
    if "fgsm" in todo:
        fg = fgsm_curve(model, rx, ry, mean, std, eps=fgsm_eps, **common)
        out.metrics.update({fgsm_name(e): a for e, a in zip(fg.eps, fg.acc)})
        out.curves["fgsm"] = fg.to_dict()
        tick = _lap(out, "fgsm", tick)
    if "ood" in todo:
        # Every image is the in-distribution side: its scores come with the logits above, at no extra cost.
        count = n if ood_images is None else int(ood_images)
        res = ood_scores(model, images, mean, std, ood_sets=ood_sets, noise=ood_noise, noise_count=count, seed=seed,
                         in_scores=confidence, bootstrap=ood_bootstrap, **common)
        for name, m in res.items():
            out.metrics.update({f"ood_{name}_{k}": v for k, v in m.items()})
        kinds = dict(ood_kinds or {})
        out.info.update({"num_in": n, "ood_kinds": {name: "noise" if name in ood_noise else kinds.get(name, "far")
                                                    for name in res}})
        out.curves["ood"] = res
        _lap(out, "ood", tick)
    return out


def _lap(out: EvaluationResult, name: str, tick: float) -> float:
    now = time.perf_counter()
    out.seconds[name] = now - tick
    return now


def epoch_metrics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float], *, names: Sequence[str] = ("top1_err", "maxboxacc_v2"),
                  boxes: torch.Tensor | None = None, max_images: int | None = 1000, cam_curve_interval: float = 0.05,
                  fgsm_eps: float = 8 / 255, batch_size: int = 256, device: str | torch.device | None = None
                  ) -> dict[str, float]:
    """Cheap evaluation metrics for every epoch (e.g. as ``search.metric`` on val): ``{name: value}``.

    ``names`` from :data:`EPOCH_METRICS`. The first ``max_images`` images are used (None: all); MaxBoxAccV2 uses a
    coarse threshold grid (``cam_curve_interval``, 0.05 -> 20 thresholds; the full protocol is
    ``evaluate_model``'s); ``fgsm_acc`` is the accuracy at one ``fgsm_eps``; ``occlusion_center_err`` the error
    with a centred hole of half the image side. Localization metrics need ``boxes`` and a GAP + linear head.
    """
    unknown = [m for m in names if m not in EPOCH_METRICS]
    if unknown or not names:
        raise EvaluationError(f"per-epoch metrics {unknown or list(names)} are not allowed (any of: "
                              f"{', '.join(EPOCH_METRICS)})")
    check_images(images)
    k = images.shape[0] if max_images is None else min(images.shape[0], int(max_images))
    x, y = images[:k], labels[:k]
    check_labels(y, k)
    dev = resolve(model, device)
    common = {"batch_size": batch_size, "device": dev}
    loc = {"maxboxacc_v2", "top1_loc", "gt_known_loc"} & set(names)
    out: dict[str, float] = {}
    if loc:
        if boxes is None:
            raise EvaluationError(f"{sorted(loc)[0]} needs ground-truth boxes and this split has none (a dataset with "
                                  "boxes: cluttered_digits, shapes, CUB-200-2011, ImageNet val)")
        b = boxes[:k]
        check_labels(y, k, cam_head(model)[2].out_features)
        cams, logits = class_activation_maps(model, x, y, mean, std, **common)
        maps = scoremaps(cams, tuple(x.shape[-2:]))
        if "maxboxacc_v2" in loc:
            out["maxboxacc_v2"] = max_box_acc(maps, b, cam_curve_interval=cam_curve_interval).value
        if loc - {"maxboxacc_v2"}:
            out.update(top1_loc(maps, b, logits.argmax(dim=1) == y)[0])
    else:
        logits = predict_logits(model, x, mean, std, **common)
    if {"top1_err", "top5_err", "nll", "ece"} & set(names):
        out.update(classification_metrics(logits, y)[0])
    if "fgsm_acc" in names:
        out["fgsm_acc"] = fgsm_curve(model, x, y, mean, std, eps=[fgsm_eps], **common).acc[0]
    if "occlusion_center_err" in names:
        half = min(x.shape[-2:]) // 2
        out["occlusion_center_err"] = occlusion_curves(model, x, y, mean, std, hole_sizes=[half], **common
                                                       ).center_err[0]
    return {m: out[m] for m in names}


def evaluate_checkpoint(checkpoint: str, split: Mapping[str, Any], options: Mapping[str, Any],
                        config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`evaluate_model` on the model of a ``study.checkpoint`` file (``best.pt``, ``last.pt``, a trial's
    ``checkpoint.pt``), as one Ray task of the evaluate stage. `split`: images, labels, boxes (or None), mean, std,
    ood_sets, ood_kinds, num_classes, in_channels; `options`: evaluate_model keywords; `config`: the model's config
    dict (default: the checkpoint's own). Returns metrics, curves, seconds, the CAM-grid examples, per-image
    predictions and info."""
    ckpt = load_checkpoint(checkpoint)
    model = build_model(from_dict(config or ckpt["config"]).model, split["num_classes"], split["in_channels"])
    model.load_state_dict(ckpt["model"])
    result = evaluate_model(model.eval(), split["images"], split["labels"], split["mean"], split["std"],
                            boxes=split.get("boxes"), ood_sets=split.get("ood_sets"), ood_kinds=split.get("ood_kinds"),
                            device="cuda" if torch.cuda.is_available() else "cpu", **options)
    return {"metrics": result.metrics, "curves": result.curves, "seconds": result.seconds,
            "examples": result.examples, "predictions": result.predictions, "info": result.info}
