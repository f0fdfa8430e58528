"""A study whose driver is SIGKILLed mid-run resumes with --resume: every trial finishes, none is rerun or
duplicated in results.parquet or MLflow (checked on a real tracking server). Retrain and evaluate runs are found
again by their tags when their output directory is gone (study.tracking.lookup; the study's own case, through a
signal, is in test_signals.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.helpers.cli import TINY, cli_env, run_main, set_args
from tests.helpers.processes import descendants, kill_tree

EPOCHS = 8  # long enough that a finished and a running trial are seen together even on a loaded machine
STUDY = TINY + ["name=resume", f"train.epochs={EPOCHS}", "search.num_samples=4", "search.max_concurrent=1",
                "search.scheduler=none", "search.algorithm=tpe", "search.checkpoint_every=1"]


def _args(out, uri, *extra):
    return ["study", "--output", str(out), "--tracking-uri", uri, *set_args(STUDY), *extra]


def _cmd(out, uri, *extra):
    return [sys.executable, "-m", "pipelines.cli", *_args(out, uri, *extra)]


def _trial_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("resume")
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], filter_string="tags.`cutmix.stage` = 'trial'",
                                      max_results=1000)


@pytest.mark.slow
def test_killed_study_resumes_without_rerunning_or_duplicating(mlflow_server, tmp_path, capsys):
    out = tmp_path / "out"
    env = cli_env()
    proc = subprocess.Popen(_cmd(out, mlflow_server), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    seen: set[int] = set()
    try:
        # Kill once at least one trial has finished and the next one is running (it has logged an epoch).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            seen.update(descendants(proc.pid))
            assert proc.poll() is None, f"study ended before it could be killed: {proc.stderr.read()[-2000:]}"
            client, runs = _trial_runs(mlflow_server)
            finished = [r for r in runs if r.info.status == "FINISHED"]
            running = [r for r in runs if r.info.status == "RUNNING" and r.data.metrics.get("epoch", 0) >= 1]
            if finished and running:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the study never reached a finished and a running trial")
    finally:
        seen.update(descendants(proc.pid))
        kill_tree(proc.pid, sorted(seen))  # SIGKILL: the driver and the local Ray it started
    finished_before = {r.data.tags["ray.trial_id"]: r.info.run_id for r in finished}
    started_before = {r.data.tags["ray.trial_id"] for r in runs}
    assert not (out / "results.parquet").exists()

    code, _, err = run_main(capsys, *_args(out, mlflow_server, "--resume"))  # here: no process of its own needed
    assert code == 0, err

    frame = pq.read_table(out / "results.parquet").to_pandas()
    assert len(frame) == 4 and frame["trial_id"].is_unique
    assert (frame["status"] == "completed").all() and (frame["epochs"] == EPOCHS).all()
    client, runs = _trial_runs(mlflow_server)
    by_trial: dict[str, list] = {}
    for r in runs:
        by_trial.setdefault(r.data.tags["ray.trial_id"], []).append(r)
    assert all(len(v) == 1 for v in by_trial.values()), "a trial got a second MLflow run"
    # A trial started after Tune's last snapshot is unknown to the restore: its run is kept, marked interrupted.
    lost = {t for t, (r,) in by_trial.items() if r.info.status == "KILLED"}
    assert all(by_trial[t][0].data.tags["cutmix.trial_status"] == "interrupted" for t in lost)
    assert len(lost) <= 1 and not lost & set(frame["trial_id"]) and not lost & set(finished_before)
    by_trial = {t: v for t, v in by_trial.items() if t not in lost}
    assert sorted(by_trial) == sorted(frame["trial_id"])
    assert started_before - lost <= set(by_trial)
    for trial_id, run_id in finished_before.items():
        assert by_trial[trial_id][0].info.run_id == run_id
        # Not rerun: each reported epoch writes the next checkpoint index (0..EPOCHS-1); a rerun would go past it.
        ckpts = sorted(p.name for p in (out / "tune" / "study" / f"trial_{trial_id}").glob("checkpoint_*"))
        assert ckpts and ckpts[-1] == f"checkpoint_{EPOCHS - 1:06d}", (trial_id, ckpts)
    for trial_id, (run,) in by_trial.items():
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/top1_err")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (trial_id, steps)  # no epoch twice, none missing
    assert set(frame["mlflow_run_id"]) == {v[0].info.run_id for v in by_trial.values()}

    # The resume continued the same stored Optuna study (one study, named after ours): every finished trial is
    # COMPLETE with all its epochs as intermediate values; a trial asked after Tune's last snapshot (restarted by
    # Tune as a new trial) is marked FAIL, not left RUNNING.
    import optuna

    url = f"sqlite:///{out / 'optuna.db'}"
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["resume"]
    trials = optuna.load_study(study_name="resume", storage=url).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and all(t.state == optuna.trial.TrialState.FAIL for t in trials if t not in complete)
    assert len(trials) - len(complete) <= 1
    for t in complete:
        assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1)), t.number
    assert sorted(round(t.params["cutmix.prob"], 9) for t in complete) == sorted(round(p, 9)
                                                                                for p in frame["cutmix.prob"])


def test_rerun_without_resume_refuses_and_keeps_results(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tune").mkdir()
    code, _, err = run_main(capsys, *_args(out, f"sqlite:///{tmp_path / 'm.db'}"))
    assert code == 2 and "already holds results" in err and "Traceback" not in err
    assert (out / "tune").is_dir()


# Evaluate settings for seconds-long runs (tests/pipelines/test_evaluate_stage.py).
QUICK_EVAL = ["evaluate.ood_images=100", "evaluate.ood_bootstrap=50", "evaluate.robustness_images=50",
              "evaluate.cam_curve_interval=0.05", "evaluate.fgsm_eps=[0,0.03137254901960784]"]


@pytest.mark.slow
def test_retrain_and_evaluate_runs_are_found_by_their_tags_when_the_output_directory_is_gone(mlflow_server, tmp_path,
                                                                                              capsys):
    """Retrain and evaluate into one directory, delete it (the tracking server kept: a RayJob retried on a fresh
    cluster with an emptyDir `--output`), then both again with --resume: the same retrain and evaluate runs are
    reopened, with one child per seed and model, each epoch and metric logged once."""
    from mlflow.tracking import MlflowClient

    out, epochs = tmp_path / "out", 2
    common = ["--output", str(out), "--tracking-uri", mlflow_server,
              *set_args(TINY + ["name=by-tags", f"train.epochs={epochs}", "retrain.seeds=1", *QUICK_EVAL])]
    retrain, evaluate = ["retrain", *common], ["evaluate", "--from", str(out), *common]
    client = MlflowClient(tracking_uri=mlflow_server)

    def runs() -> dict[str, list]:
        exp = client.get_experiment_by_name("by-tags")
        found: dict[str, list] = {}
        for r in client.search_runs([exp.experiment_id], max_results=1000):
            found.setdefault(r.data.tags.get("cutmix.stage"), []).append(r)
        return found

    for argv in (retrain, evaluate):
        code, _, err = run_main(capsys, *argv)
        assert code == 0, err
    before = runs()
    assert {k: len(v) for k, v in before.items()} == {"retrain": 1, "retrain-seed": 2, "evaluate": 1,
                                                      "evaluate-model": 2}

    shutil.rmtree(out)  # the summaries and checkpoints with it; only the tracking server remembers
    for argv in (retrain, evaluate):
        code, _, err = run_main(capsys, *argv, "--resume")
        assert code == 0, err
    after = runs()
    assert {k: sorted(r.info.run_id for r in v) for k, v in after.items()} == \
        {k: sorted(r.info.run_id for r in v) for k, v in before.items()}  # the same runs: none opened twice
    assert all(r.info.status == "FINISHED" for v in after.values() for r in v)
    for run in after["retrain-seed"]:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, epochs + 1)), steps  # every epoch, once
    for run in after["evaluate-model"]:
        assert len(client.get_metric_history(run.info.run_id, "top1_err")) == 1
    assert (out / "retrain" / "summary.json").is_file() and (out / "evaluate" / "summary.json").is_file()
