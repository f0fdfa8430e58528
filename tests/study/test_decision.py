"""The decision rule (study.decision) on planted evidence: the pick after a win, a tie with and without the
baseline, retrain's check, and the exported seed chosen without the test split."""

from __future__ import annotations

import pytest

from study.decision import Choice, Pick, median_seed, retrain_choice, study_pick

PAPER = {"cutmix.method": "cutmix", "cutmix.alpha": 1.0, "cutmix.prob": 0.5}
BASE = {"cutmix.method": "none", "cutmix.prob": 0.0}
TRIAL = {"cutmix.alpha": 0.5, "cutmix.prob": 0.07}


def planted_race(survivors, winner=None, values=None):
    """A race record as study.search.race.run_race writes it: trial_3, cutmix_paper, baseline."""
    values = values or {"trial_3": [30.0, 31.0], "cutmix_paper": [50.0, 52.0], "baseline": [31.0, 30.5]}
    params = {"trial_3": TRIAL, "cutmix_paper": PAPER, "baseline": BASE}
    settings = {n: {"label": n, "trial_id": "3" if n == "trial_3" else None, "params": params[n], "values": v,
                    "fate": ("winner r1" if n == winner else "tie r2" if n in survivors else
                             "eliminated r1: worse than trial_3 by 20.5 (Holm p=0.01, n=2)"), "round": 2}
                for n, v in values.items()}
    return {"verdict": "planted", "winner": None if winner is None else
            {"name": winner, "label": winner, "params": params[winner]},
            "survivors": list(survivors), "settings": settings, "metric": "val/top1_err"}


def test_a_race_winner_is_the_pick():
    pick = study_pick(planted_race(["trial_3"], winner="trial_3"), {})
    assert (pick.name, pick.params, pick.tie) == ("trial_3", TRIAL, False) and "won the race" in pick.reason


def test_after_a_tie_with_the_baseline_the_baseline_is_the_pick_never_the_eliminated_paper_recipe():
    # The issue-26 run: baseline ties a p = 0.07 setting (which has the better mean), cutmix_paper is eliminated.
    pick = study_pick(planted_race(["trial_3", "baseline"]), {"cutmix.alpha": 9.0})
    assert pick.name == "baseline" and pick.params == BASE and pick.tie
    assert "eliminated: cutmix_paper" in pick.reason and "prefers the baseline" in pick.reason


def test_after_a_tie_without_the_baseline_the_best_mean_survivor_is_the_pick():
    race = planted_race(["trial_3", "cutmix_paper"], values={"trial_3": [30.0, 31.0], "cutmix_paper": [29.0, 31.0],
                                                             "baseline": [50.0, 52.0]})
    assert study_pick(race, {}).name == "cutmix_paper"
    assert study_pick(race, {}, mode="max").name == "trial_3"  # the same rule for a metric to maximise


def test_without_a_race_the_best_trial_is_the_pick():
    pick = study_pick(None, TRIAL)
    assert pick.name == "best_trial" and pick.params == TRIAL
    assert Pick.from_dict(pick.to_dict()) == pick


def test_retrain_keeps_the_pick_unless_it_is_resolvably_worse():
    tied = {"baseline": [11.0, 11.5, 10.8], "cutmix_paper": [11.2, 11.9, 10.6], "trial_3": [10.9, 11.7, 11.0]}
    c = retrain_choice("trial_3", tied)
    assert c == Choice("trial_3", c.reason, False, {}) and not c.overridden


def test_a_pick_that_retrain_measures_resolvably_worse_is_overruled_by_the_baseline():
    errs = {"baseline": [11.0, 11.2, 10.9], "cutmix_paper": [20.1, 20.6, 20.3], "cutmix_a0.5_p0.07": [11.1, 11.0, 11.3]}
    c = retrain_choice("cutmix_paper", errs)
    assert c.overridden and c.variant == "baseline"  # baseline preferred among the candidates nothing beat
    assert set(c.dominated) == {"cutmix_paper"} and "resolvably worse than baseline" in c.dominated["cutmix_paper"]
    assert Choice.from_dict(c.to_dict()) == c


def test_retrain_never_falls_back_to_a_setting_the_race_eliminated_unless_nothing_else_is_left():
    errs = {"baseline": [11.0, 11.2, 10.9], "cutmix_paper": [10.0, 10.2, 10.1], "pick": [20.1, 20.6, 20.3]}
    c = retrain_choice("pick", errs, eliminated=["baseline"])
    assert c.variant == "cutmix_paper" and not c.conflict
    both = retrain_choice("pick", errs, eliminated=["baseline", "cutmix_paper"])
    assert both.variant == "cutmix_paper" and "race eliminated" in both.conflict  # stated, not hidden
    with pytest.raises(ValueError):
        retrain_choice("missing", errs)


def test_the_exported_seed_is_the_median_by_train_error_and_the_test_split_cannot_choose():
    train = [4.0, 9.0, 6.0]  # median: seed 2
    test = [20.0, 12.0, 18.0]  # the lowest test error is seed 1's
    assert median_seed(train) == 2 != min(range(3), key=test.__getitem__)
    assert median_seed([5.0, 3.0]) == 1  # even count: the lower middle one
    assert median_seed([5.0, 5.0, 1.0, 9.0]) == 0  # ties by seed index
    with pytest.raises(ValueError):
        median_seed([])
