"""`evaluate --from` each kind of source (issue 16, point 5): a retrain directory (and its retrain/), a train run
directory, a checkpoint file (best.pt, last.pt, one whose config lies beside it), the MLflow run ids of a retrain
seed and of a retrain run, and (slow) a study trial by its MLflow run id; one model gives one row and no verdicts;
bad sources exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from study.checkpoint import load_checkpoint, save_checkpoint
from study.config.load import dump_config, load_config
from study.evaluation.sources import SourceError, default_output_for, models_from_source
from study.tracking.store import Tracker
from study.training.runner import train_run
from tests.helpers.cli import assert_one_line_error, run_main, set_args

# Cluttered digits at 16 px (boxes: the localization rows and priors appear), one epoch: seconds per model.
SMALL = ["data.name=cluttered_digits", "data.image_size=16", "data.pad=1", "data.synthetic_sizes=[300,60,300]",
         "model.arch=cnn", "model.width=4", "train.epochs=1", "train.batch_size=64", "train.num_threads=1",
         "train.test_every=1", "evaluate.ood_images=100", "evaluate.ood_bootstrap=50", "evaluate.robustness_images=50",
         "evaluate.cam_curve_interval=0.05", "evaluate.fgsm_eps=[0,0.03137254901960784]", "retrain.resources.cpu=1"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """A study output directory whose retrain/ holds baseline and cutmix, two seeds each (train runs)."""
    root = tmp_path_factory.mktemp("evaluate")
    for variant, prob in (("baseline", 0), ("cutmix", 0.5)):
        for k in range(2):
            cfg = load_config(None, [*SMALL, f"cutmix.prob={prob}", f"train.seed={k}"])
            train_run(cfg, root / "retrain" / variant / f"seed{k}", select_last=True)
    return root


def _evaluate(capsys, source, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_main(capsys, "evaluate", "--from", str(source), "--output", str(out), *set_args(SMALL), *extra)


@pytest.mark.slow
def test_from_a_retrain_directory_and_its_retrain_subdirectory(study_dir, tmp_path, capsys):
    refs = models_from_source(study_dir)
    assert [(r.variant, r.seed, r.origin) for r in refs] == [("baseline", 0, "retrain"), ("baseline", 1, "retrain"),
                                                             ("cutmix", 0, "retrain"), ("cutmix", 1, "retrain")]
    assert [r.checkpoint for r in models_from_source(study_dir / "retrain")] == [r.checkpoint for r in refs]
    assert default_output_for(study_dir / "retrain") == study_dir
    code, out, err = _evaluate(capsys, study_dir / "retrain", tmp_path)
    assert code == 0, err
    table = (tmp_path / "evaluate" / "table.md").read_text()
    assert "Holm-corrected across the table" in table and "| cutmix | 2 |" in table and "McNemar per seed pair" in table
    assert "| centre prior (Gaussian) | – |" in table and "| clutter | near |" in table
    assert "| uniform | sanity (noise) |" in table and "CAM 4×4 at 16 px" in table
    pred = np.load(tmp_path / "evaluate" / "cutmix" / "seed1_predictions.npz")
    assert pred["correct"].shape == (300,) and pred["correct"].dtype == bool
    row = json.loads((tmp_path / "evaluate" / "cutmix" / "seed1.json").read_text())
    assert row["info"]["num_in"] == 300 and row["ood_clutter_auroc_lo"] <= row["ood_clutter_auroc_hi"]
    assert 100 * (1 - pred["correct"].mean()) == pytest.approx(row["top1_err"])
    summary = json.loads((tmp_path / "evaluate" / "summary.json").read_text())
    assert "p_holm" in summary["comparisons"]["cutmix"]["ece"]
    assert "p_holm" not in summary["comparisons"]["cutmix"]["top1_err"]  # the primary endpoint is not corrected


def _one_row(table: str) -> None:
    rows = [line for line in table.splitlines() if line.startswith("| baseline") or line.startswith("| cutmix")]
    assert len(rows) == 1, table
    assert "no verdicts" in table and "not resolved" not in table and "McNemar" not in table


@pytest.mark.slow
def test_from_a_train_run_directory_and_checkpoint_files(study_dir, tmp_path, capsys):
    run_dir = study_dir / "retrain" / "baseline" / "seed1"
    assert [(r.variant, r.origin) for r in models_from_source(run_dir)] == [("baseline", "train")]
    code, out, err = _evaluate(capsys, run_dir, tmp_path / "a")
    assert code == 0, err
    _one_row((tmp_path / "a" / "evaluate" / "table.md").read_text())
    for name in ("best.pt", "last.pt"):
        ckpt = study_dir / "retrain" / "cutmix" / "seed0" / "checkpoints" / name
        assert default_output_for(ckpt) == ckpt.parent.parent
        code, out, err = _evaluate(capsys, ckpt, tmp_path / name)
        assert code == 0, err
        _one_row((tmp_path / name / "evaluate" / "table.md").read_text())
    # A checkpoint without its config inside: the config.yaml beside its checkpoints/ folder is used.
    bare = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    bare.pop("config")
    save_checkpoint(bare, tmp_path / "copy" / "checkpoints" / "best.pt")
    dump_config(load_config(run_dir / "config.yaml"), tmp_path / "copy" / "config.yaml")
    (ref,) = models_from_source(tmp_path / "copy" / "checkpoints" / "best.pt")
    assert ref.config["cutmix"]["prob"] == 0 and ref.variant == "baseline" and ref.origin == "checkpoint"
    (tmp_path / "copy" / "config.yaml").unlink()
    with pytest.raises(SourceError, match="has no config"):
        models_from_source(tmp_path / "copy" / "checkpoints" / "best.pt")


@pytest.mark.slow
def test_from_mlflow_run_ids_of_a_retrain_seed_and_a_retrain_run(study_dir, tmp_path, capsys):
    # The retrain stage's tag contract on a real MLflow store: a retrain run (cutmix.output) with one child run per
    # seed (cutmix.stage retrain-seed, cutmix.variant, cutmix.seed_index); the checkpoints stay in the directory.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, study_dir)
    with tracker.stage_run("retrain", "evaluate-test") as parent:
        with parent.child("retrain-cutmix-seed1", {"cutmix.stage": "retrain-seed", "cutmix.variant": "cutmix",
                                                    "cutmix.seed_index": "1"}) as child:
            seed_run = child.run_id
        retrain_run = parent.run_id
    (ref,) = models_from_source(seed_run, tracker)
    assert (ref.variant, ref.seed, ref.run_id) == ("cutmix", 1, seed_run)
    code, out, err = _evaluate(capsys, seed_run, tmp_path / "seed", "--tracking-uri", uri)
    assert code == 0, err
    _one_row((tmp_path / "seed" / "evaluate" / "table.md").read_text())
    assert len(models_from_source(retrain_run, tracker)) == 4
    code, out, err = run_main(capsys, "evaluate", "--from", "0" * 32, "--tracking-uri", uri, "--output",
                              str(tmp_path / "none"), *set_args(SMALL))
    assert_one_line_error(code, err, "not found")


def test_bad_sources_exit_2_with_one_line(study_dir, tmp_path, capsys):
    code, _, err = _evaluate(capsys, tmp_path / "missing", tmp_path / "out")
    assert_one_line_error(code, err, "no such file, directory or MLflow run id")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = _evaluate(capsys, tmp_path / "junk.pt", tmp_path / "out")
    assert_one_line_error(code, err, "unreadable")
    (tmp_path / "empty").mkdir()
    code, _, err = _evaluate(capsys, tmp_path / "empty", tmp_path / "out")
    assert_one_line_error(code, err, "holds no trained model")
    assert not (tmp_path / "out" / "evaluate").exists()


def test_an_evaluate_task_the_local_ray_can_never_place_is_refused_before_it_starts(study_dir, tmp_path, capsys):
    """Evaluate tasks are Ray tasks with retrain.resources (study.cluster.capacity): more than the command's own
    local Ray has is exit 2 and one line naming the field, and no model is evaluated."""
    code, _, err = _evaluate(capsys, study_dir, tmp_path / "out", "--set", "retrain.resources.cpu=64")
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and "Traceback" not in err, err
    assert line.startswith("error: an evaluate task needs 64 CPUs (retrain.resources.cpu=64); the local Ray has "), line
    assert line.endswith("(lower retrain.resources)"), line
    assert not list((tmp_path / "out").glob("evaluate/*/seed*.json"))


@pytest.mark.slow
def test_a_study_trial_by_its_mlflow_run_id(tmp_path, capsys):
    out = tmp_path / "study"
    code, _, err = run_main(capsys, "study", "--output", str(out), *set_args(
        [*SMALL, "search.num_samples=2", "search.scheduler=none", "search.max_concurrent=2"]))
    assert code == 0, err
    import pandas as pd

    frame = pd.read_parquet(out / "results.parquet")
    trial_run = frame["mlflow_run_id"].iloc[0]
    uri = f"sqlite:///{out / 'mlflow.db'}"
    (ref,) = models_from_source(trial_run, Tracker(uri, out))
    assert ref.origin == "trial" and ref.checkpoint.name == "checkpoint.pt"
    assert torch.load(ref.checkpoint, weights_only=True)["epoch"] == 1
    code, _, err = _evaluate(capsys, trial_run, tmp_path / "eval", "--tracking-uri", uri)
    assert code == 0, err
    table = (tmp_path / "eval" / "evaluate" / "table.md").read_text()
    assert "| trial_" in table and "no verdicts" in table
