"""The pipeline as one tree of MLflow runs, with names, source tags, datasets and system metrics (a real SQLite store).

No Ray here: the tracker's run lifecycle, as the stages use it.
"""

from __future__ import annotations

import getpass
import json
import re
import subprocess

import pytest

from study.console import ENTRY_POINT_ENV
from study.tracking.context import _root_listing_digest, dataset_specs, settings_digest, source_tags
from study.tracking.store import KEY_TAG, VIEW_KEY, VIEW_TAG, Tracker
from tests.helpers.cli import REPO


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out")


def tags_of(tracker, run_id):
    return tracker.client.get_run(run_id).data.tags


def test_stage_runs_nest_under_the_pipeline_run_and_share_its_key(tracker):
    with tracker.pipeline_run("tree") as pipeline:
        with tracker.stage_run("study", "tree") as study:
            pass
        with tracker.stage_run("retrain", "tree") as retrain, retrain.child("cutmix-seed0", {"cutmix.seed": "0"}) as s:
            pass
    key = tracker.key
    assert re.fullmatch("[0-9a-f]{4}", key)
    client = tracker.client
    assert "mlflow.parentRunId" not in tags_of(tracker, pipeline.run_id)
    assert tags_of(tracker, study.run_id)["mlflow.parentRunId"] == pipeline.run_id
    assert tags_of(tracker, retrain.run_id)["mlflow.parentRunId"] == pipeline.run_id
    assert tags_of(tracker, s.run_id)["mlflow.parentRunId"] == retrain.run_id
    names = [client.get_run(r).info.run_name for r in (pipeline.run_id, study.run_id, retrain.run_id, s.run_id)]
    assert names == [f"pipeline-tree-{key}", f"study-tree-{key}", f"retrain-tree-{key}", f"cutmix-seed0-{key}"]
    assert all(client.get_run(r).info.status == "FINISHED" for r in (pipeline.run_id, study.run_id, s.run_id))


def test_a_stage_run_alone_is_a_top_level_run(tracker):
    with tracker.stage_run("export", "alone") as run:
        pass
    tags = tags_of(tracker, run.run_id)
    assert "mlflow.parentRunId" not in tags and tags["cutmix.stage"] == "export"
    assert tracker.client.get_run(run.run_id).info.run_name == f"export-alone-{tracker.key}"


def test_two_pipelines_in_one_experiment_have_distinct_names(tmp_path):
    names = set()
    for i in range(2):
        t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / f"out{i}")
        with t.pipeline_run("same"), t.stage_run("study", "same") as run:
            names.add(t.client.get_run(run.run_id).info.run_name)
    assert len(names) == 2


def test_a_resumed_pipeline_is_found_again_with_its_key(tmp_path):
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out"
    first = Tracker(uri, out)
    with first.pipeline_run("again") as p1, first.stage_run("study", "again") as s1:
        pass
    second = Tracker(uri, out)  # a new process: a new random key until the pipeline run is found
    with second.pipeline_run("again", reuse=True) as p2, second.stage_run("study", "again", reuse=True) as s2:
        pass
    assert (p2.run_id, s2.run_id, second.key) == (p1.run_id, s1.run_id, first.key)
    assert tags_of(second, p2.run_id)[KEY_TAG] == first.key


def test_runs_carry_mlflows_source_tags(tracker, monkeypatch):
    monkeypatch.setenv(ENTRY_POINT_ENV, "cutmix-study study")
    with tracker.stage_run("study", "src") as run, run.child("x", {}) as child:
        pass
    for run_id in (run.run_id, child.run_id):
        tags = tags_of(tracker, run_id)
        assert tags["mlflow.user"] == getpass.getuser() and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.name"] and tags["mlflow.project.entryPoint"] == "cutmix-study study"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout: the commit of the code that ran
        assert tags_of(tracker, run.run_id)["mlflow.source.git.commit"] == head.stdout.strip()
    assert source_tags()["mlflow.project.entryPoint"] == "cutmix-study study"


def test_datasets_are_logged_on_the_stage_run_and_every_child(tracker):
    data = {"name": "digits", "image_size": 8, "root": "", "pad": 1, "split_seed": 0}
    specs = dataset_specs(data, {"train+val": 1797 - 360, "test": 360})
    with tracker.stage_run("retrain", "data", datasets=specs) as stage, stage.child("seed0", {}) as child:
        stage.log_datasets(specs)  # twice: MLflow keeps one input per dataset and context
    for run_id in (stage.run_id, child.run_id):
        inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
        got = {d.dataset.name: ({t.key: t.value for t in d.tags}["mlflow.data.context"],
                                json.loads(d.dataset.profile)["num_images"]) for d in inputs}
        assert got == {"digits-train+val": ("train", 1437), "digits-test": ("test", 360)}
        assert all(json.loads(d.dataset.source)["generator"]["image_size"] == 8 for d in inputs)


def test_the_digest_follows_what_changes_the_images(tmp_path):
    base = {"name": "digits", "image_size": 8, "root": "", "pad": 1, "hflip": True}
    digest = settings_digest(base)[0]
    assert settings_digest({**base, "pad": 4, "hflip": False})[0] == digest  # augmentation: same images
    assert settings_digest({**base, "image_size": 16})[0] != digest
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(b"x")
    folder = {**base, "name": "imagefolder", "root": str(root)}
    before, source = settings_digest(folder)
    assert source["uri"] == str(root.resolve())
    (root / "a" / "2.png").write_bytes(b"y")
    _root_listing_digest.cache_clear()  # walked once per process; a test changes the root on purpose
    assert settings_digest(folder)[0] != before  # a file added to the root
    specs = dataset_specs(base, {"train": 10, "val": 5})
    assert specs[0]["digest"] != specs[1]["digest"] and [s["context"] for s in specs] == ["train", "val"]


def test_system_metrics_when_asked(tracker):
    with tracker.stage_run("study", "sys", system_metrics=True) as run:
        pass
    with tracker.stage_run("retrain", "sys") as quiet_run:
        pass
    metrics = tracker.client.get_run(run.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0 and metrics["system/system_memory_usage_megabytes"] > 0
    assert not any(k.startswith("system/") for k in tracker.client.get_run(quiet_run.run_id).data.metrics)


def test_the_shared_view_keeps_the_tree_sorted_by_start_time(tracker):
    tracker.add_view_columns("view", metrics=["best/val/top1_err"], params=["cutmix.alpha"])
    exp = tracker.client.get_experiment_by_name("view")
    state = json.loads(exp.tags[VIEW_TAG + VIEW_KEY])
    assert state["orderByKey"] == "attributes.start_time" and state["orderByAsc"] is False
    assert state["selectedColumns"] == ["metrics.`best/val/top1_err`", "params.`cutmix.alpha`"]
