"""study.config.validate, rule family by rule family: every bad value is a one-line ConfigError naming the key and
what is allowed, and the value at the edge of what is allowed passes (so a rule cannot be off by one unnoticed).

tests/study/config/test_config.py covers the `--set`/YAML path and a few values; here `validate` is called directly.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from study.config import schema
from study.config.schema import METHODS, MODES, ConfigError, Dimension, PipelineConfig, ResourcesConfig, with_params
from study.config.validate import validate, validate_dimension, validate_study, validate_workers
from study.metric_names import EPOCH_METRICS, REPORTED

BASE = PipelineConfig()


def _error(params: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(with_params(BASE, params))
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


def _space(**dims: Dimension) -> PipelineConfig:
    return dataclasses.replace(BASE, search=dataclasses.replace(BASE.search, space=dict(dims)))


def _space_error(name: str, dim: Dimension) -> str:
    with pytest.raises(ConfigError) as info:
        validate(_space(**{name: dim}))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_defaults_are_valid():
    validate(BASE)


# ---------------------------------------------------------------------------------------------------------------
# Named choices: the message is exactly `key='value' is not allowed (one of: <every allowed value>)`.

CHOICES = [
    ("data.name", schema.DATASETS), ("model.arch", schema.MODEL_NAMES), ("cutmix.method", METHODS),
    ("cutmix.mode", MODES), ("train.schedule", schema.SCHEDULES), ("search.algorithm", schema.ALGORITHMS),
    ("search.scheduler", schema.SCHEDULERS), ("detect.data", schema.DETECT_DATA),
    ("search.mode", ("min", "max", "auto")),
]


@pytest.mark.parametrize(("key", "allowed"), CHOICES, ids=[c[0] for c in CHOICES])
def test_a_named_choice_lists_every_allowed_value(key, allowed):
    assert _error({key: "nope"}) == f"{key}='nope' is not allowed (one of: {', '.join(allowed)})"
    for value in allowed:
        validate(with_params(BASE, {key: value}))


def test_retrain_methods_each_one_known_and_once():
    assert _error({"retrain.methods": ("none", "fmix")}) == \
        f"retrain.methods='fmix' is not allowed (one of: {', '.join(METHODS)})"
    msg = _error({"retrain.methods": ("cutmix", "none", "cutmix")})
    assert msg == "retrain.methods=['cutmix', 'none', 'cutmix'] is not allowed (each method once)"
    validate(with_params(BASE, {"retrain.methods": METHODS}))


# ---------------------------------------------------------------------------------------------------------------
# Numeric ranges: (the bad params, the params at the edge that pass, what the message must hold: key and allowed).

RANGES = [
    ({"name": ""}, {"name": "a"}, "name='' is not allowed (a non-empty name without '/')"),
    ({"name": "a/b"}, {"name": "a-b"}, "name='a/b' is not allowed"),
    ({"data.image_size": 7, "data.pad": 0}, {"data.image_size": 8, "data.pad": 0},
     "data.image_size=7 is not allowed (>= 8)"),
    ({"data.num_classes": 1}, {"data.num_classes": 2}, "data.num_classes=1 is not allowed (>= 2)"),
    ({"data.synthetic_sizes": (5, 0, 5)}, {"data.synthetic_sizes": (1, 1, 1)},
     "data.synthetic_sizes=[5, 0, 5] (three sizes > 0)"),
    ({"data.val_fraction": 1.0}, {"data.val_fraction": 0.999}, "data.val_fraction=1.0 is not allowed (0 < value < 1)"),
    ({"data.val_fraction": 0.0}, {"data.val_fraction": 0.001}, "data.val_fraction=0.0 is not allowed (0 < value < 1)"),
    ({"data.pad": 32}, {"data.pad": 31}, "data.pad=32 is not allowed (0 <= pad < image_size)"),
    ({"data.pad": -1}, {"data.pad": 0}, "data.pad=-1 is not allowed (0 <= pad < image_size)"),
    ({"data.clutter": -1}, {"data.clutter": 0}, "data.clutter=-1 is not allowed (>= 0 distractor fragments)"),
    ({"data.digit_scale": (0.7, 0.4)}, {"data.digit_scale": (0.5, 0.5)},
     "data.digit_scale=[0.7, 0.4] is not allowed (0 < low <= high <= 1"),
    ({"data.digit_scale": (0.0, 0.5)}, {"data.digit_scale": (0.01, 1.0)}, "data.digit_scale=[0.0, 0.5] is not allowed"),
    ({"data.digit_scale": (0.5, math.nan)}, None, "data.digit_scale=[0.5, nan] is not allowed"),
    ({"data.loader_workers": -2}, {"data.loader_workers": -1},
     "data.loader_workers=-2 is not allowed (-1 auto, 0 in-process, or > 0)"),
    ({"model.depth": -1}, {"model.depth": 0}, "model.depth=-1 is not allowed (0 for the default, or a positive depth)"),
    ({"model.widen": -0.5}, {"model.widen": 0.0}, "model.widen=-0.5 is not allowed (0 for the default, or > 0)"),
    ({"model.width": 0}, {"model.width": 1}, "model.width=0 is not allowed (>= 1)"),
    ({"cutmix.alpha": 0.0}, {"cutmix.alpha": 1e-6}, "cutmix.alpha=0.0 is not allowed (alpha > 0)"),
    ({"cutmix.alpha": math.inf}, None, "cutmix.alpha=inf is not allowed (alpha > 0)"),
    ({"cutmix.alpha": math.nan}, None, "cutmix.alpha=nan is not allowed (alpha > 0)"),
    ({"cutmix.prob": -0.1}, {"cutmix.prob": 0.0}, "cutmix.prob=-0.1 is not allowed (0 <= prob <= 1)"),
    ({"cutmix.prob": math.nan}, {"cutmix.prob": 1.0}, "cutmix.prob=nan is not allowed (0 <= prob <= 1)"),
    ({"cutmix.label_smoothing": 1.0}, {"cutmix.label_smoothing": 0.0},
     "cutmix.label_smoothing=1.0 is not allowed (0 <= value < 1)"),
    ({"cutmix.cutout_size": 0.0}, {"cutmix.cutout_size": 1.0},
     "cutmix.cutout_size=0.0 is not allowed (0 < value <= 1)"),
    ({"train.epochs": 0}, {"train.epochs": 1}, "train.epochs=0 is not allowed (>= 1)"),
    ({"train.batch_size": 1}, {"train.batch_size": 2},
     "train.batch_size=1 is not allowed (>= 2; mixing needs partners)"),
    ({"train.lr": 0.0}, {"train.lr": 1e-9}, "train.lr=0.0 is not allowed (lr > 0)"),
    ({"train.lr": math.inf}, None, "train.lr=inf is not allowed (lr > 0)"),
    ({"train.momentum": 1.0}, {"train.momentum": 0.0}, "train.momentum=1.0 is not allowed (0 <= momentum < 1)"),
    ({"train.weight_decay": -1e-4}, {"train.weight_decay": 0.0}, "train.weight_decay=-0.0001 is not allowed (>= 0)"),
    ({"train.milestones": (0.5, 1.0)}, {"train.milestones": ()},
     "train.milestones=[0.5, 1.0] is not allowed (fractions of epochs in (0, 1))"),
    ({"train.gamma": 0.0}, {"train.gamma": 1.0}, "train.gamma=0.0 is not allowed (0 < gamma <= 1)"),
    ({"train.warmup_epochs": 30}, {"train.warmup_epochs": 29}, "train.warmup_epochs=30 (0 <= value < train.epochs)"),
    ({"train.warmup_epochs": 2, "train.epochs": 2}, {"train.warmup_epochs": 1, "train.epochs": 2},
     "train.warmup_epochs=2"),
    ({"train.device": "gpu"}, {"train.device": "cuda:1"},
     "train.device='gpu' is not allowed (auto, cpu, cuda or cuda:N)"),
    ({"train.test_every": 0}, {"train.test_every": 1}, "train.test_every=0 is not allowed (>= 1)"),
    ({"train.num_threads": -1}, {"train.num_threads": 0}, "train.num_threads=-1 is not allowed (>= 0)"),
    ({"search.num_samples": 0}, {"search.num_samples": 1}, "search.num_samples=0 is not allowed (>= 1)"),
    ({"search.max_concurrent": 0}, {"search.max_concurrent": 1}, "search.max_concurrent=0 is not allowed (>= 1)"),
    ({"search.grace_period": 0}, {"search.grace_period": 1}, "search.grace_period=0 is not allowed (>= 1)"),
    ({"search.checkpoint_every": -1}, {"search.checkpoint_every": 0},
     "search.checkpoint_every=-1 is not allowed (0 for auto, or >= 1)"),
    ({"search.reduction_factor": 1}, {"search.reduction_factor": 2}, "search.reduction_factor=1 is not allowed (>= 2)"),
    ({"search.max_failures": -1}, {"search.max_failures": 0}, "search.max_failures=-1 is not allowed (>= 0)"),
    ({"search.resources_per_trial.cpu": 0.0}, {"search.resources_per_trial.cpu": 0.25},
     "search.resources_per_trial.cpu=0.0 (> 0)"),
    ({"search.resources_per_trial.gpu": -1.0}, {"search.resources_per_trial.gpu": 0.0},
     "search.resources_per_trial.gpu=-1.0 (>= 0)"),
    ({"search.eval_every": 0}, {"search.eval_every": 1}, "search.eval_every=0 is not allowed (>= 1)"),
    ({"search.smooth_epochs": 0}, {"search.smooth_epochs": 1}, "search.smooth_epochs=0 is not allowed (>= 1)"),
    ({"search.optuna_storage": "runs/optuna.db"}, {"search.optuna_storage": "sqlite:///runs/optuna.db"},
     "search.optuna_storage=runs/optuna.db is not allowed (an Optuna RDB URL such as sqlite:///"),
    ({"retrain.resources.cpu": 0.0}, {"retrain.resources.cpu": 0.5},
     "retrain.resources={cpu: 0.0, gpu: 0.0} is not allowed (cpu > 0, gpu >= 0)"),
    ({"detect.resources.gpu": -1.0}, {"detect.resources.gpu": 0.5},
     "detect.resources={cpu: 1.0, gpu: -1.0} is not allowed"),
    ({"evaluate.cam_curve_interval": 1.0}, {"evaluate.cam_curve_interval": 0.5},
     "evaluate.cam_curve_interval=1.0 is not allowed (0 < value < 1)"),
    ({"evaluate.loc_sigma": 0.0}, {"evaluate.loc_sigma": 0.01},
     "evaluate.loc_sigma=0.0 is not allowed (0 < value < 1)"),
    ({"evaluate.robustness_images": 0}, {"evaluate.robustness_images": 1},
     "evaluate.robustness_images=0 is not allowed (>= 1)"),
    ({"evaluate.fgsm_eps": ()}, {"evaluate.fgsm_eps": (1.0,)},
     "evaluate.fgsm_eps=[] is not allowed (one or more values in [0, 1], pixel units)"),
    ({"evaluate.fgsm_eps": (0.0, 1.5)}, {"evaluate.fgsm_eps": (0.0,)}, "evaluate.fgsm_eps=[0.0, 1.5] is not allowed"),
    ({"retrain.seeds": 0}, {"retrain.seeds": 1}, "retrain.seeds=0 is not allowed (>= 1)"),
    ({"retrain.epochs": -1}, {"retrain.epochs": 0}, "retrain.epochs=-1 is not allowed (0 for train.epochs, or > 0)"),
    ({"detect.image_size": 31}, {"detect.image_size": 32}, "detect.image_size=31 is not allowed (>= 32)"),
    ({"detect.epochs": 0}, {"detect.epochs": 1}, "detect.epochs=0 is not allowed (>= 1)"),
    ({"detect.batch_size": 0}, {"detect.batch_size": 1}, "detect.batch_size=0 is not allowed (>= 1)"),
    ({"detect.lr": 0.0}, {"detect.lr": 1e-6}, "detect.lr=0.0 is not allowed (> 0)"),
    ({"detect.representation_size": 0}, {"detect.representation_size": 1},
     "detect.representation_size=0, detect.rois_per_image=32 (both >= 1)"),
    ({"detect.rois_per_image": 0}, {"detect.rois_per_image": 1}, "detect.rois_per_image=0 (both >= 1)"),
    ({"detect.trainable_layers": -2}, {"detect.trainable_layers": -1},
     "detect.trainable_layers=-2 is not allowed (-1 for the default, or >= 0)"),
    ({"detect.num_train": 0}, {"detect.num_train": 1}, "detect.num_train=0, detect.num_val=64 (both >= 1)"),
    ({"detect.num_val": 0}, {"detect.num_val": 1}, "detect.num_val=0 (both >= 1)"),
]


def _id(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


@pytest.mark.parametrize(("bad", "edge", "needle"), RANGES, ids=[_id(r[0]) for r in RANGES])
def test_a_value_out_of_range_names_the_key_and_the_range(bad, edge, needle):
    assert needle in _error(bad)
    if edge is not None:
        validate(with_params(BASE, edge))


def test_optuna_storage_from_the_environment_is_checked_at_the_door_and_the_config_wins(monkeypatch):
    """$OPTUNA_STORAGE (Optuna's CLI convention) stands in for an empty search.optuna_storage; a value that is no
    URL is a ConfigError before anything is written, and a configured URL takes precedence over it."""
    from study.search.optuna_search import storage_url

    monkeypatch.setenv("OPTUNA_STORAGE", "runs/optuna.db")
    assert _error({}).startswith("OPTUNA_STORAGE is not allowed as set (an Optuna RDB URL")
    validate(with_params(BASE, {"search.optuna_storage": "sqlite:///x.db"}))  # the config's URL is the one used
    assert storage_url("sqlite:///x.db", "out") == "sqlite:///x.db"
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql+psycopg2://u@db/optuna")
    validate(BASE)
    assert storage_url("", "out") == "postgresql+psycopg2://u@db/optuna"
    monkeypatch.delenv("OPTUNA_STORAGE")
    assert storage_url("", "out").startswith("sqlite:///") and storage_url("", "out").endswith("/out/optuna.db")


# ---------------------------------------------------------------------------------------------------------------
# Search-space dimensions (test_config.py covers a bad bound, an empty choice, vgg, loguniform low, low >= high, a
# misspelt name and an unknown type through from_dict).


def test_a_legal_space_passes():
    validate(_space(**{"train.epochs": Dimension("int", 1, 5), "train.lr": Dimension("loguniform", 1e-3, 1.0),
                       "model.arch": Dimension("choice", values=("cnn", "resnet20")),
                       "cutmix.prob": Dimension("uniform", 0.0, 1.0)}))


@pytest.mark.parametrize(("name", "dim", "message"), [
    ("search.seed", Dimension("choice", values=(1, 2)),
     "search.space.search.seed: unknown parameter (a dotted config key such as cutmix.alpha, model.arch)"),
    ("data", Dimension("choice", values=({},)),  # a section, not a field
     "search.space.data: unknown parameter (a dotted config key such as cutmix.alpha, model.arch)"),
    ("train.workers", Dimension("choice", values=(1, 2)),
     "search.space.train.workers is not allowed (the number of workers sets each trial's resources: set "
     "train.workers outside the space)"),
    ("cutmix.alpha", Dimension("uniform", low=0.5), "search.space.cutmix.alpha needs low and high for type uniform"),
    ("cutmix.alpha", Dimension("uniform", low=math.nan, high=1.0),
     "search.space.cutmix.alpha: low=nan, high=1.0 is not allowed (finite, low < high)"),
    ("cutmix.alpha", Dimension("loguniform", low=-1.0, high=1.0),
     "search.space.cutmix.alpha: low=-1.0 is not allowed for loguniform (low > 0)"),
    ("train.epochs", Dimension("int", low=0, high=5),
     "search.space.train.epochs: bound 0 gives train.epochs=0 is not allowed (>= 1)"),
    ("cutmix.prob", Dimension("uniform", low=0.0, high=1.5),
     "search.space.cutmix.prob: bound 1.5 gives cutmix.prob=1.5 is not allowed (0 <= prob <= 1)"),
    ("cutmix.mode", Dimension("choice", values=("batch", "pixel")),
     f"search.space.cutmix.mode.values: cutmix.mode='pixel' is not allowed (one of: {', '.join(MODES)})"),
    # Each value is checked against the rest of the config: 30 warm-up epochs do not fit 30 epochs.
    ("train.warmup_epochs", Dimension("choice", values=(0, 30)),
     "search.space.train.warmup_epochs.values: train.warmup_epochs=30 (0 <= value < train.epochs)"),
    ("cutmix.prob", Dimension("choice", values=()),
     "search.space.cutmix.prob.values is empty (list at least one value)"),
])
def test_a_bad_dimension_is_named_with_what_to_do(name, dim, message):
    assert _space_error(name, dim) == message


def test_validate_dimension_checks_one_dimension_against_the_config():
    cfg = with_params(BASE, {"train.epochs": 3})
    validate_dimension(cfg, "train.warmup_epochs", Dimension("int", 0, 2))
    with pytest.raises(ConfigError, match="bound 3 gives train.warmup_epochs=3"):
        validate_dimension(cfg, "train.warmup_epochs", Dimension("int", 0, 3))
    assert cfg.train.epochs == 3 and cfg.search.space == {}  # the config is not changed by the check


# ---------------------------------------------------------------------------------------------------------------
# search.metric and search.mode

ALLOWED_METRICS = ", ".join(REPORTED[:3] + tuple(f"val/{m}" for m in EPOCH_METRICS))


@pytest.mark.parametrize("metric", ["val/accuracy", "test/maxboxacc_v2", "val/", "top1_err"])
def test_an_unknown_metric_lists_the_metrics_a_study_can_use(metric):
    assert _error({"search.metric": metric}) == f"search.metric={metric!r} is not allowed (one of: {ALLOWED_METRICS})"


@pytest.mark.parametrize("metric", [*REPORTED, *(f"val/{m}" for m in EPOCH_METRICS), ("val/top1_err", "val/ece")])
def test_every_reported_or_validation_metric_is_accepted(metric):
    validate(with_params(BASE, {"search.metric": metric, "search.mode": "auto"}))


@pytest.mark.parametrize("metrics", [(), ("val/loss", "val/loss"), ("val/loss", "val/ece", "val/nll")])
def test_one_metric_or_two_different_ones(metrics):
    assert _error({"search.metric": metrics}) == \
        f"search.metric={list(metrics)} is not allowed (one metric, or a list of two different ones)"


def test_modes_one_or_one_per_metric():
    two = {"search.metric": ("val/top1_err", "val/maxboxacc_v2")}
    validate(with_params(BASE, {**two, "search.mode": ("min", "max")}))
    validate(with_params(BASE, {**two, "search.mode": "auto"}))
    assert _error({**two, "search.mode": ("min", "max", "min")}) == \
        "search.mode=['min', 'max', 'min'] is not allowed (one mode, or one per metric)"
    assert _error({"search.metric": "val/loss", "search.mode": ("min", "max")}) == \
        "search.mode=['min', 'max'] is not allowed (one mode, or one per metric)"
    assert _error({**two, "search.mode": ("min", "up")}) == \
        "search.mode='up' is not allowed (one of: min, max, auto)"


# ---------------------------------------------------------------------------------------------------------------
# Data-parallel workers and the study's own rules


@pytest.mark.parametrize(("params", "message"), [
    ({"train.workers": 0}, "train.workers=0 is not allowed (>= 1)"),
    ({"train.workers": 3, "train.batch_size": 64},
     "train.batch_size=64 is not allowed with train.workers=3 (a multiple of the workers, >= 2 images per worker)"),
    ({"train.workers": 4, "train.batch_size": 4},
     "train.batch_size=4 is not allowed with train.workers=4 (a multiple of the workers, >= 2 images per worker)"),
    ({"train.workers": 2, "search.resources_per_trial.gpu": 0.5},
     "resources gpu=0.5 per worker is not allowed with train.workers=2 (whole GPUs: NCCL cannot share one GPU "
     "between ranks)"),
])
def test_workers_must_fit_the_batch_and_whole_gpus(params, message):
    assert _error(params) == message


def test_workers_that_fit():
    validate(with_params(BASE, {"train.workers": 4, "train.batch_size": 8}))  # 2 images per worker
    validate(with_params(BASE, {"train.workers": 2, "search.resources_per_trial.gpu": 1.0}))
    validate(with_params(BASE, {"train.workers": 1, "search.resources_per_trial.gpu": 0.5}))  # one process shares
    cfg = with_params(BASE, {"train.workers": 2})
    with pytest.raises(ConfigError, match="resources gpu=0.25 per worker"):  # the retrain's resources, when given
        validate_workers(cfg, ResourcesConfig(cpu=1.0, gpu=0.25))


def test_a_study_needs_a_space_and_a_grid_needs_listed_values():
    with pytest.raises(ConfigError) as info:
        validate_study(BASE)
    assert str(info.value) == "search.space is empty (give at least one parameter, e.g. cutmix.alpha)"
    space = {"model.arch": Dimension("choice", values=("cnn",)), "cutmix.alpha": Dimension("uniform", 0.5, 2.0)}
    grid = dataclasses.replace(BASE, search=dataclasses.replace(BASE.search, algorithm="grid", space=space))
    with pytest.raises(ConfigError) as info:
        validate_study(grid)
    assert str(info.value) == ("search.algorithm=grid needs listed values: search.space.cutmix.alpha has type uniform "
                               "(use type: choice with values)")
    validate_study(dataclasses.replace(grid, search=dataclasses.replace(grid.search, algorithm="tpe")))
    validate_study(dataclasses.replace(grid, search=dataclasses.replace(grid.search, space={"model.arch": space[
        "model.arch"]})))


# ---------------------------------------------------------------------------------------------------------------
# Per-architecture dimensions (`when`) and the race's knobs


ARCH = Dimension("choice", values=("cnn", "resnet20"))


def test_a_condition_on_a_searched_choice_passes():
    validate(_space(**{"model.arch": ARCH, "model.width": Dimension("choice", values=(8, 16),
                                                                    when={"model.arch": "cnn"}),
                       "train.lr": Dimension("loguniform", 0.01, 0.1, when={"model.arch": ["cnn", "resnet20"]})}))


@pytest.mark.parametrize(("when", "message"), [
    ({"model.depth": 3}, "search.space.model.width.when.model.depth: unknown condition (a searched unconditional "
                         "choice dimension: model.arch)"),
    ({"model.arch": "vgg"}, "search.space.model.width.when.model.arch='vgg' is not allowed (one of: cnn, resnet20)"),
    ({"model.arch": ["cnn", "vgg"]},
     "search.space.model.width.when.model.arch='vgg' is not allowed (one of: cnn, resnet20)"),
    ({"model.width": 8}, "search.space.model.width.when.model.width: unknown condition (a searched unconditional "
                         "choice dimension: model.arch)"),
])
def test_a_bad_condition_is_one_line_naming_what_is_allowed(when, message):
    with pytest.raises(ConfigError) as info:
        validate(_space(**{"model.arch": ARCH, "model.width": Dimension("choice", values=(8, 16), when=when)}))
    assert str(info.value) == message


@pytest.mark.parametrize(("bad", "edge", "needle"), [
    ({"search.race_top_k": -1}, {"search.race_top_k": 0}, "search.race_top_k=-1 is not allowed (>= 0; 0 disables"),
    ({"search.race_seeds": 1}, {"search.race_seeds": 2}, "search.race_seeds=1 is not allowed (>= 2 new seeds"),
    ({"search.race_rounds": 0}, {"search.race_rounds": 1}, "search.race_rounds=0 is not allowed (>= 1)"),
    ({"search.race_alpha": 1.0}, {"search.race_alpha": 0.5}, "search.race_alpha=1.0 is not allowed (0 < value < 1)"),
])
def test_race_knobs(bad, edge, needle):
    assert needle in _error(bad)
    validate(with_params(BASE, edge))
