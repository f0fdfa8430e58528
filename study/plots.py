"""Charts people would rather look at than read: learning curves, study, budget and race plots (PNG files). The
image grids (training samples, ground-truth boxes) are study.grids.

matplotlib with the Agg backend only (no display, no seaborn). The study plots follow Google's deep-learning tuning
playbook (github.com/google-research/tuning_playbook): a scatter of the scientific hyperparameters (CutMix's α
against p) per architecture, isolation plots (the best trial for each value of each searched parameter, so that
nuisance parameters are optimised away) and the best-so-far curve in trial order, which shows whether the search
had converged.

Every function writes one or more PNG files, creates missing parent directories and returns the path(s) written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless everywhere (CI, Ray workers, k8s pods)
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from study.summaries import BudgetAnalysis  # noqa: E402

__all__ = ["save_budget_plot", "save_figure", "save_learning_curves", "save_race_plot", "save_study_plots"]

DPI = 110
# Columns of results.parquet that are bookkeeping, not searched parameters.
_NOT_PARAMS = {"trial_id", "status", "epochs", "wall_s", "mlflow_run_id", "error"}


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` (parents created) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)  # figures are global state in pyplot: a long study would otherwise leak them
    return path


# ---------------------------------------------------------------------------------------------------------------
# Learning curves


def _series(history: list[dict[str, float]], key: str) -> np.ndarray:
    return np.array([float(h[key]) if h.get(key) is not None else np.nan for h in history], dtype=float)


def save_learning_curves(history: list[dict[str, float]], path: str | Path, title: str | None = None) -> Path:
    """Two panels per epoch: loss (with the learning rate on a right-hand axis) and top-1 error in percent.

    Args:
        history: one dict per epoch with ``epoch`` and any of ``train/loss``, ``val/loss``, ``test/loss``,
            ``train/top1_err``, ``val/top1_err``, ``test/top1_err`` (percent) and ``lr``; missing keys and NaN
            values leave gaps. An empty history gives a figure that says so.
        path: the PNG to write.
        title: optional figure title.

    Returns:
        ``path`` as a Path.
    """
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    epochs = np.array([float(h.get("epoch", i + 1)) for i, h in enumerate(history)], dtype=float)
    styles = {"train": "-", "val": "-", "test": "--"}
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_err, "top1_err", "top-1 error (%)")):
        for split in ("train", "val", "test"):
            ys = _series(history, f"{split}/{metric}")
            if np.isfinite(ys).any():
                ax.plot(epochs, ys, styles[split], marker="o", markersize=2.5, label=split)
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    lr = _series(history, "lr")
    if np.isfinite(lr).any():
        ax_lr = ax_loss.twinx()
        ax_lr.plot(epochs, lr, ":", color="grey", label="lr")
        ax_lr.set_ylabel("learning rate", color="grey")
        positive = lr[np.isfinite(lr) & (lr > 0)]
        if positive.size and positive.max() / positive.min() > 20:  # step schedules span decades
            ax_lr.set_yscale("log")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# Study plots


def _numeric(col: Any) -> np.ndarray | None:
    """The column as floats (None/NaN as NaN) when every present value is a number; None for categorical ones."""
    import pandas as pd

    present = col.dropna()
    if present.map(lambda v: isinstance(v, bool | np.bool_)).any():
        return None
    values = pd.to_numeric(col, errors="coerce")
    if values.notna().sum() != len(present):
        return None
    return values.to_numpy(dtype=float)


def _best(values: np.ndarray, mode: str) -> float:
    return float(np.nanmin(values) if mode == "min" else np.nanmax(values))


def _log_x(ax: Any) -> None:
    """Log x-axis with labels on decades only: minor labels (2x10^-1, 3x10^-1, ...) overlap on narrow panels."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _best_label(column: str) -> str:
    return column if column.startswith("best/") else f"best {column}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "all"


def _alpha_prob(df: Any, value: np.ndarray, label: str, mode: str, out_dir: Path) -> list[Path]:
    """One PNG per architecture: trials at (α, p), coloured by the metric on a colour scale shared by all files.

    α is NaN where it did not apply (p = 0, method none): those trials sit in an "n/a" column left of the axis.
    """
    alpha, prob = _numeric(df["cutmix.alpha"]), _numeric(df["cutmix.prob"])
    if alpha is None or prob is None:
        return []
    archs = df["model.arch"].astype(str).to_numpy() if "model.arch" in df.columns else np.full(len(df), "all")
    ok = np.isfinite(value) & np.isfinite(prob)
    if not ok.any():
        return []
    vmin, vmax = float(np.min(value[ok])), float(np.max(value[ok]))
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    finite_alpha = alpha[np.isfinite(alpha) & (alpha > 0)]
    lo = float(finite_alpha.min()) if finite_alpha.size else 1.0
    hi = float(finite_alpha.max()) if finite_alpha.size else 1.0
    na_x = lo / 3.0  # the "n/a" column, a third of a decade or so left of the smallest α
    cmap = "viridis_r" if mode == "min" else "viridis"  # the best trials are bright either way
    paths = []
    for arch in sorted(set(archs[ok])):
        sel = ok & (archs == arch)
        a = np.where(np.isfinite(alpha[sel]) & (alpha[sel] > 0), alpha[sel], na_x)
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        sc = ax.scatter(a, prob[sel], c=value[sel], cmap=cmap, vmin=vmin, vmax=vmax, s=55, edgecolors="k",
                        linewidths=0.5)
        best = np.flatnonzero(sel)[np.argmin(value[sel]) if mode == "min" else np.argmax(value[sel])]
        best_a = alpha[best] if np.isfinite(alpha[best]) and alpha[best] > 0 else na_x
        ax.scatter([best_a], [prob[best]], marker="*", s=260, facecolors="none", edgecolors="red", linewidths=1.2,
                   label=f"best {value[best]:.4g}")
        if sel.sum() <= 40:  # small studies: print each trial's value next to its point
            for xa, yp, v in zip(a, prob[sel], value[sel]):
                ax.annotate(f"{v:.3g}", (xa, yp), textcoords="offset points", xytext=(4, 4), fontsize=6)
        _log_x(ax)
        ax.set_xlim(na_x / 1.8, hi * 1.8)
        if (~np.isfinite(alpha[sel]) | (alpha[sel] <= 0)).any():
            ax.axvline(math.sqrt(na_x * lo), color="grey", lw=0.8, ls="--")
            ax.text(na_x, 1.02, "α n/a", transform=ax.get_xaxis_transform(), ha="center", fontsize=7, color="grey")
        ax.set_ylim(-0.05, 1.05)
        ax.set(xlabel="CutMix α (log scale)", ylabel="CutMix p", title=f"{arch}: {int(sel.sum())} trial(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.colorbar(sc, ax=ax, label=label)
        paths.append(save_figure(fig, out_dir / f"alpha_prob_{_slug(arch)}.png"))
    return paths


def _isolation(df: Any, params: list[str], value: np.ndarray, label: str, mode: str, out_dir: Path) -> Path:
    """For each searched parameter, the best metric at each of its values: bars for categorical parameters and
    few values, trials plus the best per (log-)bin for continuous ones."""
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    ok = np.isfinite(value)
    for ax, name in zip(axes.flat, params):
        numbers = _numeric(df[name])
        distinct = df[name][ok].dropna().unique()
        if numbers is not None and len(distinct) > 6:
            x = numbers
            sel = ok & np.isfinite(x)  # more than 6 distinct finite values, so never empty
            ax.scatter(x[sel], value[sel], s=16, color="tab:blue", alpha=0.6, label="trial")
            positive = bool(sel.any()) and bool((x[sel] > 0).all())
            log = positive and x[sel].max() / x[sel].min() > 20
            if log:
                _log_x(ax)
            edges = np.quantile(np.log(x[sel]) if log else x[sel], np.linspace(0, 1, 7))
            bins = np.clip(np.searchsorted(edges, np.log(x[sel]) if log else x[sel], side="right") - 1, 0, 5)
            centres, bests = [], []
            for b in np.unique(bins):
                idx = bins == b
                k = np.argmin(value[sel][idx]) if mode == "min" else np.argmax(value[sel][idx])
                centres.append(x[sel][idx][k])
                bests.append(value[sel][idx][k])
            order = np.argsort(centres)
            ax.plot(np.array(centres)[order], np.array(bests)[order], "-o", color="tab:red", ms=4, label="best per bin")
            if (ok & ~np.isfinite(x)).any():
                ax.set_title(f"{name} ({int((ok & ~np.isfinite(x)).sum())} n/a not shown)", fontsize=9)
            else:
                ax.set_title(name, fontsize=9)
            ax.legend(fontsize=7)
        else:
            keys = df[name].map(lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
            groups: dict[Any, list[float]] = {}
            for key, v in zip(keys[ok], value[ok]):
                groups.setdefault(key, []).append(v)

            def sort_key(k: Any) -> tuple[int, Any]:
                return (1, str(k)) if k == "n/a" or not isinstance(k, int | float) else (0, k)

            labels = sorted(groups, key=sort_key)
            bests = [_best(np.array(groups[k]), mode) for k in labels]
            texts = [f"{k:g}" if isinstance(k, float) else str(k) for k in labels]
            bars = ax.bar(range(len(labels)), bests, color="tab:blue")
            ax.bar_label(bars, labels=[f"{b:.3g}\n(n={len(groups[k])})" for b, k in zip(bests, labels)], fontsize=6)
            ax.set_xticks(range(len(labels)), texts, rotation=30 if len(labels) > 4 else 0, fontsize=7)
            ax.set_title(name, fontsize=9)
            finite = [b for b in bests if math.isfinite(b)]
            if finite:  # zoom on the differences: error bars from zero hide a 0.3-point spread
                span = (max(finite) - min(finite)) or abs(max(finite)) * 0.05 or 1.0
                ax.set_ylim(min(finite) - 0.6 * span, max(finite) + 0.8 * span)
        ax.set_ylabel(_best_label(label), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.set_axis_off()
    fig.suptitle(f"isolation: {_best_label(label)} per value ({'lower' if mode == 'min' else 'higher'} is better)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_dir / "isolation.png")


def _best_so_far(value: np.ndarray, label: str, mode: str, out_dir: Path) -> Path:
    """Each trial's metric in trial order (row order of the frame) and the running best; failed trials (NaN) are
    left out of the running best but keep their place on the x-axis."""
    order = np.arange(1, len(value) + 1)
    ok = np.isfinite(value)
    filled = np.where(ok, value, np.inf if mode == "min" else -np.inf)
    running = np.minimum.accumulate(filled) if mode == "min" else np.maximum.accumulate(filled)
    running = np.where(np.isfinite(running), running, np.nan)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    ax.plot(order[ok], value[ok], "o", alpha=0.55, label="trial")
    ax.step(order, running, where="post", color="tab:red", label="best so far")
    if (~ok).any():
        ax.plot(order[~ok], np.full((~ok).sum(), np.nanmax(value) if ok.any() else 0.0), "x", color="grey",
                label="no result")
    ax.set(xlabel="trial (in order)", ylabel=label)
    ax.set_xlim(0.5, len(value) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir / "best_so_far.png")


def save_study_plots(df: Any, metric: str, mode: str, out_dir: str | Path) -> list[Path]:
    """The study's pictures from its results frame; returns the PNG paths written (possibly none).

    Args:
        df: ``pandas.DataFrame``, one row per trial in trial order, as in ``results.parquet``: ``trial_id``,
            ``status``, the searched parameters under dotted names (``cutmix.alpha``, ``cutmix.prob``,
            ``model.arch``, ``train.lr``, ...; any may be absent, and NaN/None where a parameter did not apply),
            the final ``metric``, ``best/<metric>``, ``epochs``, ``wall_s``.
        metric: e.g. ``"val/top1_err"``; trials are coloured and ranked by ``best/<metric>`` when present, else by
            ``metric``.
        mode: ``"min"`` or ``"max"``: which direction is better.
        out_dir: directory for the files.

    Writes ``alpha_prob_<arch>.png`` (one per architecture; ``alpha_prob_all.png`` without an architecture
    column) when both ``cutmix.alpha`` and ``cutmix.prob`` are columns, ``isolation.png`` when any searched
    parameter is, and ``best_so_far.png``. A plot whose columns are missing is skipped; nothing is written when
    no trial has a value for the metric.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} is not allowed (min or max)")
    out_dir = Path(out_dir)
    column = f"best/{metric}" if f"best/{metric}" in df.columns else metric
    if column not in df.columns or len(df) == 0:
        return []
    value = _numeric(df[column])
    if value is None or not np.isfinite(value).any():
        return []
    paths: list[Path] = []
    if {"cutmix.alpha", "cutmix.prob"} <= set(df.columns):
        paths += _alpha_prob(df, value, column, mode, out_dir)
    params = [c for c in df.columns if "." in c and "/" not in c and c not in _NOT_PARAMS]
    if params:
        paths.append(_isolation(df, params, value, column, mode, out_dir))
    paths.append(_best_so_far(value, column, mode, out_dir))
    return paths
def save_budget_plot(analysis: BudgetAnalysis, path: str | Path, title: str | None = None) -> Path:
    """Test top-1 error against the training budget (epochs, log scale) for each arm of a budget study
    (study.training.budget.analyse): the mean with its 95 % t-interval, every seed as a dot, the clean train error
    dashed, and the crossover with its bootstrap interval shaded when it lies in range."""
    rows = analysis.budgets
    epochs = np.array([r.epochs for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    arms = list(rows[0].test)
    for i, arm in enumerate(arms):
        color = f"C{i}"
        mean = np.array([r.test[arm].mean for r in rows])
        lo = np.array([r.test[arm].ci95[0] for r in rows])
        hi = np.array([r.test[arm].ci95[1] for r in rows])
        ax.errorbar(epochs, mean, yerr=[mean - lo, hi - mean], color=color, marker="o", capsize=3,
                    label=f"{arm} (test)")
        for r in rows:
            ax.scatter([r.epochs] * len(r.test[arm].values), r.test[arm].values, color=color, s=8, alpha=0.5)
        trains = [r.train.get(arm) for r in rows]
        if all(t is not None for t in trains):
            ax.plot(epochs, [t.mean for t in trains if t is not None], color=color, ls="--", lw=1,
                    label=f"{arm} (train, clean)")
    cross = analysis.crossover
    if cross.estimate is not None:
        lo, hi = cross.ci95
        ax.axvspan(lo if lo is not None else epochs[0], hi if hi is not None else epochs[-1], color="0.85",
                   zorder=0, label="crossover, 95 % bootstrap")
        ax.axvline(cross.estimate, color="0.4", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(epochs, [f"{int(e)}" for e in epochs])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("training budget (epochs, each with its own full schedule)")
    ax.set_ylabel(f"top-1 error (%), mean and 95 % CI over {rows[0].test[arms[0]].n} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def save_race_plot(race: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """The race of a study (study.search.race.run_race's record): per setting, its race seeds' values by the round
    they ran in (dots), its running mean after each round (a line), and how it left: a cross at its last round when
    eliminated, a star for the winner, a circle for the settings that tied. The legend gives each one's fate."""
    settings = race["settings"]
    per_round = max((r["seeds"] for r in race["rounds"][:1]), default=1)
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for i, (name, st) in enumerate(settings.items()):
        color, values = f"C{i % 10}", list(st["values"])
        rounds = [k // per_round + 1 for k in range(len(values))]
        jitter = (i - (len(settings) - 1) / 2) * 0.04
        ax.scatter([r + jitter for r in rounds], values, color=color, s=14, alpha=0.6)
        reached = sorted(set(rounds))
        means = [float(np.nanmean(values[:r * per_round])) for r in reached]
        fate = st.get("fate", "")
        marker = "*" if fate.startswith("winner") else ("x" if fate.startswith("eliminated") else "o")
        ax.plot([r + jitter for r in reached], means, color=color, lw=1.5,
                label=f"{st.get('label', name)}: {fate}"[:90])
        if reached:
            ax.scatter([reached[-1] + jitter], [means[-1]], color=color, marker=marker, s=110, zorder=3,
                       edgecolors="k" if marker != "x" else None)
    ax.set_xticks(range(1, len(race["rounds"]) + 1))
    ax.set_xlabel(f"round ({per_round} new seeds per surviving setting each)")
    ax.set_ylabel(f"{race['metric']} (mean of the last {race.get('smooth_epochs', 1)} epoch(s)), per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    ax.set_title(title or race.get("verdict", "")[:110], fontsize=8)
    return save_figure(fig, path)
