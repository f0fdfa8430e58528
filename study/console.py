"""What the command line tells the library about this process, through the environment (so that Ray workers, jobs
and in-process callers see the same): whether progress lines are wanted (`--quiet`), and which subcommand runs
(MLflow's `mlflow.project.entryPoint` tag, study.tracking.context). A leaf: imports nothing of the project.
"""

from __future__ import annotations

import os
import sys

QUIET_ENV = "CUTMIX_STUDY_QUIET"
ENTRY_POINT_ENV = "CUTMIX_STUDY_ENTRY_POINT"


def quiet() -> bool:
    """Whether progress lines are suppressed (`--quiet`: only the final summary and errors)."""
    return os.environ.get(QUIET_ENV, "") == "1"


def progress(text: str) -> None:
    """One progress line on stderr (stdout holds results), unless quiet."""
    if not quiet():
        print(text, file=sys.stderr, flush=True)
