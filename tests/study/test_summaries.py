"""study.summaries: each stage-result entry round-trips through JSON in the flat shape its old dict had (metrics
beside a seed's own keys, a variant's metrics beside its "seeds", a budget's arms beside its epochs)."""

from __future__ import annotations

import json

import pytest

from study.stats import compare, summarize
from study.summaries import BudgetRow, ModelRow, SeedRun, VariantSummary

SEED = SeedRun(1, "cutmix", "/o/retrain/cutmix/seed1", {"test/top1_err": 9.5, "test/loss": 0.3},
               {"started": 1.0, "ended": 2.5, "pid": 11})
# Each entry with the keys of its old dict, in their order (what summary.json holds).
ENTRIES = [
    (SEED, ["seed", "method", "run_dir", "test/top1_err", "test/loss", "task"]),
    (SeedRun(0, "none", "/o/retrain/baseline/seed0", {"test/top1_err": 10.0}), ["seed", "method", "run_dir",
                                                                                 "test/top1_err", "task"]),
    (VariantSummary((SEED,), {"test/top1_err": summarize([9.5]), "test/loss": summarize([0.3])}),
     ["seeds", "test/top1_err", "test/loss"]),
    (ModelRow(2, "/o/best.pt", "retrain", None, {"top1_err": 9.0, "ece": 1.5}, {"classification": 0.25},
              {"cam_size": [6, 6], "ood_kinds": {"clutter": "near"}}),
     ["seed", "checkpoint", "origin", "run_id", "top1_err", "ece", "seconds", "info"]),
    (BudgetRow(12, {"baseline": summarize([10.0, 11.0]), "cutmix_paper": summarize([9.0, 9.5])},
               {"baseline": summarize([5.0, 5.5]), "cutmix_paper": None}, compare([9.0, 9.5], [10.0, 11.0])),
     ["epochs", "baseline", "baseline_train", "cutmix_paper", "cutmix_paper_train", "diff"]),
]


@pytest.mark.parametrize(("entry", "keys"), ENTRIES, ids=lambda e: type(e).__name__)
def test_every_entry_round_trips_through_its_flat_json_shape(entry, keys):
    d = entry.to_dict()
    assert list(d) == keys
    back = type(entry).from_dict(json.loads(json.dumps(d)))
    assert back == entry and type(back) is type(entry)
    assert json.dumps(back.to_dict()) == json.dumps(d)


def test_the_entries_read_the_old_dicts():
    """Rows as retrain_stage, evaluate_stage and budget.analyse built them before the entries were typed (written
    literally)."""
    seed = {"seed": 0, "method": "none", "run_dir": "/r/s0", "test/top1_err": 10.0, "train/top1_err": 2.0,
            "task": None}
    assert SeedRun.from_dict(seed) == SeedRun(0, "none", "/r/s0", {"test/top1_err": 10.0, "train/top1_err": 2.0})
    stat = {"mean": 10.0, "std": 0.0, "n": 1, "values": [10.0], "ci95": [10.0, 10.0]}
    variant = VariantSummary.from_dict({"seeds": [seed], "test/top1_err": stat})
    assert variant.metrics["test/top1_err"].values == (10.0,) and variant.seeds[0].run_dir == "/r/s0"
    row = {"seed": 0, "checkpoint": "/c.pt", "origin": "train", "run_id": "a" * 32, "top1_err": 9.0,
           "seconds": {"ood": 2.0}, "info": {"num_in": 3}}
    assert ModelRow.from_dict(row).metrics == {"top1_err": 9.0}
    diff = {"diff": -1.0, "ci95": [-2.0, 0.5], "verdict": "not resolved", "method": "welch-t", "n": [2, 2]}
    budget = BudgetRow.from_dict({"epochs": 6, "baseline": stat, "baseline_train": None, "cutmix_paper": stat,
                                  "cutmix_paper_train": stat, "diff": diff})
    assert list(budget.test) == ["baseline", "cutmix_paper"] and budget.train["baseline"] is None
    assert budget.diff.ci95 == (-2.0, 0.5)
