"""`cutmix-study train`: one training run of a config, with everything a person wants to look at afterwards.

Writes into the output directory (default `runs/<name>/train`): `config.yaml` (resolved), `metrics.json`
(final and best val/test metrics), `checkpoints/best.pt` and `checkpoints/last.pt`, `samples.png` (a grid of
augmented, mixed training samples with their soft targets), `curves.png` (learning curves) and `summary.json`.
The run itself is `study.training.runner.train_run`, which `retrain` calls per seed; `train` records no MLflow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common import config_from_args, default_output, open_stage
from pipelines.results import TrainResult
from study.config.schema import PipelineConfig
from study.training.runner import dataset, fmt_metrics, train_run


def run(cfg: PipelineConfig, out_dir: Path, tracker=None, *, source=None, resume: bool = False,
        overwrite: bool = False) -> TrainResult:
    """Train `cfg` into `out_dir` (the run directory). `tracker` and `source` are unused: a lone training run is
    not tracked, and it starts from its config."""
    data = dataset(cfg.data)  # before any file is written: a missing dataset is exit 2 with nothing left behind
    out, done = open_stage(out_dir, ["."], resume=resume, overwrite=overwrite, result=TrainResult)
    if done is not None and (out / "metrics.json").is_file():
        return done
    summary = train_run(cfg, out, data=data, resume=resume)
    result = TrainResult(str(out), summary["final"], summary["best"], summary["best_epoch"], summary["epochs"],
                         summary["wall_s"])
    result.to_json()
    return result


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    result = run(cfg, args.output or default_output(cfg) / "train", resume=args.resume, overwrite=args.overwrite)
    shown = ("val/top1_err", "test/top1_err", "test/top5_err")
    print(f"best epoch {result.best_epoch}: " + fmt_metrics(result.best, shown))
    print(f"final epoch {result.epochs}: " + fmt_metrics(result.final, shown))
    print(f"outputs in {result.out_dir}")
    return 0
