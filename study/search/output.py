"""Tune's console output, reduced to what the study does not already say.

What Ray 2.60 prints on its own (read from `ray/tune/tune.py`, `ray/tune/experimental/output.py`,
`ray/tune/progress_reporter.py`, `ray/tune/utils/callback.py`), and how each is switched off here:

- The "Configuration for experiment" box, "View detailed results here: ..." and the TensorBoard hint come from the
  new output engine's `TuneTerminalReporter.experiment_started`, and its final trial-status table from
  `print_heartbeat(force=True)`, whatever `RunConfig(verbose=0)` says. That engine cannot be quietened from outside:
  Tune always appends its own reporter to the run's callbacks, gives a start time (`setup(start_time=...)`) only to
  the first one, and the others crash on a trial error (`_get_time_str(None, ...)`; a `QuietReporter` passed first
  did exactly that in tests/pipelines/test_faults.py). So the study runs Tune's *legacy* output engine
  (`RAY_AIR_NEW_OUTPUT=0`, as Ray's own `rllib/examples/ray_tune/custom_progress_reporter.py` does), which prints
  no banner and, at `verbose=0`, no status table (`_report_progress` only runs at verbosity >= 1).
- The legacy engine's per-trial printer, `TrialProgressCallback`, prints "Trial ... completed. Last result: ..." at
  any verbosity; Tune adds one only when the run has none, so `TrialErrors` (a subclass that prints only errors)
  takes its place. The study's own `ProgressCallback` prints a line per epoch and per finished trial.
- The TensorBoard hint also needs a `TBXLoggerCallback`, which Tune adds unless TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1:
  `quiet_callbacks` passes the CSV and JSON loggers itself (Tune then adds no second ones; `result.json` and
  `progress.csv` stay in each trial directory) and sets the variable, so no TensorBoard event files are written.
- Kept: a trial's error, with Tune's error file, on stderr (`TrialErrors`), and everything Ray logs at WARNING or
  above (the `ray.tune` loggers: failed trials, resource deadlocks, slow syncs, "Trials did not complete").
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.progress_reporter import TrialProgressCallback


def quiet_tune() -> None:
    """Select the legacy output engine and no automatic TensorBoard logger (read by `tune.run` at each call, so
    this holds for a fresh Tuner and a restored one alike)."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


class TrialErrors(TrialProgressCallback):
    """Tune's per-trial printer reduced to trial errors, on stderr: its presence keeps Tune from adding the chatty
    default one (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(metric=None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        pass

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pass

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"Trial {trial} errored; error file: {trial.error_file}", file=sys.stderr, flush=True)


def quiet_callbacks() -> list[Any]:
    """Callbacks to put first in `RunConfig(callbacks=...)`: the error printer and Tune's CSV/JSON loggers, so that
    Tune adds neither its progress printer nor a TensorBoard logger."""
    quiet_tune()
    return [TrialErrors(), CSVLoggerCallback(), JsonLoggerCallback()]
