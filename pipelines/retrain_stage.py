"""`cutmix-study retrain --from STUDY_DIR_OR_MLFLOW_RUN`: the winner, retrained before it is called better.

The study's best configuration is trained for the full budget on train+val with `retrain.seeds` seeds and
evaluated on the held-out test split; the figure reported is the mean ± sample std over seeds with a 95 %
t-interval (Google's tuning playbook; KellerJordan's airbench reports n and spread the same way). The methods of
`retrain.methods` (or the p=0 baseline with `retrain.compare_baseline`) run with the same seeds, and each one's
difference to the baseline is given with Welch's t-interval and a verdict: better, worse or not resolved.

Writes `<output>/retrain/`: one run directory per variant and seed (`cutmix/seed0/`, ..., `baseline/seed0/`, ...)
and `summary.json` (RetrainResult). On train+val no split is left to pick an epoch by, so each seed's model is
its final epoch; the seed with the lowest test error is the one `export` takes (the mean ± std stays the unbiased
figure).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from pipelines.common import (
    OutputError,
    check_writable,
    config_from_args,
    default_output,
    open_stage,
    resolve_source,
    tracker_for,
)
from pipelines.results import RetrainResult, StudyResult
from study.config.load import load_config, replace
from study.config.schema import PipelineConfig, flatten, to_dict
from study.training.runner import Progress

REPORTED = ("test/top1_err", "test/top5_err", "test/loss")
# The paper's settings for the methods it compares CutMix with (Yun et al. 2019, section 4.1.1).
METHOD_DEFAULTS = {"mixup": {"cutmix.alpha": 1.0, "cutmix.prob": 1.0},
                   "cutout": {"cutmix.prob": 1.0, "cutmix.cutout_size": 0.5},
                   "cutmix": {"cutmix.alpha": 1.0, "cutmix.prob": 0.5}}


def variants(cfg: PipelineConfig) -> list[tuple[str, PipelineConfig]]:
    """(variant name, config) pairs retrained with the same seeds; `baseline` is the no-mixing one."""
    methods = list(cfg.retrain.methods)
    if not methods:
        methods = [cfg.cutmix.method] + (["none"] if cfg.retrain.compare_baseline and cfg.cutmix.mixes else [])
    out = []
    for method in methods:
        if method == "none":
            out.append(("baseline", replace(cfg, {"cutmix.prob": 0.0})))
        elif method == cfg.cutmix.method and cfg.cutmix.mixes:
            out.append((method, cfg))  # the study's winner, as found
        else:
            out.append((method, replace(cfg, {"cutmix.method": method, **METHOD_DEFAULTS[method]})))
    return out


def study_source(args: argparse.Namespace, tracker) -> tuple[PipelineConfig, Path, StudyResult | None]:
    """`--from` for retrain: a study directory, the study's MLflow run id, or none (the output directory). Returns
    the config to retrain (the study's best_config.yaml with --set applied, unless --config is given), the
    pipeline's output directory and the study (None when there was none)."""
    src = resolve_source(args.source, tracker, stages=("study",),
                         hint="give the study's parent run id or a study directory")
    if src is not None and src.run_id:
        tmp = Path(tempfile.mkdtemp(prefix="cutmix-retrain-"))
        best = src.download(tracker, "best_config.yaml", tmp, required="did the study finish?")
        cfg = load_config(args.config or best, args.overrides)
        out = Path(args.output or src.tags.get("cutmix.output") or default_output(cfg))
        return cfg, out, StudyResult(str(out), best_config=str(best), parent_run_id=src.run_id)
    study_dir = src.path if src is not None else Path(args.output or default_output(load_config(args.config,
                                                                                              args.overrides)))
    best = study_dir / "best_config.yaml"
    if src is not None and not best.is_file():
        raise OutputError(f"{study_dir} holds no best_config.yaml (run `cutmix-study study` there first)")
    cfg = load_config(args.config if args.config or not best.is_file() else best, args.overrides)
    study = StudyResult.from_dir(study_dir) if StudyResult.exists(study_dir) else None
    if study is None and (study_dir / "study_run.json").is_file():  # a study from before study/summary.json
        import json

        run_id = json.loads((study_dir / "study_run.json").read_text())["run_id"]
        study = StudyResult(str(study_dir), best_config=str(best), parent_run_id=run_id)
    return cfg, Path(args.output or study_dir), study


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> RetrainResult:
    """Train every variant with K seeds on train+val; test metrics with intervals. `source`: the StudyResult whose
    winner is retrained (its best parameters are applied to `cfg`), or None to retrain `cfg` as it is."""
    from study.stats import compare, summarize
    from study.training.runner import dataset

    if source is not None and source.best_params:
        cfg = replace(cfg, source.best_params)
    study_run_id = source.parent_run_id if source is not None else None
    check_writable(out_dir)
    tracker.check()
    data = dataset(cfg.data)
    out_dir, done = open_stage(out_dir, ["retrain"], resume=resume, overwrite=overwrite, result=RetrainResult)
    if done is not None:
        return done
    merged = data.merged_train_val()
    epochs = cfg.retrain.epochs or cfg.train.epochs
    plan = [(variant, k, replace(vcfg, {"train.seed": vcfg.train.seed + k, "train.epochs": epochs}))
            for variant, vcfg in variants(cfg) for k in range(cfg.retrain.seeds)]
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    from study.tracking.context import dataset_specs  # late: MLflow's import, like the tracker's

    datasets = dataset_specs(to_dict(cfg)["data"], {"train+val": len(merged.train), "test": len(data.test)})
    with tracker.stage_run("retrain", cfg.tracking.experiment or cfg.name, reuse=resume,
                           tags={"cutmix.study_run_id": study_run_id or ""}, datasets=datasets,
                           system_metrics=cfg.tracking.system_metrics) as parent:
        parent.log_params({**{k: v for k, v in flatten(cfg).items() if k != "search.space"},
                           "retrain.epochs_used": epochs})
        jobs = []
        for variant, k, scfg in plan:
            run_dir = out_dir / "retrain" / variant / f"seed{k}"
            if resume and (run_dir / "metrics.json").is_file():  # a finished seed: read back, not retrained
                from study.checkpoint import load_checkpoint

                summary = json.loads((run_dir / "metrics.json").read_text())
                summary["history"] = load_checkpoint(run_dir / "checkpoints" / "last.pt").get("history", [])
                _log_seed(parent, variant, k, scfg, run_dir, summary, resume)  # what a killed driver did not log
                summaries[variant, k] = summary
                continue
            jobs.append(((variant, k), {"cfg": to_dict(scfg), "run_dir": str(run_dir),
                                        "label": f"retrain {variant} seed {k}"}))
        if jobs:
            from study.cluster.session import init_ray
            from study.cluster.tasks import put, run_tasks
            from study.training.runner import train_seed

            init_ray()
            shared = put(merged)  # one copy in the object store for every task
            jobs = [(key, {**kw, "data": shared}) for key, kw in jobs]
            progress = Progress(len(jobs), "retrain")
            configs = {(v, k): c for v, k, c in plan}
            done_before = len(summaries)

            def finished(key: tuple[str, int], summary: dict[str, Any]) -> None:
                variant, k = key
                _log_seed(parent, variant, k, configs[key], out_dir / "retrain" / variant / f"seed{k}", summary,
                          resume)
                summaries[key] = summary
                progress.update(len(summaries) - done_before,
                                f"{variant} seed {k}: test top-1 err {summary['final']['test/top1_err']:.2f} "
                                f"({summary['task']['ended'] - summary['task']['started']:.0f} s)")

            run_tasks(train_seed, jobs, cfg.retrain.resources, on_done=finished)
        rows: dict[str, list[dict[str, Any]]] = {}
        for variant, k, scfg in plan:
            summary = summaries[variant, k]
            rows.setdefault(variant, []).append({"seed": scfg.train.seed, "method": scfg.cutmix.method,
                                                 "run_dir": str(out_dir / "retrain" / variant / f"seed{k}"),
                                                 **{m: summary["final"][m] for m in REPORTED},
                                                 "task": summary.get("task")})  # when and where it ran
        stats = {v: {"seeds": r, **{m: summarize([x[m] for x in r]) for m in REPORTED}} for v, r in rows.items()}
        comparisons = {v: {m: compare([x[m] for x in r], [x[m] for x in rows["baseline"]]) for m in REPORTED}
                       for v, r in rows.items() if v != "baseline" and "baseline" in rows}
        main_variant = next(v for v, _ in variants(cfg) if v != "baseline") if len(rows) > 1 else next(iter(rows))
        best = min(rows[main_variant], key=lambda r: r["test/top1_err"])
        gain = None
        if "baseline" in rows and main_variant in stats:
            gain = stats["baseline"]["test/top1_err"]["mean"] - stats[main_variant]["test/top1_err"]["mean"]
        result = RetrainResult(str(out_dir), str(out_dir / "best_config.yaml"), epochs, study_run_id, parent.run_id,
                               len(data.test), stats, comparisons,
                               best["run_dir"], str(Path(best["run_dir"]) / "checkpoints" / "best.pt"), gain)
        result.to_json()
        flat: dict[str, float] = {"num_test": result.num_test}
        for variant, s in stats.items():
            for m in REPORTED:
                flat.update({f"{variant}/{m}_mean": s[m]["mean"], f"{variant}/{m}_std": s[m]["std"]})
        for variant, c in comparisons.items():
            flat[f"{variant}/diff_test/top1_err"] = c["test/top1_err"]["diff"]
        if gain is not None:
            flat["cutmix_gain_top1_points"] = gain
        parent.log_metrics(flat)
        parent.log_artifact(result.path(out_dir))
        parent.log_artifact(result.best_checkpoint, "checkpoints")
        parent.log_artifact(Path(best["run_dir"]) / "config.yaml")
        parent.log_artifact(Path(best["run_dir"]) / "metrics.json")
    tracker.add_view_columns(cfg.tracking.experiment or cfg.name,
                             metrics=[f"{v}/test/top1_err_mean" for v in stats] + ["test/top1_err"])
    return result


def _log_seed(parent, variant: str, k: int, cfg: PipelineConfig, run_dir: Path, summary: dict, resume: bool) -> None:
    """A finished seed as a child run of the retrain run: params, every epoch's metrics (those a resumed run has
    not logged yet), its files."""
    tags = {"cutmix.stage": "retrain-seed", "cutmix.variant": variant, "cutmix.seed_index": str(k)}
    with parent.child(f"retrain-{variant}-seed{k}", tags, reuse=resume) as child:
        child.log_params({"train.seed": cfg.train.seed, "cutmix.method": cfg.cutmix.method,
                          "cutmix.prob": cfg.cutmix.prob, "train.epochs": cfg.train.epochs})
        logged = child.last_step("epoch") if child.reused else -1
        for row in summary.get("history", []):
            if int(row["epoch"]) > logged:
                child.log_metrics(row, int(row["epoch"]))
        child.set_tags({"cutmix.task_attempts": summary.get("attempt", 1)})
        for name in ("metrics.json", "curves.png", "samples.png", "config.yaml"):
            child.log_artifact(run_dir / name)


def format_report(result: RetrainResult) -> str:
    from study.stats import format_ci, format_diff

    lines = [f"test top-1 error (%) on {result.num_test} test images, {result.epochs} epochs on train+val:"]
    for variant, stats in result.variants.items():
        t = stats["test/top1_err"]
        values = ", ".join(f"{v:.2f}" for v in t["values"])
        lines.append(f"{variant:>9}: {format_ci(t)} ({values})")
    for variant, comp in result.comparisons.items():
        lines.append(f"{variant} - baseline: {format_diff(comp['test/top1_err'])}")
    lines.append(f"best checkpoint: {result.best_checkpoint}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    out = Path(args.output or args.source or default_output(config_from_args(args)))
    cfg, out, study = study_source(args, tracker_for(args, out if out.is_dir() else Path("runs")))
    result = run(cfg, out, tracker_for(args, out), source=study, resume=args.resume, overwrite=args.overwrite)
    print(format_report(result))
    return 0
