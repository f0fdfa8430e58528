"""tests.helpers.tracking_server: a local `mlflow server` is stopped whole (launcher and uvicorn worker), never
orphaned."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import psutil
import pytest

from tests.helpers.tracking_server import start_mlflow_server, stop_process_group


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in process group `pgid`."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_stop_ends_grandchildren_and_processes_that_ignore_sigterm():
    # A launcher whose child outlives it unless the group is signalled (as uvicorn outlived `mlflow server`),
    # and one that ignores SIGTERM, so the SIGKILL after the grace period is exercised too.
    script = "trap '' TERM; sleep 300 & sleep 300 & wait"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(group_members(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = group_members(proc.pid)
    assert len(members) == 3, members  # sh and two sleeps
    start = time.monotonic()
    stop_process_group(proc, grace=0.5)
    assert time.monotonic() - start < 5
    assert proc.returncode is not None  # the leader was reaped
    assert group_members(proc.pid) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_a_server_that_cannot_start_says_why_and_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)mlflow server did not start .*no-such-flag"):
        start_mlflow_server(tmp_path / "srv", extra_args=("--no-such-flag",), timeout=60)
    assert (tmp_path / "srv" / "server.log").is_file()


@pytest.mark.slow
def test_server_answers_then_stops_whole(tmp_path):
    server = start_mlflow_server(tmp_path / "srv")
    try:
        assert server.uri.startswith("http://127.0.0.1:")
        port = int(server.uri.rsplit(":", 1)[1])
        with urllib.request.urlopen(server.uri + "/health", timeout=5) as r:
            assert r.status == 200
        members = group_members(server.pid)
        cmdlines = [" ".join(p.cmdline()) for p in members]
        # The launcher and the web server it started (uvicorn with MLflow 3), both in the server's group.
        assert len(members) >= 2 and any("uvicorn" in c for c in cmdlines), cmdlines
        listeners = {c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listeners and listeners <= {p.pid for p in members}, (listeners, cmdlines)
        assert (tmp_path / "srv" / "mlflow.db").is_file()
    finally:
        server.stop()
    assert group_members(server.pid) == [] and refused(port)
    for p in members:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE, p
