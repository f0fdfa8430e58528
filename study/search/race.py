"""The race after the search (issue 15): the study's top settings, `cutmix_paper` and the baseline re-run with fresh
seeds on the study's train/val split, eliminated in rounds, so a winner is declared only when it beats the rest
resolvably, never because one seed's val curve dipped lowest.

The rule, as stated in every summary (RULE): racing after F-race (Birattari et al. 2002, "A Racing Algorithm for
Configuring Metaheuristics") with irace's paired t-test and Holm correction (López-Ibáñez et al. 2016, "The irace
package", its `t-test-holm` option). Each round every surviving setting is trained with `search.race_seeds` new
seeds (the same seeds for all: seed is the block), and its value per seed is the mean of the primary metric over
its last `search.smooth_epochs` epochs (default 1: the final epoch, not the best one). Then, on all seeds so far:

1. with three or more survivors, Friedman's test across the survivors blocked by seed (scipy.stats.
   friedmanchisquare); p >= alpha eliminates nobody this round (F-race's gate);
2. otherwise (or with two survivors directly) the best survivor is the one with the best mean, and each other
   survivor is compared with it by a two-sided paired t-test over seeds (scipy.stats.ttest_rel); the p-values are
   Holm-corrected (study.stats.holm) and those with adjusted p < alpha and a worse mean are eliminated.
   Differences without any spread (too few seeds, a discrete metric) are not resolved (p = 1).

The race stops when one setting is left (the winner: it beat every other resolvably) or after `search.race_rounds`
rounds; then the survivors tie and the study says "no setting distinguishable from <best>: <the others>". The rule
is symmetric in the settings (the references race under the same rule as the trials), so the design does not
decide the answer.

Seeds are fresh (train.seed + RACE_SEED_OFFSET + j): the trial's own seed is what made it look good. The pure rule
(`decide`, `race`) knows nothing of training; `run_race` trains the runs as Ray tasks (study.cluster.tasks, each
with `search.resources_per_trial`), each resumable from its run directory `<output>/race/<setting>/seed<j>/`, and
logs each as an MLflow child of the study run (through the tracker's run interface, tag `cutmix.stage=race`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.cluster.tasks import run_seed_tasks
from study.config.load import replace
from study.config.schema import flatten, to_dict
from study.search.fidelity import smooth_key, smoothed_history
from study.search.space import typed_value
from study.stats import holm
from study.summaries import Race
from study.training.references import BASELINE, CUTMIX_PAPER, REFERENCES, mixing_key, reference_config
from study.training.runner import Progress, log_seed_run, read_finished, train_seed

RULE = ("F-race (Birattari et al. 2002) with irace's t-test-holm (López-Ibáñez et al. 2016): per round, new seeds "
        "for every survivor; with >= 3 survivors a Friedman test blocked by seed gates the round (p < {alpha}); "
        "then each survivor vs the best mean by a two-sided paired t-test over seeds, Holm-corrected, eliminated "
        "when adjusted p < {alpha} and worse; a winner only when it alone survives, else a tie after {rounds} "
        "rounds of {seeds} seeds")
RACE_SEED_OFFSET = 1000  # race seeds start here above train.seed: none of them is a seed the search used
STAGE_TAG = "race"


# ---------------------------------------------------------------------------------------------------------------
# The rule (pure)


@dataclass(frozen=True)
class RoundResult:
    """One round's decision: seeds so far per setting, the Friedman p-value (None with two survivors), the best
    survivor, per other survivor {diff (worse is positive), p, p_holm}, and who left."""

    round: int
    seeds: int
    survivors: tuple[str, ...]
    friedman_p: float | None
    best: str
    tests: dict[str, dict[str, float]]
    eliminated: tuple[str, ...]


@dataclass(frozen=True)
class RaceOutcome:
    winner: str | None
    survivors: tuple[str, ...]
    fate: dict[str, str]  # setting -> "winner r2", "eliminated r1: worse than X by 3.1 (Holm p=0.01, n=4)", "tie r3"
    reached: dict[str, int]  # setting -> the last round it ran in
    rounds: list[RoundResult]
    verdict: str
    values: dict[str, list[float]] = field(default_factory=dict)  # setting -> its value per race seed


def _paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p-value of a vs b; 1 when the differences have no spread (nothing to judge by)."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b)]
    if len(diffs) < 2 or max(diffs) - min(diffs) <= 1e-12 * max(1.0, max(abs(d) for d in diffs)):
        return 1.0
    p = float(stats.ttest_rel(a, b).pvalue)
    return 1.0 if math.isnan(p) else p


def decide(values: Mapping[str, Sequence[float]], survivors: Sequence[str], *, round: int, alpha: float = 0.05,
           mode: str = "min") -> RoundResult:
    """One round of the rule (module docstring) on `values` (setting -> value per seed, the same seeds in the same
    order for every survivor; extra trailing values of eliminated settings are ignored)."""
    from scipy import stats


    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} is not allowed (min or max)")
    sign = 1.0 if mode == "min" else -1.0  # the rule works on "lower is better"
    n = min(len(values[s]) for s in survivors)
    table = {s: [sign * float(v) for v in values[s][:n]] for s in survivors}
    means = {s: sum(v) / n for s, v in table.items()}
    best = min(survivors, key=lambda s: (means[s], list(survivors).index(s)))
    friedman = None
    if len(survivors) >= 3 and n >= 2:
        stat = stats.friedmanchisquare(*(table[s] for s in survivors))
        friedman = 1.0 if math.isnan(stat.pvalue) else float(stat.pvalue)
    others = [s for s in survivors if s != best]
    raw = [_paired_p(table[s], table[best]) for s in others]
    adjusted = holm(raw) if others else []
    tests = {s: {"diff": means[s] - means[best], "p": p, "p_holm": q} for s, p, q in zip(others, raw, adjusted)}
    gate = friedman is None or friedman < alpha
    out = tuple(s for s in others if gate and tests[s]["p_holm"] < alpha and tests[s]["diff"] > 0)
    return RoundResult(round, n, tuple(survivors), friedman, best, tests, out)


def race(names: Sequence[str], evaluate: Callable[[list[str], range], Mapping[str, Sequence[float]]], *,
         seeds_per_round: int = 2, rounds: int = 3, alpha: float = 0.05, mode: str = "min",
         labels: Mapping[str, str] | None = None) -> RaceOutcome:
    """Race `names` (distinct settings) by the rule. `evaluate(survivors, seed_indices)` returns each survivor's
    value for each of those seed indices (in order); it is called once per round with the next `seeds_per_round`
    indices. Returns who won or who tied, each setting's fate and the rounds."""
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"a race needs two or more distinct settings, got {list(names)}")
    label = dict(labels or {})
    name_of = lambda s: label.get(s, s)  # noqa: E731 - a local shorthand
    values: dict[str, list[float]] = {s: [] for s in names}
    alive, fate, reached, history = list(names), {}, {}, []
    for r in range(1, rounds + 1):
        new = evaluate(list(alive), range((r - 1) * seeds_per_round, r * seeds_per_round))
        for s in alive:
            got = [float(v) for v in new[s]]
            if len(got) != seeds_per_round:
                raise ValueError(f"evaluate returned {len(got)} values for {s} (expected {seeds_per_round})")
            values[s] += got
            reached[s] = r
        result = decide(values, alive, round=r, alpha=alpha, mode=mode)
        history.append(result)
        for s in result.eliminated:
            t = result.tests[s]
            fate[s] = (f"eliminated r{r}: worse than {name_of(result.best)} by {t['diff']:.2f} (Holm p="
                       f"{t['p_holm']:.3g}, n={result.seeds})")
        alive = [s for s in alive if s not in result.eliminated]
        if len(alive) == 1:
            break
    last = history[-1]
    n = last.seeds
    if len(alive) == 1:
        winner = alive[0]
        fate[winner] = f"winner r{reached[winner]}"
        beaten = ", ".join(name_of(s) for s in names if s != winner)
        verdict = f"{name_of(winner)} wins the race: it beat {beaten} resolvably (n={n} seeds, {len(history)} rounds)"
        return RaceOutcome(winner, (winner,), fate, reached, history, verdict, values)
    best = last.best
    fate[best] = f"tie r{reached[best]}: best mean of the survivors"
    for s in alive:
        if s != best:
            p = last.tests[s]["p_holm"]
            fate[s] = f"tie r{reached[s]}: not distinguishable from {name_of(best)} (Holm p={p:.3g})"
    rest = ", ".join(name_of(s) for s in alive if s != best)
    gate = "" if last.friedman_p is None else f", Friedman p={last.friedman_p:.3g}"
    verdict = (f"no setting distinguishable from {name_of(best)}: {rest} tie with it after {len(history)} rounds "
               f"(n={n} seeds{gate})")
    return RaceOutcome(None, tuple(alive), fate, reached, history, verdict, values)


# ---------------------------------------------------------------------------------------------------------------
# The settings and the runner


@dataclass(frozen=True)
class Setting:
    """One raced setting: `name` (directories, MLflow tags: `trial_<id>`, `baseline`, `cutmix_paper`), a `label`
    for tables, the dotted `params` that make it from the study's config, and the trial it came from (None for a
    reference that no trial coincided with)."""

    name: str
    label: str
    params: dict[str, Any]
    trial_id: str | None = None


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _identity(cfg) -> tuple[Any, ...]:
    """What makes two settings train identically: the mixing (references.mixing_key) and everything else."""


    rest = {k: v for k, v in flatten(cfg).items() if not k.startswith("cutmix.") and k != "search.space"}
    return mixing_key(cfg), json.dumps(rest, sort_keys=True, default=str)


def race_settings(cfg, frame) -> list[Setting]:
    """The top `search.race_top_k` trials (completed ones first, ranked by their final `search.metric`, then
    stopped ones; errors never), `cutmix_paper` and `baseline`. The references take the best trial's parameters
    outside `cutmix.*` (its architecture, lr ...), as retrain does, so they differ from it only in the mixing. A
    trial that trains exactly like a reference (the paper's default point and the p = 0 point are evaluated first)
    is raced once, under the reference's name, and does not count towards the k: the race always holds up to k
    settings besides the two references."""

    s = cfg.search
    # the study's ranking column: the mean of the last search.smooth_epochs epochs, else the final value
    metric = smooth_key(s.primary_metric) if smooth_key(s.primary_metric) in frame else s.primary_metric
    names = [n for n in s.space if n in frame]
    ok = frame[(frame["status"] != "error") & frame[metric].notna()] if metric in frame else frame.iloc[:0]
    order = ok.assign(_done=(ok["status"] != "completed").astype(int))
    order = order.sort_values(["_done", metric], ascending=[True, s.primary_mode == "min"], kind="stable")
    ranked = []
    for _, row in order.iterrows():
        params = {n: typed_value(s.space[n], row[n]) for n in names if not _missing(row[n])}
        ranked.append((str(row["trial_id"]), params))
    shared = {k: v for k, v in (ranked[0][1] if ranked else {}).items() if not k.startswith("cutmix.")}
    base = replace(cfg, shared) if shared else cfg
    refs = {}
    for ref, label in ((CUTMIX_PAPER, "cutmix_paper (α=1 p=0.5)"), (BASELINE, "baseline (p=0)")):
        refs[_identity(reference_config(base, ref))] = Setting(ref, label, {**shared, **REFERENCES[ref]})
    trials: list[Setting] = []
    for trial_id, params in ranked:
        key = _identity(replace(cfg, params))
        ref = refs.get(key)
        if ref is not None:
            if ref.trial_id is None:  # the best-ranked trial that is this reference carries its race result
                refs[key] = Setting(ref.name, f"{ref.label} = trial {trial_id}", params, trial_id)
            continue
        if len(trials) < s.race_top_k:
            shown = " ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                             for k, v in params.items())
            trials.append(Setting(f"trial_{trial_id}", f"trial {trial_id} ({shown})", params, trial_id))
    return trials + list(refs.values())


def setting_config(cfg, setting: Setting, index: int):
    """The config of one race run: the setting on the study's config, race seed `index`, val every epoch and never
    the test split (the race selects; only retrain may look at test)."""

    return replace(cfg, {**setting.params, "train.seed": cfg.train.seed + RACE_SEED_OFFSET + index,
                         "train.eval_test": False})


def run_race(cfg, data, frame, out_dir: Path, parent, *, resume: bool = False,
             log: Callable[[str], None] | None = None) -> Race | None:
    """Race the study's settings (race_settings) by the rule; None when `search.race_top_k` is 0. Each run trains
    on `data.train` and reports `data.val` every epoch into `<out_dir>/race/<setting>/seed<j>/` as a Ray task; with
    `resume` finished runs are read back, not retrained. Each finished run is an MLflow child of `parent` (a
    study.tracking.store.StageRun). Returns a plain dict for StudyResult.race: rule, verdict, winner (name,
    label, params), per setting its label, trial, values, fate and the round it reached, and the rounds."""

    s = cfg.search
    if s.race_top_k <= 0:
        return None
    start = time.perf_counter()
    settings = race_settings(cfg, frame)
    by_name = {st.name: st for st in settings}
    metric, smooth = s.primary_metric, int(s.smooth_epochs or 1)
    root = Path(out_dir) / "race"
    progress = Progress(len(settings) * s.race_seeds, "race")
    done_count = [0]

    def logged(name: str, j: int, rcfg, run_dir: Path, summary: dict[str, Any], rnd: int) -> float:
        log_seed_run(parent, f"race-{name}-seed{j}", {"cutmix.stage": STAGE_TAG, "cutmix.variant": name,
                                                     "cutmix.seed_index": str(j), "cutmix.race_round": str(rnd)},
                     rcfg, run_dir, summary, True)
        return smoothed_history(summary.get("history", []), metric, smooth)

    def evaluate(alive: list[str], seeds: range) -> dict[str, list[float]]:
        rnd = seeds.start // s.race_seeds + 1
        got: dict[tuple[str, int], float] = {}
        jobs = []
        for name in alive:
            for j in seeds:
                rcfg = setting_config(cfg, by_name[name], j)
                run_dir = root / name / f"seed{j}"
                summary = read_finished(run_dir) if resume else None
                if summary is not None:  # finished before: read back, not retrained
                    got[name, j] = logged(name, j, rcfg, run_dir, summary, rnd)
                else:
                    jobs.append(((name, j), {"cfg": to_dict(rcfg), "run_dir": str(run_dir),
                                             "label": f"race {name} seed {j}", "validate": True}))
        progress.total = done_count[0] + len(jobs)

        def finished(key: tuple[str, int], summary: dict[str, Any]) -> None:
            name, j = key
            got[key] = logged(name, j, setting_config(cfg, by_name[name], j), root / name / f"seed{j}", summary, rnd)
            done_count[0] += 1
            progress.update(done_count[0], f"r{rnd} {name} seed {j}: {metric} {got[key]:.2f}")

        if jobs:
            # a race run trains as a trial does (one process), with a trial's resources
            run_seed_tasks(train_seed, jobs, data, s.resources_per_trial, on_done=finished, what="a race task",
                           key="search.resources_per_trial", placement_timeout_s=s.placement_timeout_s)
        return {name: [got[name, j] for j in seeds] for name in alive}

    outcome = race([st.name for st in settings], evaluate, seeds_per_round=s.race_seeds, rounds=s.race_rounds,
                   alpha=s.race_alpha, mode=s.primary_mode, labels={st.name: st.label for st in settings})
    if log is not None:
        log(outcome.verdict)
    winner = by_name[outcome.winner] if outcome.winner is not None else None
    return {
        "rule": RULE.format(alpha=s.race_alpha, rounds=s.race_rounds, seeds=s.race_seeds),
        "metric": metric, "smooth_epochs": smooth, "verdict": outcome.verdict,
        "winner": None if winner is None else {"name": winner.name, "label": winner.label, "params": winner.params},
        "survivors": list(outcome.survivors),
        "settings": {st.name: {"label": st.label, "trial_id": st.trial_id, "params": st.params,
                               "values": outcome.values[st.name], "fate": outcome.fate.get(st.name, ""),
                               "round": outcome.reached.get(st.name, 0)} for st in settings},
        "rounds": [{"round": r.round, "seeds": r.seeds, "survivors": list(r.survivors), "friedman_p": r.friedman_p,
                    "best": r.best, "tests": r.tests, "eliminated": list(r.eliminated)} for r in outcome.rounds],
        "wall_s": time.perf_counter() - start,
    }


def race_rows(race_info: Mapping[str, Any] | None, frame, cfg):
    """`frame` with the race's columns: `race` (the fate: round reached and why it left; None for trials not
    raced), `race/<metric>` (mean over race seeds) and `race/seeds`; a row per reference no trial coincided with
    (status `race`, its params under their dotted names)."""
    import pandas as pd  # lazy: the rule and the runner need no pandas

    frame = frame.copy()
    frame["race"] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    if not race_info:
        return frame
    col = f"race/{race_info['metric']}"
    frame[col] = math.nan
    frame["race/seeds"] = 0
    extra = []
    for name, st in race_info["settings"].items():
        vals = [v for v in st["values"] if not math.isnan(v)]
        mean = sum(vals) / len(vals) if vals else math.nan
        if st["trial_id"] is not None and (frame["trial_id"].astype(str) == st["trial_id"]).any():
            idx = frame.index[frame["trial_id"].astype(str) == st["trial_id"]]
            frame.loc[idx, "race"] = f"{name}: {st['fate']}" if not name.startswith("trial_") else st["fate"]
            frame.loc[idx, col] = mean
            frame.loc[idx, "race/seeds"] = len(st["values"])
        else:
            extra.append({"trial_id": f"race_{name}", "status": "race",
                          **{k: v for k, v in st["params"].items() if k in cfg.search.space},
                          "race": f"{name}: {st['fate']}", col: mean, "race/seeds": len(st["values"])})
    if extra:
        frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    return frame
