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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95


# ---------------------------------------------------------------------------------------------------------------
# The entries: frozen dataclasses, each with `to_dict` (the JSON shape a stage's summary.json has always had, so
# old summaries load and outside readers of the files see no change) and `from_dict` (its inverse). `from_dict`
# takes what `json.loads` gave, hence `Mapping[str, Any]`; tuples hold the sequences (the entries are immutable)
# and `to_dict` writes them as lists.


@dataclass(frozen=True)
class Summary:
    """A metric over seeds (`summarize`), in the metric's own units (percent for errors and accuracies).

    `mean`; `std`: sample std (ddof=1), 0 for one value, NaN when a value is not finite; `n`: seeds; `values`: the
    per-seed values in seed order; `ci95`: (low, high) of the t-interval of the mean at `summarize`'s confidence,
    (mean, mean) for one value or no spread."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]
    ci95: tuple[float, float]

    def to_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values), "ci95": list(self.ci95)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        lo, hi = d["ci95"]
        return cls(d["mean"], d["std"], d["n"], tuple(d["values"]), (lo, hi))


@dataclass(frozen=True)
class Comparison:
    """`values - baseline` (`compare`), in the metric's units (percentage points for an error in percent).

    `diff`: difference of means; `ci95`: Welch's t-interval, None for a side that cannot be formed (one seed: both;
    a value not finite: both); `verdict`: "better", "worse" or "not resolved"; `method`: "welch-t"; `n`: (seeds of
    values, seeds of baseline). The evaluate table adds `p` (Welch's two-sided p-value) to every cell and `p_holm`,
    `holm_m` (Holm-adjusted p-value, family size) to its secondary columns: None where not set, and then absent
    from `to_dict`, as those keys were absent from the dicts before."""

    diff: float
    ci95: tuple[float | None, float | None]
    verdict: str
    method: str
    n: tuple[int, int]
    p: float | None = None
    p_holm: float | None = None
    holm_m: int | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"diff": self.diff, "ci95": list(self.ci95), "verdict": self.verdict,
                                  "method": self.method, "n": list(self.n)}
        extra = {"p": self.p, "p_holm": self.p_holm, "holm_m": self.holm_m}
        return out | {k: v for k, v in extra.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        lo, hi = d["ci95"]
        na, nb = d["n"]
        return cls(d["diff"], (lo, hi), d["verdict"], d["method"], (na, nb), d.get("p"), d.get("p_holm"),
                   d.get("holm_m"))


@dataclass(frozen=True)
class BootstrapShares:
    """Fractions (0 to 1) of a crossover's seed resamples whose crossover lies inside, before or after the range."""

    inside: float
    before: float
    after: float

    def to_dict(self) -> dict[str, object]:
        return {"inside": self.inside, "before": self.before, "after": self.after}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BootstrapShares:
        return cls(d["inside"], d["before"], d["after"])


@dataclass(frozen=True)
class Crossover:
    """Where a treated arm stops being worse than the baseline across budgets (`crossover`), in budget units
    (epochs). `estimate`: None unless `position` is "inside" ("before": already not worse at the smallest budget;
    "after": worse at every budget); `ci95`: the percentile-bootstrap interval, None on an open side; `bootstrap`:
    where the resamples' crossovers fell; `resamples`; `budgets`: the budgets, increasing."""

    estimate: float | None
    position: str
    ci95: tuple[float | None, float | None]
    bootstrap: BootstrapShares
    resamples: int
    budgets: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"estimate": self.estimate, "position": self.position, "ci95": list(self.ci95),
                "bootstrap": self.bootstrap.to_dict(), "resamples": self.resamples, "budgets": list(self.budgets)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Crossover:
        lo, hi = d["ci95"]
        return cls(d["estimate"], d["position"], (lo, hi), BootstrapShares.from_dict(d["bootstrap"]),
                   d["resamples"], tuple(d["budgets"]))


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two classifiers on the same `n` images (`mcnemar`): `a_only`, `b_only`: images only
    a / only b gets right; `diff`: error of a minus error of b, in percentage points; `p`: two-sided exact p-value."""

    a_only: int
    b_only: int
    diff: float
    p: float
    n: int

    def to_dict(self) -> dict[str, object]:
        return {"a_only": self.a_only, "b_only": self.b_only, "diff": self.diff, "p": self.p, "n": self.n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> McNemar:
        return cls(d["a_only"], d["b_only"], d["diff"], d["p"], d["n"])


def _stdev(values: list[float]) -> float:
    """Sample std (ddof=1), 0 for one value, NaN when a value is not finite (a diverged seed's loss):
    `statistics.stdev` raises AttributeError on NaN or inf instead of returning NaN."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample std (ddof=1; 0 for one value), n, the values, and the t-interval of the mean as `ci95`
    ((mean, mean) for one value or no spread: nothing to widen it with), in the units of `values`."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    mean = statistics.fmean(values)
    std = _stdev(values)
    if n > 1 and std > 0:
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
        ci = (mean - half, mean + half)
    else:
        ci = (mean, mean)
    return Summary(mean, std, n, tuple(values), ci)


def compare(values: Sequence[float], baseline: Sequence[float], *, lower_is_better: bool = True,
            confidence: float = CONFIDENCE) -> Comparison:
    """`values - baseline` (difference of means, in the units of the values: percentage points for errors in
    percent) with Welch's t-interval and a verdict: "better", "worse" or "not resolved" (the interval holds zero).
    With fewer than two values per side, or no spread on either side, no interval can be formed: the difference is
    resolved only if it is exactly zero-free and both sides are constant (then the interval is the point itself)."""
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
    lo, hi = (c if math.isfinite(c) else None for c in ci)
    return Comparison(diff, (lo, hi), verdict, "welch-t", (len(a), len(b)))


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


def format_ci(stat: Summary, unit: str = "") -> str:
    lo, hi = stat.ci95
    return f"{stat.mean:.2f} ± {stat.std:.2f}{unit} over {stat.n} seeds (95 % CI {lo:.2f} to {hi:.2f})"


def format_diff(stat: Comparison, unit: str = " points") -> str:
    lo, hi = stat.ci95
    if lo is not None and hi is not None:
        ci = f"95 % CI {lo:+.2f} to {hi:+.2f}"
    else:
        ci = "no interval with one seed" if min(stat.n) < 2 else "no interval: a value is not finite"
    return f"{stat.diff:+.2f}{unit} ({ci}, Welch's t): {stat.verdict}"


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
              resamples: int = 2000, confidence: float = CONFIDENCE, seed: int = 0) -> Crossover:
    """The budget at which `treated` stops being worse than `baseline` (lower is better, e.g. top-1 error).

    `treated[i]`, `baseline[i]`: the per-seed values at `budgets[i]` (increasing). The crossover is the first turn
    of the mean difference from > 0 to <= 0, interpolated linearly in log2(budget) between the two budgets that
    bracket it; it lies "before" the range when the smallest budget is already not worse, "after" it when no
    budget is better. Its interval is a percentile bootstrap over seeds (each cell's seeds resampled with
    replacement, `resamples` times, numpy's default_rng(`seed`)); resamples without a crossover in range count as
    before/after it, so an interval can be open on one side (None there). With 3 seeds a cell has only 10
    distinct resamples: the interval is coarse, and says so by its width.

    Returns a `Crossover`: the estimate (None unless "inside"), its position ("inside", "before", "after"), the
    interval (None on an open side), the fractions of resamples inside, before and after the range, the resamples
    and the budgets, all in budget units (epochs).
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
    lo, hi = (float(np.quantile(boot, p, method="inverted_cdf")) for p in (q, 1 - q))

    def where(v: float) -> str:
        return "before" if v == -np.inf else "after" if v == np.inf else "inside"

    def share(w: str) -> float:
        return float(np.mean([where(v) == w for v in boot]))

    return Crossover(float(point) if np.isfinite(point) else None, where(point),
                     (lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None),
                     BootstrapShares(share("inside"), share("before"), share("after")), int(resamples),
                     tuple(int(x) for x in b))


def format_crossover(c: Crossover, treated: str = "cutmix_paper", baseline: str = "baseline") -> str:
    """One line for a `crossover` result: the budget with its bootstrap interval, or "no crossover in range"."""
    lo, hi = c.ci95
    first, last = c.budgets[0], c.budgets[-1]
    span = (f"{lo:.0f}" if lo is not None else f"< {first}") + " to " + (f"{hi:.0f}" if hi is not None else
                                                                         f"> {last}")
    share = f"{100 * c.bootstrap.inside:.0f} % of {c.resamples} seed resamples cross in range"
    if c.position == "inside":
        return (f"crossover: {treated} stops being worse than {baseline} at ~{c.estimate:.0f} epochs "
                f"(95 % bootstrap interval {span}; {share})")
    if c.position == "after":
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


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """McNemar's exact test of two classifiers on the same images (paired by image): `correct_*` bool [N].

    Returns `a_only`, `b_only` (images only a / only b gets right), `diff` (error of a minus error of b, in
    points: (b_only - a_only) / N * 100), `p`, the two-sided exact binomial p-value of a_only among the
    discordant pairs under p = 1/2 (1.0 when there are none), and `n` = N."""
    from scipy import stats

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"correctness vectors of shapes {a.shape}, {b.shape} are not allowed (two equal [N], N >= 1)")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return McNemar(a_only, b_only, 100.0 * (b_only - a_only) / a.size, p, int(a.size))


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
