"""A tiny pipeline as a user runs it (`cutmix-study run` from an empty working directory), and what MLflow makes of it.

Afterwards the working directory holds the output directory and nothing else; the experiment is one tree of runs
(pipeline -> stages -> trials / seeds / models) with readable unique names, source tags and datasets; the exported
classifier loads as `models:/<name>@champion` and predicts the test images; the run's stdout holds our summaries and
none of Tune's banners; and `mlflow server` on the SQLite store renders the tree in a real headless Chromium, the
trials under their study.
"""

from __future__ import annotations

import getpass
import os
import re

import pytest
from mlflow.tracking import MlflowClient

from study.tracking.store import VIEW_KEY, VIEW_TAG
from tests.helpers.chromium import chromium_path, drive
from tests.helpers.pipeline import CONFIG as PIPE
from tests.helpers.pipeline import NAME
from tests.helpers.tracking_server import start_mlflow_server
from tests.pipelines.test_cli_output import TUNE_NOISE

STAGES = ("study", "retrain", "evaluate", "export", "detect")


@pytest.fixture(scope="module")
def finished(shared_pipeline):
    """(working directory, output directory, stdout, the git commit it ran at or None) of the session's finished
    tiny pipeline, started from an empty directory (tests/helpers/pipeline.py)."""
    p = shared_pipeline
    assert p.returncode == 0, p.stderr[-3000:]
    return p.cwd, p.out, p.stdout, p.commit


@pytest.fixture(scope="module")
def runs(finished):
    _, out, _, _ = finished
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    return client, exp, client.search_runs([exp.experiment_id], max_results=1000)


def by_stage(runs, stage: str) -> list:
    return [r for r in runs if r.data.tags.get("cutmix.stage") == stage]


@pytest.mark.slow
def test_a_default_run_writes_nothing_outside_its_output_directory(finished, runs):
    cwd, out, _, _ = finished
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"] and sorted(p.name for p in out.parent.iterdir()) == [NAME]
    assert not (cwd / "mlruns").exists()
    client, exp, all_runs = runs
    assert exp.artifact_location == (out / "mlartifacts").resolve().as_uri()
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # Every run's artifacts (sample grids, curves, configs, the exported backbone) are inside the output directory.
    for run in all_runs:
        assert run.info.artifact_uri.startswith((out / "mlartifacts").resolve().as_uri()), run.info.artifact_uri
    export = by_stage(all_runs, "export")[0]
    assert (out / "mlartifacts" / export.info.run_id / "artifacts" / "backbone" / "backbone.pt").is_file()


@pytest.mark.slow
def test_the_pipeline_is_one_tree_of_uniquely_named_runs(runs):
    _, _, all_runs = runs
    parent = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in all_runs}
    (pipeline,) = by_stage(all_runs, "pipeline")
    assert parent[pipeline.info.run_id] is None
    key = pipeline.data.tags["cutmix.run_key"]
    assert re.fullmatch("[0-9a-f]{4}", key) and pipeline.info.run_name == f"pipeline-{NAME}-{key}"
    stage_runs = {}
    for stage in STAGES:
        (run,) = by_stage(all_runs, stage)
        assert parent[run.info.run_id] == pipeline.info.run_id, stage
        assert run.info.run_name == f"{stage}-{NAME}-{key}", run.info.run_name
        stage_runs[stage] = run.info.run_id
    children = {"trial": ("study", 2), "retrain-seed": ("retrain", 4), "evaluate-model": ("evaluate", 4)}
    for stage, (under, n) in children.items():
        kids = by_stage(all_runs, stage)
        assert len(kids) == n and all(parent[r.info.run_id] == stage_runs[under] for r in kids), stage
    assert all(r.info.run_name.endswith(f"-{key}") for r in by_stage(all_runs, "retrain-seed"))
    names = [r.info.run_name for r in all_runs]
    assert len(set(names)) == len(names), names
    assert len(all_runs) == 1 + len(STAGES) + sum(n for _, n in children.values())


@pytest.mark.slow
def test_every_run_carries_source_tags(finished, runs):
    commit = finished[3]
    _, _, all_runs = runs
    for run in all_runs:
        tags = run.data.tags
        assert tags["mlflow.user"] == getpass.getuser(), run.info.run_name
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"].endswith("cli.py")
        assert tags["mlflow.project.entryPoint"] == "cutmix-study run"
        if commit:  # a git checkout (a source tarball has no commit to record)
            assert tags["mlflow.source.git.commit"] == commit


@pytest.mark.slow
def test_trial_seed_and_model_runs_log_their_datasets(finished, runs):
    from study.config import load_config
    from study.data import load_data

    data = load_data(load_config(None, PIPE).data)
    _, _, all_runs = runs

    def inputs(run) -> dict[str, tuple[str, int]]:
        import json

        return {d.dataset.name: ({t.key: t.value for t in d.tags}["mlflow.data.context"],
                                 json.loads(d.dataset.profile)["num_images"]) for d in run.inputs.dataset_inputs}

    want_trial = {"digits-train": ("train", len(data.train)), "digits-val": ("val", len(data.val))}
    for run in by_stage(all_runs, "trial"):
        assert inputs(run) == want_trial, run.info.run_name
        assert len({d.dataset.digest for d in run.inputs.dataset_inputs}) == 2
    want_seed = {"digits-train+val": ("train", len(data.train) + len(data.val)),
                 "digits-test": ("test", len(data.test))}
    for run in by_stage(all_runs, "retrain-seed"):
        assert inputs(run) == want_seed, run.info.run_name
    for run in by_stage(all_runs, "evaluate-model"):
        assert inputs(run) == {"digits-test": ("test", len(data.test))}, run.info.run_name


@pytest.mark.slow
def test_system_metrics_are_recorded_when_asked(runs):
    _, _, all_runs = runs
    for run in by_stage(all_runs, "pipeline") + by_stage(all_runs, "study"):
        assert run.data.metrics["system/cpu_utilization_percentage"] >= 0
        assert run.data.metrics["system/system_memory_usage_megabytes"] > 0


@pytest.mark.slow
def test_the_champion_classifier_loads_and_predicts_the_test_images(finished, runs):
    import mlflow
    import torch

    from study.config import load_config
    from study.data import load_data
    from study.models import build_model

    _, out, _, _ = finished
    client, _, _ = runs
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        model = mlflow.pytorch.load_model(f"models:/{NAME}@champion")
        backbone = mlflow.pytorch.load_model(f"models:/{NAME}-backbone@champion")
    finally:
        mlflow.set_tracking_uri(None)
    data = load_data(load_config(None, PIPE).data)
    images = data.test.images.float() / 255.0
    with torch.no_grad():
        logits = model(images)
        features = backbone(images[:4])
    # The same network as the retrained checkpoint the export took, normalisation included.
    from pipelines.results import ExportResult

    export = ExportResult.from_dir(out)
    ckpt = torch.load(export.manifest["source"], map_location="cpu", weights_only=True)
    ref = build_model(load_config(None, PIPE).model, ckpt["num_classes"], ckpt["in_channels"])
    ref.load_state_dict(ckpt["model"])
    mean = torch.tensor(ckpt["normalisation"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(ckpt["normalisation"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        want = ref.eval()((images - mean) / std)
    assert torch.allclose(logits, want, atol=1e-4)
    accuracy = float((logits.argmax(1) == data.test.labels).float().mean())
    assert accuracy > 0.5, accuracy  # trained: 10 classes, chance is 0.1
    assert features.shape[:2] == (4, export.manifest["channels"][-1])
    version = client.get_model_version_by_alias(NAME, "champion")
    assert version.run_id == export.manifest["mlflow_run_id"] and version.tags["arch"] == "cnn"


@pytest.mark.slow
def test_stdout_has_our_summaries_and_none_of_tunes_banners(finished):
    _, _, stdout, _ = finished
    for noise in TUNE_NOISE:
        assert noise not in stdout, noise
    assert "best val/top1_err" in stdout and "detector mAP@0.5" in stdout


EXPAND = """(() => {
  const buttons = [...document.querySelectorAll('button[data-component-id$="runnamecellrenderer.tsx_46"]')];
  const fresh = buttons.filter(b => !b.dataset.cutmixClicked);
  fresh.forEach(b => { b.dataset.cutmixClicked = '1'; b.click(); });
  return fresh.length; })()"""
# Each row of the runs table: its position, the run id it links to, and its depth in the tree (the Run Name cell
# indents its expander box by 24 px per level).
ROWS = """[...document.querySelectorAll('.ag-row')].map(row => {
  const cell = row.querySelector('[col-id="attributes.`Run Name`"]');
  const link = cell && cell.querySelector('a[href*="/runs/"]');
  if (!link) return null;
  const box = cell.querySelector('div[style*="width"]');
  return {index: +row.getAttribute('row-index'), run: link.getAttribute('href').split('/runs/')[1],
          name: link.textContent, indent: box ? parseInt(box.style.width) : 0}; }).filter(Boolean)"""


@pytest.mark.slow
def test_mlflow_ui_renders_the_tree_with_the_trials_under_their_study(finished, runs, tmp_path):
    assert chromium_path(), "headless Chromium is needed (.ci/system-deps.sh installs Debian's chromium)"
    _, out, _, _ = finished
    client, exp, all_runs = runs
    view = exp.tags[VIEW_TAG + VIEW_KEY]
    assert '"orderByKey": "attributes.start_time"' in view and "params.`best.cutmix.alpha`" in view
    shot = tmp_path / "tree.png"

    async def expand_all(page):
        import asyncio

        assert await page.wait_for("document.querySelectorAll('a[href*=\"/runs/\"]').length > 0", 120)
        for _ in range(5):  # pipeline, then its stages, then their children
            if not await page.js(EXPAND):
                break
            await asyncio.sleep(2)
        await page.screenshot(shot)
        return await page.js(ROWS)

    with start_mlflow_server(tmp_path / "ui", f"sqlite:///{out / 'mlflow.db'}") as server:
        url = (f"{server.uri}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
               f"&viewStateShareKey={VIEW_KEY}")
        rows = sorted(drive(url, tmp_path / "profile", expand_all, size=(1700, 1300)), key=lambda r: r["index"])
    if os.environ.get("CUTMIX_SCREENSHOTS"):  # keep the picture for a person (it is described in the notes)
        import shutil

        shutil.copy(shot, os.environ["CUTMIX_SCREENSHOTS"])
    position = {r["run"]: i for i, r in enumerate(rows)}
    assert len(rows) == len(all_runs), [r["name"] for r in rows]
    for run in all_runs:
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent is None:
            continue
        i, p = position[run.info.run_id], position[parent]
        # Rendered below its parent, one level deeper, with only deeper rows (its siblings' subtrees) between.
        assert i > p and rows[i]["indent"] == rows[p]["indent"] + 24, (run.info.run_name, rows[i], rows[p])
        assert all(r["indent"] > rows[p]["indent"] for r in rows[p + 1:i]), run.info.run_name
    study = by_stage(all_runs, "study")[0]
    assert sum(r["run"] in {t.info.run_id for t in by_stage(all_runs, "trial")} for r in rows) == 2
    assert rows[position[study.info.run_id]]["name"] == study.info.run_name
