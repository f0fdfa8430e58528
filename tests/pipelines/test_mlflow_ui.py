"""The output directory is the whole record, and the MLflow UI opens a study on its runs (a real headless Chromium).

One tiny pipeline (study -> retrain -> export -> detect through the CLI, as a user runs it) from an empty working
directory: afterwards that directory holds the output directory and nothing else, and `mlflow server` on its SQLite
store renders the experiment's runs table with the four stage runs and the study's columns.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from study.tracking.store import VIEW_KEY, VIEW_TAG
from tests.helpers.cli import REPO, TINY, set_args
from tests.helpers.tracking_server import start_mlflow_server

PIPE = TINY + ["name=uichain", "search.num_samples=2", "search.scheduler=none", "search.max_concurrent=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(working directory, output directory) of a finished tiny pipeline started from an empty directory."""
    import os

    cwd = tmp_path_factory.mktemp("cwd")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    for stage in (["study", *set_args(PIPE)], ["retrain", *set_args(PIPE)], ["export", "--from", "runs/uichain"],
                  ["detect", "--output", "runs/uichain"]):
        extra = ["--output", "runs/uichain"] if stage[0] in ("study", "retrain") else []
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *stage, *extra], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (stage, proc.stderr[-3000:])
    return cwd, cwd / "runs" / "uichain"


@pytest.mark.slow
def test_a_default_run_writes_nothing_outside_its_output_directory(finished):
    cwd, out = finished
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"] and sorted(p.name for p in out.parent.iterdir()) == [
        "uichain"]
    assert not (cwd / "mlruns").exists()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("uichain")
    assert exp.artifact_location == (out / "mlartifacts").resolve().as_uri()
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    # Every run's artifacts (sample grids, curves, configs, the exported backbone) are inside the output directory.
    for run in runs:
        assert run.info.artifact_uri.startswith((out / "mlartifacts").resolve().as_uri()), run.info.artifact_uri
    export = next(r for r in runs if r.data.tags.get("cutmix.stage") == "export")
    assert (out / "mlartifacts" / export.info.run_id / "artifacts" / "backbone" / "backbone.pt").is_file()


@pytest.mark.slow
def test_mlflow_ui_opens_the_experiment_on_its_runs_table(finished, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed (.ci/system-deps.sh installs Debian's chromium)"
    _, out = finished
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("uichain")
    view = exp.tags[VIEW_TAG + VIEW_KEY]
    assert "metrics.`best/val/top1_err`" in view and "params.`best.cutmix.alpha`" in view
    with start_mlflow_server(tmp_path / "ui", f"sqlite:///{out / 'mlflow.db'}") as server:
        url = (f"{server.uri}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
               f"&viewStateShareKey={VIEW_KEY}")
        proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
                               "--window-size=2000,900", "--dump-dom", url],
                              capture_output=True, text=True, timeout=180)
    dom = proc.stdout
    assert proc.returncode == 0 and "<html" in dom, proc.stderr[-2000:]
    # The runs table rendered (not the GenAI overview): the four stage runs by name, the shared view's columns.
    for name in ("study", "retrain", "export", "detect"):
        assert f">{name}<" in dom, name
    assert "best/val/top1_err" in dom and "best.cutmix.alpha" in dom
    assert "Token Usage" not in dom and "No data available for the selected time range" not in dom
