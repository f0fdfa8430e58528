"""The decision rule: what a study recommends, and what every later stage acts on (issue 26).

One rule picks what `best_config.yaml`, retrain's main variant, export, the registered model (`@champion`) and
detect use, so the pipeline's product never contradicts its own measurements:

1. **The study's pick** (`study_pick`): the race's winner (it alone survived, study.search.race); after a tie the
   best-evidence survivor: the baseline when it survived (indistinguishable from the best: the simpler setting,
   no mixing, is preferred), else the survivor with the best mean race value. Never a setting the race
   eliminated. Without a race: the best trial by the study's ranking column.
2. **Retrain's check** (`retrain_choice`): the pick is retrained beside the references on train+val and tested.
   When retrain measures it resolvably worse (Welch's 95 % interval of the test-error difference excludes 0,
   study.stats.compare) than another candidate (the references and the pick), the choice falls to the best
   candidate that nothing measured resolvably worse, the race did not eliminate, and, among those, the baseline
   when it is one of them. When every such candidate was eliminated by the race, the retrain measurement (full
   budget, held-out test) decides and the conflict is stated.
3. **The exported seed** (`median_seed`): chosen without the test split: the seed whose clean train error (on the
   train+val data it trained on) is the median of the variant's seeds (the lower middle one for an even count).
   Its test error is reported beside the variant's mean and interval, which stay the unbiased figure.

Pure functions of plain values (no torch, MLflow or Ray), so the rule is tested on planted evidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from study.stats import compare

BASELINE = "baseline"  # study.training.references.BASELINE (kept here so this module stays a leaf)
SEED_RULE = ("the median seed by clean train error on train+val (the lower middle one for an even count); "
             "the test split is not looked at")


@dataclass(frozen=True)
class Pick:
    """The study's pick: `name` (a race setting: `baseline`, `cutmix_paper`, `trial_<id>`; `best_trial` without a
    race), its `label`, the dotted `params` that make it from the study's config, and `reason` (one sentence)."""

    name: str
    label: str
    params: dict[str, Any]
    reason: str
    tie: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "params": dict(self.params), "reason": self.reason,
                "tie": self.tie}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Pick:
        return cls(d["name"], d.get("label", d["name"]), dict(d.get("params") or {}), d.get("reason", ""),
                   bool(d.get("tie", False)))


def _mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else math.nan


def race_eliminated(race: Mapping[str, Any] | None) -> list[str]:
    """The settings a race record (study.search.race.run_race's dict) eliminated, in its order."""
    settings = (race or {}).get("settings") or {}
    return [s for s, st in settings.items() if str(st.get("fate", "")).startswith("eliminated")]


def study_pick(race: Mapping[str, Any] | None, best_params: Mapping[str, Any], *, mode: str = "min") -> Pick:
    """Rule step 1 on a race record (study.search.race.run_race's dict: `winner`, `survivors`, `settings` with
    their `values`, `label`, `params`, `fate`) or, without one, the best trial's `best_params`."""
    if not race:
        return Pick("best_trial", "the best trial", dict(best_params),
                    "no race was run: the best trial by the study's ranking (mean of its last epochs)")
    settings = race["settings"]
    if race.get("winner"):
        w = race["winner"]
        return Pick(w["name"], w.get("label", w["name"]), dict(w["params"]), f"it won the race: {race['verdict']}")
    survivors = [s for s in race.get("survivors", []) if s in settings]
    if not survivors:
        raise ValueError("a race record with neither a winner nor survivors")
    sign = 1.0 if mode == "min" else -1.0
    means = {s: _mean(settings[s]["values"]) for s in survivors}
    best = min(survivors, key=lambda s: (sign * means[s] if not math.isnan(means[s]) else math.inf,
                                         survivors.index(s)))
    gone = [settings[s].get("label", s) for s in race_eliminated(race)]
    out = f"; eliminated: {', '.join(gone)}" if gone else ""
    if BASELINE in survivors:
        st = settings[BASELINE]
        tied = ", ".join(settings[s].get("label", s) for s in survivors if s != BASELINE)
        if best == BASELINE:
            where = f"with the best mean race value ({means[BASELINE]:.2f})"
        else:
            where = (f"indistinguishable from the best mean ({settings[best].get('label', best)}, {means[best]:.2f} "
                     f"vs {means[BASELINE]:.2f})")
        why = (f"tie: the baseline survived the race {where}, tied with {tied}; the rule prefers the baseline "
               f"(no mixing) when the evidence cannot tell them apart{out}")
        return Pick(BASELINE, st.get("label", BASELINE), dict(st["params"]), why, tie=True)
    st = settings[best]
    others = ", ".join(settings[s].get("label", s) for s in survivors if s != best)
    why = (f"tie: the best mean race value among the survivors ({means[best]:.2f}; tied with {others}); the "
           f"baseline was eliminated{out}")
    return Pick(best, st.get("label", best), dict(st["params"]), why, tie=True)


@dataclass(frozen=True)
class Choice:
    """Rule step 2: the retrained `variant` every later stage uses, whether it is the study's pick
    (`overridden` False), the `reason`, and the candidates retrain measured resolvably worse than another one
    (`dominated`: variant -> the sentence saying by whom and how much)."""

    variant: str
    reason: str
    overridden: bool = False
    dominated: dict[str, str] = field(default_factory=dict)
    conflict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "reason": self.reason, "overridden": self.overridden,
                "dominated": dict(self.dominated), "conflict": self.conflict}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Choice:
        return cls(d["variant"], d.get("reason", ""), bool(d.get("overridden", False)), dict(d.get("dominated") or {}),
                   d.get("conflict", ""))


def retrain_choice(pick: str, test_errors: Mapping[str, Sequence[float]], *, eliminated: Sequence[str] = (),
                   labels: Mapping[str, str] | None = None) -> Choice:
    """Rule step 2. `pick`: the variant that is the study's pick; `test_errors`: candidate variant -> its test
    error per seed (%, lower is better); `eliminated`: variants the race eliminated."""
    label = dict(labels or {})
    name = lambda v: label.get(v, v)  # noqa: E731 - a local shorthand
    cands = list(test_errors)
    if pick not in cands:
        raise ValueError(f"the pick {pick!r} is not among the retrained candidates {cands}")
    dominated: dict[str, str] = {}
    for a in cands:
        for b in cands:
            if a == b:
                continue
            c = compare(list(test_errors[a]), list(test_errors[b]), lower_is_better=True)
            if c.verdict == "worse" and a not in dominated:
                lo, hi = c.ci95
                dominated[a] = (f"{name(a)} is resolvably worse than {name(b)} on the test split: {c.diff:+.2f} "
                                f"points (95 % CI {lo:+.2f} to {hi:+.2f}, n = {len(test_errors[a])} and "
                                f"{len(test_errors[b])} seeds)")
    if pick not in dominated:
        return Choice(pick, f"the study's pick, kept: retrain measured no candidate resolvably better than "
                            f"{name(pick)}", False, dominated)
    kept = [v for v in cands if v not in dominated]
    allowed = [v for v in kept if v not in set(eliminated)]
    conflict = ""
    if not allowed:  # every candidate nothing beat was eliminated by the race: the retrain measurement decides
        allowed = kept
        conflict = (f"the race eliminated {', '.join(name(v) for v in kept)}, which retrain measured better: the "
                    "full-budget held-out measurement decides")
    chosen = BASELINE if BASELINE in allowed else min(allowed, key=lambda v: (_mean(test_errors[v]), cands.index(v)))
    why = f"the study's pick was overruled: {dominated[pick]}; {name(chosen)} is the best candidate nothing beat" + \
        (" (the baseline is preferred among those)" if chosen == BASELINE and len(allowed) > 1 else "")
    return Choice(chosen, why, True, dominated, conflict)


def median_seed(train_errors: Sequence[float]) -> int:
    """Rule step 3: the index of the seed whose clean train error is the median (the lower middle one for an even
    count; ties by seed index). The test split is not an argument: it cannot choose."""
    if not train_errors:
        raise ValueError("no seeds to choose from")
    key = [(v if not math.isnan(float(v)) else math.inf, i) for i, v in enumerate(train_errors)]
    return sorted(key)[(len(key) - 1) // 2][1]
