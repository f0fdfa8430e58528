"""What each stage returns: a frozen dataclass that writes and reads its own `summary.json`.

The next stage consumes the typed object (or reads it back with `from_dir`), never dict keys: this module is the
only place that knows the keys of a stage summary. Each result lives at `<output>/<stage>/summary.json`, except
`train`, whose run directory is the stage directory (`<output>/train/`, its summary beside metrics.json).

The entries are typed too (study.stats' `Summary`, `Comparison`, `Crossover`; study.summaries' per variant, seed,
model and budget): `to_dict` writes each in the JSON shape the summaries have always had, and a result's `DECODE`
names the `from_dict` of each typed field, so a summary written before the types existed reads back as it is.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from study.atomic import atomic_write_text
from study.stats import Comparison, Crossover, Summary
from study.summaries import BudgetRow, Fidelity, ModelRow, Race, VariantSummary

T = TypeVar("T", bound="StageResult")
E = TypeVar("E")


@runtime_checkable
class _Entry(Protocol):
    def to_dict(self) -> dict[str, object]: ...


def _plain(value: object) -> object:
    """`value` as JSON-ready data: an entry as its `to_dict` (the on-disk shape, which is not always its fields: a
    VariantSummary's metrics sit beside its seeds), dicts, lists and tuples walked, anything else as it is (a
    Path is written by json.dumps' `default=str`)."""
    if isinstance(value, _Entry):  # a study.stats or study.summaries entry
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _each(decode: Callable[[Any], E]) -> Callable[[Mapping[str, Any]], dict[str, E]]:
    """A decoder of a JSON object of entries keyed by user data (variant, metric name) from the entry's decoder."""
    return lambda d: {k: decode(v) for k, v in d.items()}


class ResultError(ValueError):
    """A stage's summary is missing or unreadable; one-line message (exit 2)."""


@dataclass(frozen=True)
class StageResult:
    STAGE: ClassVar[str] = ""
    out_dir: str  # the pipeline's output directory

    @classmethod
    def path(cls, out_dir: str | Path) -> Path:
        return Path(out_dir) / cls.STAGE / "summary.json"

    @classmethod
    def exists(cls, out_dir: str | Path) -> bool:
        return cls.path(out_dir).is_file()

    # field name -> how its JSON value becomes the typed value (fields not named here are plain JSON already)
    DECODE: ClassVar[Mapping[str, Callable[[Any], object]]] = {}

    def to_dict(self) -> dict[str, object]:
        """The summary.json object: every field, entries in their on-disk shape (`_plain`)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """The inverse of `to_dict`; keys that are not fields (a later version's) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: cls.DECODE[k](v) if k in cls.DECODE else v for k, v in data.items() if k in names})

    def to_json(self) -> Path:
        return atomic_write_text(self.path(self.out_dir), json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def from_dir(cls: type[T], out_dir: str | Path) -> T:
        path = cls.path(out_dir)
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: `out_dir` is a file
            raise ResultError(f"{path} not found (run `cutmix-study {cls.STAGE}` there first)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
            data = None
        if not isinstance(data, dict) or "out_dir" not in data:  # also valid JSON that is not a summary: `null`
            raise ResultError(f"{path} is not a readable {cls.STAGE} summary (rerun the stage with --overwrite)")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError):  # an entry without its keys: one line, not a trace
            raise ResultError(f"{path} is not a readable {cls.STAGE} summary (rerun the stage with --overwrite)") \
                from None

    @property
    def stage_dir(self) -> Path:
        return Path(self.out_dir) / self.STAGE


@dataclass(frozen=True)
class TrainResult(StageResult):
    STAGE: ClassVar[str] = "train"
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    epochs: int = 0
    wall_s: float = 0.0
    run_id: str = ""  # the `train` MLflow run


@dataclass(frozen=True)
class StudyResult(StageResult):
    STAGE: ClassVar[str] = "study"
    best_params: dict[str, Any] = field(default_factory=dict)
    best_value: float = float("nan")
    metric: str = "val/top1_err"
    mode: str = "min"
    searched: list[str] = field(default_factory=list)  # the dotted names of the searched parameters
    best_config: str = ""  # path of best_config.yaml
    parent_run_id: str = ""
    tracking_uri: str = ""
    experiment_id: str = ""
    trials: int = 0
    wall_s: float = 0.0
    baseline_value: float | None = None  # the p=0 (or method=none) trial's best value, if the study ran one
    num_val: int = 0  # images in the val split the trials were ranked on
    best_vs_baseline_se: float | None = None  # |best - baseline| in binomial standard errors of the val split
    # Issue 15 (fidelity, reproducibility) and 17 (the stored Optuna study), one block. `fidelity`: the rung-vs-final
    # Spearman rho (study.search.fidelity.measure); best_value and baseline_value are means of the last
    # `smooth_epochs` epochs (0: a summary from before smoothing, whose values are minima over epochs).
    fidelity: Fidelity = field(default_factory=dict)  # {}: not measured
    reproducible: bool | None = None  # whether the trials are a function of search.seed (None: not recorded)
    reproducible_reason: str = ""  # why not, when not
    optuna_storage: str = ""  # the Optuna storage URL (password redacted); "" for a grid (no Optuna study)
    optuna_study: str = ""
    smooth_epochs: int = 0
    # The race (study.search.race, issue 15): its verdict ("" when the study ran none), the winner's dotted params
    # (None when no setting was distinguishable: retrain then trains the references only), and its record (rule,
    # per setting the values, fate and round reached, the rounds).
    race_verdict: str = ""
    winner_params: dict[str, Any] | None = None
    race: Race = field(default_factory=dict)  # {}: no race
    # The decision rule's pick (study.decision.study_pick: name, label, params, reason, tie): what best_config.yaml
    # holds and retrain trains beside the references. {} in a summary from before the rule.
    pick: dict[str, Any] = field(default_factory=dict)

    @property
    def frame(self):
        """results.parquet as a pandas DataFrame, one row per trial."""
        import pandas as pd

        path = Path(self.out_dir) / "results.parquet"
        try:
            return pd.read_parquet(path)
        except FileNotFoundError:
            raise ResultError(f"{path} not found (rerun the study with --overwrite)") from None
        except Exception as exc:  # pyarrow raises several types for a torn file; the user needs one line
            raise ResultError(f"{path} is unreadable ({type(exc).__name__}; truncated?): rerun the study with "
                              "--overwrite") from None


@dataclass(frozen=True)
class RetrainResult(StageResult):
    STAGE: ClassVar[str] = "retrain"
    config: str = ""  # the best config this retrain trained
    epochs: int = 0
    study_run_id: str | None = None
    retrain_run_id: str = ""
    num_test: int = 0
    variants: dict[str, VariantSummary] = field(default_factory=dict)  # variant -> its seeds and metric summaries
    # variant -> metric -> stats.compare(variant, baseline) over seeds (every variant but the baseline)
    comparisons: dict[str, dict[str, Comparison]] = field(default_factory=dict)
    best_run_dir: str = ""
    best_checkpoint: str = ""
    cutmix_gain_top1_points: float | None = None  # baseline - cutmix mean test error: positive when CutMix helps
    # Issue 15's references: variant -> the label a table shows ("cutmix α=0.12 p=0.02 (study winner)"), variant ->
    # a flag ("mixes ~2 % of steps: in effect the baseline", "the study's winner"), the variant that is the study's
    # winner (None: none was retrained) and the study race's verdict ("" when the study ran no race).
    labels: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    winner: str | None = None
    race_verdict: str = ""
    # The decision rule (study.decision): `choice` the variant export, `@champion` and detect use, and why
    # (Choice.to_dict); `export_seed` the seed of it that is exported, chosen without the test split (variant,
    # seed index, rule, its test and clean train error). {} in a summary from before the rule.
    choice: dict[str, Any] = field(default_factory=dict)
    export_seed: dict[str, Any] = field(default_factory=dict)

    DECODE: ClassVar[Mapping[str, Callable[[Any], object]]] = {
        "variants": _each(VariantSummary.from_dict), "comparisons": _each(_each(Comparison.from_dict))}

    def seed_runs(self) -> list[tuple[str, int, Path]]:
        """(variant, seed index, run directory) of every retrained model."""
        return [(v, i, Path(row.run_dir)) for v, stats in self.variants.items() for i, row in enumerate(stats.seeds)]


@dataclass(frozen=True)
class EvaluateResult(StageResult):
    STAGE: ClassVar[str] = "evaluate"
    run_id: str = ""
    num_test: int = 0
    metrics: dict[str, dict[str, Summary]] = field(default_factory=dict)  # variant -> metric -> summary over seeds
    # variant -> metric -> stats.compare against the baseline, with Welch's p (and Holm's, off the primary endpoint)
    comparisons: dict[str, dict[str, Comparison]] = field(default_factory=dict)
    per_seed: dict[str, list[ModelRow]] = field(default_factory=dict)  # variant -> one row per evaluated model
    table: str = ""  # path of the markdown method table
    wall_s: float = 0.0

    DECODE: ClassVar[Mapping[str, Callable[[Any], object]]] = {
        "metrics": _each(_each(Summary.from_dict)), "comparisons": _each(_each(Comparison.from_dict)),
        "per_seed": _each(lambda rows: [ModelRow.from_dict(r) for r in rows])}


@dataclass(frozen=True)
class ExportResult(StageResult):
    STAGE: ClassVar[str] = "export"
    manifest: dict[str, Any] = field(default_factory=dict)
    registered_model: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> Path:
        return self.stage_dir / "backbone.pt"


@dataclass(frozen=True)
class DetectResult(StageResult):
    STAGE: ClassVar[str] = "detect"
    backbone: str = ""
    arch: str = ""
    pretrained_on: str = ""
    data: str = ""
    run_id: str = ""
    map: float = float("nan")
    map_50: float = float("nan")
    random_map_50: float | None = None
    random_map: float | None = None
    gain_map_50: float | None = None
    wall_s: float = 0.0


@dataclass(frozen=True)
class BudgetResult(StageResult):
    """`cutmix-study budget` (pipelines/budget_stage.py): baseline vs cutmix_paper at every training budget."""

    STAGE: ClassVar[str] = "budget"
    run_id: str = ""
    num_test: int = 0
    epochs: list[int] = field(default_factory=list)  # the budgets, increasing
    seeds: int = 0
    # One row per budget, increasing: each arm's test and clean train error, cutmix_paper - baseline
    budgets: list[BudgetRow] = field(default_factory=list)
    crossover: Crossover | None = None  # study.stats.crossover; None (written `{}`, as before) when not measured
    table: str = ""  # path of table.md
    plot: str = ""  # path of test_error_vs_epochs.png
    wall_s: float = 0.0

    DECODE: ClassVar[Mapping[str, Callable[[Any], object]]] = {
        "budgets": lambda rows: [BudgetRow.from_dict(r) for r in rows],
        "crossover": lambda d: Crossover.from_dict(d) if d else None}

    def to_dict(self) -> dict[str, object]:
        # an unmeasured crossover was the empty dict: keep writing it so
        return super().to_dict() | ({"crossover": {}} if self.crossover is None else {})
