"""Command-line helpers shared by the tests: the tiny CPU overrides, the CLI in-process, and the bad-input
contract (exit 2, one `error:` line, no traceback)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"

# Overrides that make any stage a seconds-long CPU job: digits at 8x8, the small CNN.
TINY = [
    "data.name=digits", "detect.data=synthetic", "train.test_every=1",  # plain 8x8 digits, shapes: seconds
    "data.image_size=8", "data.pad=1", "model.arch=cnn", "model.width=8", "train.epochs=2", "train.batch_size=64",
    "train.lr=0.05", "train.num_threads=1", "detect.image_size=64", "detect.num_train=8", "detect.num_val=4",
    "detect.epochs=1", "detect.batch_size=4", "retrain.seeds=2",
    "search.race_top_k=0",  # no race after a tiny study (tests/pipelines/test_study_stage.py races one end to end)
    # α and p only (the default also searches the architecture; a test adds the dimensions it studies)
    "search.space={cutmix.alpha: {type: loguniform, low: 0.1, high: 4.0}, cutmix.prob: {type: uniform, low: 0.0, "
    "high: 1.0}}",
]



def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m pipelines.cli ...` subprocess: this process's, with the repository importable
    and without an inherited MLFLOW_TRACKING_URI (a command tracks to its own <out>/mlflow.db unless `extra` or its
    flags name a store); `extra` adds or replaces variables."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def set_args(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """`--set` flags for a list of overrides: ["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [arg for item in overrides for arg in ("--set", item)]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    from pipelines.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err

def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """The CLI's bad-input contract: exit 2 and a single `error: ...` line holding every needle, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
