"""Process clean-up by PID for tests that start servers, Ray nodes or CLI subprocesses."""

from __future__ import annotations

import os
import signal

import psutil


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
