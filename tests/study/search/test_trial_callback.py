"""study.search.trial_callback.MlflowTrialCallback against a real MLflow store (SQLite under tmp_path, artifacts
beside it), driven by Tune's hook calls with a small stand-in for Tune's Trial (only the attributes the callback
reads: trial_id, config, last_result, num_failures, str()). What is checked is what MLflow holds afterwards."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.config.load import load_config
from study.config.schema import to_dict
from study.search.trial_callback import MlflowTrialCallback
from study.search.tune import HISTORY_KEY
from study.tracking import store
from tests.helpers.cli import TINY


@dataclass
class Trial:
    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)
    num_failures: int = 0

    def __str__(self) -> str:
        return f"trainable_{self.trial_id}"


def _result(epoch: int, err: float, **extra: Any) -> dict[str, Any]:
    """A Tune result as the trainable reports it: metrics, Tune's own keys, and things that are not metrics."""
    return {"epoch": epoch, "val/top1_err": err, "val/loss": err / 10, "lr": 0.05, "epoch_s": 0.5,
            "training_iteration": epoch, "time_total_s": 3.0, "config": {"cutmix.alpha": 0.5}, "done": False,
            "trial_id": "ignored", "val/nan_metric": float("nan"), **extra}


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return to_dict(load_config(None, TINY))  # train.epochs=2


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one runs MLflow's schema migrations: seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    store.client_for(uri).search_experiments()  # create the schema once
    return uri


@pytest.fixture
def mlflow_store(sqlite_uri, tmp_path, request):
    """(client, uri, experiment id, parent run id): a study's parent run in an experiment of this test's own,
    its artifacts under tmp_path."""
    uri = sqlite_uri
    client = store.client_for(uri)
    experiment_id = store.get_experiment(client, request.node.name, (tmp_path / "mlartifacts").as_uri())
    parent, _ = store.start_run(client, experiment_id, "study", {"cutmix.stage": "study"}, reuse=False)
    return client, uri, experiment_id, parent


def _callback(mlflow_store, base, artifacts=None) -> MlflowTrialCallback:
    _, uri, experiment_id, parent = mlflow_store
    return MlflowTrialCallback(uri, experiment_id, parent, base, artifacts=artifacts)


def _trial_runs(client, experiment_id: str) -> dict[str, Any]:
    runs = client.search_runs([experiment_id], filter_string="tags.`cutmix.stage` = 'trial'")
    return {r.data.tags["ray.trial_id"]: r for r in runs}


def _steps(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_trial_becomes_a_child_run_with_params_curve_artifacts_and_status(mlflow_store, base, tmp_path):
    client, _, experiment_id, parent = mlflow_store

    def artifacts(cfg, d: Path) -> list[Path]:
        path = d / "note.txt"
        path.write_text(f"alpha {cfg.cutmix.alpha}")
        return [path]

    cb = _callback(mlflow_store, base, artifacts)
    trial = Trial("t0001", {"cutmix.alpha": 0.5, "cutmix.prob": 0.25})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(1, [], trial, _result(1, 40.0))
    cb.on_trial_result(2, [], trial, _result(2, 20.0))
    trial.last_result = _result(2, 20.0)
    cb.on_trial_complete(3, [], trial)
    cb.on_experiment_end([trial])

    runs = _trial_runs(client, experiment_id)
    assert list(runs) == ["t0001"]
    run = runs["t0001"]
    assert run.info.status == "FINISHED" and run.info.run_name == "trainable_t0001"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent and tags["cutmix.trial_status"] == "completed"
    assert tags["cutmix.searched"] == "cutmix.alpha,cutmix.prob"
    params = run.data.params
    assert params["cutmix.alpha"] == "0.5" and params["cutmix.prob"] == "0.25"  # the trial's values ...
    assert params["model.arch"] == "cnn" and params["train.epochs"] == "2"  # ... over the study's base config
    assert _steps(client, run.info.run_id, "val/top1_err") == [(1, 40.0), (2, 20.0)]
    assert _steps(client, run.info.run_id, "epoch") == [(1, 1.0), (2, 2.0)]
    # Metrics only: Tune's bookkeeping, the config, flags and NaNs are not logged.
    assert set(run.data.metrics) == {"epoch", "val/top1_err", "val/loss", "lr", "epoch_s"}
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert files == {"config.yaml", "note.txt"}
    cfg = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
    assert cfg["cutmix"]["alpha"] == 0.5 and cfg["cutmix"]["prob"] == 0.25 and cfg["model"]["arch"] == "cnn"
    assert (tmp_path / "mlartifacts").is_dir()  # the experiment's artifacts stay beside the store


def test_grid_params_stopped_and_failed_trials(mlflow_store, base):
    client, _, experiment_id, _ = mlflow_store
    cb = _callback(mlflow_store, base)
    stopped = Trial("t_stop", {"params": {"cutmix.alpha": 2.0}})  # grid trials nest their point under "params"
    failed = Trial("t_fail", {"cutmix.alpha": 1.5})
    for trial in (stopped, failed):
        cb.on_trial_start(0, [], trial)
        cb.on_trial_result(1, [], trial, _result(1, 50.0))
    stopped.last_result = _result(1, 50.0)  # ASHA stopped it after 1 of 2 epochs
    cb.on_trial_complete(2, [], stopped)
    cb.on_trial_error(2, [], failed)
    cb.on_experiment_end([stopped, failed])
    runs = _trial_runs(client, experiment_id)
    assert runs["t_stop"].data.params["cutmix.alpha"] == "2.0"
    assert (runs["t_stop"].info.status, runs["t_stop"].data.tags["cutmix.trial_status"]) == ("FINISHED", "stopped")
    assert (runs["t_fail"].info.status, runs["t_fail"].data.tags["cutmix.trial_status"]) == ("FAILED", "error")


def test_a_retried_trial_keeps_its_run_and_logs_each_epoch_once(mlflow_store, base):
    client, _, experiment_id, _ = mlflow_store
    cb = _callback(mlflow_store, base)
    trial = Trial("t_retry", {"cutmix.alpha": 0.5})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(1, [], trial, _result(1, 40.0))
    # The trial's process died after epoch 1 and its last checkpoint was at epoch 1: Tune recovers it, calls
    # on_trial_start again, and the trial reports epoch 1 once more (from the checkpoint) before going on.
    trial.num_failures = 1
    cb.on_trial_recover(1, [], trial)
    cb.on_trial_start(1, [], trial)
    cb.on_trial_result(2, [], trial, _result(1, 41.0))
    cb.on_trial_result(3, [], trial, _result(2, 30.0))
    cb.on_experiment_end([trial])
    runs = _trial_runs(client, experiment_id)
    assert list(runs) == ["t_retry"]
    run_id = runs["t_retry"].info.run_id
    assert _steps(client, run_id, "val/top1_err") == [(1, 40.0), (2, 30.0)]
    assert runs["t_retry"].data.tags["cutmix.trial_restarts"] == "1"


def test_a_restored_callback_finds_the_run_and_backfills_missing_epochs(mlflow_store, base):
    """Tuner.restore unpickles the callback: no client, no thread, no memory of runs. A trial restored mid-run may
    report before on_trial_start, carrying the epochs since its checkpoint under HISTORY_KEY."""
    client, _, experiment_id, _ = mlflow_store
    cb = _callback(mlflow_store, base)
    trial = Trial("t_restore", {"cutmix.alpha": 0.75})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(1, [], trial, _result(1, 40.0))
    cb.logger.flush()
    state = pickle.dumps(cb)
    cb.on_experiment_end([trial])  # the driver went away

    restored = pickle.loads(state)
    assert restored._logger is None and restored._runs == {} and restored.artifacts is None
    # Epochs 2 and 3 ran after the last logged one; epoch 2 arrives only as history of the epoch-3 result.
    history = [_result(1, 40.0), _result(2, 35.0)]
    restored.on_trial_result(5, [], trial, {**_result(3, 25.0), HISTORY_KEY: history})
    trial.last_result = _result(3, 25.0)
    restored.on_trial_complete(6, [], trial)
    restored.on_experiment_end([trial])

    runs = _trial_runs(client, experiment_id)
    assert list(runs) == ["t_restore"]  # found again by its ray.trial_id tag, not a second run
    run = runs["t_restore"]
    assert _steps(client, run.info.run_id, "val/top1_err") == [(1, 40.0), (2, 35.0), (3, 25.0)]
    assert HISTORY_KEY not in run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["cutmix.trial_status"] == "completed"


def test_an_interrupted_set_up_is_finished_on_the_next_try(mlflow_store, base):
    """A run created before an outage, whose set-up (params, config.yaml, the last tag) did not complete, is found
    by its tag and completed: the `cutmix.searched` tag is written last."""
    client, _, experiment_id, parent = mlflow_store
    tags = {"mlflow.parentRunId": parent, "ray.trial_id": "t_half", "cutmix.stage": "trial"}
    run_id, _ = store.start_run(client, experiment_id, "trainable_t_half", tags, reuse=False)
    cb = _callback(mlflow_store, base)
    trial = Trial("t_half", {"cutmix.alpha": 3.0})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(1, [], trial, _result(1, 45.0))
    cb.on_experiment_end([trial])
    runs = _trial_runs(client, experiment_id)
    assert [r.info.run_id for r in runs.values()] == [run_id]
    run = client.get_run(run_id)
    assert run.data.tags["cutmix.searched"] == "cutmix.alpha" and run.data.params["cutmix.alpha"] == "3.0"
    assert {f.path for f in client.list_artifacts(run_id)} == {"config.yaml"}


def test_a_job_error_surfaces_at_the_end(mlflow_store, base):
    """A trial whose parameters make an invalid config cannot be recorded: the error is raised, not swallowed."""
    cb = _callback(mlflow_store, base)
    cb.on_trial_start(0, [], Trial("t_bad", {"cutmix.alpha": -1.0}))
    with pytest.raises(ValueError, match=r"cutmix.alpha=-1.0 is not allowed"):
        cb.on_experiment_end([])
