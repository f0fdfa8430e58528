"""What every run says about where it came from: MLflow's source tags, and the datasets it read.

Source tags. `MlflowClient.create_run` adds no tags by itself (only the fluent `mlflow.start_run` calls
`mlflow.tracking.context.registry.resolve_tags`), so without this module every run shows user "unknown", no source and
no commit. `source_tags()` resolves MLflow's context providers once per process (user, `mlflow.source.name` =
`sys.argv[0]`, source type, git commit/branch/repo when `sys.argv[0]` is in a repository), adds the git tags of the
repository holding this package when `sys.argv[0]` is not in one (a console script in a virtual environment, pytest),
and `mlflow.project.entryPoint`: the CLI's subcommand (`cutmix-study run`), which the CLI puts in
$CUTMIX_STUDY_ENTRY_POINT so that Ray workers and in-process callers see it too.

Datasets. `dataset_specs` describes the splits a run trained or was measured on as plain data (picklable: the trial
callback is stored with Tune's experiment): name (`digits-train`), split, size, a digest, the source (the generator
settings for generated sets, the root directory for read ones) and the context (`train`/`val`/`test`, MLflow's
`mlflow.data.context` input tag). The digest is the sha256 of the generator settings (everything of `data` that
changes the images; not augmentation) or, for a dataset read from `data.root`, of the root's sorted file list with
sizes; either way combined with the split's name and size. `log_datasets` logs them with `MlflowClient.log_inputs`,
which is what `mlflow.log_input` calls for the active run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_PROJECT_ENTRY_POINT,
)

from study.console import ENTRY_POINT_ENV

# Fields of `data` that do not change which images a split holds (augmentation, loading).
NOT_IDENTITY = ("pad", "hflip", "streaming", "loader_workers")
CONTEXTS = ("train", "val", "test")


@functools.cache
def _resolved() -> dict[str, str]:
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils

    tags = {k: str(v) for k, v in resolve_tags().items() if v is not None}
    if MLFLOW_GIT_COMMIT not in tags:
        here = str(Path(__file__).resolve().parent)
        for key, get in ((MLFLOW_GIT_COMMIT, git_utils.get_git_commit), (MLFLOW_GIT_BRANCH, git_utils.get_git_branch),
                         (MLFLOW_GIT_REPO_URL, git_utils.get_git_repo_url)):
            value = get(here)
            if value:
                tags[key] = value
    return tags


def source_tags() -> dict[str, str]:
    """MLflow's source tags for a run created now (see the module docstring)."""
    tags = dict(_resolved())
    entry = os.environ.get(ENTRY_POINT_ENV) or (Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "")
    if entry:
        tags[MLFLOW_PROJECT_ENTRY_POINT] = entry
    return tags


# ---------------------------------------------------------------------------------------------------------------
# Datasets


@functools.cache
def _root_listing_digest(root: str) -> str:
    """sha256 of a root directory's sorted (relative path, size) list: changes when a file is added, removed or
    rewritten with another size. Cached per process (a large root is walked once)."""
    h = hashlib.sha256()
    base = Path(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                size = path.stat().st_size
            except OSError:
                continue
            h.update(f"{path.relative_to(base).as_posix()}\t{size}\n".encode())
    return h.hexdigest()


def settings_digest(data_cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(digest, source) of a data config given as a plain dict (`to_dict(cfg)["data"]`)."""
    settings = {k: v for k, v in sorted(data_cfg.items()) if k not in NOT_IDENTITY}
    root = str(settings.get("root") or "")
    if root and Path(root).exists():
        listing = _root_listing_digest(str(Path(root).resolve()))
        return hashlib.sha256(f"{json.dumps(settings, default=str)}\n{listing}".encode()).hexdigest(), {
            "uri": str(Path(root).resolve()), "files_sha256": listing}
    return hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest(), {"generator": settings}


def dataset_specs(data_cfg: Mapping[str, Any], sizes: Mapping[str, int],
                  contexts: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Plain descriptions of the splits `sizes` (split name -> number of images) of the dataset `data_cfg` (a
    plain dict). A split's context is `contexts[split]`, else the split's name when it is train/val/test, else
    train (e.g. `train+val`, which retrain trains on)."""
    digest, source = settings_digest(data_cfg)
    name = str(data_cfg.get("name", "data"))
    specs = []
    for split, size in sizes.items():
        context = (contexts or {}).get(split) or (split if split in CONTEXTS else "train")
        specs.append({"name": f"{name}-{split}", "split": split, "size": int(size), "context": context,
                      "digest": hashlib.sha256(f"{digest}:{split}:{int(size)}".encode()).hexdigest()[:16],
                      "source": source, "source_type": "local" if "uri" in source else "code",
                      "image_size": data_cfg.get("image_size")})
    return specs


def dataset_inputs(specs: Iterable[Mapping[str, Any]]) -> list[DatasetInput]:
    out = []
    for s in specs:
        profile = {"num_images": s["size"], "split": s["split"], "image_size": s.get("image_size")}
        entity = Dataset(name=s["name"], digest=s["digest"], source_type=s["source_type"],
                         source=json.dumps(s["source"], default=str), profile=json.dumps(profile))
        out.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, s["context"])]))
    return out


def log_datasets(client: mlflow.MlflowClient, run_id: str, specs: Iterable[Mapping[str, Any]]) -> None:
    """Log the datasets `specs` as the run's inputs (the UI's Dataset column). Logging the same dataset twice is
    harmless: MLflow keeps one input per (name, digest) and context."""
    inputs = dataset_inputs(specs)
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
