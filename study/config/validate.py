"""Validation of a PipelineConfig: once, at the door, with one-line messages (`error: <what> (<allowed>)`).

The types live in ``study.config.schema``; ``study.config.load.from_dict`` calls `validate`, so every config a stage
sees has passed it. Checks that need the data (boxes present, labels in range) stay where the data is read.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

from study.config.schema import (
    ALGORITHMS,
    DATASETS,
    DETECT_DATA,
    DIM_TYPES,
    METHODS,
    MODEL_NAMES,
    MODES,
    OPTUNA_STORAGE_ENV,
    SCHEDULERS,
    SCHEDULES,
    ConfigError,
    Dimension,
    PipelineConfig,
    ResourcesConfig,
    flatten,
    with_params,
)
from study.metric_names import EPOCH_METRICS, REPORTED


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _one_of(value: Any, allowed: tuple[str, ...], name: str) -> None:
    _check(value in allowed, f"{name}={value!r} is not allowed (one of: {', '.join(allowed)})")


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def validate(cfg: PipelineConfig) -> None:
    """Raise ConfigError on the first bad value. Architecture names are checked against the model registry."""
    d, m, c, t, s = cfg.data, cfg.model, cfg.cutmix, cfg.train, cfg.search
    _check(bool(cfg.name) and "/" not in cfg.name, f"name={cfg.name!r} is not allowed (a non-empty name without '/')")
    model_name = cfg.export.registered_model
    _check(not model_name or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model_name) is not None,
           f"export.registered_model={model_name!r} is not allowed (empty for the study name, or letters, digits, '.', "
           "'_', '-'; `models:/<name>@champion` must parse)")
    _one_of(d.name, DATASETS, "data.name")
    _check(d.image_size >= 8, f"data.image_size={d.image_size} is not allowed (>= 8)")
    _check(d.num_classes >= 2, f"data.num_classes={d.num_classes} is not allowed (>= 2)")
    _check(all(n > 0 for n in d.synthetic_sizes), f"data.synthetic_sizes={list(d.synthetic_sizes)} (three sizes > 0)")
    _check(0.0 < d.val_fraction < 1.0, f"data.val_fraction={d.val_fraction} is not allowed (0 < value < 1)")
    _check(0 <= d.pad < d.image_size, f"data.pad={d.pad} is not allowed (0 <= pad < image_size)")
    _check(d.clutter >= 0, f"data.clutter={d.clutter} is not allowed (>= 0 distractor fragments)")
    _check(not d.ood_classes or (d.name == "cluttered_digits" and len(set(d.ood_classes)) == len(d.ood_classes)
                                 and all(0 <= c <= 9 for c in d.ood_classes) and len(d.ood_classes) <= 8),
           f"data.ood_classes={list(d.ood_classes)} is not allowed (cluttered_digits only: distinct digits 0-9, at "
           "most 8 held out)")
    _check(_finite(d.digit_scale[0]) and _finite(d.digit_scale[1]) and 0 < d.digit_scale[0] <= d.digit_scale[1] <= 1,
           f"data.digit_scale={list(d.digit_scale)} is not allowed (0 < low <= high <= 1, fractions of image_size)")

    _check(d.loader_workers >= -1,
           f"data.loader_workers={d.loader_workers} is not allowed (-1 auto, 0 in-process, or > 0)")

    _one_of(m.arch, MODEL_NAMES, "model.arch")
    _check(m.depth >= 0, f"model.depth={m.depth} is not allowed (0 for the default, or a positive depth)")
    _check(m.widen >= 0, f"model.widen={m.widen} is not allowed (0 for the default, or > 0)")
    _check(m.width >= 1, f"model.width={m.width} is not allowed (>= 1)")
    _check(m.cam_stride in (0, 2, 4, 8), f"model.cam_stride={m.cam_stride} is not allowed (0 for the arch's own, 2, "
                                         "4 or 8)")

    _one_of(c.method, METHODS, "cutmix.method")
    _check(_finite(c.alpha) and c.alpha > 0, f"cutmix.alpha={c.alpha} is not allowed (alpha > 0)")
    _check(_finite(c.prob) and 0 <= c.prob <= 1, f"cutmix.prob={c.prob} is not allowed (0 <= prob <= 1)")
    _one_of(c.mode, MODES, "cutmix.mode")
    _check(0 <= c.label_smoothing < 1, f"cutmix.label_smoothing={c.label_smoothing} is not allowed (0 <= value < 1)")
    _check(0 < c.cutout_size <= 1, f"cutmix.cutout_size={c.cutout_size} is not allowed (0 < value <= 1)")

    _check(t.epochs >= 1, f"train.epochs={t.epochs} is not allowed (>= 1)")
    _check(0 <= c.off_epochs < t.epochs,
           f"cutmix.off_epochs={c.off_epochs} is not allowed (0 <= value < train.epochs={t.epochs})")
    _check(t.batch_size >= 2, f"train.batch_size={t.batch_size} is not allowed (>= 2; mixing needs partners)")
    _check(_finite(t.lr) and t.lr > 0, f"train.lr={t.lr} is not allowed (lr > 0)")
    _check(0 <= t.momentum < 1, f"train.momentum={t.momentum} is not allowed (0 <= momentum < 1)")
    _check(t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} is not allowed (>= 0)")
    _one_of(t.schedule, SCHEDULES, "train.schedule")
    _check(all(0 < x < 1 for x in t.milestones),
           f"train.milestones={list(t.milestones)} is not allowed (fractions of epochs in (0, 1))")
    _check(0 < t.gamma <= 1, f"train.gamma={t.gamma} is not allowed (0 < gamma <= 1)")
    _check(0 <= t.warmup_epochs < t.epochs, f"train.warmup_epochs={t.warmup_epochs} (0 <= value < train.epochs)")
    _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
           f"train.device={t.device!r} is not allowed (auto, cpu, cuda or cuda:N)")
    _check(t.test_every >= 1, f"train.test_every={t.test_every} is not allowed (>= 1)")
    _check(t.num_threads >= 0, f"train.num_threads={t.num_threads} is not allowed (>= 0)")

    _one_of(s.algorithm, ALGORITHMS, "search.algorithm")
    _one_of(s.scheduler, SCHEDULERS, "search.scheduler")
    check_metrics(s)
    _check(s.num_samples >= 1, f"search.num_samples={s.num_samples} is not allowed (>= 1)")
    _check(s.max_concurrent >= 1, f"search.max_concurrent={s.max_concurrent} is not allowed (>= 1)")
    _check(s.grace_period >= 1, f"search.grace_period={s.grace_period} is not allowed (>= 1)")
    _check(s.checkpoint_every >= 0,
           f"search.checkpoint_every={s.checkpoint_every} is not allowed (0 for auto, or >= 1)")
    _check(s.reduction_factor >= 2, f"search.reduction_factor={s.reduction_factor} is not allowed (>= 2)")
    _check(s.max_failures >= 0, f"search.max_failures={s.max_failures} is not allowed (>= 0)")
    _check(s.placement_timeout_s > 0, f"search.placement_timeout_s={s.placement_timeout_s:g} is not allowed (> 0 s)")
    _check(s.resources_per_trial.cpu > 0, f"search.resources_per_trial.cpu={s.resources_per_trial.cpu} (> 0)")
    _check(s.resources_per_trial.gpu >= 0, f"search.resources_per_trial.gpu={s.resources_per_trial.gpu} (>= 0)")
    _check(s.eval_every >= 1, f"search.eval_every={s.eval_every} is not allowed (>= 1)")
    _check(s.smooth_epochs >= 1, f"search.smooth_epochs={s.smooth_epochs} is not allowed (>= 1)")
    from_env = os.environ.get(OPTUNA_STORAGE_ENV, "")  # the fallback of study.search.optuna_search.storage_url
    _check(s.optuna_storage or not from_env or "://" in from_env,
           f"{OPTUNA_STORAGE_ENV} is not allowed as set (an Optuna RDB URL such as postgresql+psycopg2://user@host/db; "
           "unset it for <output>/optuna.db)")
    _check(not s.optuna_storage or "://" in s.optuna_storage,
           f"search.optuna_storage={s.optuna_storage} is not allowed (an Optuna RDB URL such as "
           "sqlite:///path/optuna.db or postgresql+psycopg2://user@host/db, or empty for <output>/optuna.db)")
    for name, dim in s.space.items():
        validate_dimension(cfg, name, dim)
    validate_conditions(s.space)
    _check(s.race_top_k >= 0, f"search.race_top_k={s.race_top_k} is not allowed (>= 0; 0 disables the race)")
    _check(s.race_seeds >= 2, f"search.race_seeds={s.race_seeds} is not allowed (>= 2 new seeds per round: a paired "
                              "test needs a spread)")
    _check(s.race_rounds >= 1, f"search.race_rounds={s.race_rounds} is not allowed (>= 1)")
    _check(0 < s.race_alpha < 1, f"search.race_alpha={s.race_alpha} is not allowed (0 < value < 1)")

    b = cfg.budget
    _check(len(b.epochs) >= 2 and all(e >= 1 for e in b.epochs) and list(b.epochs) == sorted(set(b.epochs)),
           f"budget.epochs={list(b.epochs)} is not allowed (two or more budgets >= 1 epoch, strictly increasing)")
    _check(b.seeds >= 2, f"budget.seeds={b.seeds} is not allowed (>= 2: a difference needs a spread)")
    _check(b.bootstrap >= 100, f"budget.bootstrap={b.bootstrap} is not allowed (>= 100 resamples)")
    for name, r in (("retrain", cfg.retrain.resources), ("detect", cfg.detect.resources),
                    ("budget", cfg.budget.resources)):
        _check(r.cpu > 0 and r.gpu >= 0, f"{name}.resources={{cpu: {r.cpu}, gpu: {r.gpu}}} is not allowed (cpu > 0, "
                                         "gpu >= 0)")
    e = cfg.evaluate
    _check(0 < e.cam_curve_interval < 1,
           f"evaluate.cam_curve_interval={e.cam_curve_interval} is not allowed (0 < value < 1)")
    _check(0 < e.loc_sigma < 1, f"evaluate.loc_sigma={e.loc_sigma} is not allowed (0 < value < 1)")
    _check(e.robustness_images >= 1, f"evaluate.robustness_images={e.robustness_images} is not allowed (>= 1)")
    _check(e.ood_images >= 1, f"evaluate.ood_images={e.ood_images} is not allowed (>= 1)")
    _check(e.ood_bootstrap >= 0, f"evaluate.ood_bootstrap={e.ood_bootstrap} is not allowed (>= 0; 0: no interval)")
    _check(e.prior_sigma > 0, f"evaluate.prior_sigma={e.prior_sigma} is not allowed (> 0, a fraction of the side)")
    _check(all(0 <= x <= 1 for x in e.fgsm_eps) and len(e.fgsm_eps) >= 1,
           f"evaluate.fgsm_eps={list(e.fgsm_eps)} is not allowed (one or more values in [0, 1], pixel units)")
    _check(cfg.retrain.seeds >= 1, f"retrain.seeds={cfg.retrain.seeds} is not allowed (>= 1)")
    for method in cfg.retrain.methods:
        _one_of(method, METHODS, "retrain.methods")
    _check(len(set(cfg.retrain.methods)) == len(cfg.retrain.methods),
           f"retrain.methods={list(cfg.retrain.methods)} is not allowed (each method once)")
    _check(cfg.retrain.epochs >= 0, f"retrain.epochs={cfg.retrain.epochs} is not allowed (0 for train.epochs, or > 0)")
    _one_of(cfg.detect.data, DETECT_DATA, "detect.data")
    _check(cfg.detect.image_size >= 32, f"detect.image_size={cfg.detect.image_size} is not allowed (>= 32)")
    _check(cfg.detect.epochs >= 1, f"detect.epochs={cfg.detect.epochs} is not allowed (>= 1)")
    _check(cfg.detect.batch_size >= 1, f"detect.batch_size={cfg.detect.batch_size} is not allowed (>= 1)")
    _check(cfg.detect.lr > 0, f"detect.lr={cfg.detect.lr} is not allowed (> 0)")
    _check(cfg.detect.representation_size >= 1 and cfg.detect.rois_per_image >= 1,
           f"detect.representation_size={cfg.detect.representation_size}, detect.rois_per_image="
           f"{cfg.detect.rois_per_image} (both >= 1)")
    _check(cfg.detect.trainable_layers >= -1,
           f"detect.trainable_layers={cfg.detect.trainable_layers} is not allowed (-1 for the default, or >= 0)")
    _check(cfg.detect.num_train >= 1 and cfg.detect.num_val >= 1,
           f"detect.num_train={cfg.detect.num_train}, detect.num_val={cfg.detect.num_val} (both >= 1)")
    validate_workers(cfg)


def validate_dimension(cfg: PipelineConfig, name: str, dim: Dimension) -> None:
    """A searched parameter must name a real scalar config field, and its bounds or values must be legal for it."""
    # Check values against the config without its space, or validating them would recurse into this check.
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, space={}))
    flat = flatten(cfg)
    _check(name in flat and not name.startswith("search."),
           f"search.space.{name}: unknown parameter (a dotted config key such as cutmix.alpha, model.arch)")
    # Every trial of a study must fit the same placement (study.training.distributed.max_concurrent_trials sizes it
    # once).
    _check(name != "train.workers",
           "search.space.train.workers is not allowed (the number of workers sets each trial's resources: set "
           "train.workers outside the space)")
    _one_of(dim.type, DIM_TYPES, f"search.space.{name}.type")
    where = f"search.space.{name}"
    if dim.type == "choice":
        _check(len(dim.values) > 0, f"{where}.values is empty (list at least one value)")
        for v in dim.values:
            # Each value must make a valid config on its own: a negative alpha or an unknown arch fails here.
            try:
                validate(with_params(cfg, {name: v}))
            except ConfigError as exc:
                raise ConfigError(f"{where}.values: {exc}") from None
    else:
        _check(dim.low is not None and dim.high is not None, f"{where} needs low and high for type {dim.type}")
        _check(_finite(dim.low) and _finite(dim.high) and dim.low < dim.high,
               f"{where}: low={dim.low}, high={dim.high} is not allowed (finite, low < high)")
        if dim.type == "loguniform":
            _check(dim.low > 0, f"{where}: low={dim.low} is not allowed for loguniform (low > 0)")
        for v in (dim.low, dim.high):
            try:
                validate(with_params(cfg, {name: int(v) if dim.type == "int" else float(v)}))
            except ConfigError as exc:
                raise ConfigError(f"{where}: bound {v} gives {exc}") from None


def validate_conditions(space) -> None:
    """`when` of each dimension: every key a searched `choice` dimension that is itself unconditional (one level,
    so no cycle), every value one of its listed values."""
    for name, dim in space.items():
        for key, want in dim.when.items():
            where = f"search.space.{name}.when.{key}"
            parent = space.get(key)
            _check(key != name and parent is not None and parent.type == "choice" and not parent.when,
                   f"{where}: unknown condition (a searched unconditional choice dimension: "
                   f"{', '.join(n for n, d in space.items() if d.type == 'choice' and not d.when and n != name)})")
            for v in want if isinstance(want, list | tuple) else [want]:
                _check(v in parent.values, f"{where}={v!r} is not allowed (one of: "
                                           f"{', '.join(map(str, parent.values))})")


def check_metrics(s) -> None:
    """`search.metric`: one reported metric or evaluation metric on val, or two for a multi-objective study;
    `search.mode` one of min/max/auto, or one per metric."""
    allowed = ", ".join(REPORTED[:3] + tuple(f"val/{m}" for m in EPOCH_METRICS))
    metrics = s.metrics
    _check(1 <= len(metrics) <= 2 and len(set(metrics)) == len(metrics),
           f"search.metric={list(metrics)} is not allowed (one metric, or a list of two different ones)")
    for m in metrics:
        _check(m in REPORTED or (m.startswith("val/") and m[4:] in EPOCH_METRICS),
               f"search.metric={m!r} is not allowed (one of: {allowed})")
    modes = (s.mode,) if isinstance(s.mode, str) else tuple(s.mode)
    _check(len(modes) in (1, len(metrics)), f"search.mode={list(modes)} is not allowed (one mode, or one per metric)")
    for mode in modes:
        _one_of(mode, ("min", "max", "auto"), "search.mode")


def validate_workers(cfg: PipelineConfig, resources: ResourcesConfig | None = None) -> None:
    """`train.workers` must fit: >= 1, divide `train.batch_size` (>= 2 images per worker), whole GPUs per worker
    when > 1 (fractional GPUs under multi-worker NCCL fail with "Duplicate GPU detected", ray-project/ray#48012).
    `resources`: the per-worker resources, default `search.resources_per_trial`."""
    w, b = cfg.train.workers, cfg.train.batch_size
    res = resources or cfg.search.resources_per_trial
    _check(w >= 1, f"train.workers={w} is not allowed (>= 1)")
    _check(not (b % w or b // w < 2), f"train.batch_size={b} is not allowed with train.workers={w} (a multiple of "
           "the workers, >= 2 images per worker)")
    _check(not (w > 1 and res.gpu > 0 and res.gpu != int(res.gpu)), f"resources gpu={res.gpu:g} per worker is not "
           f"allowed with train.workers={w} (whole GPUs: NCCL cannot share one GPU between ranks)")


def validate_study(cfg: PipelineConfig) -> None:
    """What only a study needs, checked before its outputs are written: a non-empty space, and listed values for a
    grid. (`validate` has checked every dimension's name and bounds already.)"""
    _check(bool(cfg.search.space), "search.space is empty (give at least one parameter, e.g. cutmix.alpha)")
    if cfg.search.algorithm == "grid":
        bad = [n for n, d in cfg.search.space.items() if d.type != "choice"]
        _check(not bad, f"search.algorithm=grid needs listed values: search.space.{bad[0] if bad else ''} has type "
               f"{cfg.search.space[bad[0]].type if bad else ''} (use type: choice with values)")
