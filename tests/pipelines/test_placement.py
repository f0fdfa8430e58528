"""Training work as Ray tasks (study.cluster.tasks): retrain seeds run side by side, and a seed whose worker process is
killed is retried by Ray and resumed from its last checkpoint, the summary still counting every seed."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import TINY, run_main, set_args
from tests.helpers.processes import beside


@pytest.mark.slow
def test_retrain_seeds_run_concurrently_as_ray_tasks(tmp_path, capsys):
    code, _, err = run_main(capsys, "retrain", "--output", str(tmp_path / "out"), *set_args(
        TINY + ["name=conc", "train.epochs=6", "retrain.seeds=2", "retrain.methods=[cutmix]"]))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "retrain" / "summary.json").read_text())
    tasks = [row["task"] for row in summary["variants"]["cutmix_paper"]["seeds"]]
    assert len(tasks) == 2 and tasks[0]["pid"] != tasks[1]["pid"]
    # Two intervals that overlap: each started before the other ended.
    assert tasks[0]["started"] < tasks[1]["ended"] and tasks[1]["started"] < tasks[0]["ended"], tasks


@pytest.mark.slow
def test_a_killed_retrain_task_is_retried_and_resumed(tmp_path, capsys):
    out = tmp_path / "out"
    # ~0.8 s an epoch here (more under CI load): seed 0 is killed ~1 s after its first checkpoint, epoch 2 or 3
    # of 10, well before its end; the retry then trains the rest
    epochs = 10
    overrides = TINY + ["name=kill", "data.image_size=16", "model.width=16", f"train.epochs={epochs}",
                        "retrain.seeds=2", "retrain.methods=[cutmix]"]
    seed0 = out / "retrain" / "cutmix_paper" / "seed0"

    def kill_seed0() -> int | None:
        info = seed0 / "task.json"
        if not (info.is_file() and (seed0 / "checkpoints" / "last.pt").is_file()):
            return None
        time.sleep(1.0)  # a few more epochs, then kill the task's worker mid-run
        pid = json.loads(info.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        return pid

    with beside(kill_seed0, every=0.2) as kills:
        code, _, err = run_main(capsys, "retrain", "--output", str(out), *set_args(overrides))
    assert kills, "seed 0 never started"
    killed = kills[0]
    assert code == 0, err
    summary = json.loads((out / "retrain" / "summary.json").read_text())
    rows = summary["variants"]["cutmix_paper"]["seeds"]
    assert summary["variants"]["cutmix_paper"]["test/top1_err"]["n"] == 2 and [r["seed"] for r in rows] == [0, 1]
    retried = json.loads((seed0 / "task.json").read_text())
    assert retried["attempt"] == 2 and retried["pid"] != killed and rows[0]["task"]["pid"] == retried["pid"]
    assert 1 <= retried["resumed_from"] < epochs  # the retry continued from the killed attempt's last checkpoint
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    seeds = client.search_runs([client.get_run(summary["retrain_run_id"]).info.experiment_id],
                               filter_string=f"tags.`mlflow.parentRunId` = '{summary['retrain_run_id']}'")
    assert len(seeds) == 4  # baseline and cutmix_paper, 2 seeds each: the retry is the same seed, not a fifth run
    for run in seeds:  # every epoch logged exactly once, the killed seed's too
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, epochs + 1)), (run.data.tags, steps)


def test_work_the_local_ray_can_never_place_is_refused_before_it_starts(capsys, tmp_path):
    """The command's own local Ray cannot grow: a trial or a task bigger than it is exit 2 and one line, before any
    trial or task starts and before the study's MLflow run opens (study.cluster.capacity). In-process: the CLI's
    main, as `cutmix-study` calls it (evaluate, detect and budget tasks: in their stages' tests)."""
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "study", "--output", str(out), *set_args(TINY + [
        "name=too-big", "search.num_samples=1", "search.resources_per_trial.cpu=64"]))
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert line.startswith("error: a trial needs 64 CPUs (search.resources_per_trial.cpu=64); the local Ray has ")
    assert line.endswith("(lower search.resources_per_trial)")
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("too-big")
    assert exp is None or not client.search_runs([exp.experiment_id])  # no study run was opened
    assert not (out / "tune").exists()

    code, _, err = run_main(capsys, "retrain", "--output", str(tmp_path / "retrain"), *set_args(TINY + [
        "name=too-big", "retrain.resources.cpu=64"]))
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert line.startswith("error: a retrain task needs 64 CPUs (retrain.resources.cpu=64); the local Ray has ")
    assert not list((tmp_path / "retrain").glob("retrain/*/seed*"))  # no task started
