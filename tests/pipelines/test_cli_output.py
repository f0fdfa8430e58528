"""The CLI's own output flags: --version, --quiet (only the final summary and errors), --ray-dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from importlib.metadata import version

import pytest

from tests.helpers.cli import REPO, TINY, assert_one_line_error, cli_env, run_main, set_args
from tests.helpers.pipeline import CONFIG

# Tune's own start banner, result-path line, TensorBoard hint, status tables and per-trial result dumps
# (ray/tune/experimental/output.py, ray/tune/progress_reporter.py): silenced by study/search/output.py.
TUNE_NOISE = ("Configuration for experiment", "View detailed results here", "tensorboard --logdir",
              "Trial status:", "Current time:", "Last result:", "Result for ")


def test_version_prints_ours_and_the_pinned_libraries():
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "--version"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"cutmix-study {version('cutmix-study')}"
    pins = dict(re.findall(r"^([a-z]+)==(\S+)", (REPO / "constraints.txt").read_text(), re.M))
    for name, line in zip(("ray", "optuna", "mlflow", "torch"), lines[1:], strict=True):
        assert line.startswith(f"{name} {version(name)}"), line
        assert ("constraints.txt pins" in line) == (version(name).split("+")[0] != pins[name]), line


def test_quiet_keeps_the_final_summary_and_drops_progress(tmp_path, capsys):
    code, out, err = run_main(capsys, "train", *set_args(TINY), "--output", str(tmp_path / "loud"))
    assert code == 0 and "train [2/2]" in err and "best epoch" in out
    code, quiet_out, quiet_err = run_main(capsys, "train", *set_args(TINY), "--quiet", "--output",
                                          str(tmp_path / "quiet"))
    assert code == 0 and quiet_err == "" and quiet_out.splitlines()[0].startswith("best epoch")
    # The next command without --quiet prints its progress again (the flag lives in the environment).
    code, _, err = run_main(capsys, "train", *set_args(TINY), "--output", str(tmp_path / "again"))
    assert code == 0 and "train [2/2]" in err


def test_quiet_still_reports_errors(tmp_path, capsys):
    code, _, err = run_main(capsys, "train", "--quiet", "--set", "train.epochs=0", "--output", str(tmp_path))
    assert_one_line_error(code, err, "train.epochs=0")


@pytest.mark.slow
def test_ray_dashboard_starts_local_ray_with_its_dashboard_and_prints_its_url(tmp_path, capsys):
    import ray

    ray.shutdown()  # a cluster of an earlier test in this process would be reused as it is
    try:
        code, _, err = run_main(capsys, "train", *set_args(TINY), "--ray-dashboard", "--output", str(tmp_path))
        assert code == 0, err
        match = re.search(r"^Ray dashboard: (http://127\.0\.0\.1:\d+)$", err, re.M)
        assert match, err
        with urllib.request.urlopen(match.group(1) + "/api/version", timeout=30) as resp:  # noqa: S310 - local
            assert json.loads(resp.read())["ray_version"] == ray.__version__
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_study_prints_our_lines_and_none_of_tunes(shared_pipeline, tmp_path):
    """In a fresh process with the user's environment (Tune's engine and loggers are chosen from it at each run):
    the session's shared `run` (tests/helpers/pipeline.py), then `study --resume` of a copy of its output in another
    fresh process."""
    p = shared_pipeline
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "out"
    shutil.copytree(p.out, out)  # the shared output is only read
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "study", "--output", str(out), "--resume",
                           *set_args(CONFIG)], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stdout, stderr in ((p.stdout, p.stderr), (proc.stdout, proc.stderr)):
        assert "best val/top1_err" in stdout
        for noise in TUNE_NOISE:
            assert noise not in stdout and noise not in stderr, noise
    assert not list((p.out / "tune").rglob("events.out.tfevents*"))  # no TensorBoard logger either
