"""`cutmix-study study`: the search stage.

Writes into the output directory: `results.parquet` (one row per trial), `best_config.yaml` (a complete config
that `retrain --config` accepts), `plots/*.png`, `tune/` (Ray Tune's experiment, unless `search.storage` points
elsewhere), `study_run.json` (the MLflow parent run), and by default the SQLite MLflow store `mlflow.db`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common import (
    OutputError,
    check_writable,
    config_from_args,
    default_output,
    prepare_output,
    save_sample_grid_for,
    tracking_uri,
)
from study.config import PipelineConfig, dump_config, flatten, replace

OWNED = ["results.parquet", "best_config.yaml", "plots", "tune", "study_run.json"]
RUN_FILE = "study_run.json"


@dataclass
class StudyResult:
    out_dir: Path
    frame: Any  # pandas.DataFrame, one row per trial
    best_params: dict[str, Any]
    best_value: float
    best_config: Path
    parent_run_id: str
    tracking_uri: str
    wall_s: float


def records_to_frame(records: list, cfg: PipelineConfig, run_ids: dict[str, str]):
    """One row per trial: id, status, searched params (dotted; NaN where a param did not apply), final and
    best metrics, epochs, wall seconds, MLflow run id."""
    import pandas as pd

    names = list(cfg.search.space)
    rows = []
    for r in records:
        row: dict[str, Any] = {"trial_id": r.trial_id, "status": r.status}
        for name in names:
            row[name] = r.params.get(name)
        row.update(r.final)
        row.update({f"best/{k}": v for k, v in r.best.items()})
        row.update({"epochs": r.epochs, "wall_s": r.wall_s, "mlflow_run_id": run_ids.get(r.trial_id), "error": r.error})
        rows.append(row)
    frame = pd.DataFrame(rows)
    for name in names:  # numeric params with "not applicable" cells stay numeric (NaN), not object
        if name in frame and frame[name].map(lambda v: v is None or isinstance(v, int | float)).all():
            frame[name] = frame[name].astype(float)
    return frame


def write_parquet(frame, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def pick_best(frame, metric: str, mode: str) -> tuple[int | None, float]:
    col = f"best/{metric}"
    if col not in frame or frame[col].notna().sum() == 0:
        return None, math.nan
    ok = frame[frame["status"] != "error"] if "status" in frame else frame
    ok = ok[ok[col].notna()]
    if ok.empty:
        return None, math.nan
    idx = ok[col].idxmin() if mode == "min" else ok[col].idxmax()
    return int(idx), float(frame.loc[idx, col])


def summary_table(frame, cfg: PipelineConfig, limit: int = 20) -> str:
    col = f"best/{cfg.search.metric}"
    names = [n for n in cfg.search.space if n in frame]
    shown = frame.sort_values(col, ascending=cfg.search.mode == "min", na_position="last") if col in frame else frame
    headers = ["trial", "status", *names, col, "epochs", "wall_s"]
    lines = []
    for _, row in shown.head(limit).iterrows():
        cells = [str(row["trial_id"]), str(row["status"])]
        for n in names:
            v = row[n]
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else
                         (f"{v:.3g}" if isinstance(v, float) else str(v)))
        v = row.get(col)
        cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}")
        cells += [str(int(row["epochs"])), f"{row['wall_s']:.0f}"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines])


def child_run_ids(client, experiment_id: str, parent_run_id: str, trial_ids: set[str]) -> dict[str, str]:
    """Trial id -> MLflow run id. A run whose trial Tune no longer knows (started after the last experiment
    snapshot of a driver that was killed, so a restore never resumes it) is kept, marked KILLED and tagged
    `cutmix.trial_status=interrupted`: what it recorded stays, and it is not mistaken for a live trial."""
    from study import tracking

    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=10000)
    ids = {}
    for r in runs:
        trial = r.data.tags.get("ray.trial_id")
        if trial in trial_ids:
            ids[trial] = r.info.run_id
        elif trial is not None and r.info.status != "KILLED":
            tracking.set_tags(client, r.info.run_id, {"cutmix.trial_status": "interrupted"})
            tracking.end_run(client, r.info.run_id, "KILLED")
    return ids


def reconcile_runs(client, records: list, run_ids: dict[str, str]) -> None:
    """Make every trial's MLflow run agree with Tune's final word. A driver killed after Tune recorded a trial as
    finished, but before its logging queue drained, leaves that run RUNNING and short of epochs, and a restored
    Tune sends no more callbacks for it: backfill the missing epochs from the trial's checkpoint and close it."""
    from study import search, tracking

    for record in records:
        run_id = run_ids.get(record.trial_id)
        if run_id is None:
            continue
        run = client.get_run(run_id)
        logged = tracking.last_step(client, run_id, "epoch")
        if run.info.status == "RUNNING" or logged < record.epochs:
            for row in search.trial_history(record):
                if logged < int(row.get("epoch", 0)) <= record.epochs:
                    tracking.log_metrics(client, run_id, row, int(row["epoch"]))
        if run.info.status == "RUNNING":
            tracking.set_tags(client, run_id, {"cutmix.trial_status": record.status})
            tracking.end_run(client, run_id, "FAILED" if record.status == "error" else "FINISHED")


def check_study_config(cfg: PipelineConfig) -> None:
    """What only a study needs: a non-empty space, and a grid of listed values."""
    from study.config import ConfigError
    from study.search import grid_points

    if not cfg.search.space:
        raise ConfigError("search.space is empty (give at least one parameter, e.g. cutmix.alpha)")
    if cfg.search.algorithm == "grid":
        grid_points(cfg)


def run_study(cfg: PipelineConfig, out_dir: Path, uri: str, *, resume: bool = False, overwrite: bool = False,
              data=None) -> StudyResult:
    """Validate everything, then run or resume the study; write and log its outputs."""
    from study import search, tracking
    from study.data import load_data

    start = time.perf_counter()
    check_study_config(cfg)
    check_writable(out_dir)
    tracking.check_tracking_uri(uri)
    data = data if data is not None else load_data(cfg.data)
    remote = bool(cfg.search.storage) and "://" in cfg.search.storage
    out_dir = prepare_output(out_dir, OWNED, resume=resume, overwrite=overwrite)
    if remote and search.can_resume(cfg, out_dir) and not resume:
        if not overwrite:
            raise OutputError(f"{search.experiment_path(cfg, out_dir)} already holds a study (pass --resume to "
                              "continue, --overwrite to replace, or change search.storage)")
        search.delete_experiment(cfg, out_dir)
    resuming = resume and search.can_resume(cfg, out_dir)

    client = tracking.client_for(uri)
    experiment_id = tracking.get_experiment(client, cfg.tracking.experiment or cfg.name)
    run_file = out_dir / RUN_FILE
    parent = None
    if resuming and run_file.is_file():
        parent = json.loads(run_file.read_text()).get("run_id")
        client.update_run(parent, status="RUNNING")
    if parent is None:
        parent, _ = tracking.start_run(client, experiment_id, "study",
                                       {"cutmix.stage": "study", "cutmix.output": str(out_dir)}, reuse=False)
        run_file.write_text(json.dumps({"run_id": parent, "experiment_id": experiment_id, "tracking_uri": uri}))
        tracking.log_params(client, parent, {k: v for k, v in flatten(cfg).items() if k != "search.space"})
        tracking.log_params(client, parent, {f"search.space.{k}": v for k, v in cfg.search.space.items()})
        resolved = out_dir / "config.yaml"
        dump_config(cfg, resolved)
        tracking.log_artifact(client, parent, resolved)

    def trial_artifacts(trial_cfg: PipelineConfig, tmp: Path) -> list[Path]:
        return [save_sample_grid_for(trial_cfg, data, tmp / "samples.png")]

    search.init_ray()
    total = len(search.grid_points(cfg)) if cfg.search.algorithm == "grid" else cfg.search.num_samples
    callbacks = [search.MlflowTrialCallback(uri, experiment_id, parent, _base(cfg), str(out_dir), trial_artifacts),
                 search.ProgressCallback(total, cfg.train.epochs, cfg.search.metric)]
    try:
        records = search.run_search(cfg, data, out_dir, callbacks=callbacks, resume=resuming)
    except BaseException:
        tracking.end_run(client, parent, "FAILED")
        raise

    run_ids = child_run_ids(client, experiment_id, parent, {r.trial_id for r in records})
    reconcile_runs(client, records, run_ids)
    frame = records_to_frame(records, cfg, run_ids)
    write_parquet(frame, out_dir / "results.parquet")
    best_idx, best_value = pick_best(frame, cfg.search.metric, cfg.search.mode)
    best_params: dict[str, Any] = {}
    if best_idx is not None:
        row = frame.loc[best_idx]
        best_params = {n: _plain(row[n]) for n in cfg.search.space if n in row and not _missing(row[n])}
    best_cfg = replace(cfg, best_params) if best_params else cfg
    dump_config(best_cfg, out_dir / "best_config.yaml")

    from study.plots import save_study_plots

    plots = save_study_plots(frame, cfg.search.metric, cfg.search.mode, out_dir / "plots")
    tracking.log_artifact(client, parent, out_dir / "results.parquet")
    tracking.log_artifact(client, parent, out_dir / "best_config.yaml")
    for p in plots:
        tracking.log_artifact(client, parent, p, "plots")
    tracking.log_params(client, parent, {f"best.{k}": v for k, v in best_params.items()})
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    tracking.log_metrics(client, parent, {f"best/{cfg.search.metric}": best_value, "trials": len(frame),
                                          **{f"trials_{k}": v for k, v in counts.items()}}, step=0)
    tracking.set_tags(client, parent, {"cutmix.best_trial": frame.loc[best_idx, "trial_id"] if best_idx is not None
                                       else ""})
    tracking.end_run(client, parent, "FINISHED")
    return StudyResult(out_dir, frame, best_params, best_value, out_dir / "best_config.yaml", parent, uri,
                       time.perf_counter() - start)


def _base(cfg: PipelineConfig) -> dict[str, Any]:
    from study.config import to_dict

    return to_dict(cfg)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _plain(v: Any) -> Any:
    """numpy scalars from pandas back to Python values (the config is strict about types)."""
    if hasattr(v, "item"):
        v = v.item()
    return v


def print_summary(result: StudyResult, cfg: PipelineConfig) -> None:
    print(summary_table(result.frame, cfg))
    print(f"\nbest {cfg.search.metric}: {result.best_value:.3f} with {result.best_params}")
    print(f"results: {result.out_dir / 'results.parquet'}")
    print(f"best config: {result.best_config}")
    print(f"browse: {mlflow_ui_command(result.tracking_uri)}")


def mlflow_ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.output or default_output(cfg))
    result = run_study(cfg, out, tracking_uri(args, out), resume=args.resume, overwrite=args.overwrite)
    print_summary(result, cfg)
    return 0
