"""pipelines.results: every stage result round-trips through its summary.json, summaries written before their
entries were typed load and are written back byte for byte, and a summary that is missing or unreadable is a
one-line ResultError that says what to run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from pipelines import results
from pipelines.common import STAGE_DIRS
from pipelines.results import (
    BudgetResult,
    DetectResult,
    EvaluateResult,
    ExportResult,
    ResultError,
    RetrainResult,
    StageResult,
    StudyResult,
    TrainResult,
)
from study.stats import BootstrapShares, Comparison, Crossover, Summary
from study.summaries import BudgetRow, ModelRow, SeedRun, VariantSummary

OLD = Path(__file__).parent / "data" / "summaries_cb67987"  # see its make_fixture.py
S = Summary(9.0, 1.0, 2, (8.0, 10.0), (0.0, 18.0))
C = Comparison(-1.0, (None, None), "not resolved", "welch-t", (1, 2))
# Every field away from its default, so a field that is not written or not read back shows.
SAMPLES = {
    TrainResult: dict(final={"val/top1_err": 12.5, "epoch": 2.0}, best={"val/top1_err": 11.0}, best_epoch=1,
                      epochs=2, wall_s=3.5, run_id="f" * 32),
    StudyResult: dict(best_params={"cutmix.alpha": 0.5, "model.arch": "cnn"}, best_value=8.25, metric="val/ece",
                      mode="max", searched=["cutmix.alpha", "model.arch"], best_config="/x/best_config.yaml",
                      parent_run_id="a" * 32, tracking_uri="http://127.0.0.1:5000", experiment_id="7", trials=9,
                      wall_s=60.0, baseline_value=10.0, num_val=500, best_vs_baseline_se=1.5,
                      race_verdict="trial_1 wins the race: it beat cutmix_paper, baseline resolvably",
                      winner_params={"cutmix.alpha": 0.5, "model.arch": "cnn"},
                      race={"metric": "val/ece", "settings": {"baseline": {"values": [1.0, 2.0], "fate": "tie r1"}}},
                      fidelity={"metric": "val/ece", "rungs": [{"epoch": 4, "rho": 0.5, "p": 0.2, "n": 5}],
                                "warning": "early stopping at epoch 4 ranks trials unlike epoch 12: rho = 0.50"},
                      reproducible=False, reproducible_reason="ASHA", optuna_storage="sqlite:////x/optuna.db",
                      optuna_study="digits", smooth_epochs=2,
                      pick={"name": "baseline", "label": "baseline", "params": {"cutmix.prob": 0.0},
                            "reason": "tie r2: the baseline among the survivors", "tie": True}),
    RetrainResult: dict(config="/x/best_config.yaml", epochs=4, study_run_id="b" * 32, retrain_run_id="c" * 32,
                        num_test=500,
                        variants={"cutmix": VariantSummary((SeedRun(0, "cutmix", "/r/cutmix/seed0",
                                                                    {"test/top1_err": 9.0}, {"pid": 7.0}),),
                                                           {"test/top1_err": S})},
                        comparisons={"cutmix": {"test/top1_err": C}},
                        best_run_dir="/r/cutmix/seed0", best_checkpoint="/r/cutmix/seed0/checkpoints/best.pt",
                        cutmix_gain_top1_points=1.0, labels={"cutmix_a1_p0.5": "cutmix α=1 p=0.5"},
                        notes={"cutmix_a1_p0.5": "in effect the baseline"}, winner="cutmix_a1_p0.5",
                        race_verdict="no setting distinguishable from baseline",
                        choice={"variant": "cutmix_a1_p0.5", "reason": "the study's pick", "overridden": False,
                                "dominated": {}, "conflict": False},
                        export_seed={"variant": "cutmix_a1_p0.5", "seed": 0, "rule": "median val error"}),
    EvaluateResult: dict(run_id="d" * 32, num_test=200, metrics={"cutmix": {"ece": S}},
                         comparisons={"cutmix": {"ece": Comparison(-1.0, (-2.0, 0.0), "better", "welch-t", (2, 2),
                                                                   p=0.04, p_holm=0.08, holm_m=2)}},
                         per_seed={"cutmix": [ModelRow(0, "/x/best.pt", "retrain", None, {"ece": 2.0}, {"ood": 1.0},
                                                       {"cam_size": [6, 6]})]},
                         table="/x/evaluate/table.md", wall_s=4.0),
    ExportResult: dict(manifest={"arch": "cnn", "sha256": "00"}, registered_model={"name": "m", "version": "1"}),
    DetectResult: dict(backbone="/x/export/backbone.pt", arch="cnn", pretrained_on="digits", data="synthetic",
                       run_id="e" * 32, map=0.25, map_50=0.5, random_map_50=0.3, random_map=0.1, gain_map_50=0.2,
                       wall_s=70.0),
    BudgetResult: dict(run_id="f" * 32, num_test=500, epochs=[6, 12], seeds=3,
                       budgets=[BudgetRow(6, {"baseline": S, "cutmix_paper": S}, {"baseline": S, "cutmix_paper": None},
                                          C)],
                       crossover=Crossover(9.0, "inside", (7.0, None), BootstrapShares(0.5, 0.0, 0.5), 100, (6, 12)),
                       table="/x/budget/table.md", plot="/x/budget/test_error_vs_epochs.png", wall_s=10.0),
}


def test_every_result_type_has_a_sample():
    """A new result type must join the round trip below, with every field set."""
    types = {c for c in vars(results).values() if isinstance(c, type) and issubclass(c, StageResult)} - {StageResult}
    assert types == set(SAMPLES)
    for cls, values in SAMPLES.items():
        assert set(values) == {f.name for f in dataclasses.fields(cls)} - {"out_dir"}, cls.__name__
        defaults = cls(out_dir="")
        for name, value in values.items():
            assert value != getattr(defaults, name), (cls.__name__, name)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_round_trip_through_summary_json(tmp_path, cls):
    result = cls(out_dir=str(tmp_path), **SAMPLES[cls])
    assert not cls.exists(tmp_path)
    path = result.to_json()
    assert path == tmp_path / cls.STAGE / "summary.json" == cls.path(tmp_path) and cls.exists(tmp_path)
    assert json.loads(path.read_text())["out_dir"] == str(tmp_path)  # plain JSON any tool can read
    back = cls.from_dir(tmp_path)
    assert type(back) is cls and back == result
    assert result.stage_dir == tmp_path / cls.STAGE


def test_stages_write_to_their_own_directories():
    stages = [cls.STAGE for cls in SAMPLES]
    assert all(stages) and len(set(stages)) == len(stages)
    assert set(stages) == set(STAGE_DIRS)  # what Source.root() steps out of


def test_nan_defaults_and_paths_survive(tmp_path):
    DetectResult(out_dir=str(tmp_path), backbone=Path("/x/backbone.pt")).to_json()  # type: ignore[arg-type]
    back = DetectResult.from_dir(tmp_path)
    assert math.isnan(back.map) and math.isnan(back.map_50) and back.random_map is None
    assert back.backbone == "/x/backbone.pt"  # a Path is written as its text


def test_unknown_keys_in_a_summary_are_ignored(tmp_path):
    """A summary written by a later version with more fields still loads."""
    path = StudyResult(out_dir=str(tmp_path), trials=3).to_json()
    path.write_text(json.dumps({**json.loads(path.read_text()), "future_field": [1, 2]}))
    assert StudyResult.from_dir(tmp_path).trials == 3


def test_derived_views():
    def runs(*dirs: str) -> VariantSummary:
        return VariantSummary(tuple(SeedRun(k, "none", d, {}) for k, d in enumerate(dirs)), {})

    r = RetrainResult(out_dir="/o", variants={"none": runs("/o/a", "/o/b"), "cutmix": runs("/o/c")})
    assert r.seed_runs() == [("none", 0, Path("/o/a")), ("none", 1, Path("/o/b")), ("cutmix", 0, Path("/o/c"))]
    assert ExportResult(out_dir="/o").backbone == Path("/o/export/backbone.pt")


@pytest.mark.parametrize(("cls", "command"), [(TrainResult, "train"), (StudyResult, "study"),
                                              (RetrainResult, "retrain"), (EvaluateResult, "evaluate"),
                                              (ExportResult, "export"), (DetectResult, "detect")])
def test_a_missing_summary_says_which_stage_to_run(tmp_path, cls, command):
    with pytest.raises(ResultError) as info:
        cls.from_dir(tmp_path)
    assert str(info.value) == f"{cls.path(tmp_path)} not found (run `cutmix-study {command}` there first)"


def test_an_output_path_that_is_a_file_has_no_summary(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultError, match=r"retrain/summary.json not found \(run `cutmix-study retrain` there first\)"):
        RetrainResult.from_dir(tmp_path / "file")


def test_a_summary_that_is_a_directory_is_unreadable(tmp_path):
    StudyResult.path(tmp_path).mkdir(parents=True)
    with pytest.raises(ResultError, match="is not a readable study summary"):
        StudyResult.from_dir(tmp_path)


@pytest.mark.parametrize("content", [b'{"out_dir": "/x", "trials": ', b"\xff\xfe\x00", b"", b"[1, 2]", b"null",
                                     b'{"trials": 3}'])
def test_an_unreadable_summary_says_to_rerun_with_overwrite(tmp_path, content):
    path = StudyResult.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(ResultError) as info:
        StudyResult.from_dir(tmp_path)
    msg = str(info.value)
    assert msg == f"{path} is not a readable study summary (rerun the stage with --overwrite)"
    assert isinstance(info.value, ValueError)  # the CLI maps ValueErrors of ours to exit 2


def test_a_study_summary_from_before_the_race_reads_with_no_race(tmp_path):
    path = StudyResult(out_dir=str(tmp_path), best_params={"cutmix.alpha": 0.5}, trials=3).to_json()
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("race_verdict", "winner_params", "race")}
    path.write_text(json.dumps(old))
    back = StudyResult.from_dir(tmp_path)
    assert (back.race_verdict, back.winner_params, back.race) == ("", None, {})
    from pipelines.retrain_stage import study_winner

    assert study_winner(back) == ({"cutmix.alpha": 0.5}, "")  # retrain falls back to the best trial


# The decision rule (issue 26) added retrain's choice and exported seed.
ADDED_SINCE_CB67987 = {RetrainResult: {"choice", "export_seed"}, EvaluateResult: set(), BudgetResult: set()}


@pytest.mark.parametrize("cls", [RetrainResult, EvaluateResult, BudgetResult], ids=lambda c: c.__name__)
def test_a_summary_written_before_the_typed_entries_loads_and_is_written_back_byte_for_byte(tmp_path, cls):
    """The fixture was written by the code of cb67987 (entries as dicts; tests/pipelines/data/summaries_cb67987/
    make_fixture.py): its statistics functions and dataclasses.asdict, as its to_json did."""
    old = cls.path(OLD).read_text()
    back = cls.from_dir(OLD)
    # Fields added since cb67987 are written back at their defaults; every old entry comes back byte for byte.
    added = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
             for f in dataclasses.fields(cls) if f.name not in json.loads(old)}
    assert set(added) == ADDED_SINCE_CB67987[cls]
    written = back.to_dict()
    assert {k: written.pop(k) for k in added} == added
    assert json.dumps(written, indent=2, default=str) == old
    moved = dataclasses.replace(back, out_dir=str(tmp_path))  # and through to_json itself, at another place
    assert json.loads(moved.to_json().read_text()) == {**json.loads(old), **added, "out_dir": str(tmp_path)}


def test_the_old_summaries_read_back_typed():
    retrain = RetrainResult.from_dir(OLD)
    paper = retrain.variants["cutmix_paper"]
    assert isinstance(paper, VariantSummary) and paper.metrics["test/top1_err"].n == 3
    assert [s.seed for s in paper.seeds] == [0, 1, 2] and paper.seeds[0].task == {"started": 100.0, "ended": 160.5,
                                                                                  "pid": 4242}
    assert retrain.variants["cutmix_a0.3_p0.02"].seeds[0].task is None
    assert retrain.comparisons["cutmix_a0.3_p0.02"]["test/top1_err"].ci95 == (None, None)  # one seed
    assert retrain.seed_runs()[0] == ("baseline", 0, Path("/o/retrain/baseline/seed0"))
    evaluation = EvaluateResult.from_dir(OLD)
    assert evaluation.comparisons["cutmix_paper"]["ece"].holm_m is not None
    assert evaluation.comparisons["cutmix_paper"]["top1_err"].p_holm is None  # the primary endpoint
    assert evaluation.per_seed["baseline"][1].run_id is None and "ood_clutter_auroc_lo" in \
        evaluation.per_seed["baseline"][0].metrics
    budget = BudgetResult.from_dir(OLD)
    assert [r.epochs for r in budget.budgets] == [1, 2, 4] and budget.budgets[0].train["cutmix_paper"] is None
    assert budget.crossover is not None and budget.crossover.budgets == (1, 2, 4)


def test_a_budget_summary_without_a_crossover_keeps_the_empty_object(tmp_path):
    path = BudgetResult(out_dir=str(tmp_path)).to_json()
    assert json.loads(path.read_text())["crossover"] == {}  # the field's old default
    assert BudgetResult.from_dir(tmp_path).crossover is None


@pytest.mark.parametrize("variants", [{"cutmix": {"test/top1_err": {"mean": 9.0}}}, {"cutmix": [1, 2]},
                                      {"cutmix": {"seeds": [{"seed": 0}]}}])
def test_a_summary_whose_entries_lack_their_keys_says_to_rerun_with_overwrite(tmp_path, variants):
    path = RetrainResult(out_dir=str(tmp_path)).to_json()
    path.write_text(json.dumps({**json.loads(path.read_text()), "variants": variants}))
    with pytest.raises(ResultError, match="is not a readable retrain summary"):
        RetrainResult.from_dir(tmp_path)
