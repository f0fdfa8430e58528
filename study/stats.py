"""Numbers with their uncertainty: what a retrain or an evaluation reports over seeds.

Seeds are few (3 by default), so intervals use Student's t, and a difference between two methods uses Welch's
t-interval (unequal variances; `scipy.stats.ttest_ind(equal_var=False).confidence_interval`). A difference is
*resolved* only when its 95 % interval excludes zero; otherwise the run says "not resolved" rather than pick a
winner from noise (Google's tuning playbook; KellerJordan's airbench reports n and spread the same way). Across
training budgets, `crossover` finds where a regularizer turns from worse to no worse, with a seed-bootstrap
interval (Efron & Tibshirani 1993, percentile method).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95


def _stdev(values: list[float]) -> float:
    """Sample std (ddof=1), 0 for one value, NaN when a value is not finite (a diverged seed's loss):
    `statistics.stdev` raises AttributeError on NaN or inf instead of returning NaN."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample std (ddof=1; 0 for one value), n, the values, and the t-interval of the mean as `ci95`
    ([mean, mean] for one value or no spread: nothing to widen it with)."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    mean = statistics.fmean(values)
    std = _stdev(values)
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
    spread = _stdev(a) + _stdev(b)
    if len(a) < 2 or len(b) < 2:
        ci = [-math.inf, math.inf]  # one seed: nothing is resolved
    elif math.isnan(spread):
        ci = [math.nan, math.nan]  # a value is not finite (a diverged seed): no interval, nothing resolved
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
    if lo is not None and hi is not None:
        ci = f"95 % CI {lo:+.2f} to {hi:+.2f}"
    else:
        ci = "no interval with one seed" if min(stat["n"]) < 2 else "no interval: a value is not finite"
    return f"{stat['diff']:+.2f}{unit} ({ci}, Welch's t): {stat['verdict']}"


def _first_turn(budgets: np.ndarray, diffs: np.ndarray) -> np.ndarray:
    """Crossover of each row of `diffs` (float [R, N], treated - baseline error per budget) over `budgets` (int
    [N], increasing): the first turn from > 0 (worse) to <= 0, linearly interpolated in log2(budget); -inf where
    the smallest budget is already not worse, +inf where every budget is worse. float64 [R], in budget units."""
    x = np.log2(budgets.astype(np.float64))
    worse = diffs > 0
    turn = worse[:, :-1] & ~worse[:, 1:]
    i = np.argmax(turn, axis=1)  # the first turn (0 where there is none: masked below)
    rows = np.arange(len(diffs))
    d0, d1 = diffs[rows, i], diffs[rows, i + 1]
    frac = np.divide(d0, d0 - d1, out=np.zeros_like(d0), where=d0 != d1)
    at = np.exp2(x[i] + frac * (x[i + 1] - x[i]))
    return np.where(~worse[:, 0], -np.inf, np.where(turn.any(axis=1), at, np.inf))


def crossover(budgets: Sequence[int], treated: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]], *,
              resamples: int = 2000, confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """The budget at which `treated` stops being worse than `baseline` (lower is better, e.g. top-1 error).

    `treated[i]`, `baseline[i]`: the per-seed values at `budgets[i]` (increasing). The crossover is the first turn
    of the mean difference from > 0 to <= 0, interpolated linearly in log2(budget) between the two budgets that
    bracket it; it lies "before" the range when the smallest budget is already not worse, "after" it when no
    budget is better. Its interval is a percentile bootstrap over seeds (each cell's seeds resampled with
    replacement, `resamples` times, numpy's default_rng(`seed`)); resamples without a crossover in range count as
    before/after it, so an interval can be open on one side (None there). With 3 seeds a cell has only 10
    distinct resamples: the interval is coarse, and says so by its width.

    Returns {"estimate": float | None, "position": "inside" | "before" | "after", "ci95": [lo | None, hi | None],
    "bootstrap": {"inside", "before", "after": fractions of resamples}, "resamples", "budgets"} (JSON-safe).
    """
    b = np.asarray(budgets, dtype=np.int64)
    if len(b) < 2 or np.any(np.diff(b) <= 0) or len(treated) != len(b) or len(baseline) != len(b):
        raise ValueError(f"budgets={list(budgets)} is not allowed (two or more, strictly increasing, one list of "
                         "values per budget and arm)")
    rng = np.random.default_rng(seed)

    def means(cells: Sequence[Sequence[float]]) -> np.ndarray:
        """[resamples, N]: each cell's mean over a resample of its seeds."""
        cols = []
        for values in cells:
            v = np.asarray(values, dtype=np.float64)
            cols.append(v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1))
        return np.stack(cols, axis=1)

    point = _first_turn(b, np.array([[np.mean(t) - np.mean(c) for t, c in zip(treated, baseline)]]))[0]
    boot = _first_turn(b, means(treated) - means(baseline))
    q = (1 - confidence) / 2
    ci = [float(np.quantile(boot, p, method="inverted_cdf")) for p in (q, 1 - q)]

    def where(v: float) -> str:
        return "before" if v == -np.inf else "after" if v == np.inf else "inside"

    return {"estimate": float(point) if np.isfinite(point) else None, "position": where(point),
            "ci95": [c if math.isfinite(c) else None for c in ci],
            "bootstrap": {w: float(np.mean([where(v) == w for v in boot])) for w in ("inside", "before", "after")},
            "resamples": int(resamples), "budgets": [int(x) for x in b]}


def format_crossover(c: dict[str, Any], treated: str = "cutmix_paper", baseline: str = "baseline") -> str:
    """One line for a `crossover` result: the budget with its bootstrap interval, or "no crossover in range"."""
    lo, hi = c["ci95"]
    first, last = c["budgets"][0], c["budgets"][-1]
    span = (f"{lo:.0f}" if lo is not None else f"< {first}") + " to " + (f"{hi:.0f}" if hi is not None else
                                                                         f"> {last}")
    share = f"{100 * c['bootstrap']['inside']:.0f} % of {c['resamples']} seed resamples cross in range"
    if c["position"] == "inside":
        return (f"crossover: {treated} stops being worse than {baseline} at ~{c['estimate']:.0f} epochs "
                f"(95 % bootstrap interval {span}; {share})")
    if c["position"] == "after":
        return (f"no crossover in range: {treated} is worse than {baseline} at every budget from {first} to {last} "
                f"epochs (bootstrap interval of the crossover {span}; {share})")
    return (f"no crossover in range: {treated} is already no worse than {baseline} at {first} epochs (bootstrap "
            f"interval of the crossover {span}; {share})")


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
