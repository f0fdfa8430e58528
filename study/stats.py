"""Numbers with their uncertainty: what a retrain or an evaluation reports over seeds.

Seeds are few (3 by default), so intervals use Student's t, and a difference between two methods uses Welch's
t-interval (unequal variances; `scipy.stats.ttest_ind(equal_var=False).confidence_interval`). A difference is
*resolved* only when its 95 % interval excludes zero; otherwise the run says "not resolved" rather than pick a
winner from noise (Google's tuning playbook; KellerJordan's airbench reports n and spread the same way).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

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
