"""study.tracking.async_logger: tracking calls retried through a server outage, in order; the bounded queue's
back-pressure;
jobs dropped (and reported) only after the patience runs out. The failing jobs here are our own functions raising
the errors a dead server gives; `test_a_dead_server_is_recognised` checks that MLflow's real error is one of them."""

from __future__ import annotations

import threading
import time

import pytest

from study.tracking.async_logger import AsyncLogger, TrackingUnavailable, unreachable


def flaky(failures: int, ran: list, name: str, exc: type[BaseException] = ConnectionRefusedError):
    """A job that fails `failures` times with `exc`, then records `name`."""
    calls = {"n": 0}

    def job():
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc("connection refused")
        ran.append(name)

    return job, calls


def test_a_job_is_retried_through_an_outage_and_later_jobs_keep_their_order():
    logger = AsyncLogger(backoff_s=0.01, backoff_max_s=0.04)
    ran: list[str] = []
    job, calls = flaky(4, ran, "first")
    logger.submit(job)
    for name in ("second", "third"):
        logger.submit(lambda name=name: ran.append(name))
    logger.close()  # no error: the outage ended before the patience did
    assert calls["n"] == 5 and ran == ["first", "second", "third"]


def test_backoff_doubles_up_to_its_cap():
    logger = AsyncLogger(backoff_s=0.05, backoff_max_s=0.2)
    stamps: list[float] = []

    def job():
        stamps.append(time.monotonic())
        if len(stamps) <= 5:
            raise ConnectionResetError("reset")

    logger.submit(job)
    logger.close()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(gaps) == 5
    for gap, expected in zip(gaps, (0.05, 0.1, 0.2, 0.2, 0.2)):
        assert expected * 0.9 <= gap < expected + 0.15, gaps


def test_other_errors_are_not_retried():
    logger = AsyncLogger(backoff_s=0.01)
    ran: list[str] = []
    job, calls = flaky(1, ran, "never", exc=KeyError)
    logger.submit(job)
    logger.submit(lambda: ran.append("next"))
    with pytest.raises(KeyError):
        logger.close()
    assert calls["n"] == 1 and ran == ["next"]


def test_a_full_queue_blocks_the_caller_until_a_slot_frees():
    logger = AsyncLogger(maxsize=2)
    release = threading.Event()
    started = threading.Event()
    ran: list[int] = []

    def slow():
        started.set()
        release.wait(10)

    logger.submit(slow)
    assert started.wait(5)  # the worker holds the slow job; the queue is empty again
    logger.submit(lambda: ran.append(1))
    logger.submit(lambda: ran.append(2))  # the queue is now full
    blocked = threading.Thread(target=lambda: logger.submit(lambda: ran.append(3)))
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive() and ran == []  # back-pressure: the caller waits, nothing is dropped
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    logger.close()
    assert ran == [1, 2, 3]


def test_after_the_patience_jobs_are_dropped_and_reported_until_the_server_answers():
    logger = AsyncLogger(patience_s=0.2, backoff_s=0.02, backoff_max_s=0.05)
    ran: list[str] = []
    down = {"flag": True}

    def call(name):
        if down["flag"]:
            raise ConnectionRefusedError("connection refused")
        ran.append(name)

    start = time.monotonic()
    logger.submit(lambda: call("a"))
    logger.submit(lambda: call("b"))
    with pytest.raises(TrackingUnavailable, match="2 logging calls were dropped"):
        logger.flush()
    assert 0.2 <= time.monotonic() - start < 2.0  # "a" waited out the patience, "b" was dropped at once
    down["flag"] = False
    logger.submit(lambda: call("c"))
    logger.flush()  # reported once; the server answers again
    down["flag"] = True
    job, calls = flaky(2, ran, "d")
    logger.submit(job)  # a new outage gets the full patience again
    logger.close()
    assert ran == ["c", "d"] and calls["n"] == 3


def test_a_dead_server_is_recognised(monkeypatch, tmp_path):
    """MLflow's real error for a server that is not listening (its own retries off, so it answers at once)."""
    from mlflow.exceptions import MlflowException

    from study.tracking import store as tracking
    from tests.helpers.tracking_server import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = tracking.client_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MlflowException) as info:
        client.get_experiment_by_name("nothing-listens-here")
    assert unreachable(info.value)
    # A refused request is not an outage: a missing run on a working store must not be retried.
    local = tracking.client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(MlflowException) as missing:
        local.get_run("0" * 32)
    assert not unreachable(missing.value)
