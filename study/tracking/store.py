"""MLflow at the edge: this package (store, context, models) is the only code that imports mlflow.

Layout (docs/architecture.md section 3): an experiment named after the study, tagged for MLflow's model-training
view; the pipeline as one tree of runs (tag `mlflow.parentRunId`): `cutmix-study run` opens a `pipeline` run
(`Tracker.pipeline_run`), the stage runs (`study`, `retrain`, `evaluate`, `export`, `detect`; `Tracker.stage_run`)
nest under it, trials under `study`, seeds under `retrain`, models under `evaluate`. A stage run alone is a top-level
run. Names are readable and unique: `<stage>-<experiment>-<key>` (`study-digits-3f2a`), where the 4-hex key is the
pipeline's (kept by a resumed pipeline, tag `cutmix.run_key`), so every run of one pipeline carries the same key;
children append it too (`retrain-cutmix-seed0-3f2a`). Params under dotted config names; per-epoch metrics with
`step=epoch`. Every run carries MLflow's source tags (study.tracking.context), a run that trained or measured
something its datasets (`log_inputs`), and with `tracking.system_metrics` MLflow's system metrics (CPU, memory,
disk, network; GPU with nvidia-ml-py and a GPU), sampled by a thread of the process that opened the run.

With a local store (SQLite, the default) the experiment's artifacts live in
`<output>/mlartifacts`, so an output directory is the whole record; a tracking server keeps its own artifact store.

Speed: Ray's stock `MLflowLoggerCallback` makes one HTTP call per metric. Here every epoch of a trial is one
`log_batch` call, made by a single background thread in the driver (`AsyncLogger`), so trials never wait on the
tracking server and concurrent trials never race on a run.

Idempotence: runs carry tags (`cutmix.stage`, `cutmix.output`, `ray.trial_id`) so a resumed stage finds and
continues its runs instead of creating second ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from study.tracking.async_logger import AsyncLogger  # noqa: F401 - re-exported: the tracking calls' queue
from study.tracking.context import log_datasets, source_tags
from study.tracking.models import RegisteredModel, log_torch_model

# MLflow's HTTP client retries refused connections, timeouts and 429/5xx answers of every call itself (urllib3 Retry,
# all methods). Measured against a local server stopped for 41 s (30 s down, 11 s to restart): a log_batch made
# 1 s into the outage returned after 61 s, its tries at 0, 4, 12, 28 and 60 s; 7 retries wait ~4 minutes in all.
# Pinned so that what the driver's calls survive does not change with MLflow's defaults; AsyncLogger retries longer.
CLIENT_ENV_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}


def apply_client_defaults() -> None:
    """Set CLIENT_ENV_DEFAULTS where the user has not (MLflow reads them per request). Called when a client or
    tracker is built, not on import: importing this module changes nothing."""
    for name, value in CLIENT_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)



MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
MAX_PARAM_LEN = 6000
ARTIFACTS_DIR = "mlartifacts"  # under the output directory, for local stores
# MLflow 3's UI opens an experiment on its GenAI overview (traces) unless it is tagged as model development.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# The runs table opens on Source/Models/Dataset columns; a shared view (an experiment tag the UI reads when the URL
# names it) opens it on what a study is about: the best metric and the searched parameters.
VIEW_KEY = "cutmix-study"
VIEW_TAG = "mlflow.sharedViewState."
# MLflow 3.17's runs table nests child runs under their parents only while it is sorted by start time ("Created")
# and unfiltered; sorted by a metric it shows a flat list. The shared view therefore keeps that order, newest first.
VIEW_ORDER = {"orderByKey": "attributes.start_time", "orderByAsc": False}
PIPELINE = "pipeline"
KEY_TAG = "cutmix.run_key"
SYSTEM_METRICS_INTERVAL_S = 10.0  # MLflow's default sampling interval


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
    apply_client_defaults()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)  # never a registry URI left global by others


def is_local_store(uri: str) -> bool:
    """SQLite or file stores keep artifacts where the experiment says; a server has its own artifact store."""
    return not uri.startswith(("http://", "https://", "databricks"))


def get_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created if missing (race-safe against a concurrent creator), tagged for the
    model-training view of the MLflow UI."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if any(exp.tags.get(k) != v for k, v in EXPERIMENT_TAGS.items()):
            for k, v in EXPERIMENT_TAGS.items():
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
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
    """A run with `tags` (found again when `reuse` and one exists), created with MLflow's source tags (user, source,
    entry point, git commit; study.tracking.context). Returns (run_id, reused)."""
    if reuse:
        run_id = find_run(client, experiment_id, tags)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return run_id, True
    run = client.create_run(experiment_id, run_name=name, tags={**source_tags(), **tags})
    return run.info.run_id, False


def new_key() -> str:
    """The 4-hex suffix that makes a pipeline's run names unique (`study-digits-3f2a`)."""
    return secrets.token_hex(2)


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


class StageRun:
    """One MLflow run bound to its client: what a stage logs, without passing (client, run_id) around."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, reused: bool = False, *,
                 key: str = "", datasets: list[dict[str, Any]] | None = None):
        self.client, self.run_id, self.experiment_id, self.reused = client, run_id, experiment_id, reused
        self.key = key  # the pipeline's name suffix, appended to the names of child runs
        self.datasets = list(datasets or [])  # study.tracking.context.dataset_specs: logged on every child too

    def log_params(self, params: Mapping[str, Any], skip_existing: bool = True) -> None:
        log_params(self.client, self.run_id, params, skip_existing)

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        log_metrics(self.client, self.run_id, metrics, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        set_tags(self.client, self.run_id, tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        log_artifact(self.client, self.run_id, path, artifact_path)

    def last_step(self, key: str = "epoch") -> int:
        return last_step(self.client, self.run_id, key)

    def log_model(self, model: Any, name: str, input_example: Any, *, registered_name: str,
                  tags: Mapping[str, Any] | None = None) -> RegisteredModel:
        """`model` as an MLflow model of this run, registered as a new version of `registered_name` with the alias
        `champion` (study.tracking.models.log_torch_model)."""
        return log_torch_model(self.client, self.run_id, self.experiment_id, model, name, input_example,
                               registered_name=registered_name, tags=tags)

    def log_datasets(self, specs: list[dict[str, Any]]) -> None:
        """The run's inputs (study.tracking.context.dataset_specs)."""
        log_datasets(self.client, self.run_id, specs)

    @contextlib.contextmanager
    def child(self, name: str, tags: Mapping[str, str], *, reuse: bool = False) -> Iterator[StageRun]:
        """A nested run (a retrain seed, an evaluated model) with the same lifecycle and datasets as its parent,
        named `<name>-<key>`. Children are opened when their work has finished (a Ray task's results are logged as
        they arrive), so system metrics stay on the stage run, which spans the work."""
        run_id, reused = start_run(self.client, self.experiment_id, f"{name}-{self.key}" if self.key else name,
                                   {"mlflow.parentRunId": self.run_id, **tags}, reuse=reuse)
        if self.datasets:
            log_datasets(self.client, run_id, self.datasets)
        with _lifecycle(self.client, run_id):
            yield StageRun(self.client, run_id, self.experiment_id, reused, key=self.key, datasets=self.datasets)


@contextlib.contextmanager
def _lifecycle(client: MlflowClient, run_id: str, system_metrics: bool = False) -> Iterator[None]:
    """FINISHED when the block ends, KILLED when a signal stops it (KeyboardInterrupt: SIGINT, or SIGTERM through
    study.cluster.signals), FAILED when it raises anything else (SystemExit too); with `system_metrics`, MLflow's
    system metrics sampled while the block runs."""
    monitor = start_system_metrics(client, run_id) if system_metrics else None
    try:
        yield
    except KeyboardInterrupt:
        stop_system_metrics(monitor)
        end_run(client, run_id, "KILLED")
        raise
    except BaseException:
        stop_system_metrics(monitor)
        end_run(client, run_id, "FAILED")
        raise
    stop_system_metrics(monitor)
    end_run(client, run_id)


def start_system_metrics(client: MlflowClient, run_id: str, interval_s: float | None = None) -> Any:
    """MLflow's SystemMetricsMonitor on `run_id` (a daemon thread; `system/...` metrics every `interval_s`, default
    $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL or 10 s). GPU metrics need nvidia-ml-py and an NVIDIA GPU."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # The monitor announces itself at INFO ("Started monitoring system metrics.", "Skip logging GPU metrics.").
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s or SYSTEM_METRICS_INTERVAL_S,
                                   resume_logging=True, tracking_uri=client.tracking_uri)
    monitor.start()
    return monitor


def stop_system_metrics(monitor: Any) -> None:
    """Stop the monitor. One last sample is logged first: the monitor publishes only after a whole interval, so a
    run shorter than that would otherwise have none."""
    if monitor is None:
        return
    monitor.finish()  # stops and joins the sampling thread, flushes what it queued
    try:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception:  # noqa: BLE001 - system metrics never fail a run
        pass


class Tracker:
    """Where a pipeline records: the tracking URI, the experiment of a study, and the stage-run lifecycle.

    `out_dir` is the pipeline's output directory: with a local store the experiment is created with its artifact
    location inside it (`<out_dir>/mlartifacts`), so nothing lands in `./mlruns` of the working directory.
    """

    def __init__(self, uri: str, out_dir: str | Path | None = None):
        apply_client_defaults()  # before any call: the trial callback's and AsyncLogger's clients read them too
        self.uri = uri
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else None
        self._client: MlflowClient | None = None
        self.key = new_key()  # the name suffix of this process's runs; a resumed pipeline's key replaces it
        self.parent_run_id: str | None = None  # the open pipeline run: stage runs nest under it

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    def check(self) -> None:
        check_tracking_uri(self.uri)

    def artifact_location(self) -> str | None:
        if self.out_dir is None or not is_local_store(self.uri):
            return None
        return (self.out_dir / ARTIFACTS_DIR).as_uri()

    def experiment(self, name: str) -> str:
        return get_experiment(self.client, name, self.artifact_location())

    def _base_tags(self, stage: str) -> dict[str, str]:
        return {"cutmix.stage": stage, **({"cutmix.output": str(self.out_dir)} if self.out_dir else {})}

    @contextlib.contextmanager
    def pipeline_run(self, experiment: str, *, reuse: bool = False, system_metrics: bool = False,
                     tags: Mapping[str, str] | None = None) -> Iterator[StageRun]:
        """The run of a whole `cutmix-study run` (tag `cutmix.stage=pipeline`, named `pipeline-<experiment>-<key>`):
        while the block runs, every stage run opened by this tracker nests under it. Found again when `reuse`
        (--resume), with its key, so the resumed stages keep their names."""
        experiment_id = self.experiment(experiment)
        run_id, reused = start_run(self.client, experiment_id, f"{PIPELINE}-{experiment}-{self.key}",
                                   {**self._base_tags(PIPELINE)}, reuse=reuse)
        if reused:
            self.key = self.client.get_run(run_id).data.tags.get(KEY_TAG) or self.key
        run = StageRun(self.client, run_id, experiment_id, reused, key=self.key)
        run.set_tags({KEY_TAG: self.key, **(tags or {})})
        self.parent_run_id = run_id
        try:
            with _lifecycle(self.client, run_id, system_metrics):
                yield run
        finally:
            self.parent_run_id = None

    @contextlib.contextmanager
    def stage_run(self, stage: str, experiment: str, *, tags: Mapping[str, str] | None = None, reuse: bool = False,
                  run_id: str | None = None, datasets: list[dict[str, Any]] | None = None,
                  system_metrics: bool = False) -> Iterator[StageRun]:
        """The run of a stage (tag `cutmix.stage`, named `<stage>-<experiment>-<key>`), nested under the open
        pipeline run if there is one: found again when `reuse` (or given by `run_id`), else new; marked FAILED if
        the block raises, FINISHED when it ends. `datasets` (study.tracking.context.dataset_specs) are logged on it
        and on each of its child runs; `system_metrics` samples MLflow's system metrics on it while the block runs."""
        experiment_id = self.experiment(experiment)
        base = self._base_tags(stage)
        if run_id is None and reuse:
            run_id = find_run(self.client, experiment_id, base)
        reused = run_id is not None
        if reused:
            self.client.update_run(run_id, status="RUNNING")
        else:
            parent = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {}
            run_id, _ = start_run(self.client, experiment_id, f"{stage}-{experiment}-{self.key}",
                                  {**base, KEY_TAG: self.key, **parent}, reuse=False)
        run = StageRun(self.client, run_id, experiment_id, reused, key=self.key, datasets=datasets)
        if reused:
            run.key = self.client.get_run(run_id).data.tags.get(KEY_TAG, "")
        if tags:
            run.set_tags(tags)
        if self.parent_run_id and reused:
            run.set_tags({"mlflow.parentRunId": self.parent_run_id})
        if datasets:
            run.log_datasets(datasets)
        with _lifecycle(self.client, run_id, system_metrics):
            yield run

    def run_info(self, run_id: str) -> tuple[Mapping[str, str], Mapping[str, str], Mapping[str, float]]:
        return run_info(self.client, run_id)

    def download(self, run_id: str, path: str, dst: str | Path) -> Path:
        return download_artifacts(self.client, run_id, path, dst)

    def register_model(self, name: str, run_id: str, artifact_path: str, tags: Mapping[str, Any]) -> str:
        return register_model(self.client, name, run_id, artifact_path, tags)

    def add_view_columns(self, experiment: str, metrics: list[str] = (), params: list[str] = ()) -> None:
        """Add columns to the experiment's shared runs-table view (created on first use): metrics and params by
        name, in the UI's canonical keys (`metrics.`name``). The table is sorted by start time, newest first: the
        only order in which MLflow 3.17 keeps child runs under their parents (VIEW_ORDER)."""
        experiment_id = self.experiment(experiment)
        tag = VIEW_TAG + VIEW_KEY
        exp = self.client.get_experiment(experiment_id)
        try:
            state = json.loads(exp.tags.get(tag) or "{}")
        except json.JSONDecodeError:
            state = {}
        columns = list(state.get("selectedColumns") or [])
        for key in [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]:
            if key not in columns:
                columns.append(key)
        state.update({"selectedColumns": columns, **VIEW_ORDER})
        self.client.set_experiment_tag(experiment_id, tag, json.dumps(state))
        self._view_experiment = experiment_id

    def ui_url(self, base: str = "http://127.0.0.1:5000") -> str:
        """The experiment's runs table in the model-training view, opened on the shared view if there is one."""
        experiment_id = getattr(self, "_view_experiment", None)
        if experiment_id is None:
            return base
        return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"

    def ui_command(self) -> str:
        if not is_local_store(self.uri):
            return f"open {self.ui_url(self.uri.rstrip('/'))} in a browser"
        return f"mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000, then open {self.ui_url()}"


# ---------------------------------------------------------------------------------------------------------------
# After a study: make the trial runs agree with what Tune finally knows


def child_run_ids(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_ids: set[str]) -> dict[str, str]:
    """Trial id -> MLflow run id. A run whose trial Tune no longer knows (started after the last experiment
    snapshot of a driver that was killed, so a restore never resumes it) is kept, marked KILLED and tagged
    `cutmix.trial_status=interrupted`: what it recorded stays, and it is not mistaken for a live trial."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=10000)
    ids = {}
    for r in runs:
        trial = r.data.tags.get("ray.trial_id")
        if trial in trial_ids:
            ids[trial] = r.info.run_id
        elif trial is not None and r.info.status != "KILLED":
            set_tags(client, r.info.run_id, {"cutmix.trial_status": "interrupted"})
            end_run(client, r.info.run_id, "KILLED")
    return ids


def reconcile_runs(client: MlflowClient,
                   trials: list[tuple[str, str, int, Callable[[], list[dict[str, float]]]]],
                   run_ids: dict[str, str]) -> None:
    """Make every trial's run agree with Tune's final word: `trials` holds (trial id, status, epochs, a function
    reading the per-epoch history from its checkpoint, called only when needed). A driver killed after Tune
    recorded a trial as finished, but before its logging queue drained, leaves that run RUNNING and short of
    epochs, and a restored Tune sends no more callbacks for it: backfill the missing epochs and close it."""
    for trial_id, status, epochs, history in trials:
        run_id = run_ids.get(trial_id)
        if run_id is None:
            continue
        run = client.get_run(run_id)
        logged = last_step(client, run_id, "epoch")
        if run.info.status == "RUNNING" or logged < epochs:
            for row in history():
                if logged < int(row.get("epoch", 0)) <= epochs:
                    log_metrics(client, run_id, row, int(row["epoch"]))
        if run.info.status == "RUNNING":
            set_tags(client, run_id, {"cutmix.trial_status": status})
            end_run(client, run_id, "FAILED" if status == "error" else "FINISHED")
