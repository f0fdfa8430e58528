"""study.stats: the crossover of two arms' error curves over training budgets, on planted curves."""

from __future__ import annotations

import numpy as np
import pytest

from study.stats import crossover, format_crossover

BUDGETS = [6, 12, 24, 48, 96]


def planted(diffs, noise=0.2, seeds=3, seed=0):
    """Per-budget seed values of a treated arm that is `diffs` points above a flat 20 % baseline."""
    rng = np.random.default_rng(seed)
    base = [list(20 + rng.normal(0, noise, seeds)) for _ in diffs]
    treated = [list(20 + d + rng.normal(0, noise, seeds)) for d in diffs]
    return treated, base


def test_a_planted_crossover_is_found_between_its_budgets():
    treated, base = planted([8.0, 4.0, 1.0, -1.0, -1.5])
    c = crossover(BUDGETS, treated, base, resamples=1000)
    assert c.position == "inside" and 24 < c.estimate < 48
    # interpolated in log2(epochs): +1 at 24 and -1 at 48 cross half way, at sqrt(24 * 48) ~ 34 (noise moves it)
    assert c.estimate == pytest.approx(np.sqrt(24 * 48), rel=0.15)
    lo, hi = c.ci95
    assert 24 <= lo <= c.estimate <= hi <= 48 and c.bootstrap.inside > 0.99
    assert "crossover: cutmix_paper stops being worse than baseline at ~" in format_crossover(c)


def test_exact_interpolation_without_noise():
    treated, base = planted([3.0, 1.0, -1.0, -2.0, -2.0], noise=0.0)
    c = crossover(BUDGETS, treated, base, resamples=200)
    assert c.estimate == pytest.approx(np.sqrt(12 * 24)) and c.ci95 == pytest.approx([c.estimate] * 2)


def test_no_crossover_in_range_either_way():
    worse = crossover(BUDGETS, *planted([8.0, 6.0, 4.0, 3.0, 2.0]), resamples=500)
    assert worse.position == "after" and worse.estimate is None and worse.ci95 == (None, None)
    assert format_crossover(worse).startswith("no crossover in range: cutmix_paper is worse than baseline at every")
    better = crossover(BUDGETS, *planted([-2.0, -2.0, -2.0, -2.0, -2.0]), resamples=500)
    assert better.position == "before" and better.bootstrap.before > 0.99
    assert "already no worse than baseline at 6 epochs" in format_crossover(better)


def test_a_noisy_crossover_gets_an_interval_open_on_one_side():
    # +0.1 at the last budget's neighbour with noise 1.0: many resamples never cross in range
    treated, base = planted([6.0, 3.0, 1.0, 0.3, -0.2], noise=1.0, seed=3)
    c = crossover(BUDGETS, treated, base, resamples=2000)
    assert c.bootstrap.after > 0.025 and c.ci95[1] is None
    assert "> 96" in format_crossover(c)


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        crossover([12, 6], [[1.0, 2.0]] * 2, [[1.0, 2.0]] * 2)
