"""`cutmix-study evaluate --from RUN_DIR_OR_RETRAIN_DIR_OR_MLFLOW_RUN`: the paper's evaluations of every retrained
model, and the paper's method table.

Every retrained variant and seed (pipelines/retrain_stage.py) is evaluated on the held-out test split with
`study.evaluation.suite.evaluate_model`: top-1/top-5 error, NLL and calibration (ECE); CAM localization (MaxBoxAccV2 as
clovaai/wsolevaluation defines it, and the paper's top-1 Loc) where the data has boxes; centre and boundary
occlusion; in-between-class; FGSM; max-softmax OOD detection against ODIN's noise sets (Yun et al. 2019, sections
4.1-4.3; Choe et al. 2020). Each metric is reported as mean ± std over seeds with a 95 % interval, and each method's
difference to the baseline with Welch's t-interval and a verdict (better, worse, not resolved), the same rule as
the retrain summary.

Writes `<output>/evaluate/`: `<variant>/seed<k>.json` (metrics and curves per model; a resumed stage skips those
that exist), `table.md` (the method table), PNGs (CAM grid, reliability diagram, occlusion, in-between and FGSM
curves of each variant's first seed) and `summary.json` (EvaluateResult); an MLflow `evaluate` run with a child
run per model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pipelines.common import (
    check_writable,
    config_from_args,
    default_output,
    open_stage,
    resolve_source,
    tracker_for,
)
from pipelines.results import EvaluateResult, ResultError, RetrainResult
from study.config.schema import PipelineConfig, to_dict

# Columns of the method table (the paper's Tables 9-12 in one row per method), in order, when measured.
TABLE = (("top1_err", "top-1 err"), ("ece", "ECE"), ("maxboxacc_v2", "MaxBoxAccV2"), ("top1_loc", "top-1 Loc"),
         ("occlusion_center_auc", "occl. centre AUC"), ("occlusion_boundary_auc", "occl. boundary AUC"),
         ("in_between_cutmix", "in-between CutMix"), ("fgsm_acc_eps0.031", "FGSM acc ε=8/255"),
         ("ood_mean_auroc", "OOD AUROC"), ("ood_mean_tnr95", "OOD TNR@95"))
HINT = "give a study output directory after `retrain`, its retrain/ directory, or the retrain MLflow run id"


def retrain_of(source, out_dir: Path, tracker) -> RetrainResult:
    """The RetrainResult to evaluate: given, in a directory (a study dir or its retrain/), or named by the retrain
    MLflow run's `cutmix.output` tag."""
    if isinstance(source, RetrainResult):
        return source
    src = resolve_source(source, tracker, stages=("retrain",), hint=HINT)
    if src is not None and src.run_id:
        root = Path(src.tags.get("cutmix.output") or "")
    else:
        root = src.path if src is not None else Path(out_dir)
        root = root.parent if root.name == RetrainResult.STAGE else root
    if not RetrainResult.exists(root):
        raise ResultError(f"no retrain summary under {root} ({HINT})")
    return RetrainResult.from_dir(root)


def ood_sets(cfg: PipelineConfig, data) -> dict[str, Any]:
    """Out-of-distribution images besides ODIN's noise: another embedded dataset at this dataset's size (shapes for
    digit data, digits otherwise; nothing to download), and `evaluate.ood_root`, a local image folder, if given
    (a missing folder is bad input, exit 2)."""
    import dataclasses

    from study.data.registry import load_data

    other = "shapes" if "digits" in cfg.data.name else "digits"
    ocfg = dataclasses.replace(cfg.data, name=other, image_size=data.image_size, synthetic_sizes=(64, 64, 1000))
    sets = {other: load_data(ocfg).test.images}
    if cfg.evaluate.ood_root:
        from study.data.cub import read_image_folder

        sets["folder"] = read_image_folder(cfg.evaluate.ood_root, data.image_size, cfg.evaluate.robustness_images)
    return sets


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> EvaluateResult:
    """Evaluate every model of `source` (a RetrainResult, a directory or a retrain run id; default the output
    directory's retrain) on the test split."""
    from study.cluster.session import init_ray
    from study.cluster.tasks import put, run_tasks
    from study.evaluation.plots import save_evaluation_plots
    from study.evaluation.suite import evaluate_checkpoint
    from study.metric_names import metric_mode
    from study.stats import compare, summarize
    from study.training.runner import Progress, dataset

    retrain = retrain_of(source, Path(out_dir), tracker)
    check_writable(out_dir)
    tracker.check()
    data = dataset(cfg.data)
    out_dir, done = open_stage(out_dir, ["evaluate"], resume=resume, overwrite=overwrite, result=EvaluateResult)
    if done is not None:
        return done
    edir = out_dir / "evaluate"
    split = data.test
    e = cfg.evaluate
    options = {"cam_curve_interval": e.cam_curve_interval, "loc_sigma": e.loc_sigma,
               "robustness_images": e.robustness_images, "fgsm_eps": tuple(e.fgsm_eps)}
    start = time.perf_counter()
    models = retrain.seed_runs()
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    from study.tracking.context import dataset_specs  # late: MLflow's import, like the tracker's

    with tracker.stage_run("evaluate", cfg.tracking.experiment or cfg.name, reuse=resume,
                           tags={"cutmix.retrain_run_id": retrain.retrain_run_id},
                           datasets=dataset_specs(to_dict(cfg)["data"], {"test": len(split)}),
                           system_metrics=cfg.tracking.system_metrics) as stage:
        jobs = []
        for variant, k, run_dir in models:
            path = edir / variant / f"seed{k}.json"
            if resume and path.is_file():  # evaluated before the interruption
                rows[variant, k] = {m: v for m, v in json.loads(path.read_text()).items() if m != "curves"}
            else:
                jobs.append(((variant, k), {"run_dir": str(run_dir), "options": {**options, "seed": k}}))
        if jobs:
            init_ray()
            shared = put({"images": split.images, "labels": split.labels, "boxes": getattr(split, "boxes", None),
                          "mean": data.mean, "std": data.std, "ood_sets": ood_sets(cfg, data),
                          "num_classes": data.num_classes, "in_channels": data.in_channels})
            jobs = [(key, {**kw, "split": shared}) for key, kw in jobs]
            progress = Progress(len(jobs), "evaluate")
            runs = {(v, k): d for v, k, d in models}

            def finished(key: tuple[str, int], out: dict[str, Any]) -> None:
                variant, k = key
                row = {"seed": k, "run_dir": str(runs[key]), **out["metrics"], "seconds": out["seconds"]}
                path = edir / variant / f"seed{k}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({**row, "curves": out["curves"]}, default=float))
                if k == 0:
                    from study.evaluation.suite import EvaluationResult

                    result = EvaluationResult(out["metrics"], out["curves"], out["seconds"], out["examples"])
                    for png in save_evaluation_plots(result, edir, prefix=f"{variant}_",
                                                     class_names=data.class_names):
                        stage.log_artifact(png, "plots")
                with stage.child(f"evaluate-{variant}-seed{k}", {"cutmix.stage": "evaluate-model",
                                                                  "cutmix.variant": variant}) as child:
                    child.log_metrics(out["metrics"])
                rows[key] = row
                progress.update(len(rows) - (len(models) - len(jobs)),
                                f"{variant} seed {k}: top-1 err {row.get('top1_err', float('nan')):.2f}, "
                                f"{sum(out['seconds'].values()):.0f} s")

            run_tasks(evaluate_checkpoint, jobs, cfg.retrain.resources, on_done=finished)
        per_seed: dict[str, list[dict[str, Any]]] = {}
        for variant, k, _ in models:
            per_seed.setdefault(variant, []).append(rows[variant, k])
        names = [m for m in per_seed[next(iter(per_seed))][0] if m not in ("seed", "run_dir", "seconds")]
        metrics = {v: {m: summarize([r[m] for r in rows]) for m in names if all(m in r for r in rows)}
                   for v, rows in per_seed.items()}
        comparisons = {}
        if "baseline" in per_seed:
            base = per_seed["baseline"]
            comparisons = {v: {m: compare([r[m] for r in rows], [r[m] for r in base],
                                          lower_is_better=metric_mode(m) == "min")
                               for m in metrics[v] if m in metrics["baseline"]}
                           for v, rows in per_seed.items() if v != "baseline"}
        table = write_table(edir / "table.md", metrics, comparisons, len(split), retrain.epochs)
        result = EvaluateResult(str(out_dir), stage.run_id, len(split), metrics, comparisons, per_seed, str(table),
                                time.perf_counter() - start)
        result.to_json()
        stage.log_metrics({f"{v}/{m}_mean": s["mean"] for v, ms in metrics.items() for m, s in ms.items()})
        stage.log_artifact(table)
        stage.log_artifact(result.path(out_dir))
    tracker.add_view_columns(cfg.tracking.experiment or cfg.name,
                             metrics=[f"{v}/{m}_mean" for v in metrics for m in ("maxboxacc_v2", "top1_loc")
                                      if m in metrics[v]])
    return result


def write_table(path: Path, metrics: dict, comparisons: dict, num_test: int, epochs: int) -> Path:
    """The paper's method table: a row per method, mean ± std over seeds, and the difference to the baseline with
    its 95 % interval and verdict (percent; AUCs in percent·image-side units; see study.evaluation)."""
    cols = [(k, label) for k, label in TABLE if any(k in m for m in metrics.values())]
    lines = [f"Test split: {num_test} images; {epochs} training epochs; mean ± std over seeds, and for each method "
             "its difference to the baseline with Welch's 95 % interval: better / worse / not resolved.", "",
             "| method | seeds | " + " | ".join(label for _, label in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for variant, ms in metrics.items():
        n = next(iter(ms.values()))["n"]
        cells = []
        for key, _ in cols:
            if key not in ms:
                cells.append("–")
                continue
            cell = f"{ms[key]['mean']:.2f} ± {ms[key]['std']:.2f}"
            comp = comparisons.get(variant, {}).get(key)
            if comp is not None:
                cell += f" ({comp['diff']:+.2f}, {comp['verdict']})"
            cells.append(cell)
        lines.append(f"| {variant} | {n} | " + " | ".join(cells) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def format_report(result: EvaluateResult) -> str:
    return Path(result.table).read_text().rstrip() + f"\n(evaluated in {result.wall_s:.0f} s; {result.table})"


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    source = args.source
    probe = Path(source) if source else None
    root = (probe.parent if probe.name == RetrainResult.STAGE else probe) if probe and probe.is_dir() else None
    out = Path(args.output or root or default_output(cfg))
    tracker = tracker_for(args, out)
    if source is None and not RetrainResult.exists(out):
        raise ResultError(f"no retrain summary under {out} ({HINT})")
    result = run(cfg, out, tracker, source=source, resume=args.resume, overwrite=args.overwrite)
    print(format_report(result))
    return 0
