"""MLflow at the edge: the only module that imports mlflow.

Layout (DESIGN.md section 3): an experiment named after the study; one parent run per stage (`study`, `retrain`,
`export`, `detect`); trials as child runs of `study` (tag `mlflow.parentRunId`); params under dotted config
names; per-epoch metrics with `step=epoch`.

Speed: Ray's stock `MLflowLoggerCallback` makes one HTTP call per metric. Here every epoch of a trial is one
`log_batch` call, made by a single background thread in the driver (`AsyncLogger`), so trials never wait on the
tracking server and concurrent trials never race on a run.

Idempotence: runs carry tags (`cutmix.stage`, `cutmix.output`, `ray.trial_id`) so a resumed stage finds and
continues its runs instead of creating second ones.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
MAX_PARAM_LEN = 6000


class TrackingError(ValueError):
    """The tracking store cannot be used; one-line message."""


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (before any trial starts) if an HTTP tracking server does not answer, or a file store's
    directory cannot be created. Raises TrackingError."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the user's own server
                resp.read(64)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return  # an authenticating server is up; credentials are checked on the first call
            raise TrackingError(f"tracking server {uri} answered {exc.code} on /health (check --tracking-uri)"
                                ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking server {uri} is unreachable ({reason}; start it or fix --tracking-uri)"
                                ) from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        probe = path.parent
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            raise TrackingError(f"cannot create the SQLite tracking store {path} ({probe} is not writable)")
    elif "://" not in uri and not uri.startswith("file:"):
        raise TrackingError(f"tracking URI {uri!r} is not allowed (http(s)://host:port, sqlite:///path, "
                            "postgresql+psycopg2://..., or file:/path)")


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def get_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created if missing (race-safe against a concurrent creator)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The newest run of the experiment whose tags all match, or None."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def start_run(client: MlflowClient, experiment_id: str, name: str, tags: Mapping[str, str],
              reuse: bool = True) -> tuple[str, bool]:
    """A run with `tags` (found again when `reuse` and one exists). Returns (run_id, reused)."""
    if reuse:
        run_id = find_run(client, experiment_id, tags)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return run_id, True
    run = client.create_run(experiment_id, run_name=name, tags=dict(tags))
    return run.info.run_id, False


def _param_value(v: Any) -> str:
    text = str(list(v) if isinstance(v, tuple) else v)
    return text[:MAX_PARAM_LEN]


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any], skip_existing: bool = True) -> None:
    """Params under their dotted names, batched (MLflow refuses to change a logged param: skip those)."""
    if skip_existing:
        have = client.get_run(run_id).data.params
        params = {k: v for k, v in params.items() if k not in have}
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH], synchronous=True)


def metric_entities(metrics: Mapping[str, Any], step: int, timestamp_ms: int | None = None) -> list[Metric]:
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    out = []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(float(v)):
            continue
        out.append(Metric(key=k, value=float(v), timestamp=ts, step=int(step)))
    return out


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """All numeric metrics of one step in one call."""
    entities = metric_entities(metrics, step)
    if entities:
        client.log_batch(run_id, metrics=entities, synchronous=True)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def last_step(client: MlflowClient, run_id: str, key: str) -> int:
    """The highest step logged for metric `key` (-1 if none): a resumed trial skips what is already logged."""
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


def log_artifact(client: MlflowClient, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    elif path.is_file():
        client.log_artifact(run_id, str(path), artifact_path)


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=status)


def register_model(client: MlflowClient, name: str, run_id: str, artifact_path: str,
                   tags: Mapping[str, Any]) -> str:
    """Register the files under `runs:/<run_id>/<artifact_path>` as a new version of model `name`."""
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    source = f"runs:/{run_id}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id,
                                          tags={k: _param_value(v)[:5000] for k, v in tags.items()})
    return str(version.version)


def run_info(client: MlflowClient, run_id: str) -> tuple[Mapping[str, str], Mapping[str, str], Mapping[str, float]]:
    """(tags, params, latest metrics) of a run. Raises TrackingError if the run does not exist."""
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"MLflow run {run_id} not found in the tracking store (check --tracking-uri)") from None
    return run.data.tags, run.data.params, run.data.metrics


def download_artifacts(client: MlflowClient, run_id: str, path: str, dst: str | Path) -> Path:
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst)))


class AsyncLogger:
    """One background thread that executes logging calls in order, so callers (Ray's driver loop, and through
    it the trials) never wait on the tracking server. Errors are kept and re-raised by `flush()`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised on flush
                self._errors.append(exc)
            finally:
                self._queue.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        self._queue.put(job)

    def flush(self) -> None:
        self._queue.join()
        if self._errors:
            err, self._errors = self._errors[0], []
            raise err

    def close(self) -> None:
        """Flush (re-raising a job's error) and stop the thread, which stops even when flush raises."""
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._thread.join(timeout=30)
