"""Pictures of the evaluations (PNG, matplotlib Agg, like ``study.plots``): a CAM overlay grid with ground-truth
and predicted boxes, the reliability diagram, occlusion, in-between-class and FGSM curves.

The curve functions take the JSON-ready dictionaries of ``study.evaluation.suite.EvaluationResult.curves`` (one model)
or a mapping ``{label: curves}`` (several models, e.g. one per method, drawn on the same axes). Every function
creates missing parent directories and returns the path written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from study.plots import save_figure  # noqa: E402

__all__ = ["save_cam_grid", "save_evaluation_plots", "save_fgsm_curve", "save_in_between_curves",
           "save_occlusion_curves", "save_reliability_diagram"]


def _by_label(curves: Mapping[str, Any], key: str) -> dict[str, Mapping[str, Any]]:
    """``{label: curve}`` from one curve dict (it has ``key``) or a mapping of labels to curve dicts."""
    if key in curves:
        return {"": curves}
    return {str(k): v for k, v in curves.items()}


def save_cam_grid(images: torch.Tensor, maps: torch.Tensor, path: str | Path, *, gt_boxes: torch.Tensor | None = None,
                  pred_boxes: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                  preds: torch.Tensor | None = None, class_names: Sequence[str] | None = None, nrow: int = 8,
                  title: str | None = None) -> Path:
    """Images with their CAM score map overlaid (jet, alpha 0.5), ground-truth boxes (green) and predicted boxes
    (red, the top-1 Loc box), captioned "label/prediction".

    Args:
        images: uint8 ``[N, C, H, W]`` (or float in [0, 1]); maps: float ``[N, H, W]`` in [0, 1].
        gt_boxes / pred_boxes: int ``[N, 4]`` or ``[N, M, 4]`` inclusive pixel boxes (-1 rows skipped).
    """
    if images.ndim != 4 or maps.ndim != 3 or maps.shape[0] != images.shape[0] or maps.shape[1:] != images.shape[2:]:
        raise ValueError(f"images {tuple(images.shape)} and maps {tuple(maps.shape)} are not allowed "
                         "([N, C, H, W] and [N, H, W] of the same N, H, W)")
    n = images.shape[0]
    x = images.detach().cpu()
    x = (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    cols = max(1, min(nrow, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.55 * rows + (0.3 if title else 0)), squeeze=False)

    def name(k: int) -> str:
        return class_names[k] if class_names and k < len(class_names) else str(k)

    def boxes_of(b: torch.Tensor | None, i: int) -> np.ndarray:
        if b is None:
            return np.zeros((0, 4))
        a = np.asarray(b[i].cpu() if isinstance(b, torch.Tensor) else b[i]).reshape(-1, 4)
        return a[~(a == -1).all(axis=1)]

    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(x[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.imshow(maps[i].detach().cpu().float().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1,
                  interpolation="bilinear")
        for boxes, colour in ((gt_boxes, "lime"), (pred_boxes, "red")):
            for x0, y0, x1, y1 in boxes_of(boxes, i):
                # Inclusive pixel boxes: pixel j spans [j - 0.5, j + 0.5] in imshow coordinates.
                ax.add_patch(mpatches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                                edgecolor=colour, linewidth=1.2))
        if labels is not None:
            cap = name(int(labels[i])) + ("" if preds is None else f"/{name(int(preds[i]))}")
            ax.set_title(cap, fontsize=6, pad=1.5)
    handles = [mpatches.Patch(edgecolor="lime", fill=False, label="ground truth"),
               mpatches.Patch(edgecolor="red", fill=False, label="predicted (top-1 Loc box)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=6, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def _lines(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, xlabel: str,
           ylabel: str, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label or None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if any(series):
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def save_reliability_diagram(curves: Mapping[str, Any], path: str | Path, title: str = "Reliability") -> Path:
    """Accuracy against confidence per bin (bars) with the diagonal, ECE in the legend; one panel per model."""
    models = _by_label(curves, "confidence")
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.2), squeeze=False)
    for ax, (label, rel) in zip(axes.flat, models.items()):
        lo, hi = np.asarray(rel["bin_lower"]), np.asarray(rel["bin_upper"])
        acc = np.nan_to_num(np.asarray(rel["accuracy"], dtype=float))
        conf = np.asarray(rel["confidence"], dtype=float)
        ax.bar(lo, acc, width=hi - lo, align="edge", edgecolor="black", linewidth=0.4, label="accuracy")
        ok = ~np.isnan(conf)
        ax.bar(lo[ok], conf[ok] - acc[ok], bottom=acc[ok], width=(hi - lo)[ok], align="edge", color="red", alpha=0.3,
               label="gap")
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label + ': ' if label else ''}ECE {rel['ece']:.2f}%", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def _paired_curves(curves: Mapping[str, Any], x: str, solid: tuple[str, str], dashed: tuple[str, str],
                   labels: tuple[str, str, str], path: str | Path) -> Path:
    """Per model (one colour each), two curves against `x`: `solid` and `dashed` are (key, legend suffix);
    `labels` is (x label, y label, title)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for i, (label, c) in enumerate(_by_label(curves, x).items()):
        name = f"{label} " if label else ""
        ax.plot(c[x], c[solid[0]], "-o", color=f"C{i}", markersize=3, label=f"{name}{solid[1]}")
        ax.plot(c[x], c[dashed[0]], "--s", color=f"C{i}", markersize=3, label=f"{name}{dashed[1]}")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def save_occlusion_curves(curves: Mapping[str, Any], path: str | Path) -> Path:
    """Top-1 error against hole side for centre (solid) and boundary (dashed) occlusion (the paper's Fig. 5a)."""
    return _paired_curves(curves, "hole_size", ("center_err", "centre"), ("boundary_err", "boundary"),
                          ("hole side (pixels)", "top-1 error (%)", "Occlusion (fill = dataset mean)"), path)


def save_in_between_curves(curves: Mapping[str, Any], path: str | Path) -> Path:
    """Rate of predicting neither class against the partner's share lam (the paper's Fig. 5b)."""
    return _paired_curves(curves, "ratio", ("mixup_neither", "Mixup-style"), ("cutmix_neither", "CutMix-style"),
                          ("partner share λ", "neither class predicted (%)", "In-between class"), path)


def save_fgsm_curve(curves: Mapping[str, Any], path: str | Path) -> Path:
    """Top-1 accuracy under FGSM against eps (in /255 units)."""
    series = {label: ([e * 255 for e in c["eps"]], c["acc"]) for label, c in _by_label(curves, "eps").items()}
    return _lines(series, path, "ε (×1/255, pixel space)", "top-1 accuracy (%)", "FGSM (white box)")


def save_evaluation_plots(result: Any, out_dir: str | Path, prefix: str = "",
                          class_names: Sequence[str] | None = None) -> list[Path]:
    """Every picture an ``EvaluationResult`` has data for, as ``{prefix}{cam_grid,reliability,occlusion,
    in_between,fgsm}.png`` in ``out_dir``."""
    out, c, d = Path(out_dir), result.curves, []
    ex = result.examples
    if ex:
        d.append(save_cam_grid(ex["images"], ex["scoremaps"], out / f"{prefix}cam_grid.png", gt_boxes=ex["gt_boxes"],
                               pred_boxes=ex["pred_boxes"], labels=ex["labels"], preds=ex["preds"],
                               class_names=class_names, title="CAM (ground-truth class)"))
    for key, fn in (("reliability", save_reliability_diagram), ("occlusion", save_occlusion_curves),
                    ("in_between", save_in_between_curves), ("fgsm", save_fgsm_curve)):
        if key in c:
            d.append(fn(c[key], out / f"{prefix}{key}.png"))
    return d
