"""Deployment for real: `ray start --head` + `ray job submit` (twice: the second resumes), and the pipeline against
an `mlflow server` backed by a PostgreSQL cluster that the test starts. Everything listens on 127.0.0.1 and is
stopped by PID at the end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.cli import REPO, TINY, run_main, set_args
from tests.helpers.processes import kill_tree
from tests.helpers.tracking_server import free_port, start_mlflow_server, wait_http

PIPELINE = TINY + ["search.num_samples=2", "search.max_concurrent=1", "search.scheduler=none"]
VENV_BIN = Path(sys.executable).parent


def _ray_env() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def ray_head(tmp_path):
    """A one-node Ray cluster started with the real `ray start --head` on 127.0.0.1; stopped by PID."""
    port, dash = free_port(), free_port()
    # Every port Ray would otherwise take at its fixed default (the job agent's 52365 above all): another Ray on
    # this machine (a helper's, an earlier test's) holding one leaves the head without a job agent, and `ray job
    # submit` then answers "No available agent to submit job" for as long as that Ray lives.
    agent_ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "ray-client-server-port")]
    env = _ray_env()
    temp_dir = Path("/tmp") / f"rt{os.getpid()}{port}"  # Ray's socket paths must stay short
    proc = subprocess.run(
        [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", *agent_ports],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pids = _ray_pids(temp_dir)
    address = f"http://127.0.0.1:{dash}"
    try:
        wait_http(address + "/api/version", timeout=90)
        yield address, env
    finally:
        for pid in _ray_pids(temp_dir) | pids:
            kill_tree(pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_pids(temp_dir: Path) -> set[int]:
    """PIDs of every process whose command line names this cluster's temp dir (gcs, raylet, dashboard, agents)."""
    import psutil

    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(temp_dir) in part for part in (p.info["cmdline"] or [])):
                found.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _submit(address: str, env: dict[str, str], out: Path, submission_id: str) -> str:
    runtime_env = {"excludes": [".venv", "runs", ".git", "*.egg-info"],
                   "env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}}
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--submission-id", submission_id,
           "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--no-wait", "--",
           "python", "-m", "pipelines.run", "--output", str(out), "--resume", *set_args(PIPELINE)]
    # The head's job agent can come up seconds after its dashboard on a loaded machine; Ray answers "No available
    # agent to submit job, please try again later" meanwhile: try again, a bounded number of times.
    for _ in range(12):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        if proc.returncode == 0 or "No available agent" not in proc.stderr:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return submission_id


def _wait_job(address: str, submission_id: str, timeout: float = 900) -> tuple[str, str]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(submission_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status), client.get_job_logs(submission_id)
        time.sleep(2)
    raise TimeoutError(f"job {submission_id} did not finish in {timeout}s")


def _mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline_and_a_resubmission_resumes(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "out"
    status, logs = _wait_job(address, _submit(address, env, out, "cutmix-first"))
    assert status.endswith("SUCCEEDED"), logs[-4000:]
    assert "detector mAP@0.5" in logs and "browse: mlflow ui --backend-store-uri sqlite:///" in logs
    # The workers' own output reaches the job's logs (log_to_driver on a joined cluster): a retrain task's epoch
    # lines, with Ray's "(task pid=...)" prefix.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", logs)  # Ray colours the prefix
    assert re.search(r"^\(_call pid=\d+[^)]*\) retrain \S+ seed \d+ \[\d+/\d+\] train/loss", plain, re.M), plain[-4000:]

    frame = pq.read_table(out / "results.parquet").to_pandas()
    assert len(frame) == 2 and (frame["status"] == "completed").all()
    for path in ("best_config.yaml", "retrain/summary.json", "export/backbone.pt", "export/manifest.json",
                 "detect/metrics.json"):
        assert (out / path).is_file(), path
    uri = f"sqlite:///{out / 'mlflow.db'}"
    _, runs = _mlflow_runs(uri, "digits")
    stamp = {p: (out / p).stat().st_mtime_ns for p in ("retrain/cutmix_paper/seed0/checkpoints/last.pt",
                                                      "export/backbone.pt", "detect/metrics.json")}

    # The same job again against the same storage: it resumes (nothing is retrained or logged twice).
    status, logs = _wait_job(address, _submit(address, env, out, "cutmix-second"))
    assert status.endswith("SUCCEEDED"), logs[-4000:]
    again = pq.read_table(out / "results.parquet").to_pandas()
    assert sorted(again["trial_id"]) == sorted(frame["trial_id"])
    _, runs_again = _mlflow_runs(uri, "digits")
    assert sorted(r.info.run_id for r in runs_again) == sorted(r.info.run_id for r in runs)
    trial_runs = [r for r in runs_again if r.data.tags.get("cutmix.stage") == "trial"]
    assert len(trial_runs) == 2
    for path, mtime in stamp.items():
        assert (out / path).stat().st_mtime_ns == mtime, f"{path} was redone"


@pytest.mark.slow
def test_pipeline_tracks_to_mlflow_server_on_postgresql(postgres, tmp_path, capsys):
    import psycopg2

    backend, port = postgres
    server = start_mlflow_server(tmp_path / "mlflow", backend_uri=backend)
    uri = server.uri
    try:
        code, _, err = run_main(capsys, "study", "--output", str(tmp_path / "out"), "--tracking-uri", uri,
                                *set_args(PIPELINE))
        assert code == 0, err
        client, runs = _mlflow_runs(uri, "digits")
        parents = [r for r in runs if r.data.tags.get("cutmix.stage") == "study"]
        trials = [r for r in runs if r.data.tags.get("cutmix.stage") == "trial"]
        assert len(parents) == 1 and len(trials) == 2
        assert all(t.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for t in trials)
        assert all(len(client.get_metric_history(t.info.run_id, "val/top1_err")) == 2 for t in trials)
        # The runs really live in PostgreSQL.
        with psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="mlflow") as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM runs")
                assert cur.fetchone()[0] == 3
    finally:
        server.stop()
