"""retrain and export from a finished study, by directory and by MLflow run id; the whole `run` chain."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import scipy.stats
import torch
from mlflow.tracking import MlflowClient

from tests.helpers.cli import TINY, run_main, set_args
from tests.helpers.pipeline import NAME

STUDY = TINY + ["name=chain", "search.num_samples=2", "search.scheduler=none", "search.max_concurrent=1"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("chain") / "study"
    assert main(["study", "--output", str(out), *set_args(STUDY)]) == 0
    return out


def uri_of(study_dir):
    return f"sqlite:///{study_dir / 'mlflow.db'}"


@pytest.mark.slow
def test_retrain_reports_mean_and_std_over_seeds_with_the_references(study_dir, capsys):
    code, stdout, err = run_main(capsys, "retrain", "--from", str(study_dir), "--set", "retrain.seeds=3")
    assert code == 0, err
    assert "± " in stdout and "over 3 seeds" in stdout
    assert "cutmix_paper (α=1 p=0.5) - baseline: " in stdout
    assert "359 test images" in stdout and "Welch's t" in stdout
    summary = json.loads((study_dir / "retrain" / "summary.json").read_text())
    study = json.loads((study_dir / "study" / "summary.json").read_text())
    # The references are there whatever the study picked; the winner is its own row unless it is one of them.
    assert list(summary["variants"])[:2] == ["baseline", "cutmix_paper"] and summary["winner"] in summary["variants"]
    picked = study["best_params"]
    assert (summary["winner"] in ("baseline", "cutmix_paper")) == (picked.get("cutmix.prob") == 0 or (
        picked.get("cutmix.prob") == 0.5 and picked.get("cutmix.alpha") == 1.0))
    for variant in summary["variants"]:
        stats = summary["variants"][variant]["test/top1_err"]
        assert stats["n"] == 3 and len(stats["values"]) == 3
        assert all(0 <= v <= 100 for v in stats["values"])
        assert stats["mean"] == pytest.approx(statistics.fmean(stats["values"]))
        assert stats["std"] == pytest.approx(statistics.stdev(stats["values"]))  # sample std (ddof=1), as reported
        # Each value is the final test error its seed's run wrote to its own metrics.json.
        seeds = summary["variants"][variant]["seeds"]
        runs = [json.loads((Path(r["run_dir"]) / "metrics.json").read_text()) for r in seeds]
        assert stats["values"] == [m["final"]["test/top1_err"] for m in runs]
        assert all(0 <= m["final"]["train/top1_err"] <= 100 for m in runs)  # the clean train error beside it
        half = scipy.stats.t.ppf(0.975, 2) * stats["std"] / 3 ** 0.5
        assert stats["ci95"] == pytest.approx([stats["mean"] - half, stats["mean"] + half])
    assert summary["num_test"] == 359
    comp = summary["comparisons"]["cutmix_paper"]["test/top1_err"]
    means = {v: summary["variants"][v]["test/top1_err"]["mean"] for v in ("cutmix_paper", "baseline")}
    assert comp["diff"] == pytest.approx(means["cutmix_paper"] - means["baseline"])
    welch = scipy.stats.ttest_ind(summary["variants"]["cutmix_paper"]["test/top1_err"]["values"],
                                  summary["variants"]["baseline"]["test/top1_err"]["values"], equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert comp["ci95"] == pytest.approx([ci.low, ci.high])
    assert comp["verdict"] == ("not resolved" if ci.low <= 0 <= ci.high else "better" if comp["diff"] < 0 else "worse")
    assert [r["seed"] for r in summary["variants"]["cutmix_paper"]["seeds"]] == [0, 1, 2]
    paper = torch.load(Path(summary["variants"]["cutmix_paper"]["seeds"][0]["run_dir"]) / "checkpoints" / "last.pt",
                       weights_only=True)["config"]["cutmix"]
    assert (paper["method"], paper["alpha"], paper["prob"]) == ("cutmix", 1.0, 0.5)
    exported = torch.load(summary["best_checkpoint"], weights_only=True)["config"]["cutmix"]
    if summary["winner"] not in ("baseline", "cutmix_paper"):
        assert exported["prob"] == pytest.approx(picked["cutmix.prob"])
    client = MlflowClient(tracking_uri=uri_of(study_dir))
    run = client.get_run(summary["retrain_run_id"])
    study_run = json.loads((study_dir / "study_run.json").read_text())["run_id"]
    assert run.data.tags["cutmix.study_run_id"] == study_run and run.info.status == "FINISHED"
    assert "cutmix_paper/test/top1_err_mean" in run.data.metrics and "baseline/test/top1_err_std" in run.data.metrics
    seeds = client.search_runs([run.info.experiment_id],
                               filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(seeds) == 3 * len(summary["variants"])
    assert all(len(client.get_metric_history(s.info.run_id, "test/top1_err")) == 2 for s in seeds)


@pytest.mark.slow
def test_retrain_and_export_from_mlflow_run_ids(study_dir, tmp_path, capsys):
    study_run = json.loads((study_dir / "study_run.json").read_text())["run_id"]
    out = tmp_path / "from-run"
    code, _, err = run_main(capsys, "retrain", "--from", study_run, "--tracking-uri", uri_of(study_dir),
                            "--output", str(out), "--set", "retrain.seeds=2")
    assert code == 0, err
    summary = json.loads((out / "retrain" / "summary.json").read_text())
    assert summary["study_run_id"] == study_run and summary["variants"]["cutmix_paper"]["test/top1_err"]["n"] == 2

    code, _, err = run_main(capsys, "export", "--from", summary["retrain_run_id"], "--tracking-uri",
                            uri_of(study_dir), "--output", str(tmp_path / "exported"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "exported" / "export" / "manifest.json").read_text())
    assert manifest["source_run_id"] == summary["retrain_run_id"] and manifest["arch"] == "cnn"
    client = MlflowClient(tracking_uri=uri_of(study_dir))
    export_run = client.get_run(manifest["mlflow_run_id"])
    assert export_run.data.tags["cutmix.stage"] == "export"
    versions = client.search_model_versions("name = 'chain-backbone'")
    assert any(v.run_id == manifest["mlflow_run_id"] and v.tags["arch"] == "cnn" for v in versions)
    assert any(a.path == "backbone" for a in client.list_artifacts(export_run.info.run_id))

    # Export from a directory works the same way; a second export into the same place needs --overwrite.
    code, _, err = run_main(capsys, "export", "--from", str(out))
    assert code == 0, err
    assert (out / "export" / "backbone.safetensors").is_file()
    code, _, err = run_main(capsys, "export", "--from", str(out))
    assert code == 2 and "already holds results" in err


@pytest.mark.slow
def test_run_chains_every_stage(shared_pipeline):
    """The whole chain (the session's shared `run`, tests/helpers/pipeline.py); while it ran, a second
    `run --resume` on its directory was refused (one writer per output directory, study.cluster.lock) and the first
    finished unharmed."""
    p, out = shared_pipeline, shared_pipeline.out
    assert p.second.lock_seen, "the first run took no lock"
    assert p.second.returncode == 2, p.second.stderr[-3000:]
    (line,) = [x for x in p.second.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: {out} is in use by PID {p.pid} on ") and " since " in line, line
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (out / ".lock").exists()
    for needle in ("== study", "== retrain", "== export", "== detect", "backbone: ", "detector mAP@0.5",
                   "browse: mlflow ui --backend-store-uri sqlite:///"):
        assert needle in p.stdout, needle
    for path in ("results.parquet", "best_config.yaml", "retrain/summary.json", "export/backbone.pt",
                 "export/backbone.safetensors", "export/manifest.json", "detect/metrics.json"):
        assert (out / path).is_file(), path
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    stages = [r.data.tags.get("cutmix.stage") for r in runs]
    assert {"study", "trial", "retrain", "retrain-seed", "export", "detect"} <= set(stages)
    # Nothing written twice by the refused second run: one run per stage, one per trial, all finished.
    assert stages.count("study") == 1 and stages.count("trial") == 2 and stages.count("retrain") == 1
    assert {r.info.status for r in runs} == {"FINISHED"}
    # The recommendation (issue 26): in stdout, in report.md, and as the pipeline run's MLflow description.
    report = (out / "report.md").read_text()
    assert report.startswith("## Recommendation") and "**Use " in report and " seeds (95 % CI " in report, report
    assert "## Recommendation" in p.stdout and f"report: {(out / 'report.md').resolve()}" in p.stdout
    (noted,) = [r for r in runs if "mlflow.note.content" in r.data.tags]
    assert noted.data.tags["mlflow.note.content"].strip() == report.strip()
    assert noted.data.tags["cutmix.choice"] == json.loads((out / "retrain" / "summary.json").read_text())[
        "choice"]["variant"]
