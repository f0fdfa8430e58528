"""study.search.pareto: the non-dominated set on planted fronts, in min and max modes, with ties and NaN rows,
checked against a brute-force definition of dominance."""

from __future__ import annotations

import numpy as np
import pytest

from study.search.pareto import pareto_mask, save_pareto_plot


def _brute_force(values: np.ndarray, modes: list[str]) -> list[bool]:
    """Row i is on the front iff it has no NaN and no NaN-free row j is <= everywhere and < somewhere (minimised)."""
    v = np.asarray(values, dtype=float) * np.array([1.0 if m == "min" else -1.0 for m in modes])
    ok = ~np.isnan(v).any(axis=1)
    front = []
    for i in range(len(v)):
        dominated = any(ok[j] and (v[j] <= v[i]).all() and (v[j] < v[i]).any() for j in range(len(v)) if j != i)
        front.append(bool(ok[i] and not dominated))
    return front


def test_planted_front_in_min_mode():
    # Front: (1, 4), (2, 2), (4, 1). Each other point is strictly behind one of them.
    values = np.array([[1, 4], [3, 3], [2, 2], [5, 5], [4, 1], [2.5, 2.5], [4, 1.5]], dtype=float)
    assert pareto_mask(values, ["min", "min"]).tolist() == [True, False, True, False, True, False, False]


def test_max_mode_mirrors_min_mode():
    values = np.array([[1, 4], [3, 3], [2, 2], [5, 5], [4, 1]], dtype=float)
    assert pareto_mask(values, ["max", "max"]).tolist() == [False, False, False, True, False]
    assert pareto_mask(-values, ["max", "max"]).tolist() == pareto_mask(values, ["min", "min"]).tolist()


def test_mixed_modes_error_down_accuracy_up():
    # (error %, accuracy %): low error and high accuracy are both wanted.
    values = np.array([[10, 60], [12, 70], [9, 50], [12, 65], [11, 60]], dtype=float)
    assert pareto_mask(values, ["min", "max"]).tolist() == [True, True, True, False, False]
    # The same values with the second objective minimised instead: a different front.
    assert pareto_mask(values, ["min", "min"]).tolist() == [False, False, True, False, False]


def test_ties_are_all_on_the_front_and_equal_on_one_axis_still_dominates():
    values = np.array([[1, 2], [1, 2], [1, 3], [2, 2]], dtype=float)
    # Two identical points: neither is strictly better, both stay. (1, 3) and (2, 2) are beaten on one axis only,
    # equal on the other: dominated.
    assert pareto_mask(values, ["min", "min"]).tolist() == [True, True, False, False]


def test_nan_rows_are_never_on_the_front_and_dominate_nothing():
    values = np.array([[0, 0], [np.nan, 5], [3, 3], [np.nan, np.nan], [4, 2]], dtype=float)
    # (0, 0) dominates every finite row; the NaN rows are out.
    assert pareto_mask(values, ["min", "min"]).tolist() == [True, False, False, False, False]
    values[0] = [np.nan, 0]  # the dominator reported nothing: the two finite rows are on the front
    assert pareto_mask(values, ["min", "min"]).tolist() == [False, False, True, False, True]


def test_single_objective_front_is_the_best_value_ties_included():
    values = np.array([[3.0], [1.0], [2.0], [1.0]])
    assert pareto_mask(values, ["min"]).tolist() == [False, True, False, True]
    assert pareto_mask(values, ["max"]).tolist() == [True, False, False, False]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("modes", [["min", "min"], ["max", "min"], ["min", "max", "max"]])
def test_random_sets_agree_with_the_definition(seed, modes):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(30, len(modes))).astype(float)  # small integers: many ties
    values[rng.random(30) < 0.1, 0] = np.nan
    mask = pareto_mask(values, modes)
    assert mask.dtype == bool and mask.shape == (30,)
    assert mask.tolist() == _brute_force(values, modes)
    assert mask.any()  # a finite set always has a non-dominated point


def test_input_is_not_modified():
    values = np.array([[1.0, 2.0], [2.0, 1.0]])
    pareto_mask(values, ["max", "max"])
    assert values.tolist() == [[1.0, 2.0], [2.0, 1.0]]


def test_plot_is_written(tmp_path):
    values = np.array([[1, 4], [3, 3], [2, 2], [4, 1]], dtype=float)
    front = pareto_mask(values, ["min", "min"])
    path = save_pareto_plot(values, front, ["val/top1_err", "val/ece"], tmp_path / "plots" / "pareto.png",
                            labels=["a", "b", "c", "d"])
    assert path == tmp_path / "plots" / "pareto.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
