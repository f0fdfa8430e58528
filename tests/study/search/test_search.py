"""study.search's pure parts, without starting Ray: which parameters apply, the grid, the default points, and the
define-by-run space as Optuna samples it."""

from __future__ import annotations

import itertools

import optuna
import pytest

from study.config.load import load_config
from study.config.schema import ConfigError, CutMixConfig
from study.config.validate import validate_study
from study.search.space import CONDITIONAL, DefineByRun, applies, default_points, grid_points, ordered_space

METHODS = ("cutmix", "mixup", "cutout", "none")


def cfg_with(*overrides: str, space: dict[str, str] | None = None):
    """A config whose search space is exactly `space` (dotted name -> YAML dimension)."""
    sets = ["search.space={}", *(f"search.space.{k}={v}" for k, v in (space or {}).items())]
    return load_config(None, [*overrides, *sets])


# ---------------------------------------------------------------------------------------------------------------
# applies


@pytest.mark.parametrize(("method", "prob"), list(itertools.product(METHODS, (0.0, 0.3, 1.0))))
def test_conditional_parameters_apply_exactly_when_the_config_mixes(method, prob):
    base = load_config()
    chosen = {"cutmix.method": method, "cutmix.prob": prob}
    mixes = CutMixConfig(method=method, prob=prob).mixes
    assert applies("cutmix.mode", chosen, base) is mixes
    assert applies("cutmix.label_smoothing", chosen, base) is mixes
    assert applies("cutmix.alpha", chosen, base) is (mixes and method in ("cutmix", "mixup"))
    assert applies("cutmix.cutout_size", chosen, base) is (mixes and method == "cutout")
    for always in ("cutmix.method", "cutmix.prob", "model.arch", "train.lr", "train.weight_decay"):
        assert applies(always, chosen, base) is True


def test_applies_falls_back_to_the_base_config_for_values_not_chosen_yet():
    baseline = load_config(None, ["cutmix.prob=0.0"])
    assert not applies("cutmix.alpha", {}, baseline)  # the base does not mix
    assert applies("cutmix.alpha", {"cutmix.prob": 0.5}, baseline)  # the chosen p overrides it
    cutout = load_config(None, ["cutmix.method=cutout", "cutmix.prob=1.0"])
    assert not applies("cutmix.alpha", {}, cutout) and applies("cutmix.cutout_size", {}, cutout)
    assert applies("cutmix.alpha", {"cutmix.method": "mixup"}, cutout)
    assert set(CONDITIONAL) == {"cutmix.alpha", "cutmix.mode", "cutmix.cutout_size", "cutmix.label_smoothing"}


def test_method_and_prob_are_decided_first():
    cfg = cfg_with(space={"train.lr": "{type: loguniform, low: 0.01, high: 0.1}",
                          "cutmix.alpha": "{type: uniform, low: 0.5, high: 2.0}",
                          "cutmix.prob": "{type: uniform, low: 0.0, high: 1.0}",
                          "model.arch": "{type: choice, values: [cnn]}",
                          "cutmix.method": "{type: choice, values: [cutmix, none]}"})
    assert [n for n, _ in ordered_space(cfg)] == ["cutmix.method", "cutmix.prob", "train.lr", "cutmix.alpha",
                                                  "model.arch"]


# ---------------------------------------------------------------------------------------------------------------
# grid_points


def test_grid_holds_each_effective_combination_once_in_listed_order():
    cfg = cfg_with(space={"cutmix.alpha": "{type: choice, values: [0.5, 2.0]}",
                          "cutmix.prob": "{type: choice, values: [0.0, 1.0]}",
                          "model.arch": "{type: choice, values: [cnn, resnet20]}"})
    assert grid_points(cfg) == [
        {"cutmix.prob": 0.0, "model.arch": "cnn"},  # p=0: alpha does not apply, so one baseline per arch
        {"cutmix.prob": 0.0, "model.arch": "resnet20"},
        {"cutmix.prob": 1.0, "cutmix.alpha": 0.5, "model.arch": "cnn"},
        {"cutmix.prob": 1.0, "cutmix.alpha": 0.5, "model.arch": "resnet20"},
        {"cutmix.prob": 1.0, "cutmix.alpha": 2.0, "model.arch": "cnn"},
        {"cutmix.prob": 1.0, "cutmix.alpha": 2.0, "model.arch": "resnet20"},
    ]


def test_grid_over_methods_drops_what_each_method_ignores():
    cfg = cfg_with("cutmix.prob=1.0", space={"cutmix.method": "{type: choice, values: [cutmix, cutout, none]}",
                                             "cutmix.alpha": "{type: choice, values: [0.5, 2.0]}",
                                             "cutmix.cutout_size": "{type: choice, values: [0.25, 0.5]}"})
    points = grid_points(cfg)
    # 2 alphas for cutmix, 2 sizes for cutout, 1 for none: 5 of the 12 raw combinations are distinct.
    assert points == [
        {"cutmix.method": "cutmix", "cutmix.alpha": 0.5},
        {"cutmix.method": "cutmix", "cutmix.alpha": 2.0},
        {"cutmix.method": "cutout", "cutmix.cutout_size": 0.25},
        {"cutmix.method": "cutout", "cutmix.cutout_size": 0.5},
        {"cutmix.method": "none"},
    ]
    for p in points:  # every point carries exactly the parameters that apply to it
        assert {n for n, _ in ordered_space(cfg) if applies(n, p, cfg)} == set(p)


def test_grid_needs_listed_values():
    cfg = cfg_with("search.algorithm=grid", space={"cutmix.prob": "{type: choice, values: [0.0, 1.0]}",
                                                   "train.lr": "{type: loguniform, low: 0.01, high: 0.1}"})
    with pytest.raises(ConfigError, match=r"search.space.train.lr has type loguniform .*type: choice"):
        validate_study(cfg)


# ---------------------------------------------------------------------------------------------------------------
# default_points


def test_default_points_are_the_papers_defaults_then_the_baseline():
    cfg = load_config()  # the default: alpha loguniform [0.1, 4], p uniform [0, 1]; alpha=1, p=0.5; cnn width 16
    assert default_points(cfg) == [
        {"cutmix.prob": 0.5, "cutmix.alpha": 1.0, "model.arch": "cnn", "model.width": 16},
        {"cutmix.prob": 0.0, "model.arch": "cnn", "model.width": 16},  # no mixing: alpha does not apply
    ]


def test_default_points_clip_to_the_space():
    cfg = cfg_with("cutmix.alpha=10.0", "model.arch=cnn", "train.epochs=7",
                   space={"cutmix.alpha": "{type: uniform, low: 0.1, high: 4.0}",
                          "train.epochs": "{type: int, low: 2, high: 5}",
                          "model.arch": "{type: choice, values: [resnet20, resnet56]}",
                          "cutmix.prob": "{type: choice, values: [0.0, 0.5]}"})
    first, baseline = default_points(cfg)
    # alpha clipped to the bound, the int clipped and an int, a choice without the base value takes its first.
    assert first == {"cutmix.prob": 0.5, "cutmix.alpha": 4.0, "train.epochs": 5, "model.arch": "resnet20"}
    assert isinstance(first["train.epochs"], int)
    assert baseline == {"cutmix.prob": 0.0, "train.epochs": 5, "model.arch": "resnet20"}


def test_baseline_by_method_when_p_cannot_be_zero():
    cfg = cfg_with(space={"cutmix.prob": "{type: uniform, low: 0.2, high: 1.0}",
                          "cutmix.method": "{type: choice, values: [cutmix, none]}",
                          "cutmix.alpha": "{type: uniform, low: 0.5, high: 2.0}"})
    assert default_points(cfg) == [{"cutmix.method": "cutmix", "cutmix.prob": 0.5, "cutmix.alpha": 1.0},
                                    {"cutmix.method": "none", "cutmix.prob": 0.5}]


def test_no_baseline_when_the_space_cannot_express_one():
    cfg = cfg_with(space={"cutmix.prob": "{type: uniform, low: 0.2, high: 1.0}",
                          "cutmix.alpha": "{type: uniform, low: 0.5, high: 2.0}"})
    assert default_points(cfg) == [{"cutmix.prob": 0.5, "cutmix.alpha": 1.0}]
    already = cfg_with("cutmix.prob=0.0", space={"cutmix.prob": "{type: choice, values: [0.0, 1.0]}",
                                                 "cutmix.alpha": "{type: uniform, low: 0.5, high: 2.0}"})
    assert default_points(already) == [{"cutmix.prob": 0.0}]  # the defaults are the baseline: one point


# ---------------------------------------------------------------------------------------------------------------
# The define-by-run space, sampled by a real Optuna study (no Ray)


def sampled(cfg, n: int) -> list[dict]:
    """The params of `n` trials a real Optuna study (random sampler) draws from the define-by-run space."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = DefineByRun(cfg)
    seen = []
    for _ in range(n):
        trial = study.ask()
        space(trial)
        seen.append(trial.params)
        study.tell(trial, 0.0)
    return seen


def test_define_by_run_samples_alpha_only_where_it_applies():
    cfg = cfg_with(space={"cutmix.prob": "{type: choice, values: [0.0, 1.0]}",
                          "cutmix.alpha": "{type: loguniform, low: 0.2, high: 3.0}",
                          "train.batch_size": "{type: int, low: 16, high: 64}",
                          "model.arch": "{type: choice, values: [cnn, resnet20]}"})
    seen = sampled(cfg, 40)
    assert {p["cutmix.prob"] for p in seen} == {0.0, 1.0}
    for p in seen:
        assert ("cutmix.alpha" in p) is (p["cutmix.prob"] > 0)
        assert 0.2 <= p.get("cutmix.alpha", 1.0) <= 3.0
        assert isinstance(p["train.batch_size"], int) and 16 <= p["train.batch_size"] <= 64
        assert p["model.arch"] in ("cnn", "resnet20")


def test_nothing_here_started_ray():
    import ray

    assert not ray.is_initialized()


# ---------------------------------------------------------------------------------------------------------------
# Per-architecture parameters (Dimension.when)

ARCH_SPACE = {"cutmix.prob": "{type: choice, values: [0.0, 0.5]}",
              "model.width": "{type: choice, values: [8, 16], when: {model.arch: cnn}}",
              "model.arch": "{type: choice, values: [cnn, resnet20]}"}


def test_a_per_architecture_parameter_applies_only_under_its_architecture():
    cfg = cfg_with(space=ARCH_SPACE)
    assert [n for n, _ in ordered_space(cfg)][:2] == ["cutmix.prob", "model.arch"]  # the condition is decided first
    assert applies("model.width", {"model.arch": "cnn"}, cfg)
    assert not applies("model.width", {"model.arch": "resnet20"}, cfg)
    assert applies("model.width", {}, cfg) is (cfg.model.arch == "cnn")  # falls back to the base config's arch


def test_grid_and_default_points_honour_the_condition():
    cfg = cfg_with("model.arch=cnn", "model.width=16", space=ARCH_SPACE)
    points = grid_points(cfg)
    assert points == [
        {"cutmix.prob": 0.0, "model.arch": "cnn", "model.width": 8},
        {"cutmix.prob": 0.0, "model.arch": "cnn", "model.width": 16},
        {"cutmix.prob": 0.0, "model.arch": "resnet20"},
        {"cutmix.prob": 0.5, "model.arch": "cnn", "model.width": 8},
        {"cutmix.prob": 0.5, "model.arch": "cnn", "model.width": 16},
        {"cutmix.prob": 0.5, "model.arch": "resnet20"},
    ]
    assert default_points(cfg) == [{"cutmix.prob": 0.5, "model.arch": "cnn", "model.width": 16},
                                   {"cutmix.prob": 0.0, "model.arch": "cnn", "model.width": 16}]


def test_define_by_run_samples_a_per_architecture_parameter_only_under_it():
    cfg = cfg_with(space=ARCH_SPACE)
    seen = sampled(cfg, 30)
    assert {p["model.arch"] for p in seen} == {"cnn", "resnet20"}
    for p in seen:
        assert ("model.width" in p) is (p["model.arch"] == "cnn")
