"""The race's elimination rule on planted results (issue 15's acceptance tests), the settings it races and its
results.parquet rows. Pure: no Ray, no training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from study.config.load import load_config
from study.search.race import decide, race, race_rows, race_settings
from tests.helpers.cli import TINY


def planted(means: dict[str, float], *, sd: float = 1.0, block: float = 3.0, seed: int = 0, n: int = 12):
    """Per setting, n seeds' values: its true mean + a per-seed effect shared by all settings (the block a paired
    test removes) + independent noise."""
    rng = np.random.default_rng(seed)
    b = rng.normal(0, block, n)
    return {k: list(m + b + rng.normal(0, sd, n)) for k, m in means.items()}


def lookup(table):
    calls = []

    def evaluate(alive, seeds):
        calls.append((list(alive), list(seeds)))
        return {s: [table[s][j] for j in seeds] for s in alive}

    evaluate.calls = calls
    return evaluate


CLEAR = {"winner": 20.0, "b": 24.0, "c": 24.5, "cutmix_paper": 25.0, "baseline": 23.0}


def test_a_clear_winner_is_found_and_the_others_are_eliminated_with_their_reason():
    table = planted(CLEAR)
    ev = lookup(table)
    out = race(list(table), ev, seeds_per_round=2, rounds=3)
    assert out.winner == "winner" and out.survivors == ("winner",)
    assert out.verdict.startswith("winner wins the race")
    assert out.fate["winner"].startswith("winner r")
    for s in ("b", "c", "cutmix_paper", "baseline"):
        assert out.fate[s].startswith("eliminated r") and "worse than winner" in out.fate[s]
    # Rounds add new seeds only to the survivors, the same seed indices for all of them.
    assert ev.calls[0] == (list(table), [0, 1])
    assert all(seeds == [2 * i, 2 * i + 1] for i, (_, seeds) in enumerate(ev.calls))
    assert len(out.values["winner"]) == 2 * len(ev.calls)


def test_a_clear_winner_is_found_in_almost_every_draw():
    found = sum(race(list(t), lookup(t), seeds_per_round=2, rounds=3).winner == "winner"
                for t in (planted(CLEAR, seed=k) for k in range(60)))
    assert found >= 54  # measured 99 % over 100 draws


def test_a_tie_is_called_a_tie():
    table = planted({k: 22.0 for k in ("a", "b", "c", "cutmix_paper", "baseline")})
    out = race(list(table), lookup(table), seeds_per_round=2, rounds=3)
    assert out.winner is None and len(out.survivors) >= 2
    assert out.verdict.startswith("no setting distinguishable from ")
    assert all(out.fate[s].startswith("tie r3") for s in out.survivors)
    assert len(out.rounds) == 3 and out.rounds[-1].seeds == 6


def test_equal_settings_rarely_yield_a_winner():
    # The family-wise level of each round's Holm step is 0.05; over three looks a false winner stays rare.
    winners = sum(race(list(t), lookup(t), seeds_per_round=2, rounds=3).winner is not None
                  for t in (planted({k: 22.0 for k in "abcde"}, seed=k) for k in range(100)))
    assert winners <= 5


def test_pairing_by_seed_resolves_what_the_seed_spread_would_hide():
    # A 1-point difference under a 5-point seed effect: unpaired, the spread would swamp it; paired, it resolves.
    table = planted({"good": 20.0, "bad": 21.0}, sd=0.2, block=5.0, seed=3)
    out = race(list(table), lookup(table), seeds_per_round=2, rounds=3)
    assert out.winner == "good"
    from scipy import stats

    n = len(out.values["good"])
    assert stats.ttest_ind(table["good"][:n], table["bad"][:n]).pvalue > 0.05  # what an unpaired test says


def test_max_mode_prefers_the_larger_value():
    table = planted({"hi": 80.0, "lo": 70.0}, seed=1)
    assert race(list(table), lookup(table), mode="max").winner == "hi"
    assert race(list(table), lookup(table), mode="min").winner == "lo"


def test_the_friedman_gate_holds_eliminations_back_when_it_is_not_significant():
    # Three settings, two rounds of one seed pair: one setting slightly worse but inconsistently so.
    values = {"a": [1.0, 2.0], "b": [2.0, 1.0], "c": [1.5, 1.6]}
    r = decide(values, ["a", "b", "c"], round=1)
    assert r.friedman_p is not None and r.friedman_p >= 0.05 and r.eliminated == ()


def test_differences_without_spread_are_not_resolved():
    # A discrete metric can give the same difference on every seed: no spread, nothing to judge by.
    r = decide({"a": [10.0, 12.0], "b": [10.4, 12.4]}, ["a", "b"], round=1)
    assert r.best == "a" and r.tests["b"]["p"] == 1.0 and r.eliminated == ()


def test_bad_input():
    with pytest.raises(ValueError, match="two or more"):
        race(["a"], lookup({"a": [1.0]}))
    with pytest.raises(ValueError, match="mode"):
        decide({"a": [1.0, 2.0], "b": [1.0, 3.0]}, ["a", "b"], round=1, mode="best")


def frame_of(rows):
    return pd.DataFrame([{"status": "completed", "epochs": 2, "wall_s": 1.0, **r} for r in rows])


def test_race_settings_take_the_top_trials_and_the_references_once():
    cfg = load_config(None, TINY + ["search.race_top_k=2", "search.space.cutmix.alpha={type: loguniform, low: 0.1, "
                                    "high: 4}", "search.space.cutmix.prob={type: uniform, low: 0, high: 1}",
                                    "search.space.model.arch={type: choice, values: [cnn, resnet20]}"])
    frame = frame_of([
        {"trial_id": "t1", "cutmix.alpha": 1.0, "cutmix.prob": 0.5, "model.arch": "resnet20", "val/top1_err": 10.0},
        {"trial_id": "t2", "cutmix.alpha": 0.3, "cutmix.prob": 0.9, "model.arch": "resnet20", "val/top1_err": 12.0},
        {"trial_id": "t3", "cutmix.alpha": 2.0, "cutmix.prob": 0.2, "model.arch": "cnn", "val/top1_err": 9.0,
         "status": "stopped"},  # ASHA stopped it: ranked after the completed ones
        {"trial_id": "t4", "cutmix.alpha": math.nan, "cutmix.prob": 0.0, "model.arch": "cnn", "val/top1_err": 8.0,
         "status": "error"},
    ])
    settings = race_settings(cfg, frame)
    names = [s.name for s in settings]
    # t1 is the paper's recipe at the best trial's architecture: raced once, under the reference's name, and the
    # k = 2 trials besides the references are t2 and the stopped t3 (the errored t4 never races).
    assert names == ["trial_t2", "trial_t3", "cutmix_paper", "baseline"]
    assert settings[2].trial_id == "t1" and settings[1].params["model.arch"] == "cnn"
    base = settings[3]
    assert base.trial_id is None and base.params["model.arch"] == "resnet20" and base.params["cutmix.prob"] == 0.0

    info = {"metric": "val/top1_err", "settings": {
        s.name: {"label": s.label, "trial_id": s.trial_id, "params": s.params, "values": [1.0, 3.0],
                 "fate": "tie r1", "round": 1} for s in settings}}
    out = race_rows(info, frame, cfg)
    assert len(out) == 5 and out["race"].notna().sum() == 4
    assert out.loc[out["trial_id"] == "t1", "race"].item() == "cutmix_paper: tie r1"
    assert out.loc[out["trial_id"] == "t2", "race/val/top1_err"].item() == 2.0
    row = out[out["trial_id"] == "race_baseline"].iloc[0]
    assert row["status"] == "race" and row["race/seeds"] == 2 and row["model.arch"] == "resnet20"
    assert race_rows(None, frame, cfg)["race"].isna().all()
