"""SIGINT and SIGTERM handled alike (study.cluster.signals): outside Tune a signal raises Stopped (a
KeyboardInterrupt carrying the signal) at once; while Tune runs (`graceful()`) the signal is handed to Tune's
graceful-stop handler (SIGUSR1: Tune then stops its trials and saves the experiment) and `raise_if_stopped` raises
afterwards; a second signal skips the graceful path;
`stop(reason)` from another thread raises the reason in the main thread."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from study.cluster import signals


@pytest.fixture(autouse=True)
def installed():
    signals.install()
    try:
        yield
    finally:
        signals.uninstall()


def wait_for_signal() -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the handler runs between bytecodes of this loop
        time.sleep(0.01)
    pytest.fail("no signal arrived")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_outside_tune_stops_at_once(signum, code):
    with pytest.raises(signals.Stopped) as stopped:
        os.kill(os.getpid(), signum)
        wait_for_signal()
    assert stopped.value.signum == signum and stopped.value.exit_code == code
    assert isinstance(stopped.value, KeyboardInterrupt) and signals.received() == signum


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_during_tune_the_first_signal_goes_to_tune_and_a_second_one_stops_at_once(signum):
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: calls.append(sig))  # Tune's graceful stop
    try:
        with signals.graceful():
            os.kill(os.getpid(), signum)
            time.sleep(0.2)
            assert calls == [signal.SIGUSR1]  # handed to Tune, nothing raised
            with pytest.raises(signals.Stopped) as second:
                os.kill(os.getpid(), signum)
                wait_for_signal()
        assert second.value.signum == signum
        with pytest.raises(signals.Stopped) as stopped:
            signals.raise_if_stopped()  # what the study calls once Tune has returned
        assert stopped.value.signum == signum
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_stop_from_another_thread_raises_the_reason_in_the_main_thread():
    reason = ValueError("a trial needs 8 CPUs")
    threading.Timer(0.1, signals.stop, args=(reason,)).start()
    with pytest.raises(ValueError, match="8 CPUs"):
        wait_for_signal()
    assert signals.received() is None
