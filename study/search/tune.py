"""Ray Tune + Optuna + ASHA wiring: with study.search.optuna_search (Ray's OptunaSearch, subclassed), the only
module that imports ray.tune.

The study follows Google's deep-learning tuning playbook: CutMix's alpha, its apply probability p, the method and
the architecture are the *scientific* hyperparameters, lr / weight decay optional *nuisance* ones, the rest fixed.
Optuna picks trials (TPE by default; QMC for non-adaptive exploration; random; or the exhaustive grid), the
paper's defaults (alpha=1, p=0.5, Yun et al. 2019) and the no-CutMix baseline are evaluated first, and ASHA
(Li et al. 2020) can stop weak trials early: on the mean of their last `search.smooth_epochs` epochs, with stopped
trials told to Optuna as pruned and the rungs' fidelity measured (study.search.optuna_search, study.search.fidelity).
The trainable is a few lines around `engine.fit()`, reporting every epoch with a checkpoint, as Ray's
`tune/examples/mnist_pytorch.py` does.

With `train.workers: N > 1` each trial is a Ray Train `TorchTrainer` of N DDP processes started from inside the
trial (`study.training.distributed.fit_in_tune_trial`, Ray 2.60's pattern for tuning distributed training): the trial
actor
holds half a CPU and waits, its workers take their own placement group, and the number of concurrent trials is what
the cluster can place at once. Its Train run lives under `<experiment>/train/train_<trial id>` and holds the
trial's checkpoints. Because a retried trial resumes that run, Tune's `training_iteration` restarts at 1 while the
reported `epoch` continues: ASHA, the MLflow steps and the records count epochs by `epoch`.

Faults: a trial whose process dies (SIGKILL, a lost node) is retried up to `search.max_failures` times, each time
from its last checkpoint (Tune's for one process, the Train run's for N; N workers also retry inside Train).

alpha only matters when the method mixes (cutmix/mixup) and p > 0: the space is define-by-run, so alpha is not
even sampled for a baseline trial and its `results.parquet` cell is empty, and the grid holds each *effective*
combination once (p=0 runs once per architecture, not once per alpha).
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from study.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from study.cluster import signals
from study.cluster.session import has_dashboard, init_ray
from study.config.load import from_dict, replace
from study.config.schema import ConfigError, PipelineConfig, to_dict
from study.console import progress
from study.search.fidelity import smooth_key, smoothed_history
from study.search.optuna_search import StoredOptunaSearch, delete_study, storage_url
from study.search.output import quiet_callbacks, quiet_tune
from study.search.space import (
    DefineByRun,
    default_points,
    grid_points,
    trial_params,
)
from study.training.distributed import (
    RUN_PREFIX,
    epoch_metrics,
    fit_in_tune_trial,
    max_concurrent_trials,
    trial_resources,
)
from study.training.engine import fit

HISTORY_KEY = "_history"  # per-epoch metrics before a restored checkpoint (see _trainable)
AUTO_CHECKPOINT_S = 10.0  # search.checkpoint_every=0: checkpoint a trial about this often
EXPERIMENT_NAME = "study"
TRAIN_DIR = "train"  # under the experiment: the Train runs of data-parallel trials


def make_searcher(cfg: PipelineConfig, max_concurrent: int | None = None,
                  out_dir: Path | None = None) -> tuple[Any, dict[str, Any], int]:
    """(search_alg or None, param_space, num_samples) for the configured algorithm; `max_concurrent` (default
    `search.max_concurrent`) caps the trials the searcher lets run at once. The Optuna study is stored at
    `optuna_url(cfg, out_dir)` (in memory when `out_dir` is None), named after the study and started afresh: a
    resumed study never builds a searcher, Tune restores its own (study.search.optuna_search)."""
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
    multi = len(s.metrics) > 1  # Optuna's samplers (TPE, QMC, random) optimise the two objectives jointly
    # Optuna sees the smoothed metric (the mean of the last search.smooth_epochs epochs), as ASHA and the ranking do.
    metrics = [smooth_key(m) for m in s.metrics]
    common = {"space": DefineByRun(cfg), "metric": metrics if multi else metrics[0],
              "mode": list(s.modes) if multi else s.primary_mode, "sampler": sampler, "points_to_evaluate": points}
    url = "" if out_dir is None else optuna_url(cfg, out_dir)
    if url:
        delete_study(url, cfg.name)  # a fresh search: the stage has already refused or --overwrite'd an old one
    limit = max_concurrent or s.max_concurrent
    # search.reproducible: trial n sees exactly trials 0 .. n-limit-1 (study.search.optuna_search), whichever of the
    # running trials happens to finish first.
    searcher = StoredOptunaSearch(url=url, study_name=cfg.name, epochs=cfg.train.epochs, num_samples=s.num_samples,
                                  lag=limit if s.reproducible and limit > 1 else 0, **common)
    return tune.search.ConcurrencyLimiter(searcher, max_concurrent=limit), {}, s.num_samples


def optuna_url(cfg: PipelineConfig, out_dir: Path) -> str:
    """The Optuna storage URL of a study: `search.optuna_storage` or `sqlite:///<out_dir>/optuna.db`."""
    return storage_url(cfg.search.optuna_storage, out_dir)


def is_reproducible(cfg: PipelineConfig) -> tuple[bool, str]:
    """Whether a study's trials are a function of its seed, and why not. Grid, QMC and random samplers do not
    learn from results; TPE does, and is reproducible with a lagged deterministic history (search.reproducible).
    ASHA's rung cuts compare a trial with those that reached the rung *before* it, which depends on timing with
    concurrent trials."""
    s = cfg.search
    if s.scheduler == "asha" and s.max_concurrent > 1:
        return False, "ASHA with concurrent trials cuts on arrival order (search.scheduler=none, or max_concurrent=1)"
    if s.algorithm == "tpe" and s.max_concurrent > 1 and not s.reproducible:
        return False, ("TPE's next suggestion depends on which concurrent trial finished first "
                       "(search.reproducible=true)")
    return True, ""


class LetFinishASHA(ASHAScheduler):
    """ASHA that lets a trial's final epoch end the trial by itself instead of stopping it there (at max_t, or on a
    rung at the last epoch): stopping a data-parallel trial kills its actor while its Train run is still shutting
    down, which leaves the workers' placement group to Ray Train's cleaner (see `init_ray`) and can cut off the
    run's last checkpoint bookkeeping. The result is still recorded in its rung when the trial completes."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result_epoch(result) >= self._max_t:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def trial_name(trial: Any) -> str:
    """Short, stable names ("trial_00003_1a2b3c4d") for logs, Tune's directories and MLflow run names."""
    return f"trial_{trial.trial_id}"


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


def distributed_metrics(result: Any) -> dict[str, Any]:
    """What rank 0 of a data-parallel trial reports per epoch (`study.training.distributed.train_loop`'s metrics_fn):
    the
    epoch's metrics, `best/...`, the `used/...` values, and on the first report after a resume the epochs before
    the checkpoint (HISTORY_KEY), as the one-process trainable sends them."""
    metrics = epoch_metrics(result)
    metrics.update(used_values(result.trainer))
    trainer = result.trainer
    metrics.update(smoothed_metrics(trainer.cfg, trainer.history))
    if not getattr(trainer, "_reported", False):
        trainer._reported = True  # a fresh process per (re)start: the flag marks its first report
        if len(trainer.history) > 1:
            metrics[HISTORY_KEY] = [dict(h) for h in trainer.history[:-1]]
    return metrics


def smoothed_metrics(cfg: PipelineConfig | None, history: list[dict[str, float]]) -> dict[str, float]:
    """`<metric>_smooth` for each searched metric: its mean over the last `search.smooth_epochs` epochs of the
    history so far (the current epoch included), what ASHA's rungs, Optuna and the final ranking compare."""
    if cfg is None or not history:
        return {}
    k = cfg.search.smooth_epochs
    return {smooth_key(m): smoothed_history(history, m, k) for m in cfg.search.metrics if m in history[-1]}


def _trainable(config: dict[str, Any], data: Any = None, base: dict[str, Any] | None = None, threads: int = 1,
               data_ref: list[Any] | None = None, train_storage: str = "") -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    cfg = replace(from_dict(base), trial_params(config))
    if cfg.train.workers > 1:
        # The workers read the data from the object store (data_ref holds the driver's ObjectRef, unresolved);
        # this actor only waits on the TorchTrainer, whose reports reach Tune through TuneReportCallback.
        fit_in_tune_trial(cfg, data_ref[0] if data_ref else data, storage_path=train_storage,
                          metrics_fn=distributed_metrics, checkpoint_every=max(1, cfg.search.checkpoint_every),
                          max_failures=cfg.search.max_failures)
        return
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE)
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
        metrics.update(smoothed_metrics(cfg, result.trainer.history))
        # Each checkpoint makes Tune snapshot the experiment (num_to_keep), so short epochs are not checkpointed
        # one by one: a resume repeats at most `every` epochs (or ~10 s) of a trial. The last epoch always is.
        due = (result.epoch >= cfg.train.epochs or (every > 0 and result.epoch % every == 0)
               or (every == 0 and time.monotonic() - last_saved >= AUTO_CHECKPOINT_S))
        if not due:
            tune.report(metrics)  # ASHA may stop the trial in here (SystemExit): that is its normal end
            continue
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(result.trainer.checkpoint(), Path(d) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        last_saved = time.monotonic()


# ---------------------------------------------------------------------------------------------------------------
# Driver-side progress


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

    def _line(self, text: str, *, error: bool = False) -> None:
        line = f"[study {time.perf_counter() - self.start:6.0f}s] {text}"
        if error:  # errors are printed even with --quiet
            print(line, file=sys.stderr, flush=True)
        else:
            progress(line)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        shown = f"{value:.3g}" if isinstance(value, float) else "-"
        self._line(f"{trial} epoch {result_epoch(result)}/{self.epochs} {self.metric} {shown}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        best = (trial.last_result or {}).get(f"best/{self.metric}")
        shown = f"{best:.3g}" if isinstance(best, float) else "-"
        params = trial_params(trial.config)
        self._line(f"finished {trial} ({self.done}/{self.total}) {params} best {self.metric} {shown}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self._line(f"ERROR in {trial} ({self.done}/{self.total}): see {trial.local_path or trial.path}", error=True)


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
    # The trial's latest checkpoint: a tune.Checkpoint, or with train.workers > 1 its Train run's ray.train.Checkpoint
    # (either holds checkpoint.pt; its history backfills tracking after a crash).
    checkpoint: Any = None


def result_epoch(result: dict[str, Any]) -> int:
    """The epoch a Tune result reports. `training_iteration` counts reports, which after a data-parallel trial's
    retry start again at 1 and after a Train-level retry repeat epochs; `epoch` is the engine's own count."""
    return int(result.get("epoch", result.get("training_iteration", 0)) or 0)


def trial_history(record: TrialRecord) -> list[dict[str, float]]:
    """Per-epoch metrics stored in the trial's latest checkpoint ([] if it has none)."""

    if record.checkpoint is None:
        return []
    with record.checkpoint.as_directory() as d:
        return list(load_checkpoint(Path(d) / CHECKPOINT_FILE).get("history", []))


def storage_path(cfg: PipelineConfig, out_dir: Path) -> str:
    return cfg.search.storage or str((Path(out_dir) / "tune").resolve())


def experiment_path(cfg: PipelineConfig, out_dir: Path) -> str:
    return storage_path(cfg, out_dir).rstrip("/") + "/" + EXPERIMENT_NAME


def train_storage_path(cfg: PipelineConfig, out_dir: Path) -> str:
    """Where data-parallel trials keep their Train runs (`train_<trial id>`): inside the experiment, so --overwrite
    and a moved output directory take them along."""
    return experiment_path(cfg, out_dir) + "/" + TRAIN_DIR


def _train_checkpoint(train_storage: str, trial_id: str) -> Any:
    """The latest checkpoint of a data-parallel trial's Train run (None if it saved none)."""
    import ray.train

    quiet = logging.getLogger("ray.train")  # from_path logs "A run snapshot was found" at INFO, for each trial
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return ray.train.Result.from_path(f"{train_storage}/{RUN_PREFIX}{trial_id}").checkpoint
    except (RuntimeError, OSError):
        return None
    finally:
        quiet.setLevel(level)


def can_resume(cfg: PipelineConfig, out_dir: Path) -> bool:
    return tune.Tuner.can_restore(experiment_path(cfg, out_dir))


def delete_experiment(cfg: PipelineConfig, out_dir: Path) -> None:
    """Remove a stored experiment (local path or any pyarrow filesystem URI) for --overwrite."""
    import pyarrow.fs

    path = experiment_path(cfg, out_dir)
    fs, inner = pyarrow.fs.FileSystem.from_uri(path if "://" in path else "file://" + path)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(inner)


def run_search(cfg: PipelineConfig, data: Any, out_dir: Path, *, callbacks: list[Any],
               resume: bool) -> list[TrialRecord]:
    """Run (or resume) the Tune experiment and return one record per trial. `cfg` has passed study.config.validate
    (`train.workers` fits its resources)."""
    import ray

    s = cfg.search
    base = to_dict(cfg)
    workers = cfg.train.workers
    train_storage = train_storage_path(cfg, out_dir)
    concurrent = s.max_concurrent
    if workers > 1:
        init_ray(dashboard=True)
        if not has_dashboard():
            raise ConfigError(f"train.workers={workers} needs Ray's dashboard, whose state API Ray Train uses to free "
                              "a stopped trial's workers (start Ray with include_dashboard=True, or train.workers=1)")
        # Each trial's workers take their own placement group at fit(): run only as many trials as can hold theirs.
        concurrent = max_concurrent_trials(cfg, ray.cluster_resources())
        # The ObjectRef in a list is passed on unresolved: the trial actor never deserialises the data.
        params = {"data_ref": [ray.put(data)], "train_storage": train_storage}
    else:
        params = {"data": data}
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, base=base, threads=max(1, int(s.resources_per_trial.cpu)), **params),
        trial_resources(cfg))
    path = experiment_path(cfg, out_dir)
    quiet_tune()  # the restored run's callbacks hold the quiet ones already; the engine is chosen per call
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        # The restored callbacks are unpickled copies of the first run's: give them this driver's in-memory parts.
        # Private API, on purpose: Tuner.restore takes no callbacks and exposes no run_config (ray-project/ray#41364
        # asks for a public getter; Tune's get_state/set_state cannot hand over this driver's in-memory objects).
        restored = tuner._local_tuner.get_run_config().callbacks or []
        for old in restored:
            fresh = next((c for c in callbacks if type(c) is type(old)), None)
            if fresh is not None and hasattr(old, "reattach"):
                old.reattach(fresh)
    else:
        searcher, param_space, num_samples = make_searcher(cfg, concurrent, out_dir)
        scheduler = None
        primary = smooth_key(s.primary_metric)  # rung decisions on the mean of the last smooth_epochs epochs
        if s.scheduler == "asha":
            # With two objectives ASHA cuts on the first (Tune's schedulers take one metric). Rungs are epochs, not
            # reports: a retried data-parallel trial's training_iteration starts again at 1 (see result_epoch).
            scheduler = (ASHAScheduler if workers == 1 else LetFinishASHA)(time_attr="epoch", max_t=cfg.train.epochs,
                                      metric=primary if len(s.metrics) > 1 else None,
                                      mode=s.primary_mode if len(s.metrics) > 1 else None,
                                      grace_period=min(s.grace_period, cfg.train.epochs),
                                      reduction_factor=s.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=None if len(s.metrics) > 1 else primary,
                                        mode=None if len(s.metrics) > 1 else s.primary_mode,
                                        search_alg=searcher, scheduler=scheduler,
                                        num_samples=num_samples,
                                        # A data-parallel trial's thread is still in TorchTrainer.fit() when ASHA
                                        # stops it (at max_t too): its actor cannot be reset, so it is not reused.
                                        reuse_actors=workers == 1,
                                        # the searcher is already a ConcurrencyLimiter; grid has none
                                        max_concurrent_trials=concurrent if searcher is None else None,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=storage_path(cfg, out_dir), verbose=0,
                                      # first: Tune's banner and status table silenced (study.search.output)
                                      callbacks=[*quiet_callbacks(), *callbacks],
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      # a trial whose process dies restarts from its last checkpoint
                                      failure_config=tune.FailureConfig(max_failures=s.max_failures)),
        )
    with signals.graceful():  # a signal ends the experiment through Tune: trials stopped, its state saved
        grid = tuner.fit()
    signals.raise_if_stopped()  # SIGINT/SIGTERM: Tune stopped its trials and saved the experiment; go no further
    records = []
    for result in grid:
        m = dict(result.metrics or {})
        cfg_params = trial_params(result.config or {})
        epochs = result_epoch(m)
        trial_id = str(m.get("trial_id") or _trial_id_from_path(result.path))
        checkpoint = result.checkpoint
        if workers > 1 and checkpoint is None:
            checkpoint = _train_checkpoint(train_storage, trial_id)
        if result.error is not None:
            status = "error"
        else:
            status = "completed" if epochs >= cfg.train.epochs else "stopped"
        final = {k: float(v) for k, v in m.items() if "/" in k and not k.startswith("best/") and _num(v)}
        best = {k[len("best/"):]: float(v) for k, v in m.items() if k.startswith("best/") and _num(v)}
        records.append(TrialRecord(trial_id, status, cfg_params, final, best, epochs, float(m.get("time_total_s", 0.0)),
                                   None if result.error is None else str(result.error).splitlines()[0][:500],
                                   checkpoint))
    return records


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(float(v))


def _trial_id_from_path(path: str | None) -> str:
    # Tune names trial dirs "<trainable>_<trial_id>_<index>_<params>"; an errored trial may have no metrics.
    parts = Path(path or "").name.split("_")
    return parts[1] if len(parts) > 1 else Path(path or "unknown").name
