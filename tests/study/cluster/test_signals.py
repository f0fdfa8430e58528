"""SIGINT and SIGTERM handled alike (study.cluster.signals): outside Tune a signal raises Stopped (a
KeyboardInterrupt carrying the signal) at once; while Tune runs (`graceful()`) the signal is handed to Tune's
graceful-stop handler (SIGUSR1: Tune then stops its trials and saves the experiment) and `raise_if_stopped` raises
afterwards; a second signal skips the graceful path;
`stop(reason)` from another thread raises the reason in the main thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_while_polled_a_signal_or_a_stop_is_recorded_and_raised_by_the_loop(signum):
    """`polled()` (run_tasks' loop of bounded ray.waits): nothing is raised from the handler, which would run inside
    Ray's C code; `raise_if_stopped()` raises the signal, or the reason of `stop`, from the loop."""
    with signals.polled():
        os.kill(os.getpid(), signum)
        time.sleep(0.2)  # the handler has run: recorded, nothing raised
        assert signals.received() == signum
        with pytest.raises(signals.Stopped) as stopped:
            signals.raise_if_stopped()
    assert stopped.value.signum == signum
    signals.uninstall()
    signals.install()
    reason = RuntimeError("the cluster did not grow")
    with signals.polled():
        threading.Thread(target=signals.stop, args=(reason,)).start()
        time.sleep(0.2)
        with pytest.raises(RuntimeError) as raised:
            signals.raise_if_stopped()
    assert raised.value is reason


def test_stop_from_another_thread_raises_the_reason_in_the_main_thread():
    reason = ValueError("a trial needs 8 CPUs")
    threading.Timer(0.1, signals.stop, args=(reason,)).start()
    with pytest.raises(ValueError, match="8 CPUs"):
        wait_for_signal()
    assert signals.received() is None


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_after_the_command_ended_a_sigterm_leaves_its_exit_code_alone():
    """`ignore_until_exit` (the CLI's last step): a SIGTERM during teardown does not turn exit 3 into -15; without
    it the same process dies of the signal (so the check can fail)."""
    body = ("import os, signal, sys, time\nfrom study.cluster import signals\n{call}\n"
            "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(0.2)\nsys.exit(3)\n")
    assert _run_python(body.format(call="signals.ignore_until_exit()")).returncode == 3
    assert _run_python(body.format(call="pass")).returncode == -signal.SIGTERM


@pytest.mark.slow
def test_python_handlers_hold_again_after_ray_shutdown():
    """Ray's shutdown resets SIGTERM to SIG_DFL at the C level while Python still reports its own handler;
    `session.shutdown_if_started` sets them again, so a later SIGTERM reaches the handler instead of killing."""
    code = (
        "import os, signal, sys, time\nfrom study.cluster import session\nsession.init_ray(num_cpus=1)\n"
        "got = []\nsignal.signal(signal.SIGTERM, lambda s, f: got.append(s))\n"
        "session.shutdown_if_started()\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(0.3)\n"
        "print('handled', got)\nsys.exit(0 if got else 1)\n")
    done = _run_python(code)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
