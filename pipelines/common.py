"""What every stage does at the door: the config, the output directory (with --resume / --overwrite), the tracker,
and `--from` (a directory, a file, or an MLflow run id), each resolved here once for every stage. `stage_main` is
the one `main()` of every subcommand: it resolves those, calls the stage's `run(cfg, out_dir, tracker, *, source,
resume, overwrite)` and prints the stage's `report(result)`.

--resume and --overwrite, for every stage (`open_stage`):
- neither: a stage whose outputs already exist refuses to run (exit 2): nothing is replaced silently;
- --overwrite: the stage's own outputs (and only those) are removed first;
- --resume: a stage whose summary.json exists is finished and is returned as it is; an unfinished one continues
  from what it left (the study from its Tune experiment, retrain and evaluate per seed).
"""


from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipelines.results import ResultError, StageResult
from study.cluster.lock import LOCK_NAME, hold
from study.config.load import apply_overrides, from_dict, load_config
from study.config.schema import PipelineConfig

R = TypeVar("R", bound=StageResult)


class OutputError(ResultError):
    """The output directory or a --from source cannot be used as asked; one-line message."""


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

    hold(path)  # one writer per output directory, for the rest of the command (LockError: exit 2)
    existing = [name for name in owned if (path / name).exists() and (name != "." or _has_results(path))]
    if existing and not (resume or overwrite):
        shown = path if existing == ["."] else path / existing[0]
        raise OutputError(f"{shown} already holds results (pass --resume to continue, --overwrite to replace, or "
                          "choose another --output)")
    if existing and overwrite and not resume:
        for name in existing:
            target = path / name
            if name == ".":
                for child in path.iterdir():
                    if child.name != LOCK_NAME:
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    return path


def _has_results(path: Path) -> bool:

    return any(child.name != LOCK_NAME for child in path.iterdir())


def open_training_stage(cfg, out_dir: str | Path, tracker, owned: list[str], result: type[R], *, resume: bool,
                        overwrite: bool) -> tuple[Path, R | None, Any]:
    """The opening of a stage that trains on `cfg.data` (retrain, budget): the output directory writable, the
    tracking store reachable and the data loaded before anything is written, then `open_stage`. Returns (the
    output directory, the finished result or None, the DataBundle)."""
    from study.training.runner import load_dataset  # lazy: pulls torch

    check_writable(out_dir)
    tracker.check()
    data = load_dataset(cfg.data)
    out_dir, done = open_stage(out_dir, owned, resume=resume, overwrite=overwrite, result=result)
    return out_dir, done, data


def open_stage(path: str | Path, owned: list[str], *, resume: bool, overwrite: bool,
               result: type[R] | None = None) -> tuple[Path, R | None]:
    """The one place --resume / --overwrite are applied (see the module docstring). Returns (the output directory,
    made ready; the finished result when resuming a stage whose summary.json exists, else None)."""
    out = prepare_output(path, owned, resume=resume, overwrite=overwrite)
    if resume and result is not None and result.exists(out):
        return out, result.from_dir(out)
    return out, None


def tracking_uri(args: argparse.Namespace, out_dir: Path) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite store in the output directory."""
    uri = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def tracker_for(args: argparse.Namespace, out_dir: Path):
    """The Tracker of a pipeline whose output directory is `out_dir` (artifacts inside it for local stores)."""
    from study.tracking.store import Tracker  # lazy: pulls mlflow

    return Tracker(tracking_uri(args, out_dir), out_dir)


def is_run_id(text: str | None) -> bool:
    """MLflow run ids are 32 lowercase hex characters."""
    return bool(text) and len(text) == 32 and all(c in "0123456789abcdef" for c in str(text))


@dataclass(frozen=True)
class Source:
    """A resolved `--from`: a local directory, or an MLflow run (its tags, and a temporary directory holding
    the artifacts a stage downloaded from it)."""

    path: Path | None = None
    run_id: str | None = None
    tags: dict[str, str] | None = None

    @property
    def stage(self) -> str | None:
        """The `cutmix.stage` tag of a run source (study, retrain, retrain-seed, trial, export, ...)."""
        return (self.tags or {}).get("cutmix.stage")

    def root(self) -> Path | None:
        """The pipeline output directory this source belongs to: a run's `cutmix.output` tag; for a path, the
        directory above a stage directory (`<out>/retrain` -> `<out>`) or above a checkpoint's `checkpoints/`, else
        the directory itself."""
        if self.run_id:
            out = (self.tags or {}).get("cutmix.output")
            return Path(out) if out else None
        path = Path(self.path)
        if path.is_file():
            path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        # A pipeline output directory that happens to be named like a stage (`--output runs/study`) holds the
        # study's files or the MLflow store; a stage directory holds its summary.json (export: its manifest).
        marker = (path / "summary.json").is_file() or (path / "manifest.json").is_file()
        output = any((path / f).exists() for f in ("results.parquet", "best_config.yaml", "mlflow.db"))
        is_stage_dir = path.name in STAGE_DIRS and (marker or not output)
        return path.parent if is_stage_dir else path

    def download(self, tracker, artifact: str, dst: Path, *, required: str | None = None) -> Path | None:
        """Fetch `artifact` of the run into `dst`; None if absent, or OutputError(`required`) when it is needed."""
        try:
            return tracker.download(self.run_id, artifact, dst)
        except Exception:
            if required is None:
                return None
            raise OutputError(f"MLflow run {self.run_id} has no {artifact} artifact ({required})") from None


STAGE_DIRS = ("study", "retrain", "evaluate", "export", "detect", "train", "budget")


def resolve_source(source: str | Path | Source | None, tracker, *, stages: tuple[str, ...],
                   hint: str) -> Source | None:
    """`--from` for every stage that takes one: None (use the output directory), an existing directory or file, or
    an MLflow run id whose `cutmix.stage` tag is one of `stages`. `hint` says what to give instead. `tracker` may
    be a callable returning the tracker, so that one is built only when a run id needs it."""
    if isinstance(source, Source):
        return source
    if source is None or source == "":
        return None
    text = str(source)
    if is_run_id(text):
        tracker = tracker() if callable(tracker) else tracker
        tags, _, _ = tracker.run_info(text)
        if tags.get("cutmix.stage") not in stages:
            raise OutputError(f"MLflow run {text} is a {tags.get('cutmix.stage', 'non-cutmix')} run ({hint})")
        return Source(run_id=text, tags=dict(tags))
    path = Path(text)
    if not path.exists():
        raise OutputError(f"--from {text}: no such file, directory or MLflow run id ({hint})")
    return Source(path=path)


def stage_main(stage: Any, args: argparse.Namespace) -> int:
    """The `main()` of every subcommand, the same few lines for each: the door (config, `--from`, output, tracker)
    then `stage.run(...)` and `stage.report(result)`.

    A stage module declares what it accepts: `SOURCE_STAGES` (the `cutmix.stage` tags a `--from` run id may carry;
    empty when the stage takes no `--from`), `SOURCE_HINT` (what to give instead), and optionally
    `source_config(source, out_dir, tracker) -> dict | Path | None`, the config its source carries (the study's
    best_config.yaml, an export's manifest), used when `--config` is not given."""
    cfg, out, tracker, source = door(stage, args)
    result = stage.run(cfg, out, tracker, source=source, resume=args.resume, overwrite=args.overwrite)
    print(stage.report(result))
    print(f"browse: {tracker.ui_command()}")
    return 0


def door(stage: Any, args: argparse.Namespace) -> tuple[PipelineConfig, Path, Any, Source | None]:
    """(config, output directory, tracker, resolved `--from`) of a command line, before anything is written: every
    config error is raised here (study.config.validate), and a bad `--from` too."""
    if hasattr(stage, "arg_overrides"):  # stage-specific flags that are config overrides (detect --data)
        args.overrides = [*args.overrides, *stage.arg_overrides(args)]
    cfg = config_from_args(args)  # validated at the door, even when the source's config replaces it below
    probe_out = Path(args.output or default_output(cfg))
    text = getattr(args, "source", None)
    source = resolve_source(text, lambda: tracker_for(args, probe_out), stages=tuple(stage.SOURCE_STAGES),
                            hint=stage.SOURCE_HINT) if stage.SOURCE_STAGES else None
    out = Path(args.output or (source.root() if source is not None else None) or default_output(cfg))
    tracker = tracker_for(args, out)
    carried = stage.source_config(source, out, tracker) if hasattr(stage, "source_config") and not args.config else None
    if isinstance(carried, Path):
        cfg = load_config(carried, args.overrides)
    elif isinstance(carried, dict):
        cfg = from_dict(apply_overrides(carried, list(args.overrides)))
    return cfg, out, tracker, source
