"""The search space of a study, as pure functions of the config (no Ray, no Optuna import at module level).

alpha only matters when the method mixes (cutmix/mixup) and p > 0: the space is define-by-run, so alpha is not
even sampled for a baseline trial and its `results.parquet` cell is empty, and the grid holds each *effective*
combination once (p=0 runs once per architecture, not once per alpha). The paper's defaults (alpha=1, p=0.5,
Yun et al. 2019) and the no-mixing baseline are the points evaluated first.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

from study.config.schema import Dimension, PipelineConfig

# Parameters that only exist when the batch is actually mixed.
CONDITIONAL = ("cutmix.alpha", "cutmix.mode", "cutmix.cutout_size", "cutmix.label_smoothing")


def applies(name: str, params: Mapping[str, Any], base: PipelineConfig) -> bool:
    """Whether parameter `name` has any effect given the values chosen so far (or the base config's): alpha only
    where the batch is mixed, and a dimension with `when` (a per-architecture parameter) only where each condition
    holds."""
    dim = base.search.space.get(name)
    if dim is not None and dim.when and not all(_holds(params.get(k, _flat_get(base, k)), want)
                                                for k, want in dim.when.items()):
        return False
    method = params.get("cutmix.method", base.cutmix.method)
    mixed = dataclasses.replace(base.cutmix, method=method, prob=params.get("cutmix.prob", base.cutmix.prob)).mixes
    if name == "cutmix.alpha":
        return mixed and method in ("cutmix", "mixup")
    if name == "cutmix.cutout_size":
        return mixed and method == "cutout"
    if name in CONDITIONAL:
        return mixed
    return True


def _holds(value: Any, want: Any) -> bool:
    return value in want if isinstance(want, list | tuple) else value == want


def ordered_space(cfg: PipelineConfig) -> list[tuple[str, Dimension]]:
    """Method, p and every dimension a `when` names first (they decide which other parameters apply), then the rest
    in config order."""
    conditions = [k for d in cfg.search.space.values() for k in d.when]
    first = list(dict.fromkeys(n for n in ("cutmix.method", "cutmix.prob", *conditions) if n in cfg.search.space))
    rest = [n for n in cfg.search.space if n not in first]
    return [(n, cfg.search.space[n]) for n in first + rest]


def suggest(trial: Any, name: str, dim: Dimension) -> Any:
    """One Optuna suggestion for a Dimension."""
    if dim.type == "choice":
        return trial.suggest_categorical(name, list(dim.values))
    if dim.type == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high))
    return trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.type == "loguniform")


class DefineByRun:
    """Optuna define-by-run space: conditional parameters are only suggested where they apply. A module-level
    class, not a closure, because Tune pickles the searcher (and this space) with the experiment for resume."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for name, dim in ordered_space(self.cfg):
            if applies(name, chosen, self.cfg):
                chosen[name] = suggest(trial, name, dim)


def grid_points(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every effective combination of the listed values exactly once, in listed order (a grid's dimensions are
    `choice`s: `study.config.validate.validate_study` checked it)."""
    space = ordered_space(cfg)
    points, seen = [], set()
    for combo in itertools.product(*(d.values for _, d in space)):
        point: dict[str, Any] = {}
        for (name, _), value in zip(space, combo):
            if applies(name, point, cfg):
                point[name] = value
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points


def _nearest(dim: Dimension, value: Any) -> Any:
    """`value` if the dimension allows it, else the closest allowed value (first choice for categoricals)."""
    if dim.type == "choice":
        return value if value in dim.values else dim.values[0]
    clipped = min(max(value, dim.low), dim.high)
    return int(round(clipped)) if dim.type == "int" else float(clipped)


def default_points(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """The config's own values (the paper's defaults in our configs: alpha=1, p=0.5) and the no-mixing baseline
    (p=0, or method=none when only the method is searched), restricted to the searched parameters."""
    base = {name: _nearest(dim, _flat_get(cfg, name)) for name, dim in ordered_space(cfg)}
    points = [{k: v for k, v in base.items() if applies(k, base, cfg)}]
    space = cfg.search.space
    baseline = dict(base)
    if "cutmix.prob" in space and _nearest(space["cutmix.prob"], 0.0) == 0.0:
        baseline["cutmix.prob"] = 0.0
    elif "cutmix.method" in space and "none" in space["cutmix.method"].values:
        baseline["cutmix.method"] = "none"
    else:
        return points  # the space cannot express "no mixing"
    points.append({k: v for k, v in baseline.items() if applies(k, baseline, cfg)})
    return points if points[1] != points[0] else points[:1]


def _flat_get(cfg: PipelineConfig, name: str) -> Any:
    node: Any = cfg
    for part in name.split("."):
        node = getattr(node, part)
    return node


def typed_value(dim: Dimension, value: Any) -> Any:
    """A parameter's value read back from a table (results.parquet holds numeric columns as float, NaN where a
    parameter did not apply) in its dimension's own type: an int for `int`, the listed value for `choice`."""
    if hasattr(value, "item"):  # numpy scalars from pandas
        value = value.item()
    if dim.type == "int":
        return int(round(value))
    if dim.type == "choice":
        return next((v for v in dim.values if v == value), value)
    return value


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted-name parameters of a trial (grid trials nest them under "params")."""
    return dict(config.get("params", config))
