"""A node lost mid-run, on a real two-node Ray cluster on 127.0.0.1 (`ray.cluster_utils.Cluster`: a head and a worker
node of 1 CPU each, their processes children of this test and stopped by PID), the pipeline joining it through
RAY_ADDRESS as it joins a KubeRay cluster:

- a study whose two trials run one per node: the worker node is killed mid-epoch; its trial restarts from its last
  checkpoint on the surviving node (search.max_failures), and no trial, MLflow run or epoch is lost or duplicated;
- a retrain whose two seeds run one per node: the task on the killed node is retried by Ray on the surviving one and
  resumes from its `last.pt` (storage shared by both nodes, as the PVC of k8s/ is); with the checkpoint lost with the
  node (node-local storage: the retried task finds no `last.pt`), it trains again from epoch 1, and the summary and
  MLflow still hold each seed and each epoch once (a seed's epochs are logged when it finishes);
- a trial that no node can place, on this joined cluster (it may autoscale): the wait is reported and after
  search.placement_timeout_s the command exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import TINY, cli_env, set_args
from tests.helpers.processes import kill_tree
from tests.pipelines.test_faults import results


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    head = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        yield c
    finally:
        c.shutdown()


def add_worker(cluster):
    return cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")


def raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def on_node(pid: int, raylet: int) -> bool:
    """Whether process `pid` is a worker of the node whose raylet is `raylet` (a descendant of it)."""
    try:
        return any(p.pid == raylet for p in psutil.Process(pid).parents())
    except psutil.NoSuchProcess:
        return False


def _kill_and_wait(pid: int, timeout: float = 30) -> None:
    try:
        proc = psutil.Process(pid)
        proc.kill()
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        pass


def cli(cluster, *args: str) -> subprocess.Popen:
    env = cli_env(RAY_ADDRESS=cluster.address, TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="0",
                  # The driver resolves 127.0.0.1 as the nodes do (else Ray swaps in the machine's address).
                  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def inject_and_finish(proc: subprocess.Popen, fault, what: str):
    """Call `fault()` until it returns what it did (not None) while the command runs, then let the command finish
    (exit 0 expected); returns what `fault` returned."""
    done = None
    try:
        deadline = time.monotonic() + 300
        while done is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            done = fault()
            time.sleep(0.05)
        assert done is not None, what
        rc, err = finish(proc)
    finally:
        kill_tree(proc.pid)
    assert rc == 0, err[-3000:]
    return done


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        kill_tree(proc.pid)
    return proc.returncode, err


@pytest.mark.slow
def test_a_node_lost_mid_study_loses_and_duplicates_nothing(cluster, tmp_path):
    epochs = 15  # the node is lost at epoch 2 or so; Tune's driver reads results a little behind the trials
    out, storage = tmp_path / "out", tmp_path / "tune"
    worker = add_worker(cluster)
    raylet = raylet_pid(worker)
    proc = cli(cluster, "study", "--output", str(out), *set_args(TINY + [
        "name=node-loss", f"train.epochs={epochs}", "search.num_samples=2", "search.max_concurrent=2",
        "search.scheduler=none", "search.checkpoint_every=1", f"search.storage={storage}"]))

    def lose_the_worker_node() -> dict | None:
        rows = {d.name[len("trial_"):]: results(d) for d in sorted((storage / "study").glob("trial_*"))}
        if len(rows) == 2 and all(rows.values()):  # both trials training, one on each node
            for trial, seen in rows.items():
                if on_node(seen[-1]["pid"], raylet) and seen[-1]["epoch"] >= 2:
                    cluster.remove_node(worker, allow_graceful=False)  # mid-epoch: just after a report
                    return {"trial": trial, "pid": seen[-1]["pid"], "epoch": seen[-1]["epoch"]}
        return None

    killed = inject_and_finish(proc, lose_the_worker_node, "no trial reached epoch 2 on the worker node")

    frame = pq.read_table(out / "results.parquet").to_pandas()
    assert len(frame) == 2 and frame["trial_id"].is_unique and (frame["status"] == "completed").all()
    assert (frame["epochs"] == epochs).all()
    rows = results(storage / "study" / f"trial_{killed['trial']}")
    before = [r for r in rows if r["pid"] == killed["pid"]]
    after = [r for r in rows if r["pid"] != killed["pid"]]
    assert max(r["epoch"] for r in before) < epochs, "the trial had finished before its node was lost"
    # From its checkpoint, not from epoch 1 (the trial may report an epoch or two more before its node goes).
    assert after and 1 < after[0]["epoch"] <= epochs
    assert not any(on_node(r["pid"], raylet) for r in after)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("node-loss")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert [r.data.tags.get("cutmix.stage") for r in runs].count("study") == 1
    trials = [r for r in runs if r.data.tags.get("cutmix.stage") == "trial"]
    assert sorted(r.data.tags["ray.trial_id"] for r in trials) == sorted(frame["trial_id"])  # one run per trial
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/top1_err")]
        assert sorted(steps) == list(range(1, epochs + 1)), steps  # every epoch, once
    (moved,) = [r for r in trials if r.data.tags["ray.trial_id"] == killed["trial"]]
    assert moved.data.tags["cutmix.trial_restarts"] == "1"


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["shared", "node-local"])
def test_a_node_lost_mid_retrain_retries_its_task(cluster, tmp_path, storage):
    epochs = 15
    out = tmp_path / "out"
    worker = add_worker(cluster)
    raylet = raylet_pid(worker)
    proc = cli(cluster, "retrain", "--output", str(out), *set_args(TINY + [
        f"name=node-loss-{storage}", f"train.epochs={epochs}", "retrain.seeds=2", "retrain.methods=[cutmix]"]))
    seeds = [out / "retrain" / "cutmix_paper" / f"seed{k}" for k in range(2)]

    def lose_the_worker_node() -> Path | None:
        for seed in seeds:
            try:
                pid = json.loads((seed / "task.json").read_text())["pid"]
            except (OSError, ValueError):
                continue
            if on_node(pid, raylet) and (seed / "checkpoints" / "last.pt").is_file():
                if storage == "node-local":  # the only copy of the checkpoint was on the lost node's disk
                    # A lost machine takes its disk and processes with it at one instant. Here the task's worker
                    # is frozen first (it cannot write one more checkpoint) and its checkpoints deleted *before*
                    # the node goes: deleted after, the retry on the head can read them in between (seen in CI:
                    # resumed_from 1 on the node-local run).
                    psutil.Process(pid).suspend()
                    shutil.rmtree(seed / "checkpoints")
                cluster.remove_node(worker, allow_graceful=False)
                _kill_and_wait(pid)
                return seed
        return None

    lost = inject_and_finish(proc, lose_the_worker_node, "no seed checkpointed on the worker node")

    summary = json.loads((out / "retrain" / "summary.json").read_text())
    assert summary["variants"]["cutmix_paper"]["test/top1_err"]["n"] == 2
    task = json.loads((lost / "task.json").read_text())
    assert task["attempt"] == 2
    assert (task["resumed_from"] >= 1) if storage == "shared" else (task["resumed_from"] == 0)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_run(summary["retrain_run_id"]).info.experiment_id], max_results=100)
    assert [r.data.tags.get("cutmix.stage") for r in runs].count("retrain") == 1
    seed_runs = [r for r in runs if r.data.tags.get("cutmix.stage") == "retrain-seed"]
    assert len(seed_runs) == 4  # baseline and cutmix_paper (the fixed references) x 2 seeds
    for run in seed_runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, epochs + 1)), steps


@pytest.mark.slow
def test_a_trial_no_node_can_place_is_reported_then_refused_on_a_joined_cluster(cluster, tmp_path):
    proc = cli(cluster, "study", "--output", str(tmp_path / "out"), *set_args(TINY + [
        "name=unplaceable", "search.num_samples=1", "search.resources_per_trial.cpu=8",
        "search.placement_timeout_s=3"]))
    rc, err = finish(proc, timeout=300)
    assert rc == 2, err[-3000:]
    assert "waiting for resources" in err and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: a trial needs 8 CPUs (search.resources_per_trial.cpu=8); the cluster has ")
    assert "did not grow within search.placement_timeout_s=3" in line


@pytest.mark.slow
def test_a_retrain_task_no_node_can_place_is_refused_with_the_placement_line_on_a_joined_cluster(cluster, tmp_path):
    """The same for a Ray task: the driver waits in ray.wait, which turns what the placement watch raises into a bare
    KeyboardInterrupt (ray/_raylet.pyx check_status); the CLI still reports the placement error, not a SIGINT."""
    proc = cli(cluster, "retrain", "--output", str(tmp_path / "out"), *set_args(TINY + [
        "name=unplaceable-task", "retrain.resources.cpu=8", "search.placement_timeout_s=3"]))
    rc, err = finish(proc, timeout=300)
    assert rc == 2, err[-3000:]
    assert "waiting for resources" in err and "Traceback" not in err and "stopped by" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "retrain.resources.cpu=8" in line and "did not grow within search.placement_timeout_s=3" in line, line
