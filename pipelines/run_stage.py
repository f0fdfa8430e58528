"""`cutmix-study run`: study -> retrain -> export -> detect, in one output directory.

With no arguments it runs the embedded digits default end to end on the CPU (local Ray, SQLite MLflow in the
output directory). With `--resume` every stage continues from what is already there: the study from its Tune
experiment in `search.storage`, retrain from each seed's last checkpoint, and finished stages are not repeated,
which is what makes a resubmitted `ray job submit` safe. (`python -m pipelines.run` is the same command.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipelines.common import check_writable, config_from_args, default_output, tracking_uri


def main(args: argparse.Namespace) -> int:
    from pipelines import detect_stage, export_stage, retrain_stage, study_stage
    from study.config import load_config
    from study.data import load_data

    start = time.perf_counter()
    cfg = config_from_args(args)
    out = Path(args.output or default_output(cfg))
    check_writable(out)
    uri = tracking_uri(args, out)
    data = load_data(cfg.data)  # once, for the study and the retrain

    print(f"== study: {cfg.search.algorithm} search over {', '.join(cfg.search.space)} ==", flush=True)
    study = study_stage.run_study(cfg, out, uri, resume=args.resume, overwrite=args.overwrite, data=data)
    study_stage.print_summary(study, cfg)

    print("\n== retrain: best config, several seeds, held-out test ==", flush=True)
    best_cfg = load_config(study.best_config)
    report = retrain_stage.run_retrain(best_cfg, study.out_dir, uri, study_run_id=study.parent_run_id,
                                       resume=args.resume, overwrite=args.overwrite, data=data)
    print(retrain_stage.format_report(report))

    print("\n== export: detection-ready backbone ==", flush=True)
    manifest = export_stage.run_export(study.out_dir, study.out_dir, uri, resume=args.resume, overwrite=args.overwrite)
    print(f"backbone: {study.out_dir / 'export' / 'backbone.pt'} ({manifest['arch']})")

    print("\n== detect: Faster R-CNN (FPN) fine-tuned from the backbone ==", flush=True)
    detect = detect_stage.run_detect(study.out_dir / "export", best_cfg, study.out_dir, uri, resume=args.resume,
                                     overwrite=args.overwrite)
    print(detect_stage.format_report(detect))

    cut = report["variants"]["cutmix"]["test/top1_err"]
    print(f"\n== done in {time.perf_counter() - start:.0f} s ==")
    print(f"best config: {study.best_params} ({cfg.search.metric} {study.best_value:.2f})")
    print(f"retrained: test top-1 error {cut['mean']:.2f} ± {cut['std']:.2f} % over {cut['n']} seeds")
    if "cutmix_gain_top1_points" in report:
        base = report["variants"]["baseline"]["test/top1_err"]
        print(f"baseline (p=0): test top-1 error {base['mean']:.2f} ± {base['std']:.2f} %; "
              + retrain_stage.gain_line(report))
    print(f"backbone: {study.out_dir / 'export' / 'backbone.pt'}")
    print(f"detector mAP@0.5: {detect['map_50']:.3f}" + (f" (random-init control {detect['random_map_50']:.3f})"
                                                        if "random_map_50" in detect else ""))
    print(f"results: {study.out_dir}")
    print(f"browse: {study_stage.mlflow_ui_command(uri)}")
    return 0


def entrypoint() -> None:
    """`python -m pipelines.run ...` for `ray job submit` and KubeRay entrypoints."""
    import sys

    from pipelines.cli import main as cli_main

    sys.exit(cli_main(["run", *sys.argv[1:]]))
