"""Issue 15: `cutmix_paper` (and the baseline) are retrained and evaluated whatever the study picked, beside the
study's winner named by its parameters and flagged when it mixes too rarely to be anything but the baseline."""

from __future__ import annotations

import pytest

from tests.helpers.cli import TINY


@pytest.mark.slow
def test_cutmix_paper_is_retrained_and_evaluated_whatever_the_study_picked(tmp_path):
    from pipelines import evaluate_stage, retrain_stage
    from pipelines.results import StudyResult
    from study.config.load import load_config
    from study.tracking.store import Tracker

    out = tmp_path / "refs"
    cfg = load_config(None, TINY + ["name=refs", "train.epochs=1", "retrain.seeds=2"])
    tracker = Tracker(f"sqlite:///{out / 'mlflow.db'}", out)
    study = StudyResult(str(out), best_params={"cutmix.alpha": 0.3, "cutmix.prob": 0.02})  # a near-baseline pick
    retrain = retrain_stage.run(cfg, out, tracker, source=study)
    assert list(retrain.variants) == ["baseline", "cutmix_paper", "cutmix_a0.3_p0.02"]
    assert retrain.winner == "cutmix_a0.3_p0.02" and "in effect the baseline" in retrain.notes[retrain.winner]
    assert set(retrain.comparisons) == {"cutmix_paper", "cutmix_a0.3_p0.02"}
    report = retrain_stage.report(retrain)
    assert "cutmix_paper (α=1 p=0.5) - baseline" in report and "cutmix α=0.3 p=0.02 (study winner)" in report
    evaluation = evaluate_stage.run(cfg, out, tracker, source=retrain)
    assert set(evaluation.metrics) == set(retrain.variants)
    assert all(len(rows) == 2 for rows in evaluation.per_seed.values())
    assert "cutmix_paper" in evaluation.comparisons
