"""The fixed references of every retrain (issue 15): baseline and cutmix_paper whatever the study found, the winner
named by its parameters and flagged when it mixes too rarely to differ from the baseline."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipelines.retrain_stage import study_winner
from study.config.load import load_config
from study.training.references import mixed_fraction, retrain_variants, variant_name, winner_name
from tests.helpers.cli import TINY


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, TINY + ["train.epochs=10"])


def names(variants):
    return [v.name for v in variants]


def test_references_are_there_whatever_the_study_picked(cfg):
    for winner in (None, {}, {"cutmix.prob": 0.0}, {"cutmix.alpha": 1.0, "cutmix.prob": 0.5},
                   {"cutmix.alpha": 0.117, "cutmix.prob": 0.02}, {"cutmix.method": "mixup", "cutmix.alpha": 0.4}):
        got = retrain_variants(cfg, winner, ("none", "cutmix"))
        assert names(got)[:2] == ["baseline", "cutmix_paper"], winner
        paper = got[1].cfg.cutmix
        assert (paper.method, paper.alpha, paper.prob, paper.mode, paper.off_epochs) == ("cutmix", 1.0, 0.5, "batch", 0)
        assert not got[0].cfg.cutmix.mixes


def test_the_winner_is_named_by_its_parameters_and_flagged_when_rare(cfg):
    got = retrain_variants(cfg, {"cutmix.alpha": 0.117, "cutmix.prob": 0.02}, ())
    assert names(got) == ["baseline", "cutmix_paper", "cutmix_a0.12_p0.02"] and winner_name(got) == got[2].name
    assert got[2].label == "cutmix α=0.12 p=0.02 (study winner)"
    assert "in effect the baseline" in got[2].note and mixed_fraction(got[2].cfg) == pytest.approx(0.02)
    often = retrain_variants(cfg, {"cutmix.alpha": 0.5, "cutmix.prob": 0.3, "cutmix.off_epochs": 2}, ())
    assert often[2].name == "cutmix_a0.5_p0.3_off2" and often[2].note == ""
    assert mixed_fraction(often[2].cfg) == pytest.approx(0.3 * 8 / 10)
    # p 0.06 but mixing off for 5 of 10 epochs: 3 % of steps, flagged
    rare = retrain_variants(cfg, {"cutmix.prob": 0.06, "cutmix.off_epochs": 5}, ())
    assert "3.0 % of steps" in rare[2].note


def test_a_winner_equal_to_a_reference_is_that_reference(cfg):
    for winner, ref in (({"cutmix.alpha": 1.0, "cutmix.prob": 0.5}, "cutmix_paper"), ({"cutmix.prob": 0.0}, "baseline"),
                        ({"cutmix.method": "none"}, "baseline")):
        got = retrain_variants(cfg, winner, ("none", "cutmix"))
        assert names(got) == ["baseline", "cutmix_paper"] and winner_name(got) == ref


def test_methods_add_mixup_and_cutout_at_the_paper_settings(cfg):
    got = retrain_variants(cfg, {"cutmix.alpha": 0.3, "cutmix.prob": 0.9}, ("none", "mixup", "cutout", "cutmix"))
    assert names(got) == ["baseline", "cutmix_paper", "cutmix_a0.3_p0.9", "mixup", "cutout"]
    mixup, cutout = got[3].cfg.cutmix, got[4].cfg.cutmix
    assert (mixup.alpha, mixup.prob, cutout.prob, cutout.cutout_size) == (1.0, 1.0, 1.0, 0.5)


def test_non_mixing_winner_params_apply_to_every_variant(cfg):
    got = retrain_variants(cfg, {"model.width": 12, "cutmix.alpha": 0.3, "cutmix.prob": 0.9}, ())
    assert {v.cfg.model.width for v in got} == {12}


def test_study_winner_prefers_the_race_and_falls_back_to_the_best_trial():
    best = {"cutmix.alpha": 0.2, "cutmix.prob": 0.4}
    assert study_winner(None) == ({}, "")
    assert study_winner(SimpleNamespace(best_params=best)) == (best, "")  # a study without a race
    raced = SimpleNamespace(best_params=best, race_verdict="cutmix α=3 p=0.7 beats the rest",
                            winner_params={"cutmix.alpha": 3.0, "cutmix.prob": 0.7})
    assert study_winner(raced) == ({"cutmix.alpha": 3.0, "cutmix.prob": 0.7}, "cutmix α=3 p=0.7 beats the rest")
    tie = SimpleNamespace(best_params=best, race_verdict="no setting distinguishable from baseline",
                          winner_params=None)
    winner, verdict = study_winner(tie)
    assert winner is None and verdict.startswith("no setting distinguishable")
    assert names(retrain_variants(load_config(None, TINY), winner, ("none", "cutmix"))) == ["baseline", "cutmix_paper"]


def test_variant_names_are_safe_keys():
    import re

    cfg = load_config(None, TINY + ["cutmix.method=cutout", "cutmix.cutout_size=0.25", "cutmix.mode=sample"])
    slug, label = variant_name(cfg)
    assert slug == "cutout_s0.25_p0.5_sample" and label == "cutout size=0.25 p=0.5 sample"
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", slug)  # directory names and MLflow metric keys
