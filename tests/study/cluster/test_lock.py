"""One writer per output directory (study.cluster.lock): a live holder refuses a second writer with its PID, host and
start time; a stale lock (a dead PID on this host, a reused PID, another host's stopped heartbeat) is taken over
with a warning; release removes only a lock that is still ours."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from study.cluster import lock as lockmod
from study.cluster.lock import LockError, OutputLock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_record(path, **record) -> None:
    (path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "started": time.time() - 60, **record}))


def test_a_second_writer_is_refused_with_pid_host_and_time(tmp_path):
    with OutputLock(tmp_path) as first:
        record = json.loads((tmp_path / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(LockError) as err:
            OutputLock(tmp_path).acquire()
        text = str(err.value)
        assert f"is in use by PID {os.getpid()} on {socket.gethostname()} since " in text and "UTC" in text
        assert "\n" not in text and first.held()
    assert not (tmp_path / ".lock").exists()  # released


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path, capsys):
    write_record(tmp_path, pid=dead_pid())
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "took over the lock" in err and "no longer running" in err


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    # Our own PID, but recorded with another process start time: the PID was reused after the holder died.
    write_record(tmp_path, pid=os.getpid(), proc_start=12345.0)
    with OutputLock(tmp_path) as lock:
        assert lock.held()


def test_another_hosts_lock_holds_while_its_heartbeat_runs_and_is_stale_after(tmp_path):
    write_record(tmp_path, host="node-that-is-gone", pid=1)
    with pytest.raises(LockError, match="in use by PID 1 on node-that-is-gone"):
        OutputLock(tmp_path).acquire()
    old = time.time() - lockmod.STALE_AFTER_S - 10
    os.utime(tmp_path / ".lock", (old, old))
    with OutputLock(tmp_path) as lock:
        assert lock.held()


def test_release_never_removes_a_lock_taken_over_by_someone_else(tmp_path):
    lock = OutputLock(tmp_path).acquire()
    write_record(tmp_path, pid=dead_pid())  # as if another command had taken it over meanwhile
    lock.release()
    assert (tmp_path / ".lock").exists()


def test_the_heartbeat_touches_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lockmod, "HEARTBEAT_S", 0.05)
    with OutputLock(tmp_path):
        old = time.time() - 1000
        os.utime(tmp_path / ".lock", (old, old))
        time.sleep(0.5)
        assert time.time() - (tmp_path / ".lock").stat().st_mtime < 10


def test_a_session_locks_each_directory_once_and_releases_all(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    lockmod.hold(a)  # outside a CLI session: a no-op
    assert not (a / ".lock").exists()
    lockmod.begin_session()
    try:
        lockmod.hold(a)
        lockmod.hold(a)  # the `run` chain: every stage asks again for the same directory
        lockmod.hold(b)
        assert (a / ".lock").exists() and (b / ".lock").exists()
    finally:
        lockmod.end_session()
    assert not (a / ".lock").exists() and not (b / ".lock").exists()
