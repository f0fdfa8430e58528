"""The Tune callback that records a study's trials in MLflow: a child run per trial under the study's run.

Ray's stock `MLflowLoggerCallback` makes one HTTP call per metric (~50 ms each) from the driver's loop. Here every
epoch of a trial is one `log_batch`, made by a single background thread (study.tracking.AsyncLogger), so trials
never wait on the tracking server and concurrent trials never race on a run.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray import tune

from study.config import PipelineConfig, from_dict, replace
from study.search import HISTORY_KEY
from study.space import trial_params


class MlflowTrialCallback(tune.Callback):
    """Child run per trial, per-epoch `log_batch`, status and artifacts; all from the driver, on one background
    thread (study.tracking.AsyncLogger). Picklable, because Tune stores callbacks with the experiment and
    `Tuner.restore` brings them back: clients and threads are recreated lazily, and a restored callback finds a
    trial's existing run by its `ray.trial_id` tag instead of creating a second one. What is not picklable (the
    function drawing a trial's sample grid from the in-memory data) is not stored: `study.search.run_search`
    re-attaches it to the restored callback with `reattach`."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, base: dict[str, Any],
                 artifacts: Callable[[PipelineConfig, Path], list[Path]] | None = None):
        self.uri, self.experiment_id, self.parent_run_id, self.base = uri, experiment_id, parent_run_id, base
        self._init_runtime()
        self.artifacts = artifacts

    def _init_runtime(self) -> None:
        self.artifacts: Callable[[PipelineConfig, Path], list[Path]] | None = None
        self._client = None
        self._logger = None
        self._runs: dict[str, str] = {}
        self._logged_step: dict[str, int] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def reattach(self, fresh: MlflowTrialCallback) -> None:
        """Take the in-memory parts of a freshly built callback (after `Tuner.restore` unpickled this one)."""
        self.artifacts = fresh.artifacts

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("uri", "experiment_id", "parent_run_id", "base")}

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
            for path in self.artifacts(cfg, Path(d)) if self.artifacts else []:
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
        if tid not in self._runs and tid not in self._pending:
            # A trial restored mid-run may report before Tune calls on_trial_start again.
            self.on_trial_start(iteration, trials, trial)
            self._pending.add(tid)
        self.logger.submit(lambda: self._log_result(tid, res))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        done = int((trial.last_result or {}).get("training_iteration", 0))
        status = "completed" if done >= self.base["train"]["epochs"] else "stopped"
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
