"""Process clean-up by PID for tests that start servers, Ray nodes or CLI subprocesses, and a fault injected beside
a command that runs in the test's own process."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import psutil

T = TypeVar("T")


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


@contextlib.contextmanager
def beside(fault: Callable[[], T | None], every: float, timeout: float = 300.0) -> Iterator[list[T]]:
    """Call `fault()` every `every` seconds in a thread while the block runs (a command in this process's main thread,
    where its signal handlers must live), until it returns what it did (not None), the block ends or `timeout`
    passes. Yields a list that holds what it returned once it has acted, else stays empty."""
    done: list[T] = []
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            got = fault()
            if got is not None:
                done.append(got)
                return
            time.sleep(every)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield done
    finally:
        stop.set()
        watcher.join(30)
