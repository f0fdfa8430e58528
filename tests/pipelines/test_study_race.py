"""A small real study with its race, end to end (real local Ray, real MLflow SQLite store): the race's rows in
results.parquet, its runs as MLflow children of the study run, its verdict in study/summary.json, its plot, and
`--resume` reading finished race runs back instead of training them again."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipelines.results import StudyResult
from pipelines.study_stage import run as run_study
from study.config.load import load_config
from study.tracking.store import Tracker
from tests.helpers.cli import TINY


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


def race_children(uri, parent_id):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_run(parent_id).info.experiment_id
    return c.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and "
                                              "tags.`cutmix.stage` = 'race'", max_results=1000)


@pytest.mark.slow
def test_a_study_races_its_top_settings_and_resumes_the_race(ray_local, tmp_path):
    cfg = load_config(None, TINY + [
        "name=study-race", "search.num_samples=3", "search.max_concurrent=2", "search.scheduler=none",
        "search.race_top_k=2", "search.race_seeds=2", "search.race_rounds=2",
        "search.space.cutmix.alpha={type: loguniform, low: 0.2, high: 3.0}",
        "search.space.cutmix.prob={type: uniform, low: 0.0, high: 1.0}",
        "search.space.model.arch={type: choice, values: [cnn, resnet20]}",
        "search.space.model.width={type: choice, values: [4, 8], when: {model.arch: cnn}}",
    ])
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_study(cfg, out, Tracker(uri, out))

    race = result.race
    assert result.race_verdict == race["verdict"] and race["rule"].startswith("F-race")
    names = list(race["settings"])
    # top-2 trials beside the references; the default points (the paper's recipe, p=0) coincide with them when the
    # best trial has their architecture
    assert {"baseline", "cutmix_paper"} <= set(names) and 3 <= len(names) <= 4
    if race["winner"] is None:
        assert result.race_verdict.startswith("no setting distinguishable from ") and result.winner_params is None
    else:
        assert result.winner_params == race["winner"]["params"]
    runs = sum(len(st["values"]) for st in race["settings"].values())
    assert runs >= 2 * len(names)  # round 1 ran every setting with 2 seeds
    # Per-architecture parameters: width only where the trial's architecture is the cnn.
    frame = pd.read_parquet(out / "results.parquet")
    trials = frame[frame["status"] != "race"]
    assert len(trials) == 3 and (trials["model.width"].notna() == (trials["model.arch"] == "cnn")).all()
    raced = frame[frame["race"].notna()]
    assert len(raced) == len(names)
    assert all(any(w in v for w in ("winner", "eliminated r", "tie r")) for v in raced["race"])
    refs = frame[frame["status"] == "race"]
    assert set(refs["trial_id"]) <= {"race_baseline", "race_cutmix_paper"}
    assert (raced["race/seeds"] >= 2).all()
    # The race's runs: MLflow children of the study run, one per (setting, seed), on val, never on test.
    children = race_children(uri, result.parent_run_id)
    assert len(children) == runs
    assert {r.data.tags["cutmix.variant"] for r in children} == set(names)
    for r in children:
        assert "val/top1_err" in r.data.metrics and "test/top1_err" not in r.data.metrics
    assert (out / "plots" / "race.png").stat().st_size > 0
    summary = json.loads(StudyResult.path(out).read_text())
    assert summary["race_verdict"] == result.race_verdict

    # A race cut short: one run's directory lost, the summary not written yet. --resume trains only that run.
    lost = out / "race" / "baseline" / "seed1"
    shutil.rmtree(lost)
    StudyResult.path(out).unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "race").glob("*/seed*/metrics.json")}
    again = run_study(cfg, out, Tracker(uri, out), resume=True)
    assert again.parent_run_id == result.parent_run_id
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished runs read back, not retrained
    assert (lost / "metrics.json").is_file()
    assert len(race_children(uri, result.parent_run_id)) == runs  # the same children, found again
    assert set(again.race["settings"]) == set(names)
