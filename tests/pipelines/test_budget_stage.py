"""`cutmix-study budget` end to end on a tiny config: Ray tasks, table, plot, MLflow runs, --resume."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.cli import TINY, run_main, set_args

BUDGET = TINY + ["name=budget", "budget.epochs=[1,2]", "budget.seeds=2", "budget.bootstrap=200"]


@pytest.mark.slow
def test_budget_stage_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "b"
    code, stdout, err = run_main(capsys, "budget", "--output", str(out), *set_args(BUDGET))
    assert code == 0, err
    summary = json.loads((out / "budget" / "summary.json").read_text())
    assert summary["epochs"] == [1, 2] and summary["seeds"] == 2 and summary["num_test"] == 359
    for row in summary["budgets"]:
        for arm in ("baseline", "cutmix_paper"):
            values = row[arm]["values"]
            runs = [json.loads((out / "budget" / arm / f"e{row['epochs']}" / f"seed{k}" / "metrics.json").read_text())
                    for k in range(2)]
            assert values == [r["final"]["test/top1_err"] for r in runs]  # each cell is its runs' final test error
            assert all(r["epochs"] == row["epochs"] for r in runs)  # each budget a whole schedule of its own
            assert row[f"{arm}_train"]["n"] == 2
        assert row["diff"]["diff"] == pytest.approx(row["cutmix_paper"]["mean"] - row["baseline"]["mean"])
    assert summary["crossover"]["position"] in ("inside", "before", "after")
    for text in ("| epochs |", "cutmix_paper - baseline", "crossover"):
        assert text in stdout, text
    assert (out / "budget" / "test_error_vs_epochs.png").stat().st_size > 10_000
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    parent = client.get_run(summary["run_id"])
    assert parent.data.tags["cutmix.stage"] == "budget" and parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{summary['run_id']}'")
    assert len(children) == 8 and {c.data.tags["cutmix.budget_epochs"] for c in children} == {"1", "2"}
    assert {a.path for a in client.list_artifacts(summary["run_id"])} >= {"table.md", "test_error_vs_epochs.png"}

    # Without --resume the finished stage is not replaced; with it, a lost run is retrained and the rest read back.
    code, _, err = run_main(capsys, "budget", "--output", str(out), *set_args(BUDGET))
    assert code == 2 and "already holds results" in err
    (out / "budget" / "summary.json").unlink()
    lost = out / "budget" / "cutmix_paper" / "e2" / "seed1"
    kept = (out / "budget" / "baseline" / "e2" / "seed0" / "task.json").read_text()
    before = json.loads((lost / "metrics.json").read_text())["final"]["test/top1_err"]
    for f in ("metrics.json", "checkpoints/last.pt", "task.json"):
        (lost / f).unlink()
    code, _, err = run_main(capsys, "budget", "--output", str(out), "--resume", *set_args(BUDGET))
    assert code == 0, err
    assert (out / "budget" / "baseline" / "e2" / "seed0" / "task.json").read_text() == kept  # read back, not rerun
    again = json.loads((out / "budget" / "summary.json").read_text())
    assert json.loads((lost / "metrics.json").read_text())["final"]["test/top1_err"] == before  # bit-exact rerun
    assert again["budgets"] == summary["budgets"]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{again['run_id']}'")
    assert again["run_id"] == summary["run_id"] and len(children) == 8  # the same runs, none logged twice


@pytest.mark.parametrize("override, needle", [("budget.epochs=[12,6]", "strictly increasing"),
                                              ("budget.epochs=[12]", "two or more"),
                                              ("budget.seeds=1", "budget.seeds=1 is not allowed")])
def test_bad_budget_config_is_one_line_and_exit_2(tmp_path, capsys, override, needle):
    from pipelines.cli import main

    assert main(["budget", "--output", str(tmp_path / "x"), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # nothing written before the config is checked


def test_a_budget_task_the_local_ray_can_never_place_is_refused_naming_its_own_field(tmp_path, capsys):
    """Budget runs are Ray tasks with budget.resources: the refusal names that field, not another stage's."""
    code, _, err = run_main(capsys, "budget", "--output", str(tmp_path / "b"),
                            *set_args(BUDGET + ["budget.resources.cpu=64"]))
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and "Traceback" not in err, err
    assert line.startswith("error: a budget task needs 64 CPUs (budget.resources.cpu=64); the local Ray has "), line
    assert line.endswith("(lower budget.resources)"), line
    assert not list((tmp_path / "b").glob("budget/*/e*/seed*/metrics.json"))  # no run trained
