"""The entries of the stage results (pipelines/results.py): one retrained variant, one retrain seed, one evaluated
model, one training budget (and the budget axis' analysis, which study.plots draws). Frozen dataclasses built from
study.stats' `Summary` and `Comparison`.

Each has `to_dict`, the JSON shape its stage's summary.json has always had (a variant's metrics sit beside its
"seeds", a seed's metrics beside its run directory, a budget's arms beside its epochs: flat, as the dicts were), and
`from_dict`, its inverse, so summaries written before these types existed load as they are. Mappings keyed by user
data (metric name, arm) stay dicts of entries. A leaf module (study.stats only) so that pipelines.results, the
budget axis and the evaluation report can all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict

from study.stats import Comparison, Crossover, Summary

__all__ = ["BudgetAnalysis", "BudgetRow", "Fidelity", "FidelityRung", "ModelRow", "Race", "RaceRound", "RaceSetting",
           "RaceWinner", "SeedRun", "VariantSummary"]


@dataclass(frozen=True)
class SeedRun:
    """One retrained model: its `seed` (the run's train.seed), mixing `method`, run directory, final `metrics`
    (metric name -> value: top-1/top-5 error and clean train error in percent, loss in nats; NaN where the run did
    not log one) and `task`: when and where it ran (study.cluster.tasks: started, ended in Unix seconds, pid), None
    for a seed read back from a run that did not record it."""

    seed: int
    method: str
    run_dir: str
    metrics: dict[str, float]
    task: dict[str, float] | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("seed", "method", "run_dir", "task")  # the row's own; the other keys: metrics

    def to_dict(self) -> dict[str, object]:
        return {"seed": self.seed, "method": self.method, "run_dir": self.run_dir, **self.metrics, "task": self.task}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeedRun:
        return cls(d["seed"], d["method"], d["run_dir"], {k: v for k, v in d.items() if k not in cls.KEYS},
                   d.get("task"))


@dataclass(frozen=True)
class VariantSummary:
    """One retrained variant: its seeds' runs, in seed order, and per reported metric (name -> `Summary` over the
    seeds, in the metric's units: percent for errors)."""

    seeds: tuple[SeedRun, ...]
    metrics: dict[str, Summary]

    def to_dict(self) -> dict[str, object]:
        return {"seeds": [s.to_dict() for s in self.seeds], **{m: s.to_dict() for m, s in self.metrics.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VariantSummary:
        return cls(tuple(SeedRun.from_dict(s) for s in d["seeds"]),
                   {m: Summary.from_dict(s) for m, s in d.items() if m != "seeds"})


@dataclass(frozen=True)
class ModelRow:
    """One evaluated model (a variant's seed) of the evaluate stage: its seed index, checkpoint path, `origin`
    (train, checkpoint, retrain, trial), MLflow run id (None when it has none), `metrics` (metric name -> value,
    study.evaluation.suite.evaluate_model: errors, accuracies and AUROCs in percent, ECE in percent, NLL in nats),
    `seconds` per evaluation (wall seconds) and `info` (evaluate_model's record of how it was measured: image and
    CAM size, OOD sets and kinds, the priors; heterogeneous JSON, hence `Any`)."""

    seed: int
    checkpoint: str
    origin: str
    run_id: str | None
    metrics: dict[str, float]
    seconds: dict[str, float]
    info: dict[str, Any]

    # the row's own keys; every other key is a metric
    KEYS: ClassVar[tuple[str, ...]] = ("seed", "checkpoint", "origin", "run_id", "seconds", "info")

    def to_dict(self) -> dict[str, object]:
        return {"seed": self.seed, "checkpoint": self.checkpoint, "origin": self.origin, "run_id": self.run_id,
                **self.metrics, "seconds": self.seconds, "info": self.info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelRow:
        return cls(d["seed"], d["checkpoint"], d["origin"], d["run_id"],
                   {k: v for k, v in d.items() if k not in cls.KEYS}, d["seconds"], d["info"])


@dataclass(frozen=True)
class BudgetRow:
    """One training budget of the budget axis (study.training.budget.analyse): `epochs` (the whole schedule),
    per arm (baseline, cutmix_paper) the `Summary` of its test top-1 error (percent) and of its clean train error
    (None when a run did not measure it), and `diff`: cutmix_paper - baseline in percentage points, Welch."""

    epochs: int
    test: dict[str, Summary]
    train: dict[str, Summary | None]
    diff: Comparison

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"epochs": self.epochs}
        for arm, stat in self.test.items():  # each arm's test summary, then its train summary, as analyse wrote them
            train = self.train.get(arm)
            out |= {arm: stat.to_dict(), f"{arm}_train": train.to_dict() if train is not None else None}
        return out | {"diff": self.diff.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BudgetRow:
        arms = [k for k in d if k not in ("epochs", "diff") and not k.endswith("_train")]
        train = {a: Summary.from_dict(d[f"{a}_train"]) if d.get(f"{a}_train") is not None else None for a in arms}
        return cls(d["epochs"], {a: Summary.from_dict(d[a]) for a in arms}, train, Comparison.from_dict(d["diff"]))


@dataclass(frozen=True)
class BudgetAnalysis:
    """study.training.budget.analyse's result: the metric compared (test top-1 error, percent), one row per budget
    (increasing) and the crossover budget (epochs). Not written as a whole (BudgetResult holds its rows and
    crossover), so it has no `to_dict`; here rather than in study.training.budget so that study.plots can draw it
    without importing the study.training package (whose runner imports study.plots)."""

    metric: str
    budgets: list[BudgetRow]
    crossover: Crossover


# ---------------------------------------------------------------------------------------------------------------
# The study's two records: typed dicts, not dataclasses, because they are JSON read by key everywhere they go (the
# decision rule, the race plot, the notebook, summaries written before these types) and a TypedDict names their
# keys and value types for the type checker without changing one byte of summary.json.


class FidelityRung(TypedDict):
    """One ASHA rung: Spearman's rho (and its p-value) between the smoothed metric at `epoch` and at the final
    epoch, over `n` trials; rho and p are None where undefined."""

    epoch: int
    rho: float | None
    p: float | None
    n: int


class Fidelity(TypedDict, total=False):
    """study.search.fidelity.measure's record (StudyResult.fidelity; {} when the study measured none)."""

    metric: str
    epochs: int  # the final epoch the rungs are compared with
    smooth_epochs: int
    trials: int  # trials that reached `epochs`
    rungs: list[FidelityRung]
    min_rho: float | None
    reason: str  # why nothing was measured; "" when measured
    warning: str  # the sentence for the worst rung below RHO_WARN; "" otherwise


class RaceWinner(TypedDict):
    name: str
    label: str
    params: dict[str, Any]  # dotted parameter names -> values


class RaceSetting(TypedDict):
    """One raced setting: a trial's or a reference's (baseline, cutmix_paper)."""

    label: str
    trial_id: str | None
    params: dict[str, Any]
    values: list[float]  # its metric on each race seed it ran
    fate: str  # "winner", "eliminated r<k> ...", "tie r<k> ..."
    round: int  # the last round it ran in


class RaceRound(TypedDict):
    round: int
    seeds: int
    survivors: list[str]
    friedman_p: float | None
    best: str
    tests: dict[str, dict[str, float]]  # setting -> its pairwise test against the round's best
    eliminated: list[str]


class Race(TypedDict, total=False):
    """study.search.race.run_race's record (StudyResult.race; {} when the study ran no race)."""

    rule: str
    metric: str
    smooth_epochs: int
    verdict: str
    winner: RaceWinner | None  # None when no setting was distinguishable
    survivors: list[str]
    settings: dict[str, RaceSetting]
    rounds: list[RaceRound]
    wall_s: float
