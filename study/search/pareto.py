"""Multi-objective studies: which trials are Pareto-optimal, and a picture of the front.

A trial is on the front when no other trial is at least as good on both objectives and strictly better on one
(the non-dominated set Optuna's multi-objective samplers work towards; Deb et al. 2002). Values are each trial's
last reported metrics, the ones the sampler was told.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pareto_mask(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """values: float [N, M] (NaN for a trial that reported nothing); modes: M of "min"/"max".
    Returns bool [N]: True where the row is non-dominated (rows with a NaN are never on the front)."""
    v = np.asarray(values, dtype=float).copy()
    sign = np.array([1.0 if m == "min" else -1.0 for m in modes])
    v = v * sign  # all objectives minimised
    ok = ~np.isnan(v).any(axis=1)
    # a dominates b: a <= b everywhere and a < b somewhere; [N, N, M] comparisons, vectorised.
    le = (v[:, None, :] <= v[None, :, :]).all(axis=2)
    lt = (v[:, None, :] < v[None, :, :]).any(axis=2)
    dominates = le & lt & ok[:, None] & ok[None, :]
    return ok & ~dominates.any(axis=0)


def save_pareto_plot(values: np.ndarray, front: np.ndarray, names: Sequence[str], path: str | Path,
                     labels: Sequence[str] | None = None) -> Path:
    """Scatter of every trial on the two objectives, the front highlighted and joined in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(v[~front, 0], v[~front, 1], c="0.6", s=24, label="trial")
    f = v[front]
    order = np.argsort(f[:, 0])
    ax.plot(f[order, 0], f[order, 1], "o-", c="tab:red", ms=6, label="Pareto front")
    if labels is not None:
        for (x, y), text in zip(f, np.asarray(labels)[front]):
            ax.annotate(str(text), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(f"{len(f)} of {len(v)} trials on the Pareto front")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
