"""One finished tiny pipeline and one finished tiny study per test session, each built once and shared by the tests
that only read it.

A user's run: `cutmix-study run --output runs/<NAME>` in a subprocess, from an empty working directory, with
Tune's own loggers left on (as a user gets them) and MLflow's system metrics asked for. While it runs, a second
`run --resume` on the same output directory is started and must be refused (one writer per output directory,
study.cluster.lock); what both printed is recorded beside the output.

Under pytest-xdist every worker process asks for it; the first one builds it under a file lock in the directory
all workers share (the parent of their base temporary directories, as pytest-xdist's documentation shows for
"session-scoped fixtures that execute only once"), the others wait on the lock and read its record. Tests must
not write to it (a test that changes a pipeline builds its own).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from tests.helpers.cli import REPO, TINY, cli_env, set_args
from tests.helpers.processes import kill_tree

NAME = "shared"
CONFIG = TINY + [f"name={NAME}", "search.num_samples=2", "search.scheduler=none", "search.max_concurrent=1",
                 "evaluate.robustness_images=64", "tracking.system_metrics=true"]


@dataclasses.dataclass(frozen=True)
class RefusedRun:
    """The second `run --resume` started while the first ran."""
    returncode: int
    stderr: str
    lock_seen: bool  # the first run's <out>/.lock existed when the second started


@dataclasses.dataclass(frozen=True)
class FinishedPipeline:
    cwd: Path  # the working directory it ran in (it held nothing before)
    out: Path  # cwd / "runs" / NAME
    returncode: int
    stdout: str
    stderr: str
    commit: str | None  # the git commit it ran at (None outside a git checkout)
    pid: int  # the run's process id, which the refused second run names
    second: RefusedRun

    @classmethod
    def read(cls, record: Path) -> FinishedPipeline:
        raw = json.loads(record.read_text())
        return cls(**{**raw, "cwd": Path(raw["cwd"]), "out": Path(raw["out"]), "second": RefusedRun(**raw["second"])})


def _env() -> dict[str, str]:
    env = cli_env()
    env.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)  # as a user runs it: Tune adds its loggers unless told
    return env


def _build(root: Path) -> dict:
    cwd = root / "cwd"
    cwd.mkdir(parents=True)
    out = cwd / "runs" / NAME
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    cmd = [sys.executable, "-m", "pipelines.cli", "run", *set_args(CONFIG), "--output", f"runs/{NAME}"]
    first = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / ".lock").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        lock_seen = (out / ".lock").is_file()
        # The second run starts elsewhere (its own empty directory) so that the first's working directory keeps
        # nothing but its output; it names the same output directory by its absolute path.
        other = root / "second"
        other.mkdir()
        second = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--output", str(out), "--resume",
                                 *set_args(CONFIG)], cwd=other, env=_env(), capture_output=True, text=True,
                                timeout=300)
        stdout, stderr = first.communicate(timeout=1200)
    finally:
        kill_tree(first.pid)
    return {"cwd": str(cwd), "out": str(out), "returncode": first.returncode, "stdout": stdout, "stderr": stderr,
            "commit": head.stdout.strip() if head.returncode == 0 else None, "pid": first.pid,
            "second": {"returncode": second.returncode, "stderr": second.stderr, "lock_seen": lock_seen}}


def _built_once(shared_root: Path, name: str, build: Callable[[Path], dict]) -> Path:
    """The record of `build(shared_root / name)`, run by the first caller of the session (under a file lock in
    `shared_root`, a directory every xdist worker of this session sees); later callers wait and read it."""
    record = shared_root / f"{name}.json"
    with FileLock(str(record) + ".lock"):
        if not record.is_file():
            record.write_text(json.dumps(build(shared_root / name)))
    return record


def finished_pipeline(shared_root: Path) -> FinishedPipeline:
    """The session's finished pipeline, built on first use under `shared_root`."""
    return FinishedPipeline.read(_built_once(shared_root, "shared-pipeline", _build))


STUDY_NAME = "dash"
# ASHA cuts at epochs 1 and 2 of 4, so some trials end PRUNED; both architectures are searched (the notebook draws
# an alpha x p map for each). Five trials: the two default points (study.search: the paper's recipe and p=0) and
# three random ones.
STUDY_CONFIG = TINY + [f"name={STUDY_NAME}", "train.epochs=4", "search.num_samples=5", "search.max_concurrent=2",
                       "search.scheduler=asha", "search.grace_period=1", "search.algorithm=random",
                       "search.space.model.arch={type: choice, values: [resnet20, cnn]}"]


@dataclasses.dataclass(frozen=True)
class FinishedStudy:
    out: Path  # the study's output directory (results.parquet, optuna.db, mlflow.db, plots/)
    returncode: int
    stdout: str
    stderr: str

    @classmethod
    def read(cls, record: Path) -> FinishedStudy:
        raw = json.loads(record.read_text())
        return cls(**{**raw, "out": Path(raw["out"])})


def _build_study(root: Path) -> dict:
    # Not named "study": the notebook's kernel must not find a directory that shadows the package.
    out = root / "tiny-study"
    root.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "study", "--output", str(out), "--quiet",
                           *set_args(STUDY_CONFIG)], cwd=root, env=cli_env(), capture_output=True, text=True,
                          timeout=900)
    return {"out": str(out), "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def finished_study(shared_root: Path) -> FinishedStudy:
    """The session's finished tiny ASHA study, built on first use under `shared_root`."""
    return FinishedStudy.read(_built_once(shared_root, "shared-study", _build_study))
