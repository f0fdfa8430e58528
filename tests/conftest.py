"""Shared fixtures: tiny CPU configs, a real MLflow tracking server on 127.0.0.1, and process clean-up by PID.

Servers started here listen on 127.0.0.1 only and are stopped (by PID, with their descendants) when the test or
session ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# One launcher for local MLflow servers, shared with bench/: started in its own process group, stopped whole.
from tests.helpers.cli import REPO, SHARED, TINY, assert_one_line_error, cli_env, run_main, set_args  # noqa: F401
from tests.helpers.pipeline import FinishedPipeline, FinishedStudy, finished_pipeline, finished_study
from tests.helpers.postgres import postgres_server
from tests.helpers.processes import descendants, kill_tree  # noqa: F401
from tests.helpers.tracking_server import free_port, start_mlflow_server, wait_http  # noqa: F401

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Every Ray process exports metrics for Prometheus every few seconds; no test reads them, and on 2 cores with several
# local clusters alive at once that is CPU the tests wait for: an idle 4-CPU local cluster used 3.7 CPU-s per 30 s
# with them and 2.8 without (docs/testing.md). Inherited by every CLI subprocess and Ray process a test starts.
os.environ.setdefault("RAY_enable_metrics_collection", "0")

# tests/file_seconds.json: seconds each of the longest files took on one of 4 xdist workers on 2 cores (setup + call
# + teardown from `--durations=0`, full suite at 9d27449 on 2026-12-08, 891 s; both cores >= 98 % busy until its last
# 15 s). Data, regenerated from a durations log, so it lives beside this file rather than in it.
# CI hands out whole files (`--dist loadfile`) in collection order (`--no-loadscope-reorder`); sorting the
# collection by these puts the longest first (LPT scheduling), so that no long file starts near the end and runs
# alone. A stale figure only changes the order, never what a test checks; a file not listed goes after these.
FILE_SECONDS: dict[str, float] = json.loads(Path(__file__).with_name("file_seconds.json").read_text())


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=lambda item: -FILE_SECONDS.get(item.nodeid.split("::")[0], 0))  # stable: a file keeps its order


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


@pytest.fixture(scope="session")
def shared_pipeline(tmp_path_factory) -> FinishedPipeline:
    """The session's one finished tiny pipeline (tests/helpers/pipeline.py), for tests that only read it: built by
    the first xdist worker that asks, in the directory all workers' temporary directories share."""
    return finished_pipeline(_session_root(tmp_path_factory))


@pytest.fixture(scope="session")
def shared_study(tmp_path_factory) -> FinishedStudy:
    """The session's one finished tiny ASHA study (tests/helpers/pipeline.py), for tests that only read it (the
    Optuna dashboard, the analysis notebook); built like `shared_pipeline`."""
    return finished_study(_session_root(tmp_path_factory))


def _session_root(tmp_path_factory) -> Path:
    """A directory every xdist worker of this session sees: the parent of their base temporary directories."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m pipelines.cli ...` in a subprocess; returns CompletedProcess (text)."""

    def run(*args: str, timeout: float = 900, env: dict | None = None, cwd: Path | None = None):
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd or tmp_path,
                                env=cli_env(**(env or {})),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            kill_tree(proc.pid)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run
