"""The study stage with a real local Ray and real MLflow (a tracking server on 127.0.0.1, or SQLite)."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.results import StudyResult
from pipelines.study_stage import run as run_study
from study.config.load import load_config, replace
from study.decision import study_pick
from study.models import build_model
from study.tracking.store import Tracker
from tests.helpers.cli import REPO, TINY


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def digits8():
    from study.data.registry import load_data

    return load_data(load_config(None, TINY).data)


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def child_runs(c, parent_id):
    exp = c.get_run(parent_id).info.experiment_id
    return c.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000)


def test_study_records_every_trial_in_mlflow_server_and_parquet(ray_local, digits8, mlflow_server, tmp_path):
    cfg = load_config(None, TINY + [
        "name=study-server", "search.num_samples=4", "search.max_concurrent=2", "search.scheduler=none",
        "search.space.cutmix.alpha={type: loguniform, low: 0.2, high: 3.0}",
        "search.space.cutmix.prob={type: uniform, low: 0.0, high: 1.0}",
        "search.space.model.arch={type: choice, values: [cnn, resnet20]}",
        "search.space.train.lr={type: loguniform, low: 0.01, high: 0.1}",
    ])
    result = run_study(cfg, tmp_path / "out", Tracker(mlflow_server, tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    frame = table.to_pandas()
    assert len(frame) == 4 and frame["trial_id"].is_unique
    for col in ("trial_id", "status", "cutmix.alpha", "cutmix.prob", "model.arch", "train.lr", "val/top1_err",
                "best/val/top1_err", "val/loss", "epochs", "wall_s", "mlflow_run_id"):
        assert col in frame.columns, col
    assert set(frame["status"]) == {"completed"} and (frame["epochs"] == 2).all()

    # The first two trials are the paper's defaults and the baseline (points_to_evaluate).
    rows = frame.to_dict("records")
    n_params = {arch: sum(p.numel() for p in build_model(replace(cfg, {"model.arch": arch}).model,
                                                         digits8.num_classes, digits8.in_channels).parameters())
                for arch in ("cnn", "resnet20")}
    assert n_params["cnn"] != n_params["resnet20"]
    assert any(r["cutmix.prob"] == 0.5 and r["cutmix.alpha"] == 1.0 for r in rows)
    baseline = [r for r in rows if r["cutmix.prob"] == 0.0]
    assert baseline and all(math.isnan(r["cutmix.alpha"]) for r in baseline)  # alpha did not apply: not sampled

    c = client(mlflow_server)
    parent = c.get_run(result.parent_run_id)
    assert parent.data.tags["cutmix.stage"] == "study" and parent.info.status == "FINISHED"
    exp = c.get_experiment(parent.info.experiment_id)
    assert exp.name == "study-server"
    parent_files = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"results.parquet", "best_config.yaml", "config.yaml", "plots"} <= parent_files
    assert any(a.path.endswith(".png") for a in c.list_artifacts(parent.info.run_id, "plots"))

    children = child_runs(c, result.parent_run_id)
    assert len(children) == 4 and {r.info.run_id for r in children} == set(frame["mlflow_run_id"])
    by_id = {r.info.run_id: r for r in children}
    for row in rows:
        run = by_id[row["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["ray.trial_id"] == row["trial_id"]
        assert run.data.params["model.arch"] == row["model.arch"]
        assert float(run.data.params["cutmix.prob"]) == pytest.approx(row["cutmix.prob"])
        history = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "val/top1_err")}
        assert sorted(history) == [1, 2]
        # MLflow's per-epoch curve is the one the parquet summarises: its last epoch and its best epoch.
        assert history[2] == pytest.approx(row["val/top1_err"])
        assert min(history.values()) == pytest.approx(row["best/val/top1_err"])
        # Every searched value reached its component inside the trial (read back from the mixer/optimizer).
        m = run.data.metrics
        assert m["used/cutmix.prob"] == pytest.approx(row["cutmix.prob"])
        assert m["used/train.lr"] == pytest.approx(row["train.lr"])
        if row["cutmix.prob"] > 0:
            assert m["used/cutmix.alpha"] == pytest.approx(row["cutmix.alpha"])
        files = {a.path for a in c.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "samples.png"} <= files
        # The searched architecture reached the model: the trial's parameter count is that of the arch it drew
        # (checked per trial, so it holds whichever architectures the sampler happened to pick).
        assert m["used/model.params"] == n_params[row["model.arch"]], row["model.arch"]

    best = yaml.safe_load((tmp_path / "out" / "best_config.yaml").read_text())
    # Ranked by the final mean of the last search.smooth_epochs epochs, not by the minimum over epochs.
    assert frame["val/top1_err_smooth"].tolist() == pytest.approx(
        [sum(h[-3:]) / len(h[-3:]) for h in ([m.value for m in sorted(c.get_metric_history(r, "val/top1_err"),
                                                                      key=lambda m: m.step)]
                                             for r in frame["mlflow_run_id"])])
    best_row = frame.loc[frame["val/top1_err_smooth"].idxmin()]
    assert result.best_value == pytest.approx(best_row["val/top1_err_smooth"])
    assert best["model"]["arch"] == best_row["model.arch"]
    assert load_config(tmp_path / "out" / "best_config.yaml").train.lr == pytest.approx(best_row["train.lr"])


def test_grid_covers_every_effective_combination_once(ray_local, digits8, tmp_path):
    cfg = load_config(None, TINY + [
        "name=grid", "train.epochs=1", "search.algorithm=grid", "search.scheduler=none", "search.max_concurrent=2",
        "search.space.cutmix.alpha={type: choice, values: [0.5, 2.0]}",
        "search.space.cutmix.prob={type: choice, values: [0.0, 1.0]}",
        "search.space.model.arch={type: choice, values: [cnn]}",
    ])
    run_study(cfg, tmp_path / "out", Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out"))
    frame = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    combos = sorted((r["cutmix.prob"], -1.0 if math.isnan(r["cutmix.alpha"]) else r["cutmix.alpha"])
                    for r in frame.to_dict("records"))
    # p=0 makes alpha irrelevant: one baseline, not one per alpha.
    assert combos == [(0.0, -1.0), (1.0, 0.5), (1.0, 2.0)]


@pytest.mark.parametrize("algorithm", ["tpe", "qmc", "random"])
def test_each_search_algorithm_runs_its_trials_within_bounds(ray_local, digits8, tmp_path, algorithm):
    cfg = load_config(None, TINY + [
        f"name={algorithm}", "train.epochs=1", f"search.algorithm={algorithm}", "search.num_samples=4",
        "search.scheduler=none", "search.max_concurrent=2", "search.evaluate_defaults=false",
        "search.space.cutmix.alpha={type: loguniform, low: 0.1, high: 4.0}",
        "search.space.cutmix.prob={type: uniform, low: 0.1, high: 1.0}",
    ])
    run_study(cfg, tmp_path / "out", Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out"))
    frame = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    assert len(frame) == 4 and frame["trial_id"].is_unique
    assert frame["cutmix.alpha"].between(0.1, 4.0).all() and frame["cutmix.prob"].between(0.1, 1.0).all()
    assert frame["cutmix.alpha"].nunique() == 4  # sampled, not repeated defaults


def test_asha_stops_weak_trials_early(ray_local, digits8, tmp_path):
    cfg = load_config(None, TINY + [
        "name=asha", "train.epochs=4", "search.num_samples=6", "search.max_concurrent=2", "search.scheduler=asha",
        "search.grace_period=1", "search.reduction_factor=2", "search.algorithm=random",
        "search.space.train.lr={type: loguniform, low: 0.0001, high: 0.5}",
    ])
    result = run_study(cfg, tmp_path / "out", Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out"))
    frame = result.frame
    assert len(frame) == 6 and (frame["epochs"] <= 4).all()
    assert (frame["status"] == "stopped").any() and (frame["epochs"] < 4).any()
    assert set(frame.loc[frame["epochs"] < 4, "status"]) == {"stopped"}

    # What Optuna's storage holds: every trial, a stopped one PRUNED (Ray's OptunaSearch tells it COMPLETE with
    # its rung value), each with the smoothed metric of every epoch it ran as intermediate values.
    import optuna

    trials = optuna.load_study(study_name="asha", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}").trials
    assert len(trials) == 6 and result.optuna_study == "asha"
    for row in frame.to_dict("records"):
        t = next(t for t in trials if t.params["train.lr"] == pytest.approx(row["train.lr"])
                 and t.params["cutmix.prob"] == pytest.approx(row["cutmix.prob"]))
        want = "COMPLETE" if row["status"] == "completed" else "PRUNED"
        assert t.state.name == want, (row, t)
        assert sorted(t.intermediate_values) == list(range(1, row["epochs"] + 1))
        assert t.intermediate_values[row["epochs"]] == pytest.approx(row["val/top1_err_smooth"])
    assert {t.state.name for t in trials} == {"COMPLETE", "PRUNED"}
    # ASHA judged at epochs 1 and 2; the study measured how those rungs rank the finished trials.
    assert [r["epoch"] for r in result.fidelity["rungs"]] == [1, 2] or result.fidelity["reason"]
    assert result.reproducible is False and "ASHA" in result.reproducible_reason


def test_a_concurrent_tpe_study_is_reproducible_given_its_seed(ray_local, digits8, tmp_path):
    """Two runs of the same two-at-a-time TPE study (past its startup trials, so its suggestions depend on the
    results it has seen) choose the same parameters in the same order (search.reproducible: trial n sees exactly
    trials 0 .. n-3). Trials of uneven length make the finishing order vary."""
    cfg = load_config(None, TINY + [
        "name=repro", "train.epochs=2", "search.algorithm=tpe", "search.num_samples=6", "search.max_concurrent=2",
        "search.scheduler=none", "search.evaluate_defaults=true", "search.reproducible=true",
        "search.space.cutmix.alpha={type: loguniform, low: 0.1, high: 4.0}",
        "search.space.cutmix.prob={type: uniform, low: 0.0, high: 1.0}",
        "search.space.model.arch={type: choice, values: [cnn, resnet20]}",  # resnet20 trains several times slower
    ])
    params = []
    for run in ("a", "b"):
        out = tmp_path / run
        result = run_study(cfg, out, Tracker(f"sqlite:///{tmp_path / f'{run}.db'}", out))
        frame = pq.read_table(out / "results.parquet").to_pandas()
        assert len(frame) == 6 and result.reproducible is True
        params.append(frame[["cutmix.alpha", "cutmix.prob", "model.arch"]].fillna(-1.0).to_numpy().tolist())
    assert params[0] == params[1]
    assert len({tuple(p) for p in params[0]}) == 6  # six different settings, not one repeated


SHAPES = ["data.name=shapes", "data.image_size=16", "data.synthetic_sizes=[256,128,128]", "data.hflip=false",
          "model.arch=cnn", "model.width=8", "train.epochs=2", "train.num_threads=1"]


def test_two_objectives_run_a_multi_objective_study_with_its_pareto_front(ray_local, tmp_path):
    """search.metric as a list: Optuna optimises both, every trial reports the localization metric per epoch
    (computed by study.evaluation on val), and results.parquet marks exactly the non-dominated trials."""
    import numpy as np

    cfg = load_config(None, SHAPES + [
        "search.metric=[val/top1_err, val/maxboxacc_v2]", "search.mode=auto", "search.algorithm=random",
        "search.num_samples=4", "search.scheduler=none", "search.evaluate_defaults=false", "search.race_top_k=0",
        "search.space={cutmix.alpha: {type: loguniform, low: 0.1, high: 4.0}, "
        "cutmix.prob: {type: uniform, low: 0.0, high: 1.0}}"])
    assert cfg.search.modes == ("min", "max")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_study(cfg, tmp_path / "out", Tracker(uri, tmp_path / "out"))
    frame = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    assert len(frame) == 4 and frame["val/maxboxacc_v2"].between(0, 100).all()
    v = frame[["val/top1_err", "val/maxboxacc_v2"]].to_numpy(float)
    for i in range(len(v)):  # the definition, one trial at a time: nobody at least as good on both, better on one
        dominated = any((v[j, 0] <= v[i, 0] and v[j, 1] >= v[i, 1]) and (v[j, 0] < v[i, 0] or v[j, 1] > v[i, 1])
                        for j in range(len(v)) if j != i)
        assert bool(frame["pareto"].iloc[i]) == (not dominated), (i, v)
    assert frame["pareto"].any() and (tmp_path / "out" / "plots" / "pareto.png").is_file()
    c = client(uri)
    for run_id in frame["mlflow_run_id"]:
        history = c.get_metric_history(run_id, "val/maxboxacc_v2")
        assert sorted(m.step for m in history) == [1, 2]
    assert result.metric == "val/top1_err" and np.isfinite(result.best_value)


def test_a_localization_metric_on_data_without_boxes_is_refused_before_any_trial(tmp_path, capsys):
    from tests.helpers.cli import assert_one_line_error, run_main, set_args

    code, _, err = run_main(capsys, "study", "--output", str(tmp_path / "out"),
                            *set_args(TINY + ["search.metric=val/maxboxacc_v2"]))
    assert_one_line_error(code, err, "val/maxboxacc_v2", "boxes")
    assert not (tmp_path / "out" / "results.parquet").exists()
    code, _, err = run_main(capsys, "study", "--output", str(tmp_path / "out"),
                            *set_args(TINY + ["search.metric=val/no_such_metric"]))
    assert_one_line_error(code, err, "val/no_such_metric", "val/maxboxacc_v2")


def race_children(uri, parent_id):
    return [r for r in child_runs(client(uri), parent_id) if r.data.tags.get("cutmix.stage") == "race"]


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
    # best_config.yaml: the decision rule's pick (study.decision): the winner, or after a tie the best-evidence
    # survivor, never an eliminated setting.
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert result.pick == study_pick(race, result.best_params, mode=cfg.search.primary_mode).to_dict()
    assert "eliminated" not in race["settings"][result.pick["name"]]["fate"]
    if result.winner_params is not None:
        assert result.pick["params"] == result.winner_params
    chosen = race["settings"][result.pick["name"]]["params"]
    assert best["model"]["arch"] == chosen["model.arch"] and best["cutmix"]["prob"] == chosen["cutmix.prob"]

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


def test_the_optuna_study_can_live_in_any_rdb_such_as_postgresql(ray_local, digits8, postgres, tmp_path,
                                                                  monkeypatch):
    """search.optuna_storage: a real PostgreSQL (initdb + pg_ctl on 127.0.0.1) holds the study, nothing is written to
    <out>/optuna.db, and a second study of the same name there is refused unless --overwrite (or --resume). The
    second and third studies find the storage in $OPTUNA_STORAGE (Optuna's CLI convention; the k8s manifests pass
    their PostgreSQL that way) with search.optuna_storage unset, in the database that the manifests' initdb script
    (k8s/base/postgres-initdb.sql) creates beside MLflow's."""
    import optuna
    import psycopg2

    from pipelines.common import OutputError

    mlflow_db, _ = postgres
    conn = psycopg2.connect(mlflow_db.replace("postgresql+psycopg2", "postgresql"))
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction (psql's default, as in initdb)
        conn.cursor().execute((REPO / "k8s" / "base" / "postgres-initdb.sql").read_text())
    finally:
        conn.close()
    url = mlflow_db.rsplit("/", 1)[0] + "/optuna"
    cfg = load_config(None, TINY + ["name=pg", "train.epochs=1", "search.num_samples=2", "search.scheduler=none",
                                    "search.max_concurrent=1", f"search.optuna_storage={url}"])
    result = run_study(cfg, tmp_path / "a", Tracker(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a"))
    trials = optuna.load_study(study_name="pg", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"] and trials[0].intermediate_values
    assert not (tmp_path / "a" / "optuna.db").exists()
    assert result.optuna_storage == url  # no password in this URL, nothing to redact
    cfg = replace(cfg, {"search.optuna_storage": ""})
    monkeypatch.setenv("OPTUNA_STORAGE", url)
    with pytest.raises(OutputError, match="already holds a study named pg"):
        run_study(cfg, tmp_path / "b", Tracker(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "b"))
    again = run_study(cfg, tmp_path / "c", Tracker(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "c"), overwrite=True)
    assert len(optuna.load_study(study_name="pg", storage=url).trials) == 2  # replaced, not appended
    assert again.optuna_storage == url and not (tmp_path / "c" / "optuna.db").exists()
