"""`cutmix-study run`: study -> retrain -> evaluate -> export -> detect, in one output directory.

With no arguments it runs the embedded default end to end on the CPU (local Ray, SQLite MLflow in the output
directory). Each stage hands the next its typed result (pipelines/results.py); with `--resume` every stage
continues from what is already there and finished stages are not repeated (pipelines/common.py says what each
does), which is what makes a resubmitted `ray job submit` safe. (`python -m pipelines.run` is the same command.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipelines import detect_stage, evaluate_stage, export_stage, retrain_stage, study_stage
from pipelines.cli import main as cli_main
from pipelines.common import check_writable, config_from_args, default_output, tracker_for
from pipelines.recommendation import REPORT, recommendation, write_report
from study.config.schema import flatten
from study.console import quiet

# (stage, its module, the stage whose result is its source, the heading printed before it), in order.
CHAIN = (
    ("study", study_stage, None, lambda cfg: f"{cfg.search.algorithm} search over {', '.join(cfg.search.space)}"),
    ("retrain", retrain_stage, "study", lambda cfg: "best config and baselines, several seeds, held-out test"),
    ("evaluate", evaluate_stage, "retrain", lambda cfg: "the paper's evaluations of every retrained model"),
    ("export", export_stage, "retrain", lambda cfg: "detection-ready backbone"),
    ("detect", detect_stage, "export", lambda cfg: "Faster R-CNN (FPN) fine-tuned from the backbone"),
)


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    cfg = config_from_args(args)
    out = Path(args.output or default_output(cfg))
    check_writable(out)
    tracker = tracker_for(args, out)
    flags = {"resume": args.resume, "overwrite": args.overwrite}
    say = print if not quiet() else (lambda *a, **k: None)  # --quiet: the final summary only

    # One MLflow run for the whole pipeline: every stage run nests under it (found again by --resume).
    with tracker.pipeline_run(cfg.tracking.experiment or cfg.name, reuse=args.resume,
                              system_metrics=cfg.tracking.system_metrics) as pipeline:
        pipeline.log_params({k: v for k, v in flatten(cfg).items() if k != "search.space"})
        done: dict[str, object] = {}
        for name, stage, source_of, heading in CHAIN:
            gap = "\n" if done else ""  # a blank line between stages
            say(f"{gap}== {name}: {heading(cfg)} ==", flush=True)
            done[name] = stage.run(cfg, out, tracker, source=done.get(source_of), **flags)
            say(stage.report(done[name]))
        study, retrain, evaluation, export, detect = (done[name] for name, *_ in CHAIN)
        pipeline.log_metrics({f"best/{study.metric}": study.best_value, "detect/map_50": detect.map_50,
                              **({"cutmix_gain_top1_points": retrain.cutmix_gain_top1_points}
                                 if retrain.cutmix_gain_top1_points is not None else {})})
        # The decision rule's outcome with its evidence: report.md, and the pipeline run's description in MLflow.
        advice = recommendation(study, retrain, export, detect)
        pipeline.log_artifact(write_report(out, advice))
        pipeline.set_tags({"mlflow.note.content": advice, "cutmix.choice": retrain.choice.get("variant", "")})

    print(f"\n== done in {time.perf_counter() - start:.0f} s ==")
    print(f"best trial: {study.best_params} ({study.metric} {study.best_value:.2f})")
    if study.best_vs_baseline_se is not None:
        print(f"study: best vs the no-mixing trial {study.best_vs_baseline_se:.1f} binomial standard errors apart on "
              f"{study.num_val} val images ({'a signal' if study.best_vs_baseline_se >= 2 else 'within noise'})")
    print(retrain_stage.report(retrain))
    print(f"method table: {evaluation.table}")
    print(f"backbone: {export.backbone}")
    if export.registered_model:
        print(f"registered model: {export.registered_model.get('uri', export.registered_model['name'])}")
    control = f" (random-init control {detect.random_map_50:.3f})" if detect.random_map_50 is not None else ""
    print(f"detector mAP@0.5: {detect.map_50:.3f}{control}")
    print(f"\n{advice}")
    print(f"report: {(out / REPORT).resolve()}")
    print(f"results: {out.resolve()}")
    print(f"browse: {tracker.ui_command()}")
    return 0


def entrypoint() -> None:
    """`python -m pipelines.run ...` for `ray job submit` and KubeRay entrypoints."""

    sys.exit(cli_main(["run", *sys.argv[1:]]))
