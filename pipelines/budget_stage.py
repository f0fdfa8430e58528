"""`cutmix-study budget`: does CutMix pay at my budget? baseline vs cutmix_paper at every budget of `budget.epochs`.

Not part of `run` (it trains 2 x len(budget.epochs) x budget.seeds models: pipelines/configs/digits_budget.yaml
sizes it for ~30 minutes on 2 cores). Each (arm, budget, seed) is a Ray task (study.cluster.tasks.run_tasks) that
trains on train+val with its own full schedule into `<output>/budget/<arm>/e<epochs>/seed<k>/` and resumes from
its last checkpoint; with --resume finished runs are read back, not retrained. The work and the statistics live in
study.training.budget and study.stats; this module wires them, logs to MLflow (a `budget` run with a child per
model, the table and the plot) and writes `<output>/budget/summary.json` (BudgetResult), `table.md` and
`test_error_vs_epochs.png`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipelines.common import open_training_stage
from pipelines.results import BudgetResult
from study.cluster.tasks import run_seed_tasks
from study.config.schema import PipelineConfig, flatten, to_dict
from study.training.budget import METRIC, analyse, format_table, plan
from study.training.runner import Progress, log_seed_run, read_finished, train_seed

SOURCE_STAGES: tuple[str, ...] = ()  # the budget axis starts from its config: no --from
SOURCE_HINT = ""


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> BudgetResult:
    """Train the budget plan (study.training.budget.plan) and report it. `source` is unused: the budget axis
    needs no earlier stage."""
    from study.plots import save_budget_plot  # lazy: pulls matplotlib

    start = time.perf_counter()
    out_dir, done, data = open_training_stage(cfg, out_dir, tracker, ["budget"], BudgetResult, resume=resume,
                                              overwrite=overwrite)
    if done is not None:
        return done
    stage_dir = out_dir / "budget"
    runs = plan(cfg)
    finals: dict[tuple[str, int, int], dict[str, float]] = {}
    with tracker.stage_run("budget", cfg.tracking.experiment or cfg.name, reuse=resume) as parent:
        parent.log_params({k: v for k, v in flatten(cfg).items() if k != "search.space"})
        jobs = []
        for r in runs:
            summary = read_finished(r.run_dir(stage_dir)) if resume else None
            if summary is not None:
                _log_run(parent, r, r.run_dir(stage_dir), summary, resume)
                finals[r.arm, r.epochs, r.index] = summary["final"]
            else:
                jobs.append(((r.arm, r.epochs, r.index), {"cfg": to_dict(r.cfg), "run_dir": str(r.run_dir(stage_dir)),
                                                         "label": f"budget {r.name}"}))
        if jobs:
            progress = Progress(len(jobs), "budget")
            by_key = {(r.arm, r.epochs, r.index): r for r in runs}
            pending = [key for key, _ in jobs]

            def finished(key: tuple[str, int, int], summary: dict[str, Any]) -> None:
                r = by_key[key]
                _log_run(parent, r, r.run_dir(stage_dir), summary, resume)
                finals[key] = summary["final"]
                progress.update(sum(k in finals for k in pending),
                                f"{r.name}: test top-1 err {summary['final'][METRIC]:.2f} "
                                f"({summary['task']['ended'] - summary['task']['started']:.0f} s)")

            run_seed_tasks(train_seed, jobs, data.merged_train_val(), cfg.budget.resources, on_done=finished,
                           what="a budget task", key="budget.resources",
                           placement_timeout_s=cfg.search.placement_timeout_s)
        analysis = analyse(cfg, finals)
        table = stage_dir / "table.md"
        table.write_text(format_table(analysis) + "\n")
        plot = save_budget_plot(analysis, stage_dir / "test_error_vs_epochs.png", title=f"{cfg.name}: "
                                f"{cfg.model.arch}, {len(data.train) + len(data.val)} training images")
        result = BudgetResult(str(out_dir), parent.run_id, len(data.test), sorted(cfg.budget.epochs),
                              cfg.budget.seeds, analysis.budgets, analysis.crossover, str(table), str(plot),
                              time.perf_counter() - start)
        result.to_json()
        for row in analysis.budgets:
            parent.log_metrics({f"{arm}/{METRIC}_mean": row.test[arm].mean for arm in ("baseline", "cutmix_paper")}
                               | {f"diff/{METRIC}": row.diff.diff}, step=row.epochs)
        if analysis.crossover.estimate is not None:
            parent.log_metrics({"crossover_epochs": analysis.crossover.estimate})
        for path in (table, plot, result.path(out_dir)):
            parent.log_artifact(path)
    return result


def _log_run(parent, r, run_dir: Path, summary: dict[str, Any], resume: bool) -> None:
    """One finished model as a child run of the budget run: its parameters, every epoch's metrics, its files."""
    tags = {"cutmix.stage": "budget-run", "cutmix.variant": r.arm, "cutmix.budget_epochs": str(r.epochs),
            "cutmix.seed_index": str(r.index)}
    log_seed_run(parent, f"budget-{r.name}", tags, r.cfg, run_dir, summary, resume)


def report(result: BudgetResult) -> str:
    return Path(result.table).read_text().rstrip() + f"\nplot: {result.plot}\n(budget axis in {result.wall_s:.0f} s)"
