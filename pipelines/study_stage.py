"""`cutmix-study study`: the search stage.

Writes into the output directory: `results.parquet` (one row per trial), `best_config.yaml` (a complete config
that `retrain --config` accepts), `plots/*.png`, `tune/` (Ray Tune's experiment, unless `search.storage` points
elsewhere), `study_run.json` (the MLflow parent run), `study/summary.json` (the StudyResult), and by default the
SQLite MLflow store `mlflow.db` with its artifacts in `mlartifacts/`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from pipelines.common import OutputError, check_writable, open_stage
from pipelines.results import StudyResult
from study.atomic import atomic_write_bytes, atomic_write_text
from study.cluster import capacity
from study.config.load import dump_config, replace
from study.config.schema import PipelineConfig, flatten, to_dict
from study.config.validate import validate_study
from study.console import progress
from study.decision import Pick, study_pick
from study.metric_names import EvaluationError
from study.models import build_model
from study.search import fidelity
from study.search import race as search_race
from study.search.fidelity import describe_fidelity, rho_metrics, smooth_key
from study.search.pareto import pareto_mask, save_pareto_plot
from study.search.race import run_race
from study.search.space import typed_value
from study.stats import separation_in_se
from study.summaries import Fidelity, Race
from study.training.runner import load_dataset, save_sample_grid_for

OWNED = ["results.parquet", "best_config.yaml", "plots", "tune", "study_run.json", "study", "optuna.db", "race"]
RUN_FILE = "study_run.json"


SOURCE_STAGES: tuple[str, ...] = ()  # the first stage: no --from
SOURCE_HINT = ""


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

    buf = pa.BufferOutputStream()  # serialised in memory, then written atomically (a torn table is never left)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    return atomic_write_bytes(path, buf.getvalue().to_pybytes())


def _earlier_run(run_file: Path, tracker, experiment: str, out_dir: Path) -> str | None:
    """The MLflow run of the study being resumed: from `study_run.json`, or when that record is gone (a fresh
    output directory; Tune's storage and the tracking store kept) the newest study run tagged with this output
    directory, so a resumed study never opens a second parent run."""
    if run_file.is_file():
        try:
            return json.loads(run_file.read_text())["run_id"]
        except (ValueError, KeyError):
            raise OutputError(f"{run_file} is unreadable (delete it: the study's run is then found in MLflow by its "
                              "tags)") from None
    from study.tracking.lookup import find_stage_run  # lazy: pulls mlflow

    return find_stage_run(tracker.client, tracker.experiment(experiment), "study", out_dir)


def rank_column(frame, metric: str) -> str:
    """The column a study ranks trials by: the final mean of the last search.smooth_epochs epochs
    (`<metric>_smooth`), not the minimum over epochs (`best/<metric>`, which picks one seed's luckiest epoch and is
    kept in results.parquet as information); `best/<metric>` only for a frame written before smoothing existed."""
    return smooth_key(metric) if smooth_key(metric) in frame else f"best/{metric}"


def pick_best(frame, metric: str, mode: str) -> tuple[int | None, float]:
    """(row index, value) of the best trial by `rank_column`, among the trials that ran their full budget (a
    trial stopped at a rung holds an early value, not a final one); all non-error trials when none did."""
    col = rank_column(frame, metric)
    if col not in frame or frame[col].notna().sum() == 0:
        return None, math.nan
    ok = frame[frame["status"] != "error"] if "status" in frame else frame
    ok = ok[ok[col].notna()]
    if "status" in ok and (ok["status"] == "completed").any():
        ok = ok[ok["status"] == "completed"]
    if ok.empty:
        return None, math.nan
    idx = ok[col].idxmin() if mode == "min" else ok[col].idxmax()
    return int(idx), float(frame.loc[idx, col])


def summary_table(frame, names: list[str], metric: str, mode: str, limit: int = 20) -> str:
    col = rank_column(frame, metric)
    names = [n for n in names if n in frame]
    shown = frame.sort_values(col, ascending=mode == "min", na_position="last") if col in frame else frame
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


def add_pareto(frame, cfg: PipelineConfig) -> bool:
    """With two objectives, a `pareto` column: whether the trial is non-dominated on its last reported metrics.
    Returns whether the study is multi-objective."""
    if len(cfg.search.metrics) < 2:
        return False
    names = list(cfg.search.metrics)
    values = frame.reindex(columns=names).to_numpy(float)
    frame["pareto"] = pareto_mask(values, cfg.search.modes) if len(frame) else []
    return True


def check_search_metrics(cfg: PipelineConfig, data) -> None:
    """Evaluation metrics in `search.metric` need what they measure: boxes on val for localization, and a
    GAP + linear head (CAM) for every searched architecture. Raises EvaluationError (exit 2) before any trial."""
    loc = [m for m in cfg.search.metrics if m[len("val/"):] in ("maxboxacc_v2", "top1_loc", "gt_known_loc")]
    if not loc:
        return
    if getattr(data.val, "boxes", None) is None:
        raise EvaluationError(f"search.metric {loc[0]} needs ground-truth boxes and data.name={cfg.data.name} has "
                              "none (cluttered_digits, shapes, or a box dataset)")
    from study.evaluation.wsol import cam_head  # lazy: pulls cv2

    archs = cfg.search.space["model.arch"].values if "model.arch" in cfg.search.space else (cfg.model.arch,)
    for arch in archs:
        cam_head(build_model(replace(cfg, {"model.arch": arch}).model, data.num_classes, data.in_channels))


def baseline_value(frame, cfg: PipelineConfig) -> float | None:
    """The best value (by `rank_column`) of the study's no-mixing trial (p=0 or method=none), if it ran one."""
    col = rank_column(frame, cfg.search.primary_metric)
    if col not in frame or not len(frame):
        return None
    prob = frame["cutmix.prob"] if "cutmix.prob" in frame else None
    method = frame["cutmix.method"] if "cutmix.method" in frame else None
    if prob is None and method is None:
        return None
    mask = False
    if prob is not None:
        mask = mask | (prob == 0)
    if method is not None:
        mask = mask | (method == "none")
    values = frame.loc[mask, col].dropna()
    if values.empty:
        return None
    return float(values.min() if cfg.search.primary_mode == "min" else values.max())


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> StudyResult:
    """Validate everything, then run or resume the study; write and log its outputs. `source` is unused (a study
    starts from its config)."""
    from study.search import tune as search  # lazy: pulls ray
    from study.search.trial_callback import MlflowTrialCallback  # lazy: pulls ray

    start = time.perf_counter()
    validate_study(cfg)  # a study's own config rules, before any output
    check_writable(out_dir)
    tracker.check()
    data = load_dataset(cfg.data)
    check_search_metrics(cfg, data)
    remote = bool(cfg.search.storage) and "://" in cfg.search.storage
    out_dir, done = open_stage(out_dir, OWNED, resume=resume, overwrite=overwrite, result=StudyResult)
    if done is not None:
        return done
    if remote and search.can_resume(cfg, out_dir) and not resume:
        if not overwrite:
            raise OutputError(f"{search.experiment_path(cfg, out_dir)} already holds a study (pass --resume to "
                              "continue, --overwrite to replace, or change search.storage)")
        search.delete_experiment(cfg, out_dir)
    resuming = resume and search.can_resume(cfg, out_dir)
    optuna_url = search.optuna_url(cfg, out_dir) if cfg.search.algorithm != "grid" else ""
    from study.search.optuna_search import delete_study, is_shared_storage, study_exists  # lazy: pulls ray

    if optuna_url and is_shared_storage(cfg.search.optuna_storage) and not resuming:
        if study_exists(optuna_url, cfg.name):
            if not overwrite:
                raise OutputError(f"the Optuna storage (search.optuna_storage or $OPTUNA_STORAGE) already holds a "
                                  f"study named {cfg.name} (pass --resume to continue, --overwrite to replace, or "
                                  "change name)")
            delete_study(optuna_url, cfg.name)
    run_file = out_dir / RUN_FILE
    experiment = cfg.tracking.experiment or cfg.name
    earlier = _earlier_run(run_file, tracker, experiment, out_dir) if resuming else None

    search.init_ray(dashboard=cfg.train.workers > 1)  # Ray Train frees killed runs' resources through it
    demand = capacity.trial_demand(cfg)
    capacity.check_placeable(demand)  # a trial a local Ray can never place: exit 2 before the study's run opens
    from study.tracking.context import dataset_specs  # lazy: pulls mlflow, like the tracker

    datasets = dataset_specs(to_dict(cfg)["data"], {"train": len(data.train), "val": len(data.val)})
    with tracker.stage_run("study", experiment, run_id=earlier, datasets=datasets,
                           system_metrics=cfg.tracking.system_metrics) as parent:
        if not run_file.is_file():
            atomic_write_text(run_file, json.dumps({"run_id": parent.run_id, "experiment_id": parent.experiment_id,
                                                    "tracking_uri": tracker.uri}))
        if earlier is None:
            parent.log_params({k: v for k, v in flatten(cfg).items() if k != "search.space"})
            parent.log_params({f"search.space.{k}": v for k, v in cfg.search.space.items()})
            dump_config(cfg, out_dir / "config.yaml")
            parent.log_artifact(out_dir / "config.yaml")
            parent.log_artifact(save_sample_grid_for(cfg, data, out_dir / "plots" / "samples.png"), "plots")
            if getattr(data.train, "boxes", None) is not None:  # what localization is measured against
                from study.grids import save_box_grid  # lazy: pulls matplotlib

                t = data.train
                parent.log_artifact(save_box_grid(t.images[:32], t.boxes[:32], out_dir / "plots" / "boxes.png",
                                                  t.labels[:32], class_names=data.class_names,
                                                  title=f"{data.name}: ground-truth boxes"), "plots")

        def trial_artifacts(trial_cfg: PipelineConfig, tmp: Path) -> list[Path]:
            return [save_sample_grid_for(trial_cfg, data, tmp / "samples.png")]

        total = len(search.grid_points(cfg)) if cfg.search.algorithm == "grid" else cfg.search.num_samples
        callbacks = [MlflowTrialCallback(tracker.uri, parent.experiment_id, parent.run_id, to_dict(cfg),
                                         trial_artifacts, datasets=datasets),
                     search.ProgressCallback(total, cfg.train.epochs, cfg.search.primary_metric)]
        try:
            with capacity.watch(demand, cfg.search.placement_timeout_s):
                records = search.run_search(cfg, data, out_dir, callbacks=callbacks, resume=resuming)
        except (KeyboardInterrupt, capacity.PlacementError):  # stopped: no trial run is left RUNNING
            from study.tracking.lookup import stop_open_children  # lazy: pulls mlflow

            stop_open_children(parent.client, parent.experiment_id, parent.run_id)
            raise

        from study.tracking import store as tracking  # lazy: pulls mlflow

        run_ids = tracking.child_run_ids(parent.client, parent.experiment_id, parent.run_id,
                                         {r.trial_id for r in records})
        tracking.reconcile_runs(parent.client, [(r.trial_id, r.status, r.epochs,
                                                 lambda r=r: search.trial_history(r)) for r in records], run_ids)
        frame = records_to_frame(records, cfg, run_ids)
        multi = add_pareto(frame, cfg)
        race = race_stage(cfg, data, frame, out_dir, parent, resume)  # None when search.race_top_k = 0
        trials_frame, frame = frame, race_rows(race, frame, cfg)
        write_parquet(frame, out_dir / "results.parquet")
        best_idx, best_value = pick_best(trials_frame, cfg.search.primary_metric, cfg.search.primary_mode)
        fidelity = measure_fidelity(cfg, records)
        reproducible, why_not = search.is_reproducible(cfg)
        best_params: dict[str, Any] = {}
        if best_idx is not None:
            row = trials_frame.loc[best_idx]
            best_params = {n: typed_value(d, row[n]) for n, d in cfg.search.space.items()
                           if n in row and not _missing(row[n])}
        winner_params = race["winner"]["params"] if race and race["winner"] else None
        pick = write_best_config(cfg, race, best_params, out_dir)

        from study.plots import save_study_plots  # lazy: pulls matplotlib

        plots = save_study_plots(trials_frame, rank_column(trials_frame, cfg.search.primary_metric),
                                 cfg.search.primary_mode, out_dir / "plots")
        if optuna_url:
            from study.search.optuna_search import save_optuna_plots  # lazy: pulls ray

            optuna_plots, skipped = save_optuna_plots(optuna_url, cfg.name, out_dir / "plots")
            plots += optuna_plots
            for name, why in skipped.items():
                progress(f"optuna plot {name} skipped: {why}")
        if race:
            from study.plots import save_race_plot  # lazy: pulls matplotlib

            plots.append(save_race_plot(race, out_dir / "plots" / "race.png"))
        if multi:
            names = list(cfg.search.metrics)
            plots.append(save_pareto_plot(frame[names].to_numpy(float), frame["pareto"].to_numpy(bool), names,
                                          out_dir / "plots" / "pareto.png", labels=frame["trial_id"]))
        parent.log_artifact(out_dir / "results.parquet")
        parent.log_artifact(out_dir / "best_config.yaml")
        for p in plots:
            parent.log_artifact(p, "plots")
        # The searched parameters of the winner and the study's best metric, as columns of the parent run.
        parent.log_params({f"best.{k}": v for k, v in best_params.items()})
        counts = trials_frame["status"].value_counts().to_dict() if len(trials_frame) else {}
        base = baseline_value(trials_frame, cfg)
        num_val = len(data.val)
        sep = None
        if base is not None and not math.isnan(best_value) and cfg.search.primary_metric.endswith("err"):
            sep = separation_in_se(best_value, base, num_val)
        parent.log_metrics({f"best/{cfg.search.primary_metric}": best_value, "trials": len(trials_frame),
                            **({"baseline/" + cfg.search.primary_metric: base} if base is not None else {}),
                            **({"best_vs_baseline_se": sep} if sep is not None and math.isfinite(sep) else {}),
                            **{f"trials_{k}": v for k, v in counts.items()},
                            **fidelity_metrics(fidelity), "reproducible": float(reproducible)})
        parent.set_tags({"cutmix.best_trial": frame.loc[best_idx, "trial_id"] if best_idx is not None else "",
                         "cutmix.fidelity": fidelity["warning"] or fidelity["reason"] or "rho >= 0.8 at every rung"})
        if fidelity["warning"]:
            progress(f"warning: {fidelity['warning']}")
        result = StudyResult(str(out_dir), best_params, best_value, cfg.search.primary_metric, cfg.search.primary_mode,
                             list(cfg.search.space), str(out_dir / "best_config.yaml"), parent.run_id, tracker.uri,
                             parent.experiment_id, len(trials_frame), time.perf_counter() - start, base, num_val, sep,
                             fidelity=fidelity, reproducible=reproducible, reproducible_reason=why_not,
                             optuna_storage=_redacted(optuna_url), optuna_study=cfg.name if optuna_url else "",
                             smooth_epochs=cfg.search.smooth_epochs,
                             race_verdict=race["verdict"] if race else "", winner_params=winner_params,
                             race=race or {}, pick=pick.to_dict())
        result.to_json()
        parent.log_artifact(result.path(out_dir), "study")
    tracker.add_view_columns(experiment, metrics=[f"best/{cfg.search.primary_metric}", cfg.search.primary_metric],
                             params=[f"best.{n}" for n in cfg.search.space] + list(cfg.search.space))
    return result


def race_stage(cfg: PipelineConfig, data, frame, out_dir: Path, parent, resume: bool) -> Race | None:
    """The race after the search (study.search.race.run_race): its record, tagged on the study run; None when
    `search.race_top_k` is 0."""
    race = run_race(cfg, data, frame, out_dir, parent, resume=resume, log=lambda line: progress(f"[race] {line}"))
    if race:
        parent.set_tags({"cutmix.race_verdict": race["verdict"][:5000],
                         "cutmix.race_winner": race["winner"]["name"] if race["winner"] else ""})
        parent.log_metrics({"race_wall_s": race["wall_s"], "race_settings": len(race["settings"]),
                            "race_rounds": len(race["rounds"])})
    return race


def race_rows(race, frame, cfg: PipelineConfig):
    """results.parquet's `race` columns (study.search.race.race_rows); not-applicable epochs/wall for the
    references' own rows are 0, so the trial table prints them."""
    out = search_race.race_rows(race, frame, cfg)
    for col in ("epochs", "wall_s"):
        if col in out:
            out[col] = out[col].fillna(0)
    return out


def write_best_config(cfg: PipelineConfig, race: dict[str, Any] | None, best_params: dict[str, Any],
                      out_dir: Path) -> Pick:
    """`<out_dir>/best_config.yaml` of the decision rule's pick (study.decision.study_pick): the raced winner;
    after a tie the best-evidence survivor (the baseline when it survived); without a race the best trial. Never a
    setting the race eliminated. Returns the pick."""
    pick = study_pick(race, best_params, mode=cfg.search.primary_mode)
    dump_config(replace(cfg, pick.params) if pick.params else cfg, Path(out_dir) / "best_config.yaml")
    return pick


def measure_fidelity(cfg: PipelineConfig, records: list) -> Fidelity:
    """Spearman's rho between each ASHA rung's smoothed metric and the final one over the trials that ran their
    full budget (study.search.fidelity). Measured at the configured rungs whether or not ASHA ran: with
    search.scheduler=none it is the evidence for (or against) turning early stopping on."""
    from study.search.tune import trial_history  # lazy: pulls ray

    s = cfg.search
    histories = {r.trial_id: trial_history(r) for r in records if r.status == "completed"}
    rungs = fidelity.rung_epochs(s.grace_period, s.reduction_factor, cfg.train.epochs)
    out = fidelity.measure(histories, s.primary_metric, rungs, cfg.train.epochs, s.smooth_epochs,
                           active=s.scheduler != "none")
    out["scheduler"] = s.scheduler
    return out


def fidelity_metrics(measured: dict[str, Any]) -> dict[str, float]:
    return rho_metrics(measured)


def _redacted(url: str) -> str:
    """A storage URL without its password (summary.json is shared; an RDB URL may carry credentials)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def report(result: StudyResult) -> str:
    """The trial table and the study's answer, as printed after `cutmix-study study` and inside `run`."""
    cfg_metric = result.metric
    smooth = f" (mean of the last {result.smooth_epochs} epochs)" if result.smooth_epochs else ""
    lines = [summary_table(result.frame, result.searched, cfg_metric, result.mode),
             f"\nbest {cfg_metric}{smooth}: {result.best_value:.3f} with {result.best_params}"]
    if result.baseline_value is not None:
        sep = result.best_vs_baseline_se
        signal = ("" if sep is None else f", {sep:.1f} binomial standard errors of the {result.num_val}-image "
                  f"val split apart: " + ("a signal" if sep >= 2 else "within noise, the ranking is not resolved"))
        lines.append(f"baseline trial (no mixing) {cfg_metric}: {result.baseline_value:.3f}{signal}")
    if result.fidelity:
        lines.append(describe_fidelity(result.fidelity))
    if result.reproducible is not None:
        lines.append("reproducible given search.seed: " + ("yes" if result.reproducible else
                                                           f"no ({result.reproducible_reason})"))
    race = getattr(result, "race", None) or {}
    if race:  # the race's own block
        lines.append(f"\nrace on {race['metric']} (mean of the last {race.get('smooth_epochs', 1)} epoch(s)); rule: "
                     f"{race['rule']}")
        for st in race["settings"].values():
            vals = st["values"]
            mean = sum(vals) / len(vals) if vals else math.nan
            lines.append(f"  {st['label']}: {mean:.3f} over {len(vals)} seeds  [{st['fate']}]")
        lines.append(f"race verdict: {result.race_verdict}")
    pick = getattr(result, "pick", None) or {}
    if pick:
        lines.append(f"the study's pick (decision rule): {pick['label']}: {pick['reason']}")
    lines += [f"results: {Path(result.out_dir) / 'results.parquet'}", f"best config: {result.best_config}"]
    if result.optuna_storage:
        lines.append(f"optuna study {result.optuna_study}: optuna-dashboard {result.optuna_storage}")
    return "\n".join(lines)
