"""A local `mlflow server` for tests and benchmarks, started on 127.0.0.1 and stopped whole.

`mlflow server` is a launcher: the process it starts runs the web server (uvicorn) as a child, which may start
workers of its own. Killing the launcher alone leaves the uvicorn worker listening on its port (seen after
`bench/study_overhead.py --server`: an orphan still serving 24 minutes later). So the server is started in a new
session (its PID is the process-group id) and `stop()` signals the whole group, then waits until the group is
empty. Flags per ENVIRONMENT.md (MLflow 3.17): one worker and job execution off (ready in ~5-10 s, ~0.5 GB
instead of ~15 processes and 3 GB), telemetry off.

This module runs MLflow as a subprocess and imports nothing from it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["MlflowServer", "free_port", "start_mlflow_server", "stop_process_group", "wait_http"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it; the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200. Raises RuntimeError if `proc` exits first, TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - a local server we started
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


def stop_process_group(proc: subprocess.Popen, grace: float = 5.0, timeout: float = 15.0) -> None:
    """Stop `proc` and every process in its group (it must have been started with ``start_new_session=True``):
    SIGTERM to the group, SIGKILL after `grace` seconds, then wait (reaping `proc`) until no member is left.

    Raises TimeoutError if a member survives SIGKILL for `timeout` seconds (an unkillable process: nothing else
    can be done here, and saying so beats leaving it silently)."""
    pgid = proc.pid  # start_new_session: the leader's PID is the group id, valid even after the leader exits
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, timeout)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while True:
            try:
                proc.wait(timeout=0.1)  # reap the leader, or a zombie leader keeps the group "alive"
            except subprocess.TimeoutExpired:
                pass
            if not _group_alive(pgid):
                return
            if time.monotonic() >= deadline:
                break
    raise TimeoutError(f"process group {pgid} still has members {timeout}s after SIGKILL")


class MlflowServer:
    """A running local `mlflow server`: `uri` (http://127.0.0.1:PORT), `pid` (also its process-group id), `log`
    (its combined stdout/stderr file). `stop()` (or leaving a ``with`` block) ends the whole process group."""

    def __init__(self, proc: subprocess.Popen, uri: str, log: Path):
        self.proc, self.uri, self.log = proc, uri, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace: float = 5.0) -> None:
        stop_process_group(self.proc, grace=grace)

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mlflow_server(workdir: str | Path, backend_uri: str | None = None, *, timeout: float = 90.0,
                        extra_args: tuple[str, ...] = ()) -> MlflowServer:
    """Start `mlflow server` on 127.0.0.1 and a free port and wait for its ``/health``.

    Args:
        workdir: created if missing; holds ``mlflow.db`` (the default backend), ``artifacts/`` (the server's
            artifact store, ``--artifacts-destination``) and ``server.log``.
        backend_uri: ``--backend-store-uri``; default ``sqlite:///<workdir>/mlflow.db``.
        timeout: seconds to wait for ``/health``.
        extra_args: further ``mlflow server`` flags.

    Raises RuntimeError (with the log's tail) if the server exits or does not answer in time; nothing it started
    is left running then.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    backend = backend_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)  # the server must not read a client setting meant for someone else
    cmd = [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend, "--artifacts-destination", str(workdir / "artifacts"), *extra_args]
    log = workdir / "server.log"
    with open(log, "w") as fh:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    server = MlflowServer(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_http(server.uri + "/health", timeout=timeout, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        server.stop(grace=0.0)
        raise RuntimeError(f"mlflow server did not start ({exc}): {log.read_text()[-2000:]}") from None
    return server
