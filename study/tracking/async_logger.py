"""The queue of tracking calls: one background thread that runs them in order and rides out tracking-server outages.

`study.tracking` re-exports `AsyncLogger`; this module imports nothing from MLflow (it recognises MLflow's errors
by the `requests` exceptions they are raised from, and by their `error_code`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

_log = logging.getLogger("study.tracking")


class TrackingUnavailable(ValueError):
    """Logging calls were dropped because the tracking server stayed unreachable; one-line message."""


class AsyncLogger:
    """One background thread that executes logging calls in order, so callers (Ray's driver loop, and through it
    the trials) never wait on the tracking server. Errors are kept and re-raised by `flush()`.

    Outages: a job that fails because the tracking server cannot be reached (refused or reset connections,
    timeouts, 5xx answers after MLflow's own retries; see `unreachable`) is run again, in order, after a pause that
    doubles from `backoff_s` to `backoff_max_s`, while later jobs wait behind it. A job must therefore be safe to run
    twice (the server may have committed a call whose answer was lost). MLflow's HTTP client already retries each
    call (study.tracking pins its MLFLOW_HTTP_* settings): this loop covers outages longer than its ~4 minutes.
    Other errors (a bad request, a missing run) are not retried.

    Bound: at most `maxsize` jobs wait. When the queue is full, `submit` blocks the caller until the thread frees a
    slot (back-pressure: the study pauses, with a warning, instead of dropping metrics or growing without limit).
    After `patience_s` seconds of one outage the server is taken as gone: the failing job, and every later job
    that finds it still unreachable, is dropped (each after MLflow's own retries), so the queue drains and no caller
    blocks for ever; the next `flush()` raises TrackingUnavailable counting them. A call that succeeds ends the
    outage. Trials and their checkpoints (which hold each trial's per-epoch history) are unaffected.
    """

    def __init__(self, maxsize: int = 10_000, *, patience_s: float = 600.0, backoff_s: float = 0.5,
                 backoff_max_s: float = 10.0) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=maxsize)
        self.patience_s, self.backoff_s, self.backoff_max_s = patience_s, backoff_s, backoff_max_s
        self._errors: list[BaseException] = []
        self._down_since: float | None = None  # monotonic time of the current outage's first failure
        self._dropped = 0
        self._full_warned = False
        self._thread = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run(job)
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised on flush
                self._errors.append(exc)
            finally:
                self._queue.task_done()

    def _run(self, job: Callable[[], None]) -> None:
        """Run `job`, retrying it while the server is unreachable and patience lasts."""
        pause = self.backoff_s
        while True:
            try:
                job()
            except Exception as exc:
                if not unreachable(exc):
                    raise
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    _log.warning("tracking server unreachable (%s); %d logging calls wait, retried for up to %.0f s",
                                 _first_line(exc), self._queue.qsize() + 1, self.patience_s)
                if now - self._down_since >= self.patience_s:
                    self._dropped += 1
                    if self._dropped == 1:
                        _log.warning("tracking server unreachable for %.0f s: dropping logging calls until it "
                                     "answers", now - self._down_since)
                    return
                time.sleep(pause)
                pause = min(2 * pause, self.backoff_max_s)
                continue
            if self._down_since is not None:
                _log.warning("tracking server answers again after %.0f s; %d logging calls wait",
                             time.monotonic() - self._down_since, self._queue.qsize())
                self._down_since = None
            return

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job`; blocks while the queue is full (see the class docstring)."""
        try:
            self._queue.put_nowait(job)
            return
        except queue.Full:
            pass
        if not self._full_warned:
            self._full_warned = True
            _log.warning("tracking queue full (%d logging calls): the study waits for the tracking server",
                         self._queue.maxsize)
        self._queue.put(job)

    def flush(self) -> None:
        self._queue.join()
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self._errors.insert(0, TrackingUnavailable(
                f"the tracking server was unreachable for over {self.patience_s:.0f} s: {dropped} logging calls "
                "were dropped"))
        if self._errors:
            err, self._errors = self._errors[0], []
            raise err

    def close(self) -> None:
        """Flush (re-raising a job's error) and stop the thread, which stops even when flush raises."""
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._thread.join(timeout=30)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) means the tracking server could not be reached or was
    temporarily unavailable, as opposed to refusing the request. MlflowClient wraps the `requests` error in an
    MlflowException raised inside its handler, so the chain is walked through __cause__ and __context__."""
    import requests

    kinds = (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
             requests.exceptions.RetryError)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds):
            return True
        if getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE":  # an MlflowException
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
