"""The stored Optuna study as a user opens it: `optuna-dashboard sqlite:///<out>/optuna.db` (the README's line) on a
tiny ASHA study (the session's shared one, tests/helpers/pipeline.py), rendered in a real headless Chromium, every
trial on the study's page with its state, the pruned ones included, and a finished trial's per-epoch intermediate
values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.helpers.chromium import chromium_path, drive
from tests.helpers.pipeline import STUDY_NAME
from tests.helpers.processes import kill_tree
from tests.helpers.tracking_server import free_port, wait_http


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="needs the chromium binary")
def test_optuna_dashboard_renders_every_trial_of_the_stored_study(shared_study, tmp_path):
    done = shared_study
    assert done.returncode == 0, done.stderr[-3000:]
    url = f"sqlite:///{(done.out / 'optuna.db').resolve()}"
    assert f"optuna-dashboard {url}" in done.stdout  # the report prints the line to open it (under --quiet too)
    trials = optuna.load_study(study_name=STUDY_NAME, storage=url).trials
    assert len(trials) == 5
    states = {t.number: {"COMPLETE": "Complete", "PRUNED": "Pruned"}[t.state.name] for t in trials}
    assert "Pruned" in states.values()  # ASHA stopped at least one at a rung, and Optuna knows it
    first = trials[0]

    port = free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", 60, proc)

        async def script(page):
            ready = f"document.body && document.body.innerText.includes('Trial {len(trials) - 1}')"
            if not await page.wait_for(ready, 90):
                await page.screenshot(tmp_path / "dashboard.png")
                return None
            return await page.js("document.body.innerText")

        text = drive(f"http://127.0.0.1:{port}/dashboard/studies/1/trials", tmp_path / "profile", script)
    finally:
        kill_tree(proc.pid)
    assert text is not None, f"the study page never listed its trials (screenshot: {tmp_path / 'dashboard.png'})"
    assert f"{len(trials)} Trials" in text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for number, state in states.items():  # the list: "Trial N" followed by its state
        i = lines.index(f"Trial {number}")
        assert lines[i + 1] == state, (number, lines[i:i + 3])
    # The selected (first) trial's detail shows its per-epoch values, the smoothed metric ASHA judged.
    assert "Intermediate Values" in text
    for step, value in first.intermediate_values.items():
        assert f"{step} {_js_number(value)}" in text, (step, value)


def _js_number(value: float) -> str:
    """How the dashboard's JavaScript prints a float: shortest round-trip like Python's repr, but an integral
    value without the ".0" (a tiny study's val error can be exactly 10 %; CI saw "4 10" against "4 10.0")."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
