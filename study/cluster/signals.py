"""SIGINT and SIGTERM stop a command cleanly: Kubernetes stops a pod with SIGTERM, a terminal with Ctrl-C (SIGINT).

Both signals are handled alike (`install`):

- while a Ray Tune experiment runs (`graceful()` around `Tuner.fit`), ours hands the signal to Tune's graceful-stop
  handler (which Tune installs on SIGUSR1), so Tune ends its loop, snapshots the experiment one last time and
  stops the trials (each keeps its last reported checkpoint); `raise_if_stopped()` after it raises `Stopped`;
- while the driver waits on Ray tasks (`polled()` around `study.cluster.tasks.run_tasks`' loop of bounded
  `ray.wait`s) the signal is only recorded, and the loop's `raise_if_stopped()` raises it within a second: raised
  inside Ray's blocking call, an exception becomes a bare KeyboardInterrupt or a SystemError (ray/_raylet.pyx), and
  a blocked `ray.wait` never ran the handler of `stop(reason)` at all; `run_tasks` then cancels its running tasks
  (a task's checkpoint holds its last finished epoch: `checkpoints/last.pt` is written atomically after every epoch);
- otherwise (data loading, writing results) `Stopped` is raised at once in the main thread;
- a second signal while the first is being handled raises `Stopped` at once (the graceful path is skipped).

`Stopped` is a KeyboardInterrupt, so every `finally` and MLflow run lifecycle sees it (runs end KILLED). The CLI
turns it into exit 128 + signal (130 for SIGINT, 143 for SIGTERM) after shutting down the Ray it started and
releasing the output lock. `ray.init` replaces the SIGTERM handler with its own (`sys.exit`), so
`study.cluster.session.init_ray` installs ours again after it.

The same path stops a command that cannot go on for another reason: `stop(reason)` (e.g. a trial that the cluster
cannot place within `search.placement_timeout_s`) interrupts the main thread as a signal would, and
`raise_if_stopped()` then raises `reason` instead.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

_STATE: dict[str, Any] = {"signum": None, "reason": None, "handled": False, "installed": False, "graceful": False,
                          "polled": False}


class Stopped(KeyboardInterrupt):
    """The command was stopped by SIGINT or SIGTERM; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame: Any) -> None:
    first = not _STATE["handled"]
    _STATE["handled"] = True
    if _STATE["signum"] is None and _STATE["reason"] is None:
        _STATE["signum"] = signum
    if _STATE["polled"]:
        return  # the polling loop raises it (`polled`)
    if first and _STATE["graceful"]:
        tune_handler = signal.getsignal(signal.SIGUSR1)
        if callable(tune_handler) and tune_handler is not _handler:
            tune_handler(signal.SIGUSR1, frame)  # Ray Tune's: end the experiment loop gracefully
            return
    raise _STATE["reason"] or Stopped(_STATE["signum"])


def install() -> None:
    """Handle SIGINT and SIGTERM as described above (main thread only; elsewhere a no-op). Ray Tune is told to leave
    SIGINT alone (TUNE_DISABLE_SIGINT_HANDLER): it still installs its graceful-stop handler on SIGUSR1, through
    which ours stops a running experiment."""
    if threading.current_thread() is not threading.main_thread():
        return
    if "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        _STATE["set_env"] = True
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    _STATE["installed"] = True


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Around `Tuner.fit()`: a first signal stops the experiment through Tune (trials stopped, experiment state
    saved) instead of raising inside its loop; call `raise_if_stopped()` after the block."""
    _STATE["graceful"] = True
    try:
        yield
    finally:
        _STATE["graceful"] = False


@contextlib.contextmanager
def polled() -> Iterator[None]:
    """Around a loop that blocks in Ray calls for at most a second at a time and calls `raise_if_stopped()` after
    each: a signal or `stop(reason)` is recorded, not raised inside Ray's C code (see the module docstring)."""
    _STATE["polled"] = True
    try:
        yield
    finally:
        _STATE["polled"] = False


def reinstall() -> None:
    """After a library (ray.init) replaced the SIGTERM handler: ours again, if the CLI installed it."""
    if _STATE["installed"]:
        install()


def current_handlers() -> dict[int, Any]:
    """Python's SIGINT and SIGTERM handlers (main thread; empty elsewhere), for `restore_handlers`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def restore_handlers(handlers: dict[int, Any]) -> None:
    """Set the handlers `current_handlers` returned again (signal.signal calls sigaction, so the C-level action
    matches Python's view once more after a library changed it underneath)."""
    for s, handler in handlers.items():
        if handler is not None:
            signal.signal(s, handler)


def uninstall() -> None:
    if threading.current_thread() is threading.main_thread() and _STATE["installed"]:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _STATE.pop("set_env", False):
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    _STATE.update(signum=None, reason=None, handled=False, installed=False, graceful=False, polled=False)


def received() -> int | None:
    """The signal that stopped the command, or None."""
    return _STATE["signum"]


def stop(reason: BaseException) -> None:
    """Stop the command from any thread because of `reason` (raised by `raise_if_stopped`)."""
    if _STATE["reason"] is None and _STATE["signum"] is None:
        _STATE["reason"] = reason
        _thread.interrupt_main(signal.SIGINT)


def raise_if_stopped() -> None:
    """Raise the reason the command was stopped (Stopped for a signal), if it was: call after a step that stops
    gracefully (Tune's fit) returns."""
    if _STATE["reason"] is not None:
        raise _STATE["reason"]
    if _STATE["signum"] is not None:
        raise Stopped(_STATE["signum"])


def ignore_until_exit() -> None:
    """The command has ended (its result recorded): SIGINT and SIGTERM are ignored from here to the process's exit,
    so that clean-up (shutting down the local Ray, interpreter teardown with its atexit hooks: ~2.5 s measured
    after a study) is not cut short and a finished command's exit code is not turned into -15. SIG_IGN rather
    than a Python handler: CPython's finalization resets Python handlers to SIG_DFL but leaves SIG_IGN alone.
    SIGKILL still stops the process."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


def reason() -> BaseException | None:
    return _STATE["reason"]
