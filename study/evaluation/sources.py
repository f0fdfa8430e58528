"""What `evaluate --from` can name, resolved to the models to evaluate: ``models_from_source``.

A source is one of (issue 16, point 5):

* a **train run directory** (``cutmix-study train``'s ``<output>/train/``, the ``--output`` directory itself, or
  one retrain seed): ``config.yaml`` and ``checkpoints/best.pt`` (``study.training.runner.train_run`` writes
  both);
* a **checkpoint file** (``best.pt``, ``last.pt`` or a study trial's ``checkpoint.pt``): a ``study.checkpoint``
  dict, which carries its config; a ``config.yaml`` beside it (or beside its ``checkpoints/`` folder) is used
  when the checkpoint has none;
* a **retrain directory** (a study's output directory or its ``retrain/``): every finished ``<variant>/seed<k>``
  run directory under ``retrain/`` (those with ``metrics.json``);
* an **MLflow run id** of a train, trial, retrain seed or retrain run (tag ``cutmix.stage``): a trial is found
  in its study's Ray Tune storage (tag ``ray.trial_id``, the study run's ``cutmix.output``), a retrain seed in
  its retrain run's output directory, a retrain run as a retrain directory, and any run that logged
  ``checkpoints/best.pt`` (with ``config.yaml``) from its artifacts.

Only the ``tracker`` (``study.tracking.store.Tracker``: ``run_info``, ``download``) touches MLflow.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.checkpoint import CheckpointError, load_checkpoint
from study.config.load import load_config, to_dict
from study.metric_names import EvaluationError

__all__ = ["HINT", "ModelRef", "SourceError", "default_output_for", "models_from_source"]

RETRAIN_DIR = "retrain"
TRAIN_DIR = "train"  # `cutmix-study train --output DIR` writes its run directory here
CHECKPOINT_NAMES = ("best.pt", "last.pt", "checkpoint.pt")
_SEED_DIR = re.compile(r"seed(\d+)$")
_RUN_ID = re.compile(r"[0-9a-f]{32}$")
HINT = ("a train run directory, a checkpoint file (best.pt / last.pt), a retrain directory (a study output "
        "directory or its retrain/), or the MLflow run id of a train, trial or retrain run")


class SourceError(EvaluationError):
    """`--from` names nothing that can be evaluated; one line (exit 2)."""


@dataclass(frozen=True)
class ModelRef:
    """One model to evaluate. ``variant``/``seed``: its row of the method table and its seed index in that row;
    ``checkpoint``: a ``study.checkpoint`` file; ``config``: its PipelineConfig as a dict (``to_dict``);
    ``origin``: what the source was (``train``, ``checkpoint``, ``retrain``, ``trial``), ``run_id`` the MLflow run
    it came from (or None)."""

    variant: str
    seed: int
    checkpoint: Path
    config: dict[str, Any]
    origin: str
    run_id: str | None = None

    @property
    def run_dir(self) -> Path:
        """The run directory the checkpoint lives in (``.../checkpoints/best.pt`` -> ``...``)."""
        parent = self.checkpoint.parent
        return parent.parent if parent.name == "checkpoints" else parent


def _read_config(path: Path) -> dict[str, Any]:
    return to_dict(load_config(path)) if path.is_file() else {}


def _from_checkpoint(path: Path, variant: str, seed: int, origin: str, run_id: str | None = None) -> ModelRef:
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise SourceError(f"{exc} ({HINT})") from None
    config = ckpt.get("config") or {}
    if not config:
        beside = [path.parent / "config.yaml", path.parent.parent / "config.yaml"]
        config = next((_read_config(p) for p in beside if p.is_file()), {})
    if not config:
        raise SourceError(f"checkpoint {path} has no config and none lies beside it (config.yaml next to it or "
                          "next to its checkpoints/ folder)")
    return ModelRef(variant, seed, path, config, origin, run_id)


def _variant_name(config: dict[str, Any]) -> str:
    """A row name for a lone model: its method (``baseline`` when nothing is mixed, as retrain names it)."""
    c = config.get("cutmix", {})
    return "baseline" if c.get("method", "none") == "none" or float(c.get("prob", 0)) == 0 else str(c["method"])


def _is_run_dir(path: Path) -> bool:
    return (path / "checkpoints" / "best.pt").is_file()


def _retrain_runs(root: Path, run_id: str | None = None) -> list[ModelRef]:
    """Every finished ``<variant>/seed<k>`` run under a retrain directory, ``baseline`` first, then by name."""
    rows = []
    for seed_dir in sorted(root.glob("*/seed*")):
        m = _SEED_DIR.match(seed_dir.name)
        if m and _is_run_dir(seed_dir) and (seed_dir / "metrics.json").is_file():
            rows.append((seed_dir.parent.name != "baseline", seed_dir.parent.name, int(m.group(1)), seed_dir))
    return [_from_checkpoint(d / "checkpoints" / "best.pt", v, k, "retrain", run_id) for _, v, k, d in sorted(rows)]


def _from_directory(path: Path, run_id: str | None = None) -> list[ModelRef]:
    if _is_run_dir(path):
        ref = _from_checkpoint(path / "checkpoints" / "best.pt", "", 0, "train", run_id)
        return [ModelRef(_variant_name(ref.config), 0, ref.checkpoint, ref.config, "train", run_id)]
    for root in (path / RETRAIN_DIR, path):
        refs = _retrain_runs(root, run_id) if root.is_dir() else []
        if refs:
            return refs
    if _is_run_dir(path / TRAIN_DIR):  # a pipeline output directory of `cutmix-study train --output DIR`
        return _from_directory(path / TRAIN_DIR, run_id)
    raise SourceError(f"{path} holds no trained model ({HINT})")


def _trial_checkpoint(out_dir: Path, trial_id: str) -> Path | None:
    """The latest ``checkpoint.pt`` of Tune trial ``trial_id`` under a study output directory (one-process trials:
    ``<trial dir>/checkpoint_<k>/``; data-parallel ones: their Train run's ``checkpoint_<k>/``)."""
    found = [p for p in out_dir.glob(f"tune/**/*{trial_id}*/checkpoint_*/checkpoint.pt")]
    return max(found, key=lambda p: (p.parent.name, p.stat().st_mtime)) if found else None


def _from_run_id(run_id: str, tracker) -> list[ModelRef]:
    tags, _, _ = tracker.run_info(run_id)
    stage = tags.get("cutmix.stage", "")
    parent_tags = {}
    if tags.get("mlflow.parentRunId"):
        parent_tags, _, _ = tracker.run_info(tags["mlflow.parentRunId"])
    output = Path(tags.get("cutmix.output") or parent_tags.get("cutmix.output") or "")
    if stage == "trial":
        trial_id = tags.get("ray.trial_id", "")
        ckpt = _trial_checkpoint(output, trial_id) if trial_id and output.is_dir() else None
        if ckpt is None:
            raise SourceError(f"MLflow run {run_id} is trial {trial_id or '?'} of a study whose Tune storage under "
                              f"{output} holds no checkpoint of it ({HINT})")
        ref = _from_checkpoint(ckpt, f"trial_{trial_id}", 0, "trial", run_id)
        return [ref]
    if stage == "retrain-seed":
        d = output / RETRAIN_DIR / tags.get("cutmix.variant", "?") / f"seed{tags.get('cutmix.seed_index', '?')}"
        if _is_run_dir(d):
            return [_from_checkpoint(d / "checkpoints" / "best.pt", tags["cutmix.variant"],
                                     int(tags["cutmix.seed_index"]), "retrain", run_id)]
    if stage == "retrain" and (output / RETRAIN_DIR).is_dir():
        return _from_directory(output, run_id)
    if stage == "train" and output.is_dir() and _is_run_dir(output):
        return _from_directory(output, run_id)
    # Anything else that logged its checkpoint: download it (and the config beside it).
    dst = Path(tempfile.mkdtemp(prefix=f"cutmix-evaluate-{run_id[:8]}-"))
    for name in ("checkpoints/best.pt", "checkpoints/last.pt"):
        try:
            ckpt = Path(tracker.download(run_id, name, dst))
        except Exception:  # the tracking store's own error types: not a model this run logged
            continue
        try:
            tracker.download(run_id, "config.yaml", dst)
        except Exception:
            pass  # the checkpoint carries its config
        ref = _from_checkpoint(ckpt, "", 0, stage or "checkpoint", run_id)
        return [ModelRef(_variant_name(ref.config), 0, ref.checkpoint, ref.config, ref.origin, run_id)]
    raise SourceError(f"MLflow run {run_id} ({stage or 'not a cutmix-study run'}) has no model to evaluate: its "
                      f"files are gone from {output or 'the output directory'} and it logged no checkpoint ({HINT})")


def models_from_source(source: str | Path, tracker=None) -> list[ModelRef]:
    """The models `evaluate --from SOURCE` evaluates (see the module docstring), in table order.

    Raises SourceError (one line) for a path or run id that names no model. ``tracker`` is needed only for a run id.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        ref = _from_checkpoint(path, "", 0, "checkpoint")
        return [ModelRef(_variant_name(ref.config), 0, ref.checkpoint, ref.config, "checkpoint")]
    if path.is_dir():
        return _from_directory(path)
    if _RUN_ID.match(text):
        if tracker is None:
            raise SourceError(f"--from {text} looks like an MLflow run id, and no tracking store was given ({HINT})")
        return _from_run_id(text, tracker)
    raise SourceError(f"--from {text}: no such file, directory or MLflow run id ({HINT})")


def default_output_for(source: str | Path | None) -> Path | None:
    """Where `evaluate` writes by default for ``source``: a study output directory for it or its ``retrain/``, the
    run directory of a train run or a checkpoint; None for an MLflow run id or nothing (the config's default)."""
    if source is None or str(source) == "":
        return None
    path = Path(str(source)).expanduser()
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if path.is_dir():
        return path.parent if path.name == RETRAIN_DIR and not _is_run_dir(path) else path
    return None
