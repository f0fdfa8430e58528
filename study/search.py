"""Ray Tune + Optuna + ASHA wiring: the only module that imports ray.tune.

The study follows Google's deep-learning tuning playbook: CutMix's alpha, its apply probability p, the method and
the architecture are the *scientific* hyperparameters, lr / weight decay optional *nuisance* ones, the rest fixed.
Optuna picks trials (TPE by default; QMC for non-adaptive exploration; random; or the exhaustive grid), the
paper's defaults (alpha=1, p=0.5, Yun et al. 2019) and the no-CutMix baseline are evaluated first, and ASHA
(Li et al. 2020) stops weak trials early. The trainable is a few lines around `engine.fit()`, reporting every
epoch with a checkpoint, as Ray's `tune/examples/mnist_pytorch.py` does.

alpha only matters when the method mixes (cutmix/mixup) and p > 0: the space is define-by-run, so alpha is not
even sampled for a baseline trial and its `results.parquet` cell is empty, and the grid holds each *effective*
combination once (p=0 runs once per architecture, not once per alpha).
"""

from __future__ import annotations

import itertools
import math
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from study.config import ConfigError, Dimension, PipelineConfig, from_dict, replace, to_dict

TRIAL_CHECKPOINT = "checkpoint.pt"
AUTO_CHECKPOINT_S = 10.0  # search.checkpoint_every=0: checkpoint a trial about this often
HISTORY_KEY = "_history"  # per-epoch metrics before a restored checkpoint (see _trainable)
EXPERIMENT_NAME = "study"
# Parameters that only exist when the batch is actually mixed.
CONDITIONAL = ("cutmix.alpha", "cutmix.mode", "cutmix.cutout_size", "cutmix.label_smoothing")


def applies(name: str, params: Mapping[str, Any], base: PipelineConfig) -> bool:
    """Whether parameter `name` has any effect given the values chosen so far (or the base config's)."""
    method = params.get("cutmix.method", base.cutmix.method)
    prob = params.get("cutmix.prob", base.cutmix.prob)
    mixed = method != "none" and prob > 0
    if name == "cutmix.alpha":
        return mixed and method in ("cutmix", "mixup")
    if name == "cutmix.cutout_size":
        return mixed and method == "cutout"
    if name in CONDITIONAL:
        return mixed
    return True


def ordered_space(cfg: PipelineConfig) -> list[tuple[str, Dimension]]:
    """Method and p first (they decide which other parameters apply), then the rest in config order."""
    first = [n for n in ("cutmix.method", "cutmix.prob") if n in cfg.search.space]
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
    """Every effective combination of the listed values exactly once, in listed order."""
    space = ordered_space(cfg)
    bad = [n for n, d in space if d.type != "choice"]
    if bad:
        raise ConfigError(f"search.algorithm=grid needs listed values: search.space.{bad[0]} has type "
                          f"{cfg.search.space[bad[0]].type} (use type: choice with values)")
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


def make_searcher(cfg: PipelineConfig) -> tuple[Any, dict[str, Any], int]:
    """(search_alg or None, param_space, num_samples) for the configured algorithm."""
    s = cfg.search
    if s.algorithm == "grid":
        points = grid_points(cfg)
        return None, {"params": tune.grid_search(points)}, 1
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # group=True (TPE over conditional spaces) is marked experimental; the warning is noise to a user.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if s.algorithm == "tpe":
        startup = min(10, max(2, s.num_samples // 3))
        sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup, multivariate=True, group=True)
    elif s.algorithm == "qmc":
        sampler = optuna.samplers.QMCSampler(seed=s.seed, scramble=True, warn_independent_sampling=False)
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    points = default_points(cfg) if s.evaluate_defaults else None
    searcher = OptunaSearch(space=DefineByRun(cfg), metric=s.metric, mode=s.mode, sampler=sampler,
                            points_to_evaluate=points, seed=s.seed)
    searcher = tune.search.ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)
    return searcher, {}, s.num_samples


def trial_name(trial: Any) -> str:
    """Short, stable names ("trial_00003_1a2b3c4d") for logs, Tune's directories and MLflow run names."""
    return f"trial_{trial.trial_id}"


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted-name parameters of a trial (grid trials nest them under "params")."""
    return dict(config.get("params", config))


# ---------------------------------------------------------------------------------------------------------------
# The trainable


def used_values(trainer: Any) -> dict[str, float]:
    """What the trial's components actually received, read back from them (not from the config), so a study can
    prove every searched value reached its component (torchvision once shipped a sweep whose alpha never did)."""
    mixer = trainer.mixer
    return {"used/cutmix.alpha": float(getattr(mixer, "alpha", math.nan)) if mixer is not None else math.nan,
            "used/cutmix.prob": float(mixer.prob) if mixer is not None else 0.0,
            "used/train.lr": float(trainer.optimizer.param_groups[0]["initial_lr"]),
            "used/train.weight_decay": float(trainer.optimizer.param_groups[0]["weight_decay"]),
            "used/model.params": float(sum(p.numel() for p in trainer.model.parameters()))}


def _trainable(config: dict[str, Any], data: Any = None, base: dict[str, Any] | None = None, threads: int = 1) -> None:
    import torch

    from study.checkpoint import load_checkpoint, save_checkpoint
    from study.engine import fit

    torch.set_num_threads(max(1, threads))
    cfg = replace(from_dict(base), trial_params(config))
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_checkpoint(Path(d) / TRIAL_CHECKPOINT)
    # After a restore, the first report carries the epochs before the checkpoint, so the driver can backfill any
    # the tracking store lost (a SIGKILLed driver dies with its queue of unsent logging calls).
    backfill = list(resume.get("history", [])) if resume else None
    every, last_saved = cfg.search.checkpoint_every, time.monotonic()
    for result in fit(cfg, data, checkpoint=resume):
        metrics = dict(result.metrics)
        metrics.update(used_values(result.trainer))
        if backfill:
            metrics[HISTORY_KEY] = backfill
        backfill = None
        metrics.update({f"best/{k}": v for k, v in result.trainer.best_metrics.items() if "/" in k})
        # Each checkpoint makes Tune snapshot the experiment (num_to_keep), so short epochs are not checkpointed
        # one by one: a resume repeats at most `every` epochs (or ~10 s) of a trial. The last epoch always is.
        due = (result.epoch >= cfg.train.epochs or (every > 0 and result.epoch % every == 0)
               or (every == 0 and time.monotonic() - last_saved >= AUTO_CHECKPOINT_S))
        if not due:
            tune.report(metrics)  # ASHA may stop the trial in here (SystemExit): that is its normal end
            continue
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(result.trainer.checkpoint(), Path(d) / TRIAL_CHECKPOINT)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        last_saved = time.monotonic()


# ---------------------------------------------------------------------------------------------------------------
# Driver-side MLflow logging


_ATTACHED: dict[str, Any] = {}  # study output dir -> in-memory objects a restored callback re-attaches to


class MlflowTrialCallback(tune.Callback):
    """Child run per trial, per-epoch `log_batch`, status and artifacts; all from the driver, on one background
    thread (study.tracking.AsyncLogger). Picklable, because Tune stores callbacks with the experiment and
    `Tuner.restore` brings them back: clients and threads are recreated lazily, and a restored callback finds a
    trial's existing run by its `ray.trial_id` tag instead of creating a second one."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, base: dict[str, Any], key: str,
                 artifacts: Callable[[PipelineConfig, Path], list[Path]] | None = None):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.base, self.key = base, key
        _ATTACHED.setdefault(key, {})["artifacts"] = artifacts
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._client = None
        self._logger = None
        self._runs: dict[str, str] = {}
        self._logged_step: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("uri", "experiment_id", "parent_run_id", "base", "key")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    @property
    def logger(self) -> Any:
        from study import tracking

        with self._lock:
            if self._logger is None:
                self._client = tracking.client_for(self.uri)
                self._logger = tracking.AsyncLogger()
            return self._logger

    # Jobs run on the logger thread, in submission order.

    def _open_run(self, trial_id: str, trial_name: str, params: dict[str, Any]) -> None:
        from study import tracking
        from study.config import dump_config, flatten

        client = self._client
        tags = {"mlflow.parentRunId": self.parent_run_id, "ray.trial_id": trial_id, "cutmix.stage": "trial"}
        run_id, reused = tracking.start_run(client, self.experiment_id, trial_name, tags)
        self._runs[trial_id] = run_id
        self._logged_step[trial_id] = tracking.last_step(client, run_id, "epoch") if reused else -1
        if reused:
            return
        cfg = replace(from_dict(self.base), params)
        tracking.log_params(client, run_id, flatten(cfg), skip_existing=False)
        tracking.set_tags(client, run_id, {"cutmix.searched": ",".join(sorted(params)),
                                           "cutmix.trial_status": "running"})
        with tempfile.TemporaryDirectory() as d:
            dump_config(cfg, Path(d) / "config.yaml")
            tracking.log_artifact(client, run_id, Path(d) / "config.yaml")
            make = _ATTACHED.get(self.key, {}).get("artifacts")
            for path in make(cfg, Path(d)) if make else []:
                tracking.log_artifact(client, run_id, path)

    def _log_result(self, trial_id: str, result: dict[str, Any]) -> None:
        from study import tracking

        step = int(result.get("training_iteration", result.get("epoch", 0)))
        logged = self._logged_step.get(trial_id, -1)
        for earlier in result.get(HISTORY_KEY) or []:
            past = int(earlier.get("epoch", 0))
            if logged < past < step:
                tracking.log_metrics(self._client, self._runs[trial_id], _loggable(earlier), past)
        if step <= logged:
            return  # a resumed trial re-reports epochs already logged before the interruption
        tracking.log_metrics(self._client, self._runs[trial_id], _loggable(result), step)
        self._logged_step[trial_id] = step

    def _close_run(self, trial_id: str, status: str, run_status: str) -> None:
        from study import tracking

        run_id = self._runs.get(trial_id)
        if run_id is not None:
            tracking.set_tags(self._client, run_id, {"cutmix.trial_status": status})
            tracking.end_run(self._client, run_id, run_status)

    # Tune hooks: enqueue only.

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = trial_params(trial.config)
        self.logger.submit(lambda: self._open_run(trial.trial_id, str(trial), params))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid, res = trial.trial_id, dict(result)
        if tid not in self._runs and tid not in getattr(self, "_pending", set()):
            # A trial restored mid-run may report before Tune calls on_trial_start again.
            self.on_trial_start(iteration, trials, trial)
            self._pending = getattr(self, "_pending", set()) | {tid}
        self.logger.submit(lambda: self._log_result(tid, res))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        done = int((trial.last_result or {}).get("training_iteration", 0))
        status = "completed" if done >= from_dict(self.base).train.epochs else "stopped"
        self.logger.submit(lambda: self._close_run(tid, status, "FINISHED"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        self.logger.submit(lambda: self._close_run(tid, "error", "FAILED"))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._logger is not None:
            self._logger.close()
            self._logger = None


def _loggable(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if "/" in k or k in ("lr", "epoch", "epoch_s")}


class ProgressCallback(tune.Callback):
    """One line per finished trial (and a heartbeat line per epoch result) instead of Tune's large tables."""

    def __init__(self, total: int, epochs: int, metric: str):
        self.total, self.epochs, self.metric = total, epochs, metric
        self.start = time.perf_counter()
        self.done = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"total": self.total, "epochs": self.epochs, "metric": self.metric, "done": 0, "start": 0.0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.start = time.perf_counter()

    def _line(self, text: str) -> None:
        import sys

        print(f"[study {time.perf_counter() - self.start:6.0f}s] {text}", file=sys.stderr, flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        shown = f"{value:.3g}" if isinstance(value, float) else "-"
        self._line(f"{trial} epoch {result.get('training_iteration')}/{self.epochs} {self.metric} {shown}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        best = (trial.last_result or {}).get(f"best/{self.metric}")
        shown = f"{best:.3g}" if isinstance(best, float) else "-"
        params = trial_params(trial.config)
        self._line(f"finished {trial} ({self.done}/{self.total}) {params} best {self.metric} {shown}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self._line(f"ERROR in {trial} ({self.done}/{self.total}): see {trial.local_path or trial.path}")


# ---------------------------------------------------------------------------------------------------------------
# Running a study


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # completed | stopped (ASHA) | error
    params: dict[str, Any]
    final: dict[str, float]
    best: dict[str, float]
    epochs: int
    wall_s: float
    error: str | None
    checkpoint: Any = None  # the trial's latest tune.Checkpoint (its history backfills tracking after a crash)


def trial_history(record: TrialRecord) -> list[dict[str, float]]:
    """Per-epoch metrics stored in the trial's latest checkpoint ([] if it has none)."""
    from study.checkpoint import load_checkpoint

    if record.checkpoint is None:
        return []
    with record.checkpoint.as_directory() as d:
        return list(load_checkpoint(Path(d) / TRIAL_CHECKPOINT).get("history", []))


def storage_path(cfg: PipelineConfig, out_dir: Path) -> str:
    return cfg.search.storage or str((Path(out_dir) / "tune").resolve())


def experiment_path(cfg: PipelineConfig, out_dir: Path) -> str:
    return storage_path(cfg, out_dir).rstrip("/") + "/" + EXPERIMENT_NAME


def can_resume(cfg: PipelineConfig, out_dir: Path) -> bool:
    return tune.Tuner.can_restore(experiment_path(cfg, out_dir))


def delete_experiment(cfg: PipelineConfig, out_dir: Path) -> None:
    """Remove a stored experiment (local path or any pyarrow filesystem URI) for --overwrite."""
    import pyarrow.fs

    path = experiment_path(cfg, out_dir)
    fs, inner = pyarrow.fs.FileSystem.from_uri(path if "://" in path else "file://" + path)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(inner)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster inside a Ray job or KubeRay (RAY_ADDRESS set), else start a local one on 127.0.0.1."""
    import os

    import ray

    # Tune warns on every forced experiment snapshot (each trial checkpoint); our progress lines say enough.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)  # passing num_cpus to an existing cluster raises
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                 configure_logging=True, logging_level="WARNING")


def run_search(cfg: PipelineConfig, data: Any, out_dir: Path, *, callbacks: list[Any],
               resume: bool) -> list[TrialRecord]:
    """Run (or resume) the Tune experiment and return one record per trial."""
    s = cfg.search
    base = to_dict(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, data=data, base=base, threads=max(1, int(s.resources_per_trial.cpu))),
        {"cpu": s.resources_per_trial.cpu, "gpu": s.resources_per_trial.gpu})
    path = experiment_path(cfg, out_dir)
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        searcher, param_space, num_samples = make_searcher(cfg)
        scheduler = None
        if s.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                                      grace_period=min(s.grace_period, cfg.train.epochs),
                                      reduction_factor=s.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, search_alg=searcher, scheduler=scheduler,
                                        num_samples=num_samples, reuse_actors=True,
                                        # the searcher is already a ConcurrencyLimiter; grid has none
                                        max_concurrent_trials=s.max_concurrent if searcher is None else None,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=storage_path(cfg, out_dir), verbose=0,
                                      callbacks=callbacks,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    grid = tuner.fit()
    records = []
    for result in grid:
        m = dict(result.metrics or {})
        cfg_params = trial_params(result.config or {})
        epochs = int(m.get("training_iteration", 0))
        if result.error is not None:
            status = "error"
        else:
            status = "completed" if epochs >= cfg.train.epochs else "stopped"
        final = {k: float(v) for k, v in m.items() if "/" in k and not k.startswith("best/") and _num(v)}
        best = {k[len("best/"):]: float(v) for k, v in m.items() if k.startswith("best/") and _num(v)}
        records.append(TrialRecord(str(m.get("trial_id") or _trial_id_from_path(result.path)), status, cfg_params,
                                   final, best, epochs, float(m.get("time_total_s", 0.0)),
                                   None if result.error is None else str(result.error).splitlines()[0][:500],
                                   result.checkpoint))
    return records


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(float(v))


def _trial_id_from_path(path: str | None) -> str:
    # Tune names trial dirs "<trainable>_<trial_id>_<index>_<params>"; an errored trial may have no metrics.
    parts = Path(path or "").name.split("_")
    return parts[1] if len(parts) > 1 else Path(path or "unknown").name
