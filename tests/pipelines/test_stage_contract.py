"""One contract for every stage (the pattern of mosaicml/composer's `tests/algorithms/algorithm_settings.py`: one
table of implementations, one parametrised test per property):

- the signature `run(cfg, out_dir, tracker, *, source=None, resume=False, overwrite=False) -> <Stage>Result`, a
  `report(result)`, and what `--from` accepts (`SOURCE_STAGES`, `SOURCE_HINT`);
- `summary.json` round-trips through the stage's result type;
- without --resume or --overwrite a finished stage refuses to run again (exit 2, nothing changed);
- --resume returns the finished stage as it is (its summary untouched);
- --from as a directory and as an MLflow run id resolve to the same finished stage (with --resume, so nothing
  retrains); --backbone stays an alias of detect's --from;
- --overwrite removes the stage's own outputs and runs it again (a new summary), leaving the other stages' files.

One tiny pipeline (`run`, then `train`) is built once for the module; every check runs the CLI in-process.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from pipelines import detect_stage, evaluate_stage, export_stage, retrain_stage, study_stage, train_stage
from pipelines.results import (
    DetectResult,
    EvaluateResult,
    ExportResult,
    RetrainResult,
    StageResult,
    StudyResult,
    TrainResult,
)
from tests.helpers.cli import TINY, assert_one_line_error, run_main, set_args

# stage name -> (module, result type, the run id its --from may name, read from the finished pipeline)
STAGES = {
    "train": (train_stage, TrainResult, None),
    "study": (study_stage, StudyResult, None),
    "retrain": (retrain_stage, RetrainResult, lambda out: StudyResult.from_dir(out).parent_run_id),
    "evaluate": (evaluate_stage, EvaluateResult, lambda out: RetrainResult.from_dir(out).retrain_run_id),
    "export": (export_stage, ExportResult, lambda out: RetrainResult.from_dir(out).retrain_run_id),
    "detect": (detect_stage, DetectResult, lambda out: ExportResult.from_dir(out).manifest["mlflow_run_id"]),
}
FAST = [*TINY, "name=contract", "search.num_samples=2", "search.scheduler=none", "search.max_concurrent=1",
        "retrain.seeds=1", "evaluate.robustness_images=16", "train.epochs=1"]


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_has_the_one_signature(name):
    module, result_type, _ = STAGES[name]
    sig = inspect.signature(module.run)
    params = list(sig.parameters.values())
    assert [p.name for p in params[:3]] == ["cfg", "out_dir", "tracker"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:3])
    keywords = {p.name: p.default for p in params[3:]}
    assert keywords == {"source": None, "resume": False, "overwrite": False}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[3:])
    assert sig.return_annotation in (result_type.__name__, result_type)
    assert issubclass(result_type, StageResult) and result_type.STAGE == name
    assert callable(module.report) and isinstance(module.SOURCE_STAGES, tuple) and isinstance(module.SOURCE_HINT, str)
    assert bool(module.SOURCE_STAGES) == (STAGES[name][2] is not None)  # --from exactly where a stage comes before


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A finished tiny pipeline (all five stages, then a `train` run) in one output directory."""
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("contract") / "out"
    assert main(["run", "--output", str(out), *set_args(FAST)]) == 0
    assert main(["train", "--output", str(out), *set_args(FAST)]) == 0
    return out


def _summary(out: Path, name: str) -> str:
    return STAGES[name][1].path(out).read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGES))
def test_summary_round_trips(pipeline, name):
    result_type = STAGES[name][1]
    written = json.loads(_summary(pipeline, name))
    assert {f.name for f in dataclasses.fields(result_type)} == set(written)  # every field, and nothing else
    result = result_type.from_dir(pipeline)
    assert result.to_json() == result_type.path(pipeline)
    assert result_type.from_dir(pipeline) == result
    assert json.loads(_summary(pipeline, name)) == written


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGES))
def test_a_finished_stage_refuses_without_resume_and_resume_returns_it(pipeline, name, capsys):
    before = _summary(pipeline, name)
    code, _, err = run_main(capsys, name, "--output", str(pipeline), *set_args(FAST))
    assert_one_line_error(code, err, "already holds results", "--resume", "--overwrite")
    code, out, err = run_main(capsys, name, "--output", str(pipeline), "--resume", *set_args(FAST))
    assert code == 0, err
    assert _summary(pipeline, name) == before  # returned as it was: nothing re-ran
    assert "browse:" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, (_, _, run_id) in STAGES.items() if run_id is not None])
@pytest.mark.parametrize("kind", ["directory", "run id"])
def test_from_a_directory_or_a_run_id(pipeline, name, kind, capsys):
    before = _summary(pipeline, name)
    source = str(pipeline) if kind == "directory" else STAGES[name][2](pipeline)
    code, _, err = run_main(capsys, name, "--from", source, "--output", str(pipeline), "--resume", *set_args(FAST))
    assert code == 0, err
    assert _summary(pipeline, name) == before
    code, _, err = run_main(capsys, name, "--from", str(pipeline / "nowhere"), *set_args(FAST))
    assert_one_line_error(code, err, "--from", "nowhere", STAGES[name][0].SOURCE_HINT)


@pytest.mark.slow
def test_backbone_is_an_alias_of_detect_from(pipeline, capsys):
    code, _, err = run_main(capsys, "detect", "--backbone", str(pipeline / "export"), "--output", str(pipeline),
                            "--resume", *set_args(FAST))
    assert code == 0, err


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGES))
def test_overwrite_reruns_only_that_stage(pipeline, name, capsys):
    others = {n: _summary(pipeline, n) for n in STAGES if n != name}
    before = json.loads(_summary(pipeline, name))
    code, _, err = run_main(capsys, name, "--output", str(pipeline), "--overwrite", *set_args(FAST))
    assert code == 0, err
    after = json.loads(_summary(pipeline, name))
    assert after != before  # a new run: a new MLflow run id, wall time or checkpoint path in the summary
    assert {n: _summary(pipeline, n) for n in others} == others
