"""Ray Tune's `OptunaSearch`, with a stored study that knows which trials were stopped (issues 15 and 17).

What Ray 2.60's `ray/tune/search/optuna/optuna_search.py` does, read from its source:
- `on_trial_complete` tells Optuna `TrialState.COMPLETE` with the trial's *last* value whenever the result holds the
  metric, so a trial that ASHA stopped at epoch 4 enters Optuna as a finished trial whose final error is its epoch-4
  error. Mixing looks worse early (short-horizon bias), so TPE learns that p > 0 is bad and steers to p = 0. Here a
  trial that ended before `train.epochs` is told `TrialState.PRUNED`; TPE then ranks it below every complete trial
  and by the step it reached (optuna/samplers/_tpe/sampler.py, `_split_trials`), as Optuna's own pruners do.
- `on_trial_result` reports at `training_iteration`, which restarts at 1 after a data-parallel trial's retry; here
  the step is the engine's `epoch` and the value the smoothed metric the scheduler also sees.
- It is built with no `storage` and the study name "optuna" (in memory). It accepts both, and `create_study(...,
  load_if_exists=True)` continues a stored study: here the storage is `<output>/optuna.db` (or
  `search.optuna_storage`), the study is named after ours, and a Tune restore reconnects to it, so --resume
  continues the same Optuna study and `optuna-dashboard` shows every trial with its per-epoch values.

Reproducibility: with two concurrent trials TPE's next suggestion depends on which trial finished first (whatever
is COMPLETE in the storage when `ask()` runs). With `lag` = max_concurrent, `StoredOptunaSearch` makes the history
at every `ask()` a function of the seed alone: trial n is asked only once trials 0 .. n-lag-1 have finished, and
Optuna sees exactly those (told in trial order; a trial that finished out of turn is held back until then). Usually
nothing waits: with `lag` slots, trial n-lag-1 has finished when a slot frees unless it is a straggler. Deterministic
batches (`BatchLimiter`, Ray's `ConcurrencyLimiter(batch=True)`) give the same guarantee, but every batch waits
for its slowest trial and Tune drops the actor of a trial that finishes with nothing waiting (bench/
reproducible_cost.py measured +26-29 % study wall time on the default).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from study.config.schema import OPTUNA_STORAGE_ENV

logger = logging.getLogger(__name__)
DB_FILE = "optuna.db"


def storage_url(configured: str, out_dir: str | Path) -> str:
    """`search.optuna_storage`, else `$OPTUNA_STORAGE` (Optuna's CLI convention; how the k8s manifests pass the
    PostgreSQL URL from a Secret, so that the password is in neither the config nor the recorded params), else
    SQLite in the output directory (absolute, so a resumed driver finds it)."""
    return configured or os.environ.get(OPTUNA_STORAGE_ENV, "") or f"sqlite:///{(Path(out_dir) / DB_FILE).resolve()}"


def is_shared_storage(configured: str) -> bool:
    """Whether the Optuna study lives outside the output directory (configured or from the environment): a study
    of the same name may then be there already, from another run."""
    return bool(configured or os.environ.get(OPTUNA_STORAGE_ENV))


def rdb_storage(url: str) -> Any:
    """An Optuna RDBStorage for a URL (OptunaSearch takes a storage object, not a URL), or in memory for "".
    SQLite waits for its lock instead of failing at once: the dashboard or a plot may read while the driver
    writes."""
    import optuna

    if not url:
        return optuna.storages.InMemoryStorage()

    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def study_exists(url: str, name: str) -> bool:
    import optuna

    return any(s.study_name == name for s in optuna.get_all_study_summaries(rdb_storage(url)))


def delete_study(url: str, name: str) -> None:
    """Remove a stored study (for --overwrite, and before a fresh search) if it exists."""
    import optuna

    if study_exists(url, name):
        optuna.delete_study(study_name=name, storage=rdb_storage(url))


class StoredOptunaSearch(OptunaSearch):
    """OptunaSearch on a stored study that reports the smoothed metric per epoch and tells stopped trials as
    PRUNED. `epochs`: a trial's full budget (`train.epochs`). `lag` > 0: the deterministic history of the module
    docstring (trial n sees exactly trials 0 .. n-lag-1); `num_samples`: once that many trials were asked, no
    suggestion is left to protect and finished trials are told at once."""

    def __init__(self, *, url: str, study_name: str, epochs: int, lag: int = 0, num_samples: int = 0,
                 **kwargs: Any):
        self._url, self._epochs = url, int(epochs)
        self._lag, self._num_samples = int(lag), int(num_samples)
        self._reported: dict[str, int] = {}  # trial id -> last epoch reported to Optuna
        self._held: dict[str, tuple[dict | None, bool]] = {}  # finished, not told yet: trial id -> (result, error)
        self._numbers: dict[str, int] = {}  # trial id -> Optuna trial number
        super().__init__(storage=rdb_storage(url), study_name=study_name, **kwargs)

    def _number(self, trial_id: str) -> int:
        return self._numbers[trial_id]

    def _asked(self) -> int:
        return len(self._ot_study.get_trials(deepcopy=False))

    def _release(self, below: int) -> None:
        """Tell the held trials numbered below `below`, in trial order."""
        for tid in sorted((t for t in self._held if self._number(t) < below), key=self._number):
            result, error = self._held.pop(tid)
            self._tell(tid, result, error)

    def suggest(self, trial_id: str) -> dict | None:
        if self._lag and trial_id not in self._ot_trials:
            n = self._asked()  # the number Optuna gives the next trial
            visible = n - self._lag  # trial n sees exactly trials 0 .. n-lag-1
            running = [t for t, number in self._numbers.items() if number < visible
                       and t not in self._held and t not in self._completed_trials]
            if running:
                return None  # a straggler of an earlier turn still runs: Tune asks again later
            self._release(visible)
        params = super().suggest(trial_id)
        self._numbers.setdefault(trial_id, self._ot_trials[trial_id].number)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            # Tune hands a trial's last result (its final epoch, or the one a scheduler stopped it on) to
            # on_trial_complete only, never to on_trial_result: report it here, or that epoch is missing.
            self.on_trial_result(trial_id, result)
        if not self._lag or trial_id not in self._ot_trials or trial_id in self._completed_trials:
            self._tell(trial_id, result, error)
            return
        self._held[trial_id] = (result, error)
        if self._num_samples and self._asked() >= self._num_samples:
            self._release(self._asked())  # every trial is asked: nothing left whose history this could change

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna's Trial.report does not support several objectives: a multi-objective trial has no intermediates.
        if isinstance(self.metric, list) or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, epoch = result.get(self.metric), int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        if value is None or math.isnan(float(value)) or epoch <= self._reported.get(trial_id, 0):
            return  # an epoch repeated after a restore from checkpoint was reported the first time
        self._ot_trials[trial_id].report(float(value), step=epoch)
        self._reported[trial_id] = epoch

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        import optuna

        epoch = int((result or {}).get("epoch", 0) or 0)
        if error or not result or epoch >= self._epochs or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        # Stopped by the scheduler before its budget: its last value is not a final value.
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - as Ray's own tell: a storage hiccup must not end the study
            logger.warning("telling Optuna that trial %s was pruned failed: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore unpickles the searcher as it was at the experiment's last snapshot; the stored study has
        moved on since. Reconnect to the storage and fail the trials it still holds as RUNNING that this searcher
        never heard of (asked after the snapshot; Tune restarts them as new trials), so the study shows no ghost
        running forever."""
        import optuna

        super().restore(checkpoint_path)
        if not self._url:  # in memory: the unpickled study is the whole study
            return
        try:
            study = optuna.load_study(study_name=self._study_name, storage=rdb_storage(self._url),
                                      sampler=self._ot_study.sampler, pruner=self._ot_study.pruner)
        except KeyError:  # the storage lost the study (default SQLite: deleted with the output directory)
            self._restart_study(optuna)
            return
        known = {t._trial_id for t in self._ot_trials.values()}
        self._ot_trials = {tid: optuna.trial.Trial(study, t._trial_id) for tid, t in self._ot_trials.items()
                           if tid not in self._completed_trials}
        self._ot_study = study
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen._trial_id not in known:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)


    def _restart_study(self, optuna: Any) -> None:
        """A new stored study of the same name when the old one is gone (Tune's storage and MLflow survived the
        output directory; the Optuna history did not): the trials Tune restores get fresh Optuna trials, so their
        epochs are reported and told; the finished ones are not in it, which the warning says."""
        logger.warning("the stored Optuna study %s is not in %s (deleted with the output directory?): a new one is "
                       "started; trials finished before are not in it", self._study_name, self._url)
        study = optuna.create_study(study_name=self._study_name, storage=rdb_storage(self._url),
                                    sampler=self._ot_study.sampler, pruner=self._ot_study.pruner,
                                    directions=self._ot_study.directions, load_if_exists=True)
        self._ot_trials = {tid: study.ask() for tid in self._ot_trials if tid not in self._completed_trials}
        self._ot_study = study


class BatchLimiter(ConcurrencyLimiter):
    """`ConcurrencyLimiter(batch=True)` that tells a finished batch in trial order (Tune's trial ids end in their
    creation counter), not in the order the trials happened to finish."""

    def __init__(self, searcher: Any, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent, batch=True)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._limit_concurrency and trial_id in self.live_trials and self.num_unfinished_live_trials <= 1:
            self.cached_results[trial_id] = (result, error)
            self.cached_results = dict(sorted(self.cached_results.items(), key=lambda kv: _trial_order(kv[0])))
        super().on_trial_complete(trial_id, result=result, error=error)


def _trial_order(trial_id: str) -> tuple[int, str]:
    tail = trial_id.rsplit("_", 1)[-1]
    return (int(tail) if tail.isdigit() else 0, trial_id)


# ---------------------------------------------------------------------------------------------------------------
# Optuna's own plots of the stored study


def save_optuna_plots(url: str, study_name: str, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Optuna's parameter importances (fANOVA), slice and optimization-history plots of the stored study, as
    `optuna_*.png` in `out_dir`, where they add to ours (study.plots draws the metric against each parameter;
    these add the importances and Optuna's view of its own trials, pruned ones included). Returns (written paths,
    {plot: why it was skipped})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=study_name, storage=rdb_storage(url))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    skipped: dict[str, str] = {}
    if len(study.directions) > 1:
        return [], {"all": "a multi-objective study (study.search.pareto draws its front)"}
    varied = [n for n in {k for t in complete for k in t.params}
              if len({t.params.get(n) for t in complete if n in t.params}) > 1]
    plans = [("optimization_history", ovm.plot_optimization_history, 2, "")]
    plans.append(("slice", ovm.plot_slice, 2, "" if varied else "no parameter varied over the complete trials"))
    plans.append(("param_importances", ovm.plot_param_importances, 3,
                  "" if len(varied) >= 2 else "importances need at least two parameters that varied"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot, need, why in plans:
        if len(complete) < need:
            skipped[name] = f"{len(complete)} complete trial(s) (needs {need})"
            continue
        if why:
            skipped[name] = why
            continue
        try:
            # Optuna's matplotlib plots call plt.style.use("ggplot"), which would restyle every later figure of
            # this process (our own plots, and their colour tests): rc_context puts the rcParams back.
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is marked experimental
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            path = out_dir / f"optuna_{name}.png"
            fig.savefig(path, dpi=90, bbox_inches="tight")
            plt.close(fig)
            paths.append(path)
        except Exception as exc:  # noqa: BLE001 - a plot Optuna cannot draw skips with its reason, the study goes on
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return paths, skipped
