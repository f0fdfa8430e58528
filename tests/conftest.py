"""Shared fixtures: tiny CPU configs, a real MLflow tracking server on 127.0.0.1, and process clean-up by PID.

Servers started here listen on 127.0.0.1 only and are stopped (by PID, with their descendants) when the test or
session ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# One launcher for local MLflow servers, shared with bench/: started in its own process group, stopped whole.
from tests.helpers.cli import REPO, SHARED, TINY, assert_one_line_error, run_main, set_args  # noqa: F401
from tests.helpers.postgres import postgres_server
from tests.helpers.processes import descendants, kill_tree  # noqa: F401
from tests.helpers.tracking_server import free_port, start_mlflow_server, wait_http  # noqa: F401

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

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


@pytest.fixture
def postgres() -> Iterator[tuple[str, int]]:
    """A private PostgreSQL on 127.0.0.1 (tests/helpers/postgres.py): (SQLAlchemy URL of its `mlflow` database,
    port)."""
    yield from postgres_server()


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
