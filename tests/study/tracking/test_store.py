"""study.tracking's AsyncLogger: jobs run in order off the caller's thread, and a failed job's error reaches the
caller on flush()/close() instead of vanishing in the background thread."""

from __future__ import annotations

import threading

import pytest
from mlflow.exceptions import MlflowException

from study.tracking import store as tracking


def test_jobs_run_in_order_on_the_logger_thread_and_submit_does_not_wait():
    logger = tracking.AsyncLogger()
    release = threading.Event()
    ran: list[tuple[int, str]] = []
    logger.submit(lambda: release.wait(10))  # a slow tracking server: the caller must not wait on it
    for i in range(5):
        logger.submit(lambda i=i: ran.append((i, threading.current_thread().name)))
    assert ran == []  # submitted, not run: the first job still blocks the worker
    release.set()
    logger.flush()
    assert ran == [(i, "mlflow-logger") for i in range(5)]
    logger.close()
    assert not logger._thread.is_alive()


def test_a_failed_job_is_raised_by_flush_once_and_later_jobs_still_run():
    logger = tracking.AsyncLogger()
    ran = []
    first, second = RuntimeError("first failure"), ValueError("second failure")

    def fail(exc):
        raise exc

    logger.submit(lambda: fail(first))
    logger.submit(lambda: ran.append("after"))
    logger.submit(lambda: fail(second))
    with pytest.raises(RuntimeError) as info:
        logger.flush()
    assert info.value is first and ran == ["after"]  # the first error, with its own traceback
    logger.flush()  # reported once: a later flush with no new failure passes
    logger.submit(lambda: ran.append("still working"))
    logger.close()
    assert ran == ["after", "still working"] and not logger._thread.is_alive()


def test_close_raises_a_pending_error_and_still_stops_the_thread():
    logger = tracking.AsyncLogger()
    logger.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        logger.close()
    assert not logger._thread.is_alive()


def test_a_real_mlflow_error_reaches_the_caller(tmp_path):
    client = tracking.client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracking.get_experiment(client, "async")
    run_id, _ = tracking.start_run(client, exp, "run", {"cutmix.stage": "test"}, reuse=False)
    logger = tracking.AsyncLogger()
    logger.submit(lambda: tracking.log_metrics(client, run_id, {"val/loss": 0.5}, 1))
    logger.submit(lambda: tracking.log_metrics(client, "0" * 32, {"val/loss": 0.4}, 2))  # no such run
    logger.submit(lambda: tracking.log_metrics(client, run_id, {"val/loss": 0.3}, 2))
    with pytest.raises(MlflowException, match="0" * 32):
        logger.close()
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/loss"))
    assert history == [(1, 0.5), (2, 0.3)]  # the failure lost only its own call
