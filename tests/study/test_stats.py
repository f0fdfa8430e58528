"""study.stats: t-intervals and Welch intervals against scipy.stats computed by hand, the verdict rule, the
binomial standard errors and the formatted lines, with the edge cases a 1-seed or constant run produces; each entry
type round-trips through the JSON shape of its old dict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from study.stats import (
    BootstrapShares,
    Comparison,
    Crossover,
    McNemar,
    Summary,
    binomial_se_points,
    compare,
    crossover,
    format_ci,
    format_diff,
    mcnemar,
    separation_in_se,
    summarize,
)


def test_summarize_matches_a_hand_computed_t_interval():
    values = [12.5, 11.0, 13.25, 12.0]
    out = summarize(values)
    arr = np.array(values)
    std = arr.std(ddof=1)
    half = scipy.stats.t.ppf(0.975, len(arr) - 1) * std / math.sqrt(len(arr))
    assert out.n == 4 and out.values == tuple(values)
    assert out.mean == pytest.approx(arr.mean()) and out.std == pytest.approx(std)
    assert out.ci95 == pytest.approx([arr.mean() - half, arr.mean() + half])
    # scipy's own interval for the mean of a normal sample, the same thing computed another way.
    lo, hi = scipy.stats.t.interval(0.95, len(arr) - 1, loc=arr.mean(), scale=scipy.stats.sem(arr))
    assert out.ci95 == pytest.approx([lo, hi])


def test_summarize_confidence_widens_the_interval():
    narrow, wide = summarize([1.0, 2.0, 4.0], confidence=0.5), summarize([1.0, 2.0, 4.0], confidence=0.99)
    assert wide.ci95[0] < narrow.ci95[0] < narrow.mean < narrow.ci95[1] < wide.ci95[1]


@pytest.mark.parametrize("values", [[3.5], [2.0, 2.0, 2.0]])
def test_summarize_one_value_or_no_spread_gives_a_point_interval(values):
    out = summarize(values)
    assert out.std == 0.0 and out.ci95 == (values[0], values[0]) and out.n == len(values)


def test_summarize_converts_to_plain_floats():
    out = summarize(np.array([1, 2, 3], dtype=np.int64))
    assert all(type(v) is float for v in out.values) and type(out.mean) is float


def test_compare_is_welch_as_scipy_computes_it_and_by_hand():
    a, b = [10.0, 11.5, 9.0, 10.5], [12.0, 14.0, 13.0]
    out = compare(a, b)
    res = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert out.ci95 == pytest.approx([res.low, res.high])
    # Welch-Satterthwaite by hand: se^2 = va/na + vb/nb, df = se^4 / sum((v/n)^2 / (n-1)).
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = scipy.stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = np.mean(a) - np.mean(b)
    assert out.diff == pytest.approx(diff) and out.ci95 == pytest.approx([diff - half, diff + half])
    assert out.n == (4, 3) and out.method == "welch-t"


@pytest.mark.parametrize(("values", "baseline", "lower_is_better", "verdict"), [
    ([1.0, 1.1, 0.9], [5.0, 5.1, 4.9], True, "better"),  # lower error than the baseline
    ([1.0, 1.1, 0.9], [5.0, 5.1, 4.9], False, "worse"),  # lower accuracy than the baseline
    ([5.0, 5.1, 4.9], [1.0, 1.1, 0.9], True, "worse"),
    ([5.0, 5.1, 4.9], [1.0, 1.1, 0.9], False, "better"),
    ([1.0, 3.0, 2.0], [1.5, 2.5, 2.1], True, "not resolved"),  # the interval holds zero
])
def test_verdict_follows_the_interval_and_the_direction(values, baseline, lower_is_better, verdict):
    out = compare(values, baseline, lower_is_better=lower_is_better)
    assert out.verdict == verdict
    lo, hi = out.ci95
    assert (lo > 0 or hi < 0) == (verdict != "not resolved")


def test_verdict_depends_on_confidence():
    a, b = [1.0, 2.0, 3.0], [2.5, 3.5, 4.0]  # p ~ 0.13: resolved at 80 %, not at 95 %
    assert compare(a, b).verdict == "not resolved"
    assert compare(a, b, confidence=0.8).verdict == "better"


@pytest.mark.parametrize(("values", "baseline"), [([1.0], [2.0, 3.0]), ([1.0, 2.0], [5.0]), ([1.0], [9.0])])
def test_one_seed_on_either_side_is_never_resolved(values, baseline):
    out = compare(values, baseline)
    assert out.verdict == "not resolved" and out.ci95 == (None, None)
    assert out.diff == pytest.approx(np.mean(values) - np.mean(baseline))
    assert "no interval with one seed" in format_diff(out)


def test_constant_sides_give_a_point_interval():
    out = compare([1.0, 1.0, 1.0], [2.0, 2.0])
    assert out.ci95 == (-1.0, -1.0) and out.verdict == "better"
    same = compare([2.0, 2.0], [2.0, 2.0, 2.0])
    assert same.ci95 == (0.0, 0.0) and same.verdict == "not resolved"


def test_one_constant_side_still_uses_welch():
    a, b = [0.0, 0.0, 0.0], [1.0, 2.0, 4.0]
    res = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert compare(a, b).ci95 == pytest.approx([res.low, res.high])


def test_binomial_standard_error_in_points():
    assert binomial_se_points(50.0, 100) == pytest.approx(5.0)
    assert binomial_se_points(10.0, 10_000) == pytest.approx(100 * math.sqrt(0.1 * 0.9 / 10_000))
    assert binomial_se_points(0.0, 100) == 0.0 and binomial_se_points(100.0, 100) == 0.0
    assert binomial_se_points(150.0, 100) == 0.0 and binomial_se_points(-5.0, 100) == 0.0  # clipped to [0, 100]
    assert math.isnan(binomial_se_points(50.0, 0))


def test_separation_in_standard_errors():
    se = math.hypot(binomial_se_points(10.0, 1000), binomial_se_points(12.0, 1000))
    assert separation_in_se(10.0, 12.0, 1000) == pytest.approx(2.0 / se)
    assert separation_in_se(12.0, 10.0, 1000) == separation_in_se(10.0, 12.0, 1000)
    assert separation_in_se(4.0, 4.0, 500) == 0.0
    assert separation_in_se(0.0, 100.0, 50) == math.inf  # no spread on either side, different values
    assert separation_in_se(0.0, 0.0, 50) == 0.0
    # More images, more resolution: the same gap is more standard errors apart.
    assert separation_in_se(10.0, 12.0, 10_000) > separation_in_se(10.0, 12.0, 1000)


def test_format_lines():
    stat = summarize([10.0, 12.0, 14.0])
    lo, hi = stat.ci95
    assert format_ci(stat, "%") == f"12.00 ± 2.00% over 3 seeds (95 % CI {lo:.2f} to {hi:.2f})"
    diff = compare([1.0, 1.1, 0.9], [5.0, 5.1, 4.9])
    lo, hi = diff.ci95
    assert format_diff(diff) == f"-4.00 points (95 % CI {lo:+.2f} to {hi:+.2f}, Welch's t): better"
    assert format_diff(diff, unit="%").startswith("-4.00% (")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_value_that_is_not_finite_is_reported_not_a_crash(bad):
    """A diverged seed has a NaN or infinite loss: its summary shows it, and no comparison is resolved by it."""
    out = summarize([1.0, bad, 2.0])
    assert out.n == 3 and math.isnan(out.std) and not math.isfinite(out.mean)
    diff = compare([1.0, bad, 2.0], [3.0, 4.0, 5.0])
    assert diff.verdict == "not resolved" and diff.ci95 == (None, None) and diff.n == (3, 3)
    assert "no interval: a value is not finite" in format_diff(diff)
    assert compare([3.0, 4.0, 5.0], [bad, 1.0, 2.0]).verdict == "not resolved"


# Each entry from the function that makes it, in the JSON shape its dict had (written here by hand, key by key, in
# the old dicts' order: that order is what summary.json holds), and through JSON and back.
ENTRIES = [
    (summarize([1.0, 2.0, 4.0]), ["mean", "std", "n", "values", "ci95"]),
    (compare([1.0], [2.0, 3.0]), ["diff", "ci95", "verdict", "method", "n"]),  # one seed: ci95 [None, None]
    (Comparison(-1.5, (-2.0, -1.0), "better", "welch-t", (3, 3), p=0.01, p_holm=0.03, holm_m=3),
     ["diff", "ci95", "verdict", "method", "n", "p", "p_holm", "holm_m"]),  # an evaluate table's secondary cell
    (Comparison(-1.5, (-2.0, -1.0), "better", "welch-t", (3, 3), p=0.01),
     ["diff", "ci95", "verdict", "method", "n", "p"]),  # its primary cell: no Holm
    (crossover([6, 12, 24], [[3.0, 3.5], [0.5, 1.0], [-1.0, -0.5]], [[1.0, 1.2]] * 3, resamples=50),
     ["estimate", "position", "ci95", "bootstrap", "resamples", "budgets"]),
    (crossover([6, 12], [[3.0, 3.5], [2.0, 2.5]], [[1.0, 1.2]] * 2, resamples=50),  # open interval: Nones
     ["estimate", "position", "ci95", "bootstrap", "resamples", "budgets"]),
    (BootstrapShares(0.25, 0.5, 0.25), ["inside", "before", "after"]),
    (mcnemar([True, False, True, False], [True, True, False, False]), ["a_only", "b_only", "diff", "p", "n"]),
]


@pytest.mark.parametrize(("entry", "keys"), ENTRIES, ids=lambda e: type(e).__name__)
def test_every_entry_round_trips_through_its_json_shape(entry, keys):
    d = entry.to_dict()
    assert list(d) == keys
    assert all(not isinstance(v, tuple) for v in d.values())  # lists, as the dicts held: JSON has no tuples
    back = type(entry).from_dict(json.loads(json.dumps(d)))
    assert back == entry and type(back) is type(entry)
    assert json.dumps(back.to_dict()) == json.dumps(d)


def test_the_entries_read_the_old_dicts():
    """Dicts as the stats functions returned them before the entries were typed (written literally)."""
    old = {"mean": 2.0, "std": 1.0, "n": 2, "values": [1.0, 3.0], "ci95": [-10.7, 14.7]}
    assert Summary.from_dict(old) == Summary(2.0, 1.0, 2, (1.0, 3.0), (-10.7, 14.7))
    old = {"diff": 0.5, "ci95": [None, None], "verdict": "not resolved", "method": "welch-t", "n": [1, 3]}
    assert Comparison.from_dict(old) == Comparison(0.5, (None, None), "not resolved", "welch-t", (1, 3))
    old = {"estimate": None, "position": "after", "ci95": [24.5, None],
           "bootstrap": {"inside": 0.25, "before": 0.0, "after": 0.75}, "resamples": 200, "budgets": [6, 12, 24]}
    assert Crossover.from_dict(old) == Crossover(None, "after", (24.5, None), BootstrapShares(0.25, 0.0, 0.75), 200,
                                                 (6, 12, 24))
    old = {"a_only": 2, "b_only": 8, "diff": 15.0, "p": 0.109375, "n": 40}
    assert McNemar.from_dict(old) == McNemar(2, 8, 15.0, 0.109375, 40)
