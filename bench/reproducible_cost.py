"""What a reproducible study costs: the same concurrent TPE study with and without search.reproducible.

`search.reproducible: true` (study.search.optuna_search.StoredOptunaSearch with lag = max_concurrent) asks trial n
only once trials 0 .. n-lag-1 have finished, and shows Optuna exactly those; without it a freed slot is refilled at
once, but TPE's next suggestion then depends on which trial finished first. The lag waits only for a straggler
(a trial more than `lag` places behind still running). Deterministic batches (BatchLimiter, the first design)
wait at every batch's end; per run the script also prints the slot time batches of that run's trials would idle.

Both variants run the study stage (real local Ray, SQLite MLflow and Optuna storage), interleaved (a, b, a, b, ...)
so drifting load from other processes hits both alike; printed: wall seconds per run, medians, and their ratio,
and per run the slot time that batches of its own trials would leave idle (the barrier's cost, free of the
run-to-run load noise that dominates the ratio on a shared machine).

    python bench/reproducible_cost.py                          # the default config's study, 8 trials x 12 epochs
    python bench/reproducible_cost.py --tiny --repeats 2       # 8x8 digits, seconds per trial
    python bench/reproducible_cost.py --tiny --set 'search.space.model.arch={type: choice, values: [cnn, resnet20]}'
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TINY = ["data.name=digits", "data.image_size=8", "data.pad=1", "model.arch=cnn", "model.width=8", "train.epochs=4",
        "train.batch_size=64", "train.num_threads=1", "train.test_every=4"]


def batch_idle(durations: list[float], batch: int) -> tuple[float, float]:
    """(idle slot-seconds, idle fraction of the slot time) if trials of these durations, in trial order, ran in
    batches of `batch`: each slot waits for the slowest trial of its batch. Computed within one run, so the load
    of other processes (which makes two runs differ by more than the barrier costs) cancels out."""
    idle = sum(max(group) - d for i in range(0, len(durations), batch)
               for group in [durations[i:i + batch]] for d in group)
    return idle, idle / (sum(durations) + idle) if durations else 0.0


def one_run(overrides: list[str], reproducible: bool, root: Path) -> tuple[float, list[float]]:
    from pipelines.study_stage import run as run_study
    from study.config.load import load_config
    from study.tracking.store import Tracker

    cfg = load_config(None, [*overrides, f"search.reproducible={str(reproducible).lower()}"])
    out = Path(tempfile.mkdtemp(dir=root))
    start = time.perf_counter()
    result = run_study(cfg, out / "out", Tracker(f"sqlite:///{out / 'mlflow.db'}", out / "out"))
    return time.perf_counter() - start, [float(w) for w in result.frame["wall_s"]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="8x8 digits, a 4-epoch tiny CNN (seconds per trial)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="more config overrides")
    args = ap.parse_args(argv)
    import ray

    ray.init(address="local", num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    overrides = [*(TINY if args.tiny else []), "search.scheduler=none", "search.algorithm=tpe",
                 f"search.num_samples={args.trials}", f"search.max_concurrent={args.concurrent}", *args.set]
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.repeats):
            for reproducible in (True, False):
                t, durations = one_run(overrides, reproducible, Path(root))
                times[reproducible].append(t)
                idle, frac = batch_idle(durations, args.concurrent)
                print(f"round {r + 1}: reproducible={reproducible}: {t:.1f} s; trials {sum(durations):.0f} slot-s, "
                      f"batches of {args.concurrent} would idle {idle:.0f} slot-s ({100 * frac:.1f} %)", flush=True)
    ray.shutdown()
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"\n{args.trials} trials, {args.concurrent} at a time, {args.repeats} round(s): median wall "
          f"reproducible {on:.1f} s, free-running {off:.1f} s, ratio {on / off:.3f} ({(on - off):+.1f} s)")


if __name__ == "__main__":
    main()
