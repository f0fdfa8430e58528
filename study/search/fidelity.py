"""How far a study can trust its early epochs: smoothing and the rung-vs-final rank correlation (issue 15).

ASHA (Li et al. 2020) stops trials on their rank at a rung, which is only sound when the rank at the rung predicts
the rank at the end. For a regularizer it often does not: mixing trains slower and looks worse early (short-horizon
bias: Wu et al. 2018, "Understanding Short-Horizon Bias in Stochastic Meta-Optimization"; Zela et al. 2018, "Towards
Automated Deep Learning: Efficient Joint Neural Architecture and Hyperparameter Search", which measured exactly this
rank correlation between budgets). So the study measures it on its own trials: Spearman's rho between each rung's
metric and the final metric, over the trials that reached the end.

Every value here is a *smoothed* one, the mean of the last `k` epochs up to that epoch: one seed's val error jumps
3-6 points between epochs, so one epoch (or the minimum over epochs, which picks the luckiest jump) ranks noise.
Pure functions of per-epoch histories (lists of metric dicts, epoch 1 first); no Ray, no Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from study.summaries import Fidelity

RHO_WARN = 0.8  # below this a rung ranks trials unlike the end (the threshold)
MIN_TRIALS = 3  # Spearman's rho over fewer trials is not a measurement
SMOOTH_SUFFIX = "_smooth"


def smooth_key(metric: str) -> str:
    """The reported name of a metric's smoothed value: `val/top1_err` -> `val/top1_err_smooth`."""
    return metric + SMOOTH_SUFFIX


def smoothed(values: Sequence[float], k: int, upto: int | None = None) -> float:
    """Mean of the last `k` values among `values[:upto]` (all of them when fewer); NaN when there are none."""
    window = [float(v) for v in list(values)[:upto][-max(1, k):] if v is not None and not math.isnan(float(v))]
    return sum(window) / len(window) if window else math.nan


def smoothed_history(history: Sequence[Mapping[str, Any]], metric: str, k: int, upto: int | None = None) -> float:
    """`smoothed` over one metric of a per-epoch history (dicts of metrics, epoch 1 first)."""
    return smoothed([h.get(metric, math.nan) for h in history], k, upto)


def rung_epochs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The epochs at which ASHA judges trials: grace_period * reduction_factor**i below max_t (Ray's ASHA rungs)."""
    rungs, t = [], max(1, grace_period)
    while t < max_t:
        rungs.append(t)
        t *= max(2, reduction_factor)
    return rungs


def measure(histories: Mapping[str, Sequence[Mapping[str, Any]]], metric: str, rungs: Sequence[int], epochs: int,
            k: int, *, active: bool = True) -> Fidelity:
    """Spearman's rho between each rung's smoothed metric and the final smoothed metric, over the trials whose
    history reaches `epochs`.

    Returns {"metric", "epochs", "smooth_epochs", "trials": n used, "rungs": [{"epoch", "rho", "p", "n"}],
    "min_rho": lowest rho or None, "reason": why nothing was measured ("" when measured), "warning": the issue's
    sentence for the worst rung below RHO_WARN ("" otherwise)}. rho is None where it is undefined (fewer than
    MIN_TRIALS trials, or every trial had the same value at the rung or at the end). `active`: whether ASHA cut
    trials at these rungs (False with search.scheduler=none: the warning then says what ASHA *would* do there,
    since no trial was stopped)."""
    from scipy.stats import spearmanr

    finished = {tid: h for tid, h in histories.items() if len(h) >= epochs}
    out: Fidelity = {"metric": metric, "epochs": epochs, "smooth_epochs": k, "trials": len(finished),
                           "rungs": [], "min_rho": None, "reason": "", "warning": ""}
    if not rungs:
        out["reason"] = f"no rung below the final epoch {epochs}"
        return out
    if len(finished) < MIN_TRIALS:
        out["reason"] = (f"only {len(finished)} trial(s) reached epoch {epochs} (need {MIN_TRIALS}; run a pilot of "
                         "full-length trials with search.scheduler=none)")
        return out
    final = [smoothed_history(h, metric, k, epochs) for h in finished.values()]
    for epoch in rungs:
        at = [smoothed_history(h, metric, k, epoch) for h in finished.values()]
        pairs = [(a, f) for a, f in zip(at, final) if not (math.isnan(a) or math.isnan(f))]
        rho = p = None
        if len(pairs) >= MIN_TRIALS and len({a for a, _ in pairs}) > 1 and len({f for _, f in pairs}) > 1:
            res = spearmanr([a for a, _ in pairs], [f for _, f in pairs])
            rho, p = float(res.statistic), float(res.pvalue)
        out["rungs"].append({"epoch": int(epoch), "rho": rho, "p": p, "n": len(pairs)})
    rhos = [r for r in out["rungs"] if r["rho"] is not None]
    if not rhos:
        out["reason"] = "every trial had the same value at a rung or at the end (rho undefined)"
        return out
    worst = min(rhos, key=lambda r: r["rho"])
    out["min_rho"] = worst["rho"]
    if worst["rho"] < RHO_WARN:
        rho = f"rho = {worst['rho']:.2f} (Spearman, {worst['n']} trials; below {RHO_WARN})"
        out["warning"] = (f"early stopping at epoch {worst['epoch']} ranks trials unlike epoch {epochs}: {rho}"
                          if active else
                          f"early stopping is off; ASHA would cut at epoch {worst['epoch']} by a ranking unlike "
                          f"epoch {epochs}'s: {rho}; keep search.scheduler=none")
    return out


def rho_metrics(fidelity: Mapping[str, Any]) -> dict[str, float]:
    """MLflow metrics of a measurement: `fidelity/rho_epoch<E>` per rung, `fidelity/trials`."""
    out = {f"fidelity/rho_epoch{r['epoch']}": r["rho"] for r in fidelity.get("rungs", []) if r["rho"] is not None}
    if fidelity:
        out["fidelity/trials"] = float(fidelity.get("trials", 0))
    return out


def describe_fidelity(fidelity: Mapping[str, Any]) -> str:
    """One line for the report: each rung's rho, or why none was measured, then the warning."""
    if not fidelity:
        return ""
    head = (f"fidelity (Spearman rho of the rung's {fidelity['metric']} vs epoch {fidelity['epochs']}, mean of the "
            f"last {fidelity['smooth_epochs']} epochs, {fidelity['trials']} finished trials): ")
    if fidelity.get("reason"):
        return head + "not measured: " + fidelity["reason"]
    cells = [f"epoch {r['epoch']} " + ("-" if r["rho"] is None else f"{r['rho']:.2f}") for r in fidelity["rungs"]]
    line = head + ", ".join(cells)
    return line + (f"\nwarning: {fidelity['warning']}" if fidelity.get("warning") else "")
