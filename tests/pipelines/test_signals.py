"""SIGTERM (how Kubernetes stops a pod) and SIGINT (Ctrl-C) stop a command cleanly, on a real local Ray and a real
`mlflow server`: exit 143 / 130 within 30 s, no MLflow run left RUNNING (the stage's and its trials' runs end
KILLED), checkpoints keep their last finished epoch, the Ray the command started is shut down and the output lock
released; `--resume` then finishes with nothing repeated or duplicated.

The study case also deletes the output directory before resuming (Tune's storage and the tracking server kept):
the resumed study finds its parent run in MLflow by its tags instead of `study_run.json`, so there is still one
study run, one run per trial, and every epoch once.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from study.checkpoint import load_checkpoint
from tests.helpers.cli import TINY, cli_env, run_main, set_args
from tests.helpers.processes import descendants, kill_tree

STOP_WITHIN_S = 30.0


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def stop_and_wait(proc: subprocess.Popen, signum: int) -> tuple[int, str, float, list[int]]:
    """Send `signum` to the command (its process only, as the kubelet does to PID 1); (rc, stderr, seconds it took
    to exit, the processes it had started that are still alive 10 s after it exited)."""
    started = [psutil.Process(p) for p in descendants(proc.pid) if psutil.pid_exists(p)]
    t0 = time.monotonic()
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=STOP_WITHIN_S + 30)
        took = time.monotonic() - t0
        _, alive = psutil.wait_procs(started, timeout=10)
        alive = [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    finally:
        kill_tree(proc.pid, [p.pid for p in started])
    return proc.returncode, err, took, alive


def assert_stopped_cleanly(rc: int, err: str, took: float, alive: list[int], signum: int, out: Path) -> None:
    assert rc == 128 + signum, err[-3000:]
    assert took < STOP_WITHIN_S, took
    assert f"error: stopped by {signal.Signals(signum).name}" in err and "--resume" in err
    assert "Traceback" not in err, err[-3000:]
    assert not (out / ".lock").exists()  # released
    assert not alive, f"processes the command started outlived it: {alive}"


def resume(capsys, *args: str) -> None:
    """The same command with --resume, which must finish; in this process (what it finds on disk and in MLflow is
    what is checked, not how a process stops)."""
    code, _, err = run_main(capsys, *args, "--resume")
    assert code == 0, err[-3000:]


def checkpointed_epochs(trial_dir: Path) -> int:
    """How many epochs a Tune trial has checkpointed: its `checkpoint_<index>` directories (one per epoch with
    search.checkpoint_every=1, numbered from 0; Tune keeps the last two)."""
    indices = [int(p.name.rsplit("_", 1)[1]) for p in trial_dir.glob("checkpoint_*") if p.is_dir()]
    return max(indices, default=-1) + 1


def experiment_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


# Both signals mid-study and mid-retrain. What a resume finds does not depend on which signal stopped the command
# (one handler for both, study.cluster.signals), so the resume is checked once per stage, to keep CI time.
@pytest.mark.slow
@pytest.mark.parametrize("signum, then_resume", [(signal.SIGTERM, True), (signal.SIGINT, False)],
                         ids=["SIGTERM-then-resume", "SIGINT"])
def test_a_signal_mid_study_then_resume_without_the_output_directory(mlflow_server, tmp_path, signum, then_resume,
                                                                     capsys):
    # The signal goes in while the second trial has at least `left` epochs to go. Its progress is read from its
    # checkpoints in Tune's storage (the trial writes one per epoch before reporting it), not from MLflow, where
    # the trial callback logs asynchronously and can lag: deciding from MLflow's epoch, one CI run sent the signal
    # after both trials of 8 epochs had finished (both FINISHED, none KILLED).
    epochs, left = 16, 8
    name = f"sig-study-{signum.name}"  # an experiment per case: the tracking server is the session's
    out, storage = tmp_path / "out", tmp_path / "tune-storage"
    args = ["study", "--output", str(out), "--tracking-uri", mlflow_server,
            *set_args(TINY + [f"name={name}", f"train.epochs={epochs}", "search.num_samples=2",
                              "search.max_concurrent=1", "search.scheduler=none", "search.checkpoint_every=1",
                              f"search.storage={storage}"])]
    client = MlflowClient(tracking_uri=mlflow_server)
    proc = start(*args)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # stop once a trial has finished and the next one is training
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            done = sorted(checkpointed_epochs(d) for d in storage.rglob("trial_*") if d.is_dir())
            if len(done) == 2 and done[1] == epochs and 1 <= done[0]:
                assert done[0] <= epochs - left, f"the running trial was at epoch {done[0]} of {epochs} when seen"
                break
            time.sleep(0.1)
        else:
            pytest.fail("the study never had a finished and a running trial")
    except BaseException:
        kill_tree(proc.pid)
        raise
    rc, err, took, alive = stop_and_wait(proc, signum)
    assert_stopped_cleanly(rc, err, took, alive, signum, out)
    before = experiment_runs(client, name)
    assert not [r for r in before if r.info.status == "RUNNING"]
    (parent,) = [r for r in before if r.data.tags.get("cutmix.stage") == "study"]
    assert parent.info.status == "KILLED"
    statuses = {r.data.tags["ray.trial_id"]: r.info.status for r in before
                if r.data.tags.get("cutmix.stage") == "trial"}
    assert "KILLED" in statuses.values() and set(statuses.values()) <= {"FINISHED", "KILLED"}, statuses
    trials_before = set(statuses)
    if not then_resume:
        return

    shutil.rmtree(out)  # study_run.json with it; Tune's storage and the tracking server stay
    resume(capsys, *args)

    frame = pq.read_table(out / "results.parquet").to_pandas()
    assert len(frame) == 2 and frame["trial_id"].is_unique and (frame["status"] == "completed").all()
    after = experiment_runs(client, name)
    parents = [r for r in after if r.data.tags.get("cutmix.stage") == "study"]
    assert [r.info.run_id for r in parents] == [parent.info.run_id]  # one study run, the first one, reopened
    assert parents[0].info.status == "FINISHED"
    trials = [r for r in after if r.data.tags.get("cutmix.stage") == "trial"]
    ids = [r.data.tags["ray.trial_id"] for r in trials]
    assert sorted(ids) == sorted(frame["trial_id"]) and trials_before <= set(ids)  # one run per trial
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/top1_err")]
        assert sorted(steps) == list(range(1, epochs + 1)), steps  # every epoch, once


@pytest.mark.slow
@pytest.mark.parametrize("signum, then_resume", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["SIGINT-then-resume", "SIGTERM"])
def test_a_signal_mid_retrain_then_resume(tmp_path, signum, then_resume, capsys):
    epochs = 15
    out = tmp_path / "out"
    args = ["retrain", "--output", str(out),
            *set_args(TINY + ["name=sig-retrain", f"train.epochs={epochs}",
                              "retrain.seeds=2", "retrain.methods=[cutmix]"])]
    proc = start(*args)
    seed0 = out / "retrain" / "cutmix_paper" / "seed0" / "checkpoints" / "last.pt"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not seed0.is_file():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        assert seed0.is_file(), "seed 0 never checkpointed"
        time.sleep(0.3)  # into the next epoch
    except BaseException:
        kill_tree(proc.pid)
        raise
    rc, err, took, alive = stop_and_wait(proc, signum)
    assert_stopped_cleanly(rc, err, took, alive, signum, out)
    epoch = load_checkpoint(seed0)["epoch"]  # intact: the last finished epoch
    assert 1 <= epoch < epochs
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = experiment_runs(client, "sig-retrain")
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert [r.info.status for r in runs if r.data.tags.get("cutmix.stage") == "retrain"] == ["KILLED"]
    if not then_resume:
        return

    resume(capsys, *args)
    summary = json.loads((out / "retrain" / "summary.json").read_text())
    assert summary["variants"]["cutmix_paper"]["test/top1_err"]["n"] == 2
    runs = experiment_runs(client, "sig-retrain")
    assert [r.info.status for r in runs if r.data.tags.get("cutmix.stage") == "retrain"] == ["FINISHED"]
    seeds = [r for r in runs if r.data.tags.get("cutmix.stage") == "retrain-seed"]
    assert len(seeds) == 4  # baseline and cutmix_paper (the fixed references) x 2 seeds
    for run in seeds:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, epochs + 1)), steps
