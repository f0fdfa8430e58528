"""Shared fixtures: tiny CPU configs, a real MLflow tracking server on 127.0.0.1, and process clean-up by PID.

Servers started here listen on 127.0.0.1 only and are stopped (by PID, with their descendants) when the test or
session ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# One launcher for local MLflow servers, shared with bench/: started in its own process group, stopped whole.
from tests.helpers.tracking_server import free_port, start_mlflow_server, wait_http  # noqa: F401 - re-exported to tests

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Overrides that make any stage a seconds-long CPU job: digits at 8x8, the small CNN.
TINY = [
    "data.name=digits", "detect.data=synthetic", "train.test_every=1",  # plain 8x8 digits, shapes: seconds
    "data.image_size=8", "data.pad=1", "model.arch=cnn", "model.width=8", "train.epochs=2", "train.batch_size=64",
    "train.lr=0.05", "train.num_threads=1", "detect.image_size=64", "detect.num_train=8", "detect.num_val=4",
    "detect.epochs=1", "detect.batch_size=4", "retrain.seeds=2",
]



def set_args(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """`--set` flags for a list of overrides: ["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [arg for item in overrides for arg in ("--set", item)]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    from pipelines.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err

def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """The CLI's bad-input contract: exit 2 and a single `error: ...` line holding every needle, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])

@pytest.fixture(autouse=True, scope="module")
def _no_ray_across_modules():
    """Each test module starts without a Ray connection: a CLI call that started a local Ray (retrain, evaluate,
    detect run Ray tasks) leaves it connected in this process, and the next module's own `ray.init` would fail."""
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_cfg():
    from study.config.load import load_config

    return load_config(None, TINY)


def kill_tree(pid: int, extra: list[int] | tuple[int, ...] = ()) -> None:
    """SIGKILL a process and every descendant it has now, plus `extra` PIDs seen earlier."""
    pids = set(extra)
    try:
        proc = psutil.Process(pid)
        pids.update(c.pid for c in proc.children(recursive=True))
        pids.add(pid)
    except psutil.NoSuchProcess:
        pass
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    # Children started with start_new_session share the leader's process group even after it exited.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)


def descendants(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server for the whole session; its process group is stopped at the end."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.uri


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m pipelines.cli ...` in a subprocess; returns CompletedProcess (text)."""

    def run(*args: str, timeout: float = 900, env: dict | None = None, cwd: Path | None = None):
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        full_env.pop("MLFLOW_TRACKING_URI", None) if env is None or "MLFLOW_TRACKING_URI" not in env else None
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd or tmp_path, env=full_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            kill_tree(proc.pid)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run
