"""`cutmix-study evaluate --from SOURCE`: the paper's evaluations of trained models, and the method table.

SOURCE (`study.evaluation.sources.models_from_source`): a train run directory, a checkpoint file (`best.pt` /
`last.pt` with its config), a retrain directory (a study output directory or its `retrain/`; the default is the
output directory's), or an MLflow run id of a train, trial, retrain seed or retrain run. Every model is evaluated
on the held-out test split of the data it was trained on with `study.evaluation.suite.evaluate_model`: top-1/top-5
error, NLL and calibration (ECE); CAM localization (MaxBoxAccV2 as clovaai/wsolevaluation defines it, and the
paper's top-1 Loc) beside the centre-Gaussian prior and random CAMs on the same boxes; centre and boundary
occlusion; in-between-class; FGSM; max-softmax OOD detection per set, near-OOD sets from the generator in the
headline and the noise sets as sanity rows (Yun et al. 2019, sections 4.1-4.3; Choe et al. 2020). The table
(`study.evaluation.report`): top-1 error is the primary endpoint; the other columns' verdicts are Holm-corrected
across the table; McNemar per seed pair and the minimum detectable difference beside them. One model: one row,
no verdicts.

Writes `<output>/evaluate/`: `<variant>/seed<k>.json` (metrics, curves and info per model; a resumed stage skips
those that exist), `<variant>/seed<k>_predictions.npz` (per-image labels, predictions, correctness, confidence),
`table.md`, PNGs (CAM grid, reliability diagram, occlusion, in-between and FGSM curves of each variant's first
seed) and `summary.json` (EvaluateResult); an MLflow `evaluate` run with a child run per model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.common import Source, check_writable, open_stage
from pipelines.results import EvaluateResult, RetrainResult
from study.cluster.session import init_ray
from study.cluster.tasks import put, run_tasks
from study.config.schema import PipelineConfig, to_dict
from study.evaluation.inputs import test_split
from study.evaluation.plots import save_evaluation_plots
from study.evaluation.report import method_table, paired_tests
from study.evaluation.sources import HINT, models_from_source
from study.evaluation.suite import EvaluationResult, evaluate_checkpoint
from study.summaries import ModelRow
from study.training.runner import Progress, load_dataset

# What `--from` may name as an MLflow run (its `cutmix.stage` tag); directories and checkpoint files are read as they
# are (study.evaluation.sources.models_from_source).
SOURCE_STAGES = ("retrain", "retrain-seed", "train", "trial")
SOURCE_HINT = HINT


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> EvaluateResult:
    """Evaluate every model of `source` (a RetrainResult, a path or an MLflow run id: see the module docstring;
    default the output directory's retrain) on its test split, with `cfg.evaluate`'s settings."""

    if isinstance(source, RetrainResult):
        source = source.stage_dir
    elif isinstance(source, Source):  # a resolved --from: the run id or the path as given
        source = source.run_id or source.path
    refs = models_from_source(Path(out_dir) if source is None else source, tracker)
    check_writable(out_dir)
    tracker.check()
    e = cfg.evaluate
    split, info, epochs = test_split(refs, e, load_dataset)  # before any output: a missing dataset is exit 2
    out_dir, done = open_stage(out_dir, ["evaluate"], resume=resume, overwrite=overwrite, result=EvaluateResult)
    if done is not None:
        return done
    edir = out_dir / "evaluate"
    options = {"cam_curve_interval": e.cam_curve_interval, "loc_sigma": e.loc_sigma, "random_cam_images": 0,
               "robustness_images": e.robustness_images, "fgsm_eps": tuple(e.fgsm_eps), "ood_images": e.ood_images,
               "ood_bootstrap": e.ood_bootstrap, "prior_sigma": e.prior_sigma}
    start = time.perf_counter()
    rows: dict[tuple[str, int], ModelRow] = {}
    from study.tracking.context import dataset_specs  # lazy: pulls mlflow, like the tracker

    with tracker.stage_run("evaluate", cfg.tracking.experiment or cfg.name, reuse=resume,
                           tags={"cutmix.source": str(source or out_dir)},
                           datasets=dataset_specs(to_dict(cfg)["data"], {"test": len(split["labels"])}),
                           system_metrics=cfg.tracking.system_metrics) as stage:
        jobs = []
        for ref in refs:
            path = edir / ref.variant / f"seed{ref.seed}.json"
            if resume and path.is_file():  # evaluated before the interruption; its curves are the plots', not a row's
                rows[ref.variant, ref.seed] = ModelRow.from_dict({m: v for m, v in json.loads(path.read_text()).items()
                                                                  if m != "curves"})
            else:
                jobs.append(((ref.variant, ref.seed), {"checkpoint": str(ref.checkpoint), "config": ref.config,
                                                        "options": {**options, "seed": ref.seed}}))
        if jobs:
            init_ray()
            shared = put(split)
            jobs = [(key, {**kw, "split": shared}) for key, kw in jobs]
            progress = Progress(len(jobs), "evaluate")
            by_key = {(r.variant, r.seed): r for r in refs}

            def finished(key: tuple[str, int], out: dict[str, Any]) -> None:
                variant, k = key
                ref = by_key[key]
                row = ModelRow(k, str(ref.checkpoint), ref.origin, ref.run_id, out["metrics"], out["seconds"],
                               out["info"])
                path = edir / variant / f"seed{k}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({**row.to_dict(), "curves": out["curves"]}, default=float))
                np.savez_compressed(path.with_name(f"seed{k}_predictions.npz"),
                                    **{name: t.numpy() for name, t in out["predictions"].items()})
                if k == min(r.seed for r in refs if r.variant == variant):
                    result = EvaluationResult(out["metrics"], out["curves"], out["seconds"], out["examples"])
                    for png in save_evaluation_plots(result, edir, prefix=f"{variant}_",
                                                     class_names=split["class_names"]):
                        stage.log_artifact(png, "plots")
                # Found again by its tags on --resume: an evaluate directory that was lost (the pipeline retried on
                # a fresh cluster) re-evaluates its models under the same child runs, never a second set.
                with stage.child(f"evaluate-{variant}-seed{k}", {"cutmix.stage": "evaluate-model",
                                                                  "cutmix.variant": variant,
                                                                  "cutmix.seed_index": str(k)},
                                 reuse=resume) as child:
                    if not child.reused or child.last_step("top1_err") < 0:  # each metric logged once
                        child.log_metrics(out["metrics"])
                rows[key] = row
                progress.update(len(rows) - (len(refs) - len(jobs)),
                                f"{variant} seed {k}: top-1 err {row.metrics.get('top1_err', float('nan')):.2f}, "
                                f"{sum(out['seconds'].values()):.0f} s")

            run_tasks(evaluate_checkpoint, jobs, cfg.retrain.resources, on_done=finished, what="an evaluate task",
                      key="retrain.resources", placement_timeout_s=cfg.search.placement_timeout_s)
        per_seed: dict[str, list[ModelRow]] = {}
        for ref in refs:
            per_seed.setdefault(ref.variant, []).append(rows[ref.variant, ref.seed])
        info = {**info, **next(iter(rows.values())).info}
        priors = info.pop("priors", None) or {}
        correct = {v: {r.seed: np.load(edir / v / f"seed{r.seed}_predictions.npz")["correct"] for r in rs}
                   for v, rs in per_seed.items()}
        table = edir / "table.md"
        report = method_table(table, per_seed, num_test=len(split["labels"]), epochs=epochs, info=info,
                              priors=priors, paired=paired_tests(correct))
        result = EvaluateResult(str(out_dir), stage.run_id, len(split["labels"]), report.metrics,
                                report.comparisons, per_seed, str(table), time.perf_counter() - start)
        result.to_json()
        stage.log_metrics({f"{v}/{m}_mean": s.mean for v, ms in report.metrics.items() for m, s in ms.items()})
        stage.log_artifact(table)
        stage.log_artifact(result.path(out_dir))
    tracker.add_view_columns(cfg.tracking.experiment or cfg.name,
                             metrics=[f"{v}/{m}_mean" for v in report.metrics for m in ("maxboxacc_v2", "top1_loc")
                                      if m in report.metrics[v]])
    return result


def report(result: EvaluateResult) -> str:
    return Path(result.table).read_text().rstrip() + f"\n(evaluated in {result.wall_s:.0f} s; {result.table})"
