"""What every stage does at the door: resolve the config, the output directory and the tracking URI."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from study.config import PipelineConfig, load_config


class OutputError(ValueError):
    """The output directory cannot be used as asked; one-line message."""


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    return load_config(args.config, args.overrides)


def default_output(cfg: PipelineConfig) -> Path:
    return Path("runs") / cfg.name


def check_writable(path: Path) -> None:
    """Raise OutputError unless `path` is, or can be made, a writable directory. Leaves nothing behind: a
    directory created to find out (permission bits do not tell for root, /proc or read-only mounts) is removed."""
    path = Path(path).expanduser().resolve()
    first_missing = None
    probe = path
    while not probe.exists():
        first_missing, probe = probe, probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file")
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputError(f"output directory {path} is not writable ({exc.strerror or exc}; choose a writable "
                          "--output)") from None
    finally:
        if first_missing is not None and first_missing.exists():
            for d in [path, *path.parents]:
                if d == first_missing.parent:
                    break
                try:
                    d.rmdir()
                except OSError:
                    break


def prepare_output(path: Path, owned: list[str], *, resume: bool, overwrite: bool) -> Path:
    """Make `path` ready for a stage that writes the entries `owned` (relative names; "." for the whole dir).

    Earlier results are never replaced silently: if any owned entry exists, the stage needs --resume (continue
    it) or --overwrite (remove those entries first, and only those). The directory must be writable.
    """
    path = Path(path).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {path} ({exc.strerror}; choose a writable --output)"
                          ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path} is not writable (choose a writable --output)")
    existing = [name for name in owned if (path / name).exists() and (name != "." or any(path.iterdir()))]
    if existing and not (resume or overwrite):
        shown = path if existing == ["."] else path / existing[0]
        raise OutputError(f"{shown} already holds results (pass --resume to continue, --overwrite to replace, or "
                          "choose another --output)")
    if existing and overwrite and not resume:
        for name in existing:
            target = path / name
            if name == ".":
                for child in path.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    return path


def tracking_uri(args: argparse.Namespace, out_dir: Path) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite store in the output directory."""
    uri = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


class Progress:
    """Per-epoch progress lines with an ETA, on stderr (stdout stays for results)."""

    def __init__(self, total: int, label: str = "", stream=None):
        self.total, self.label, self.start = total, label, time.perf_counter()
        self.stream = stream or sys.stderr

    def update(self, done: int, text: str) -> None:
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
    import dataclasses

    import torch

    from study.augment import build_mixer, one_hot
    from study.data import BatchAugment, iterate_batches
    from study.plots import save_sample_grid

    gen = torch.Generator().manual_seed(cfg.train.seed)
    x, y = next(iterate_batches(data.train, n, shuffle=True, seed=cfg.train.seed))
    x = BatchAugment(data.mean, data.std, cfg.data.pad, cfg.data.hflip)(x, gen)
    c = cfg.cutmix
    if c.method != "none" and c.prob > 0:
        x, targets = build_mixer(dataclasses.replace(c, prob=1.0), data.num_classes)(x, y, generator=gen)
    else:
        targets = one_hot(y, data.num_classes, c.label_smoothing)
    alpha = f" alpha={c.alpha:g}" if c.method in ("cutmix", "mixup") and c.prob > 0 else ""
    return save_sample_grid(x, path, targets=targets, mean=data.mean, std=data.std, class_names=data.class_names,
                            title=f"{cfg.model.arch}: {c.method}{alpha} p={c.prob:g} ({c.mode})")


def is_run_id(text: str | None) -> bool:
    """MLflow run ids are 32 lowercase hex characters."""
    return bool(text) and len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def mean_std(values: list[float]) -> dict[str, float | list[float]]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) with the values themselves."""
    import statistics

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": list(values)}
