"""Numbers with their uncertainty: what a retrain or an evaluation reports over seeds.

Seeds are few (3 by default), so intervals use Student's t, and a difference between two methods uses Welch's
t-interval (unequal variances; `scipy.stats.ttest_ind(equal_var=False).confidence_interval`). A difference is
*resolved* only when its 95 % interval excludes zero; otherwise the run says "not resolved" rather than pick a
winner from noise (Google's tuning playbook; KellerJordan's airbench reports n and spread the same way).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample std (ddof=1; 0 for one value), n, the values, and the t-interval of the mean as `ci95`
    ([mean, mean] for one value or no spread: nothing to widen it with)."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    if n > 1 and std > 0:
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    else:
        ci = [mean, mean]
    return {"mean": mean, "std": std, "n": n, "values": values, "ci95": ci}


def compare(values: Sequence[float], baseline: Sequence[float], *, lower_is_better: bool = True,
            confidence: float = CONFIDENCE) -> dict[str, Any]:
    """`values - baseline` (difference of means) with Welch's t-interval and a verdict: "better", "worse" or
    "not resolved" (the interval holds zero). With fewer than two values per side, or no spread on either side,
    no interval can be formed: the difference is resolved only if it is exactly zero-free and both sides are
    constant (then the interval is the point itself)."""
    from scipy import stats

    a = [float(v) for v in values]
    b = [float(v) for v in baseline]
    diff = statistics.fmean(a) - statistics.fmean(b)
    spread = (statistics.stdev(a) if len(a) > 1 else 0.0) + (statistics.stdev(b) if len(b) > 1 else 0.0)
    if len(a) < 2 or len(b) < 2:
        ci = [-math.inf, math.inf]  # one seed: nothing is resolved
    elif spread == 0:
        ci = [diff, diff]
    else:
        res = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
        ci = [float(res.low), float(res.high)]
    if ci[0] > 0 or ci[1] < 0:
        improved = (diff < 0) == lower_is_better
        verdict = "better" if improved else "worse"
    else:
        verdict = "not resolved"
    shown = [c if math.isfinite(c) else None for c in ci]
    return {"diff": diff, "ci95": shown, "verdict": verdict, "method": "welch-t", "n": [len(a), len(b)]}


def binomial_se_points(error_pct: float, n: int) -> float:
    """Standard error, in percentage points, of an error rate measured on `n` images (binomial)."""
    p = min(max(error_pct / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n) if n > 0 else math.nan


def separation_in_se(error_a: float, error_b: float, n: int) -> float:
    """|a - b| in units of the binomial standard error of that difference on `n` images (independent errors
    assumed; the same images make it conservative): below ~2, a study's ranking of a and b is noise."""
    se = math.hypot(binomial_se_points(error_a, n), binomial_se_points(error_b, n))
    if se == 0:
        return math.inf if error_a != error_b else 0.0
    return abs(error_a - error_b) / se


def format_ci(stat: dict[str, Any], unit: str = "") -> str:
    lo, hi = stat["ci95"]
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}{unit} over {stat['n']} seeds (95 % CI {lo:.2f} to {hi:.2f})"


def format_diff(stat: dict[str, Any], unit: str = " points") -> str:
    lo, hi = stat["ci95"]
    ci = "no interval with one seed" if lo is None or hi is None else f"95 % CI {lo:+.2f} to {hi:+.2f}"
    return f"{stat['diff']:+.2f}{unit} ({ci}, Welch's t): {stat['verdict']}"


# ---------------------------------------------------------------------------------------------------------------
# A table of many metrics (issue 16): multiplicity, paired tests, power.


def welch_p(values: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test of `values` against `baseline` (the test behind `compare`'s interval).
    1.0 when it cannot be formed (fewer than two values a side); 0.0 for two constant, different sides."""
    from scipy import stats

    a = [float(v) for v in values]
    b = [float(v) for v in baseline]
    if len(a) < 2 or len(b) < 2:
        return 1.0
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    with warnings.catch_warnings():  # near-identical values: scipy warns of precision loss, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: sort ascending, multiply the i-th
    smallest (0-based) by `m - i`, take the running maximum, cap at 1. A hypothesis is rejected at family-wise
    level alpha when its adjusted p-value is <= alpha. Controls the family-wise error under any dependence.
    (scipy.stats.false_discovery_control is Benjamini-Hochberg, which controls the false discovery rate instead.)"""
    import numpy as np

    p = np.asarray([float(v) for v in pvalues], dtype=np.float64)
    if p.size == 0:
        return []
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values {p.tolist()} are not allowed (values in [0, 1])")
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (p.size - np.arange(p.size))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted.tolist()


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of two classifiers on the same images (paired by image): `correct_*` bool [N].

    Returns `{"a_only", "b_only"}` (images only a / only b gets right), `diff` (error of a minus error of b, in
    points: (b_only - a_only) / N * 100) and `p`, the two-sided exact binomial p-value of a_only among the
    discordant pairs under p = 1/2 (1.0 when there are none)."""
    import numpy as np
    from scipy import stats

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"correctness vectors of shapes {a.shape}, {b.shape} are not allowed (two equal [N], N >= 1)")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "diff": 100.0 * (b_only - a_only) / a.size, "p": p, "n": int(a.size)}


def welch_power(diff: float, sd: float, n: int, alpha: float = 1 - CONFIDENCE) -> float:
    """Power of the two-sided two-sample t-test (equal n per arm, common standard deviation `sd`) to detect a true
    difference `diff`: noncentral t with df = 2n - 2 and noncentrality diff / (sd * sqrt(2 / n)). With equal n and
    equal variances Welch's df equals 2n - 2, so this is also Welch's power."""
    from scipy import stats

    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if diff != 0 else 0.0
    df = 2 * n - 2
    nc = abs(diff) / (sd * math.sqrt(2.0 / n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def min_detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 1 - CONFIDENCE) -> float:
    """The smallest true difference the two-sided t-test with `n` seeds per arm detects with probability `power`
    at level `alpha`, for the spread `sd` (same units). inf with fewer than two seeds; 0 without spread."""
    from scipy import optimize

    if n < 2:
        return math.inf
    if sd <= 0:
        return 0.0
    hi = sd
    while welch_power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: welch_power(d, sd, n, alpha) - power, 0.0, hi, xtol=1e-9 * sd))


def seeds_to_detect(diff: float, sd: float, power: float = 0.8, alpha: float = 1 - CONFIDENCE,
                    max_seeds: int = 10_000) -> int | None:
    """Seeds per arm the two-sided t-test needs to detect a true difference `diff` with probability `power` at
    level `alpha`, for the spread `sd`; None beyond `max_seeds` (or for diff = 0)."""
    if diff == 0:
        return None
    for n in range(2, max_seeds + 1):
        if welch_power(diff, sd, n, alpha) >= power:
            return n
    return None


def pooled_sd(values: Sequence[float], baseline: Sequence[float]) -> float:
    """sqrt((s_a^2 + s_b^2) / 2) of two sides' sample standard deviations (0 for a side of one value)."""
    sa = statistics.stdev(values) if len(values) > 1 else 0.0
    sb = statistics.stdev(baseline) if len(baseline) > 1 else 0.0
    return math.sqrt((sa * sa + sb * sb) / 2)
