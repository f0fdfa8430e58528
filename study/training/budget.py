"""The budget axis: does CutMix pay at this training budget?

`baseline` and `cutmix_paper` (study.training.references) are trained at every budget of `budget.epochs`, each
budget with its own full schedule (a 12-epoch run is not the first 12 epochs of a 96-epoch one: its learning rate
decays over 12), with `budget.seeds` seeds, on train+val, and tested on the held-out test split. Per budget the
difference cutmix_paper - baseline in test top-1 error gets Welch's 95 % t-interval (study.stats.compare); the
crossover budget, where CutMix turns from worse to not worse, gets a seed-bootstrap interval
(study.stats.crossover). Short-horizon bias (Wu et al. 2018, "Understanding Short-Horizon Bias in Stochastic
Meta-Optimization") is why this is measured and not read off early epochs: a regularizer looks worse early.

Plain data in, plain data out; the stage (pipelines/budget_stage.py) runs the plan as Ray tasks and logs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from study.config.load import replace
from study.config.schema import PipelineConfig
from study.stats import Summary, compare, crossover, format_crossover, summarize
from study.summaries import BudgetAnalysis, BudgetRow
from study.training.references import BASELINE, CUTMIX_PAPER, REFERENCES

ARMS = (BASELINE, CUTMIX_PAPER)
METRIC = "test/top1_err"
TRAIN_METRIC = "train/top1_err"


@dataclass(frozen=True)
class BudgetRun:
    arm: str  # baseline | cutmix_paper
    epochs: int  # the budget: this run's whole schedule
    index: int  # seed index; the run's seed is train.seed + index
    cfg: PipelineConfig

    def run_dir(self, stage_dir: Path) -> Path:
        return Path(stage_dir) / self.arm / f"e{self.epochs}" / f"seed{self.index}"

    @property
    def name(self) -> str:
        return f"{self.arm}-e{self.epochs}-seed{self.index}"


def plan(cfg: PipelineConfig) -> list[BudgetRun]:
    """Every (arm, budget, seed) run, longest budgets first (they bound the wall time when tasks run side by
    side). The test split is measured once, after the last epoch (and the clean train error: runner.train_seed)."""
    runs = []
    for epochs in sorted(cfg.budget.epochs, reverse=True):
        for arm in ARMS:
            for k in range(cfg.budget.seeds):
                params = {**REFERENCES[arm], "train.epochs": epochs, "train.seed": cfg.train.seed + k,
                          "train.test_every": epochs, "train.warmup_epochs": min(cfg.train.warmup_epochs, epochs - 1)}
                runs.append(BudgetRun(arm, epochs, k, replace(cfg, params)))
    return runs


def analyse(cfg: PipelineConfig, finals: dict[tuple[str, int, int], dict[str, float]]) -> BudgetAnalysis:
    """`finals[(arm, epochs, index)]`: a run's final metrics. Returns per budget each arm's summary of test (and
    train) error and the difference with its Welch interval, and the crossover (study.stats.crossover)."""
    budgets = sorted(cfg.budget.epochs)
    seeds = range(cfg.budget.seeds)
    values = {(arm, e): [finals[arm, e, k][METRIC] for k in seeds] for arm in ARMS for e in budgets}
    rows = []
    for e in budgets:
        test: dict[str, Summary] = {}
        train: dict[str, Summary | None] = {}
        for arm in ARMS:
            test[arm] = summarize(values[arm, e])
            measured = [finals[arm, e, k].get(TRAIN_METRIC) for k in seeds]
            train[arm] = summarize([v for v in measured if v is not None]) if None not in measured else None
        rows.append(BudgetRow(e, test, train, compare(values[CUTMIX_PAPER, e], values[BASELINE, e])))
    cross = crossover(budgets, [values[CUTMIX_PAPER, e] for e in budgets], [values[BASELINE, e] for e in budgets],
                      resamples=cfg.budget.bootstrap, seed=cfg.budget.bootstrap_seed)
    return BudgetAnalysis(METRIC, rows, cross)


def format_table(analysis: BudgetAnalysis) -> str:
    """The budget table as markdown: per budget both arms' test (and train) error, mean ± std over seeds, and
    cutmix_paper - baseline with Welch's 95 % interval and its verdict; then the crossover line."""
    lines = ["| epochs | baseline test err | cutmix_paper test err | cutmix_paper - baseline (95 % CI) | verdict | "
             "baseline train err | cutmix_paper train err |", "|---|---|---|---|---|---|---|"]

    def cell(s: Summary | None) -> str:
        return "–" if s is None else f"{s.mean:.2f} ± {s.std:.2f}"

    for row in analysis.budgets:
        d = row.diff
        lo, hi = d.ci95
        ci = "–" if lo is None else f"{lo:+.2f} to {hi:+.2f}"
        lines.append(f"| {row.epochs} | {cell(row.test[BASELINE])} | {cell(row.test[CUTMIX_PAPER])} | {d.diff:+.2f} "
                     f"({ci}) | {d.verdict} | {cell(row.train[BASELINE])} | {cell(row.train[CUTMIX_PAPER])} |")
    n = analysis.budgets[0].test[BASELINE].n
    return "\n".join([f"Test top-1 error (%), mean ± std over {n} seeds; train error on the clean training split.",
                      "", *lines, "", format_crossover(analysis.crossover)])
