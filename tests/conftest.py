"""Shared fixtures: tiny CPU configs, a real MLflow tracking server on 127.0.0.1, and process clean-up by PID.

Servers started here listen on 127.0.0.1 only and are stopped (by PID, with their descendants) when the test or
session ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Overrides that make any stage a seconds-long CPU job: digits at 8x8, the small CNN.
TINY = [
    "data.image_size=8", "data.pad=1", "model.arch=cnn", "model.width=8", "train.epochs=2", "train.batch_size=64",
    "train.lr=0.05", "train.num_threads=1", "detect.image_size=64", "detect.num_train=8", "detect.num_val=4",
    "detect.epochs=1", "detect.batch_size=4", "retrain.seeds=2",
]



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

@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_cfg():
    from study.config import load_config

    return load_config(None, TINY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def start_mlflow_server(workdir: Path, backend_uri: str | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 with one worker and job execution off (ENVIRONMENT.md: ~0.5 GB, 5-10 s)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    backend = backend_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend, "--artifacts-destination", str(workdir / "artifacts")]
    log = open(workdir / "server.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", timeout=90, proc=proc)
    except Exception:
        kill_tree(proc.pid)
        raise RuntimeError(f"mlflow server did not start: {(workdir / 'server.log').read_text()[-2000:]}") from None
    return proc, uri


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server for the whole session; stopped by PID at the end."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield uri
    finally:
        kill_tree(proc.pid)


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
