"""`cutmix-study train`: one training run of a config, with everything a person wants to look at afterwards.

Writes into the output directory (default `runs/<name>/train`): `config.yaml` (resolved), `metrics.json`
(final and best val/test metrics), `checkpoints/best.pt` and `checkpoints/last.pt`, `samples.png` (a grid of
augmented, mixed training samples with their soft targets) and `curves.png` (learning curves).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.common import (
    Progress,
    config_from_args,
    default_output,
    fmt_metrics,
    prepare_output,
    save_sample_grid_for,
)
from study.checkpoint import load_checkpoint, save_checkpoint
from study.config import PipelineConfig, dump_config
from study.data import DataBundle, load_data
from study.engine import Trainer

SHOWN = ("train/loss", "val/loss", "val/top1_err", "test/top1_err")


def train_run(cfg: PipelineConfig, out_dir: Path, *, data: DataBundle | None = None, resume: bool = False,
              label: str = "train", log: Callable[[str], None] | None = None,
              on_epoch: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Train `cfg` into `out_dir`; returns the metrics.json content. Resumes from checkpoints/last.pt if asked."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_data(cfg.data)
    dump_config(cfg, out_dir / "config.yaml")
    trainer = Trainer(cfg, data)
    last = out_dir / "checkpoints" / "last.pt"
    if resume and last.is_file():
        trainer.load_checkpoint(load_checkpoint(last))
    else:
        save_sample_grid_for(cfg, data, out_dir / "samples.png")
    progress = Progress(cfg.train.epochs, label)
    start = time.perf_counter()
    for result in trainer.fit():
        ckpt = trainer.checkpoint()
        save_checkpoint(ckpt, last)
        if result.is_best:
            save_checkpoint(ckpt, out_dir / "checkpoints" / "best.pt")
        progress.update(result.epoch, fmt_metrics(result.metrics, SHOWN) + ("  *" if result.is_best else ""))
        if on_epoch is not None:
            on_epoch(result)
    from study.plots import save_learning_curves

    save_learning_curves(trainer.history, out_dir / "curves.png", title=f"{cfg.name}: {cfg.model.arch}")
    best_epoch = int(trainer.best_metrics.get("epoch", trainer.epoch))
    summary = {"final": trainer.history[-1], "best": trainer.best_metrics, "best_epoch": best_epoch,
               "metric": cfg.search.metric, "epochs": trainer.epoch, "wall_s": time.perf_counter() - start,
               "num_classes": data.num_classes, "dataset": data.name}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = args.output or default_output(cfg) / "train"
    data = load_data(cfg.data)  # before any file is written: a missing dataset is exit 2 with nothing left behind
    out = prepare_output(out, ["."], resume=args.resume, overwrite=args.overwrite)
    summary = train_run(cfg, out, data=data, resume=args.resume)
    best, final = summary["best"], summary["final"]
    shown = ("val/top1_err", "test/top1_err", "test/top5_err")
    print(f"best epoch {summary['best_epoch']}: " + fmt_metrics(best, shown))
    print(f"final epoch {summary['epochs']}: " + fmt_metrics(final, shown))
    print(f"outputs in {out}")
    return 0
