"""The Tune callback that records a study's trials in MLflow: a child run per trial under the study's run.

Ray's stock `MLflowLoggerCallback` makes one HTTP call per metric (~50 ms each) from the driver's loop. Here every
epoch of a trial is one `log_batch`, made by a single background thread (study.tracking.async_logger.AsyncLogger), so
trials
never wait on the tracking server and concurrent trials never race on a run.

Faults: every job is safe to run twice, because AsyncLogger retries a job the tracking server did not answer (it
may have committed it). Metrics carry the time the driver received the result, fixed when the job is queued, so a
repeated `log_batch` sends identical rows, which MLflow's store keeps once. Opening a run finds it again by its
`ray.trial_id` tag and finishes a set-up that an outage interrupted (the `cutmix.searched` tag is written last). A
trial retried after its process died keeps its run (`cutmix.trial_restarts` counts the retries) and its curve has
each epoch once: steps at or below the last logged one are skipped.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray import tune

from study.config.load import dump_config, from_dict, replace
from study.config.schema import PipelineConfig, flatten
from study.search.space import trial_params
from study.search.tune import HISTORY_KEY, result_epoch
from study.tracking import store as tracking


class MlflowTrialCallback(tune.Callback):
    """Child run per trial, per-epoch `log_batch`, status and artifacts; all from the driver, on one background
    thread (study.tracking.async_logger.AsyncLogger). Picklable, because Tune stores callbacks with the experiment and
    `Tuner.restore` brings them back: clients and threads are recreated lazily, and a restored callback finds a
    trial's existing run by its `ray.trial_id` tag instead of creating a second one. What is not picklable (the
    function drawing a trial's sample grid from the in-memory data) is not stored: `study.search.tune.run_search`
    re-attaches it to the restored callback with `reattach`."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, base: dict[str, Any],
                 artifacts: Callable[[PipelineConfig, Path], list[Path]] | None = None,
                 datasets: list[dict[str, Any]] | None = None):
        self.uri, self.experiment_id, self.parent_run_id, self.base = uri, experiment_id, parent_run_id, base
        self.datasets = list(datasets or [])  # study.tracking.context.dataset_specs: each trial run's inputs
        self._init_runtime()
        self.artifacts = artifacts

    def _init_runtime(self) -> None:
        self.artifacts: Callable[[PipelineConfig, Path], list[Path]] | None = None
        self._client = None
        self._logger = None
        self._runs: dict[str, str] = {}
        self._logged_step: dict[str, int] = {}
        self._ready: set[str] = set()  # trials whose run is fully set up
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def reattach(self, fresh: MlflowTrialCallback) -> None:
        """Take the in-memory parts of a freshly built callback (after `Tuner.restore` unpickled this one)."""
        self.artifacts = fresh.artifacts

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__.get(k) for k in ("uri", "experiment_id", "parent_run_id", "base", "datasets")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    @property
    def logger(self) -> Any:

        with self._lock:
            if self._logger is None:
                self._client = tracking.client_for(self.uri)
                self._logger = tracking.AsyncLogger()
            return self._logger

    # Jobs run on the logger thread, in submission order.

    def _open_run(self, trial_id: str, trial_name: str, params: dict[str, Any]) -> None:

        client = self._client
        if trial_id in self._ready:
            return  # the trial restarted after its process died: same run, same curve
        run_id = self._runs.get(trial_id)  # set when an earlier try of this job created the run
        if run_id is None:
            tags = {"mlflow.parentRunId": self.parent_run_id, "ray.trial_id": trial_id, "cutmix.stage": "trial"}
            run_id, reused = tracking.start_run(client, self.experiment_id, trial_name, tags)
            self._runs[trial_id] = run_id
            self._logged_step[trial_id] = tracking.last_step(client, run_id, "epoch") if reused else -1
            if reused and "cutmix.searched" in client.get_run(run_id).data.tags:
                self._ready.add(trial_id)
                return
        cfg = replace(from_dict(self.base), params)
        tracking.log_params(client, run_id, flatten(cfg), skip_existing=False)  # the same values again: accepted
        tracking.set_tags(client, run_id, {"cutmix.trial_status": "running"})
        tracking.log_datasets(client, run_id, self.datasets or [])
        with tempfile.TemporaryDirectory() as d:
            dump_config(cfg, Path(d) / "config.yaml")
            tracking.log_artifact(client, run_id, Path(d) / "config.yaml")
            for path in self.artifacts(cfg, Path(d)) if self.artifacts else []:
                tracking.log_artifact(client, run_id, path)
        tracking.set_tags(client, run_id, {"cutmix.searched": ",".join(sorted(params))})  # last: set-up complete
        self._ready.add(trial_id)

    def _log_result(self, trial_id: str, result: dict[str, Any], timestamp_ms: int) -> None:
        step = result_epoch(result)
        logged = self._logged_step.get(trial_id, -1)
        for earlier in result.get(HISTORY_KEY) or []:
            past = int(earlier.get("epoch", 0))
            if logged < past < step:
                self._log_metrics(trial_id, earlier, past, timestamp_ms)
        if step <= logged:
            return  # a resumed trial re-reports epochs already logged before the interruption
        self._log_metrics(trial_id, result, step, timestamp_ms)
        self._logged_step[trial_id] = step

    def _log_metrics(self, trial_id: str, metrics: Mapping[str, Any], step: int, timestamp_ms: int) -> None:

        entities = tracking.metric_entities(_loggable(metrics), step, timestamp_ms)
        if entities:
            self._client.log_batch(self._runs[trial_id], metrics=entities, synchronous=True)

    def _tag_restarts(self, trial_id: str, restarts: int) -> None:

        if trial_id in self._runs:
            tracking.set_tags(self._client, self._runs[trial_id], {"cutmix.trial_restarts": restarts})

    def _close_run(self, trial_id: str, status: str, run_status: str) -> None:

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
        received = int(time.time() * 1000)  # fixed now: a retried log_batch then repeats identical rows
        self.logger.submit(lambda: self._log_result(tid, res, received))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid, restarts = trial.trial_id, int(getattr(trial, "num_failures", 0))
        self.logger.submit(lambda: self._tag_restarts(tid, restarts))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        done = result_epoch(trial.last_result or {})
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
