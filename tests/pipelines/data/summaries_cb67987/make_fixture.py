"""How the summary.json files beside this script were made: the code of commit cb67987 (stage-result entries as
dicts, before study.summaries) run on small planted inputs, through that commit's own statistics code, and written
as its StageResult.to_json wrote them. It runs against that commit only (the entries are typed after it):

    git worktree add /tmp/old cb67987 && PYTHONPATH=/tmp/old python make_fixture.py OUT_DIR

Not a test (pytest collects test_*.py only); kept so that the fixture can be remade and read.
"""
import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipelines.results import BudgetResult, EvaluateResult, RetrainResult
from study.evaluation.report import method_table, paired_tests
from study.stats import compare, summarize
from study.training.budget import analyse

out = Path(sys.argv[1])


def write(result):
    """What StageResult.to_json writes, at `out` rather than at the result's own out_dir ("/o")."""
    path = out / result.STAGE / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2, default=str))
REPORTED = ("test/top1_err", "test/top5_err", "test/loss", "train/top1_err")
finals = {"baseline": [[10.0, 1.0, 0.5, 2.0], [10.5, 1.5, 0.55, 2.5], [9.75, 1.25, 0.45, 1.5]],
          "cutmix_paper": [[9.0, 1.0, 0.4, 5.0], [9.25, 0.75, 0.42, 5.5], [8.5, 1.0, 0.38, 4.0]],
          "cutmix_a0.3_p0.02": [[10.25, 1.0, 0.5, 2.0]]}
rows = {v: [{"seed": k, "method": "none" if v == "baseline" else "cutmix", "run_dir": f"/o/retrain/{v}/seed{k}",
             **dict(zip(REPORTED, f)), "task": {"started": 100.0 + k, "ended": 160.5 + k, "pid": 4242 + k}}
            for k, f in enumerate(fs)] for v, fs in finals.items()}
rows["cutmix_a0.3_p0.02"][0]["task"] = None  # a seed read back from a run that recorded no task
stats = {v: {"seeds": r, **{m: summarize([x[m] for x in r]) for m in REPORTED}} for v, r in rows.items()}
comps = {v: {m: compare([x[m] for x in r], [x[m] for x in rows["baseline"]]) for m in REPORTED}
         for v, r in rows.items() if v != "baseline"}
write(RetrainResult("/o", "/o/best_config.yaml", 4, "b" * 32, "c" * 32, 359, stats, comps,
                    "/o/retrain/cutmix_paper/seed2", "/o/retrain/cutmix_paper/seed2/checkpoints/best.pt", 1.0,
                    labels={"cutmix_paper": "cutmix α=1 p=0.5"},
                    notes={"cutmix_a0.3_p0.02": "mixes ~2 % of steps: in effect the baseline"},
                    winner="cutmix_a0.3_p0.02", race_verdict=""))


def model(v, k, **metrics):
    return {"seed": k, "checkpoint": f"/o/retrain/{v}/seed{k}/checkpoints/best.pt", "origin": "retrain",
            "run_id": None if k else "d" * 32, **metrics, "seconds": {"classification": 0.5, "ood": 1.25},
            "info": {"image_size": [24, 24], "cam_size": [6, 6], "ood_kinds": {"clutter": "near"}, "num_in": 359}}


per_seed = {
    "baseline": [model("baseline", k, top1_err=e, ece=c, maxboxacc_v2_over_prior=p, ood_clutter_auroc=a,
                       ood_clutter_auroc_lo=a - 2, ood_clutter_auroc_hi=a + 2)
                 for k, (e, c, p, a) in enumerate([(10.0, 1.0, 5.0, 70.0), (10.25, 2.0, 6.0, 71.0),
                                                   (9.75, 3.0, 7.0, 72.0)])],
    "cutmix_paper": [model("cutmix_paper", k, top1_err=e, ece=c, maxboxacc_v2_over_prior=p, ood_clutter_auroc=a,
                           ood_clutter_auroc_lo=a - 2, ood_clutter_auroc_hi=a + 2)
                     for k, (e, c, p, a) in enumerate([(12.0, 3.5, -1.0, 75.0), (12.25, 4.5, 0.5, 76.0),
                                                       (11.75, 5.5, 1.0, 77.0)])],
}
correct = {v: {k: np.arange(100) % (10 + k + (v != "baseline")) != 0 for k in range(3)} for v in per_seed}
info = {"cam_size": [6, 6], "image_size": 24, "ood_kinds": {"clutter": "near"}, "num_in": 359}
report = method_table(out / "evaluate" / "table.md", per_seed, num_test=359, epochs=4, info=info, priors={},
                      paired=paired_tests(correct))
write(EvaluateResult("/o", "e" * 32, 359, report["metrics"], report["comparisons"], per_seed,
                     "/o/evaluate/table.md", 12.5))
(out / "evaluate" / "table.md").unlink()

cfg = SimpleNamespace(budget=SimpleNamespace(epochs=[1, 2, 4], seeds=3, bootstrap=200, bootstrap_seed=0))
base = {1: [20.0, 21.0, 22.0], 2: [15.0, 15.5, 16.0], 4: [10.0, 10.5, 11.0]}
cut = {1: [24.0, 25.0, 26.0], 2: [15.0, 16.0, 17.0], 4: [8.0, 8.5, 9.0]}
finals = {(arm, e, k): {"test/top1_err": vals[e][k], **({"train/top1_err": vals[e][k] / 2} if arm == "baseline"
                                                        else {})}
          for arm, vals in (("baseline", base), ("cutmix_paper", cut)) for e in vals for k in range(3)}
analysis = analyse(cfg, finals)  # cutmix_paper's train error not measured: its *_train entries are null
write(BudgetResult("/o", "f" * 32, 359, [1, 2, 4], 3, analysis["budgets"], analysis["crossover"],
                   "/o/budget/table.md", "/o/budget/test_error_vs_epochs.png", 30.0))
