"""One training run of a config into a run directory: what `train` does once and `retrain` does per seed.

Writes `config.yaml` (resolved), `metrics.json` (final and best metrics), `checkpoints/{best,last}.pt`,
`samples.png` (augmented, mixed training samples with their soft targets) and `curves.png`. Plain PyTorch through
`study.training.engine.Trainer`: no Ray, no MLflow here (a caller that tracks passes `on_epoch`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study.atomic import atomic_write_text
from study.augment import build_mixer, one_hot
from study.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from study.config.load import dump_config, from_dict
from study.config.schema import DataConfig, PipelineConfig
from study.console import quiet
from study.data.batches import BatchAugment, iterate_batches
from study.data.registry import load_data
from study.training.engine import Trainer

SHOWN = ("train/loss", "val/loss", "val/top1_err", "test/top1_err", "train/top1_err")


@functools.lru_cache(maxsize=2)
def load_dataset(cfg: DataConfig):
    """`study.data.registry.load_data`, memoised per (frozen, hashable) data config: the stages of one `run` share
    the in-memory dataset (generated sets take seconds; real readers decode once). Two entries bound the memory;
    `load_dataset.cache_clear()` frees them."""
    return load_data(cfg)


class Progress:
    """Per-epoch progress lines with an ETA, on stderr (stdout stays for results)."""

    def __init__(self, total: int, label: str = "", stream=None):
        self.total, self.label, self.start = total, label, time.perf_counter()
        self.stream = stream or sys.stderr

    def update(self, done: int, text: str) -> None:
        if quiet():  # --quiet: only the final summary and errors
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        prefix = f"{self.label} " if self.label else ""
        print(f"{prefix}[{done:>{len(str(self.total))}}/{self.total}] {text}  {elapsed:5.0f}s elapsed, eta {eta:4.0f}s",
              file=self.stream, flush=True)


def fmt_metrics(metrics: dict[str, float], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def save_sample_grid_for(cfg: PipelineConfig, data, path: Path, n: int = 32) -> Path:
    """A grid of training samples as a trial would see them, mixed with probability 1 so that the picture
    shows what the configured method does (the title gives the configured p)."""
    import torch

    from study.grids import save_sample_grid  # lazy: pulls matplotlib

    gen = torch.Generator().manual_seed(cfg.train.seed)
    x, y = next(iterate_batches(data.train, n, shuffle=True, seed=cfg.train.seed))
    x = BatchAugment(data.mean, data.std, cfg.data.pad, cfg.data.hflip)(x, gen)
    c = cfg.cutmix
    if c.mixes:
        x, targets = build_mixer(dataclasses.replace(c, prob=1.0), data.num_classes)(x, y, generator=gen)
    else:
        targets = one_hot(y, data.num_classes, c.label_smoothing)
    alpha = f" alpha={c.alpha:g}" if c.method in ("cutmix", "mixup") and c.prob > 0 else ""
    return save_sample_grid(x, path, targets=targets, mean=data.mean, std=data.std, class_names=data.class_names,
                            title=f"{cfg.model.arch}: {c.method}{alpha} p={c.prob:g} ({c.mode})")


def train_run(cfg: PipelineConfig, out_dir: Path, *, data=None, resume: bool = False, label: str = "train",
              on_epoch: Callable[[Any], None] | None = None, select_last: bool = False,
              eval_val: bool = True, eval_train: bool = False) -> dict[str, Any]:
    """Train `cfg` into `out_dir`; returns the metrics.json content. Resumes from checkpoints/last.pt if asked.

    `select_last`: the final epoch is the model (`checkpoints/best.pt` is a copy of `last.pt`), for training on
    train+val where no held-out split is left to select an epoch by. `eval_val` / `eval_train`: the Trainer's
    switches (study.training.engine.Trainer: val every epoch; the clean train error after the last).
    """
    from study.plots import save_learning_curves  # lazy: pulls matplotlib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_dataset(cfg.data)
    dump_config(cfg, out_dir / "config.yaml")
    trainer = Trainer(cfg, data)
    trainer.eval_val, trainer.eval_train = eval_val, eval_train
    last = out_dir / "checkpoints" / "last.pt"
    if resume and last.is_file():
        trainer.load_checkpoint(load_checkpoint(last))
    else:
        save_sample_grid_for(cfg, data, out_dir / "samples.png")
    resumed_from = trainer.epoch  # 0 when training from scratch
    progress = Progress(cfg.train.epochs, label)
    start = time.perf_counter()
    for result in trainer.fit():
        ckpt = trainer.checkpoint()
        save_checkpoint(ckpt, last)
        if result.is_best and not select_last:
            save_checkpoint(ckpt, out_dir / "checkpoints" / "best.pt")
        progress.update(result.epoch, fmt_metrics(result.metrics, SHOWN) + ("  *" if result.is_best else ""))
        if on_epoch is not None:
            on_epoch(result)
    if select_last:
        shutil.copyfile(last, out_dir / "checkpoints" / "best.pt")
    save_learning_curves(trainer.history, out_dir / "curves.png", title=f"{cfg.name}: {cfg.model.arch}")
    best_epoch = int(trainer.best_metrics.get("epoch", trainer.epoch))
    summary = {"final": trainer.history[-1], "best": trainer.best_metrics, "best_epoch": best_epoch,
               "metric": cfg.search.primary_metric, "epochs": trainer.epoch, "wall_s": time.perf_counter() - start,
               "num_classes": data.num_classes, "dataset": data.name}
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=2))
    return {**summary, "history": trainer.history, "resumed_from": resumed_from}


def train_seed(cfg: dict[str, Any], run_dir: str, data, label: str, validate: bool = False) -> dict[str, Any]:
    """One retrain seed as a Ray task (study.cluster.tasks.run_tasks): train `cfg` (plain data) into `run_dir` on
    `data` (train+val merged), the final epoch being the model; its val images are training images, so val is not
    evaluated, and the clean error on the training split is (`train/top1_err`, after the last epoch). With
    `validate` (a race run, study.search.race: `data` is the study's train/val split) val is evaluated every epoch
    instead and the clean train error is not. Continues
    from `checkpoints/last.pt` when an earlier attempt left one, so Ray's retry of a task whose worker died
    resumes it. Writes `task.json` (PID, start time, attempt) first, for whoever watches the run, and adds the
    epoch it resumed from at the end. Returns train_run's summary with the per-epoch history."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    attempts = json.loads((out / "task.json").read_text()).get("attempt", 0) + 1 if (out / "task.json").is_file() else 1
    task = {"pid": os.getpid(), "started": time.time(), "attempt": attempts}
    atomic_write_text(out / "task.json", json.dumps(task))
    summary = train_run(from_dict(cfg), out, data=data, resume=True, label=label, select_last=True, eval_val=validate,
                        eval_train=not validate)
    # The epoch this attempt started from: > 0 when a retry found the dead attempt's checkpoint, 0 when it had to
    # start again (the checkpoint was lost with a node's local disk, or none had been written).
    atomic_write_text(out / "task.json", json.dumps({**task, "resumed_from": summary["resumed_from"]}))
    return {**summary, "attempt": attempts}


def read_finished(run_dir: str | Path) -> dict[str, Any] | None:
    """A finished `train_seed` run read back (metrics.json with the per-epoch history of its last checkpoint), or
    None when `run_dir` holds no finished run: what a resumed stage does instead of training it again."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # written atomically, so torn only by hand or another tool
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}; truncated?): delete it to train that run "
                              "again, or rerun the stage with --overwrite") from None
    summary["history"] = load_checkpoint(run_dir / "checkpoints" / "last.pt").get("history", [])
    return summary


def log_seed_run(parent: Any, name: str, tags: dict[str, str], cfg: PipelineConfig, run_dir: str | Path,
                 summary: dict[str, Any], resume: bool) -> None:
    """A finished `train_seed` run as an MLflow child run of `parent` (a study.tracking.store.StageRun): its
    seed, mixing and budget parameters, every epoch's metrics that a resumed parent has not logged yet, and its
    files. Only the tracker's run interface is used here, never MLflow itself."""
    run_dir = Path(run_dir)
    with parent.child(name, tags, reuse=resume) as child:
        child.log_params({"train.seed": cfg.train.seed, "cutmix.method": cfg.cutmix.method,
                          "cutmix.alpha": cfg.cutmix.alpha, "cutmix.prob": cfg.cutmix.prob,
                          "cutmix.off_epochs": cfg.cutmix.off_epochs, "train.epochs": cfg.train.epochs})
        logged = child.last_step("epoch") if child.reused else -1
        for row in summary.get("history", []):
            if int(row["epoch"]) > logged:
                child.log_metrics(row, int(row["epoch"]))
        child.set_tags({"cutmix.task_attempts": summary.get("attempt", 1)})
        for file in ("metrics.json", "curves.png", "samples.png", "config.yaml"):
            if (run_dir / file).is_file():
                child.log_artifact(run_dir / file)
