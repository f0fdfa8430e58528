"""Faults a study survives, on a real local Ray with a real `mlflow server`:

- a trial's process SIGKILLed mid-epoch: Tune restarts the trial from its last checkpoint (search.max_failures), the
  study finishes, and neither the trial nor its MLflow run is duplicated; its MLflow curve has every epoch once;
- the tracking server stopped for 15 s mid-study and started again on the same store and port: the study does not
  fail and no epoch's metrics are lost (study.tracking.async_logger buffers, MLflow's client and the logger retry).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from study.config.load import load_config
from study.tracking.store import Tracker
from tests.helpers.cli import TINY
from tests.helpers.processes import beside
from tests.helpers.tracking_server import MlflowServer, start_mlflow_server, wait_http

SPACE = "search.space.cutmix.prob={type: uniform, low: 0.0, high: 1.0}"


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=True, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def restart_server(stopped: MlflowServer) -> MlflowServer:
    """`mlflow server` again with the stopped one's command line: the same port, SQLite store and artifacts."""
    log = stopped.log.with_name("server-restarted.log")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as fh:
        proc = subprocess.Popen(stopped.proc.args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    server = MlflowServer(proc, stopped.uri, log)
    try:
        wait_http(server.uri + "/health", timeout=90, proc=proc)
    except (RuntimeError, TimeoutError):
        server.stop(grace=0.0)
        raise
    return server


def trial_runs(client, parent_run_id: str) -> list:
    exp = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=1000)


def results(trial_dir: Path) -> list[dict]:
    """Tune's result.json rows of a trial (a line still being written is skipped)."""
    rows = []
    path = trial_dir / "result.json"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def is_our_trial_process(pid: int) -> bool:
    """A Ray trial actor (`ray::ImplicitFunc`) started by this test's own local Ray (a descendant of this
    process): never another session's process."""
    try:
        proc = psutil.Process(pid)
        ours = any(p.pid == os.getpid() for p in proc.parents())
        return ours and "ImplicitFunc" in " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_killed_trial_restarts_from_its_checkpoint_once_in_tune_and_mlflow(ray_local, mlflow_server, tmp_path,
                                                                            monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.study_stage import run as run_study

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")  # result.json: each report's epoch and pid
    epochs, every = 10, 2  # checkpoints at epochs 2, 4, 6, 8, 10
    cfg = load_config(None, TINY + [
        "name=faults-kill", "model.arch=resnet20", "data.image_size=16", f"train.epochs={epochs}",
        "search.num_samples=2", "search.max_concurrent=1", "search.scheduler=none", f"search.checkpoint_every={every}",
        SPACE,
    ])
    assert cfg.search.max_failures == 2  # the default
    out = tmp_path / "out"
    experiment = out / "tune" / "study"
    def kill_a_trial() -> dict | None:
        for trial_dir in sorted(experiment.glob("trial_*")):
            rows = results(trial_dir)
            # Killed while it trains on, preferably just after an uncheckpointed epoch (3, 5 or 7), so that the
            # restarted trial repeats it. Tune's driver sometimes takes several results at once (seen here: 1-4
            # together), so the last epoch it received may skip those: then at 8.
            e = rows[-1]["epoch"] if rows else 0
            if 3 <= e <= epochs - 2 and (e % every or e == epochs - 2) and is_our_trial_process(rows[-1]["pid"]):
                os.kill(rows[-1]["pid"], signal.SIGKILL)
                return {"trial": trial_dir.name[len("trial_"):], "pid": rows[-1]["pid"]}
        return None

    with beside(kill_a_trial, every=0.02, timeout=float("inf")) as kills:  # until the study ends
        result = run_study(cfg, out, Tracker(mlflow_server, out))
    assert kills, "no trial reached the epoch to be killed at"
    (killed,) = kills

    frame = pq.read_table(out / "results.parquet").to_pandas()
    assert len(frame) == 2 and frame["trial_id"].is_unique and killed["trial"] in set(frame["trial_id"])
    assert set(frame["status"]) == {"completed"} and (frame["epochs"] == epochs).all()

    # Tune's record of the killed trial: epochs 1..k from the killed process, then a new process restored from the
    # last checkpoint Tune had (the last even epoch <= k, not from scratch) runs to the end; epochs it trains again
    # are the same epochs (exact resume).
    rows = results(experiment / f"trial_{killed['trial']}")
    before = [r for r in rows if r["pid"] == killed["pid"]]
    after = [r for r in rows if r["pid"] != killed["pid"]]
    seen = [int(r["epoch"]) for r in before]
    assert seen == list(range(1, len(seen) + 1)) and len(seen) >= 3
    restored = max(e for e in seen if e % every == 0)
    assert [int(r["epoch"]) for r in after] == list(range(restored + 1, epochs + 1))
    assert len({r["pid"] for r in after}) == 1
    again = [(b, a) for b in before for a in after if a["epoch"] == b["epoch"]]
    assert len(again) == len(seen) - restored  # the epochs after the checkpoint, trained again
    for b, a in again:
        for key in ("train/loss", "val/loss", "val/top1_err"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (b["epoch"], key)

    client = MlflowClient(tracking_uri=mlflow_server)
    runs = trial_runs(client, result.parent_run_id)
    assert sorted(r.data.tags["ray.trial_id"] for r in runs) == sorted(frame["trial_id"])  # one run per trial
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["cutmix.trial_status"] == "completed"
        for key in ("val/top1_err", "epoch"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)  # every epoch, once
    (killed_run,) = [r for r in runs if r.data.tags["ray.trial_id"] == killed["trial"]]
    assert killed_run.data.tags["cutmix.trial_restarts"] == "1"
    curve = {m.step: m.value for m in client.get_metric_history(killed_run.info.run_id, "val/top1_err")}
    assert all(curve[int(r["epoch"])] == r["val/top1_err"] for r in before)  # first reports kept, repeats skipped
    assert curve[epochs] == pytest.approx(frame.set_index("trial_id").loc[killed["trial"], "val/top1_err"])


@pytest.mark.slow
def test_a_tracking_server_outage_mid_study_loses_no_epoch(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.study_stage import run as run_study

    epochs, outage_s, trials = 6, 15.0, 4  # the 4 trials outlast the outage by ~20 s
    cfg = load_config(None, TINY + [
        "name=faults-outage", "model.arch=resnet20", f"train.epochs={epochs}", f"search.num_samples={trials}",
        "search.max_concurrent=1", "search.scheduler=none", SPACE,
    ])
    out = tmp_path / "out"
    server = start_mlflow_server(tmp_path / "mlflow")
    servers = [server]
    window: dict = {}

    def outage() -> None:
        client = MlflowClient(tracking_uri=server.uri)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until a trial has logged its first epoch
            exp = client.get_experiment_by_name("faults-outage")
            if exp is not None and client.search_runs([exp.experiment_id], "metrics.epoch >= 1", max_results=1):
                break
            time.sleep(0.5)
        else:
            return
        server.stop(grace=0.0)  # SIGTERM then SIGKILL to the server's whole process group
        window["down"] = time.time()
        time.sleep(outage_s)
        servers.append(restart_server(server))
        window["up"] = time.time()

    chaos = threading.Thread(target=outage, daemon=True)
    chaos.start()
    try:
        result = run_study(cfg, out, Tracker(server.uri, out))
        study_end = time.time()
        chaos.join(120)
    finally:
        for s in servers:
            s.stop()
    assert {"down", "up"} <= set(window), "the outage did not happen"
    assert study_end > window["down"] + outage_s  # the study ran on through the outage; it did not fail

    frame = pq.read_table(out / "results.parquet").to_pandas()
    assert len(frame) == trials and set(frame["status"]) == {"completed"}
    with restart_server(servers[0]) as again:  # read the store back through a server, as a user would
        client = MlflowClient(tracking_uri=again.uri)
        runs = trial_runs(client, result.parent_run_id)
        assert sorted(r.data.tags["ray.trial_id"] for r in runs) == sorted(frame["trial_id"])
        during = 0
        for run in runs:
            assert run.info.status == "FINISHED"
            history = client.get_metric_history(run.info.run_id, "val/top1_err")
            assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # none lost, none twice
            # Logged by the trial callback as the results came in (their receive time), not backfilled after the
            # study from the checkpoints: each point precedes the run's end.
            assert all(m.timestamp <= run.info.end_time for m in history)
            during += sum(window["down"] * 1000 <= m.timestamp <= window["up"] * 1000 for m in history)
    assert during >= 1  # results that arrived while the server was down were buffered, then logged
