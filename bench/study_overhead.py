"""What Ray Tune and MLflow cost on top of the training itself, measured side by side in one run.

The same N trials (CutMix at p=1 with N values of alpha: identical work in every variant) run as:
  (a) a plain Python loop over `engine.fit()`,
  (b) the study's Ray Tune path (`study.search.tune.run_search`, grid, one trial at a time) with no tracking,
  (c) the same with our MLflow tracking (driver-side `log_batch` on a background thread; SQLite, or a local
      `mlflow server` with --server),
  (d) (c) with `tracking.system_metrics`: MLflow's SystemMetricsMonitor sampling the study run (CPU, memory, disk,
      network; GPU where present) every --system-metrics-interval seconds (10: the pipeline's setting),
and then a random search with ASHA, counting epochs trained against the full budget.

Targets (2 CPUs, one trial at a time, ~30 s trials): (c)/(a) <= 1.15, (c)/(b) <= 1.05 and (d)/(c) <= 1.02. Ray's
start-up is timed separately (it happens once per driver, not per trial).

    python bench/study_overhead.py                  # 4 trials of ~30 s, 2 rounds: about 13 minutes (quiet machine)
    python bench/study_overhead.py --trials 2 --epochs 3 --repeats 1 --asha-trials 4
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
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

LABELS = {"a": "(a) plain loop over fit()", "b": "(b) Ray Tune study, no tracking",
          "c": "(c) Ray Tune study + MLflow", "d": "(d) (c) + system metrics"}
ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 0.1, 0.75, 1.5)


def make_config(trials: int, epochs: int, threads: int, extra: list[str] = ()):
    from study.config.load import load_config

    values = ", ".join(str(a) for a in ALPHAS[:trials])
    return load_config(None, [
        f"train.epochs={epochs}", f"train.num_threads={threads}", "model.arch=resnet20", "cutmix.prob=1.0",
        "search.algorithm=grid", "search.scheduler=none", "search.max_concurrent=1",
        f"search.resources_per_trial.cpu={threads}", "search.space={}",
        f"search.space.cutmix.alpha={{type: choice, values: [{values}]}}", *extra])


def plain_loop(cfg, data) -> tuple[float, int]:
    from study.config.load import replace
    from study.training.engine import fit

    start, epochs = time.perf_counter(), 0
    for alpha in cfg.search.space["cutmix.alpha"].values:
        for _ in fit(replace(cfg, {"cutmix.alpha": alpha}), data):
            epochs += 1
    return time.perf_counter() - start, epochs


def tune_run(cfg, data, out: Path, tracking_uri: str | None, system_metrics_s: float = 0.0):
    """(wall seconds, trial records) of run_search, with or without our MLflow callback, and with system metrics
    sampled on the study run every `system_metrics_s` seconds (0: none)."""
    from study.config.schema import to_dict
    from study.search import tune as search
    from study.search.trial_callback import MlflowTrialCallback
    from study.tracking import store as tracking

    callbacks, monitor = [], None
    start = time.perf_counter()  # set again below: the store's set-up (SQLite schema) is not the study's cost
    if tracking_uri is not None:
        client = tracking.client_for(tracking_uri)
        exp = tracking.get_experiment(client, f"bench-{out.name}")
        parent, _ = tracking.start_run(client, exp, "study", {"cutmix.stage": "study"}, reuse=False)
        callbacks.append(MlflowTrialCallback(tracking_uri, exp, parent, to_dict(cfg)))
        start = time.perf_counter()
        if system_metrics_s:
            monitor = tracking.start_system_metrics(client, parent, system_metrics_s)
    records = search.run_search(cfg, data, out, callbacks=callbacks, resume=False)
    tracking.stop_system_metrics(monitor)
    return time.perf_counter() - start, records


def sample_cost(uri: str, samples: int = 20) -> tuple[float, float]:
    """(wall ms, CPU ms) of one system-metrics sample: what the monitor's thread does every interval (read psutil's
    counters, log them in one batch). CPU time is the calling thread's own, so it does not depend on the load."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from study.tracking import store as tracking

    client = tracking.client_for(uri)
    exp = tracking.get_experiment(client, "bench-sample-cost")
    run_id, _ = tracking.start_run(client, exp, "sample-cost", {"cutmix.stage": "bench"}, reuse=False)
    monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)  # not started: sampled by hand below
    monitor.collect_metrics()  # the first psutil call initialises its counters
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(samples):
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    return (1000 * (time.perf_counter() - wall) / samples, 1000 * (time.thread_time() - cpu) / samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help=f"trials per variant (at most {len(ALPHAS)})")
    parser.add_argument("--epochs", type=int, default=75, help="epochs per trial (75: ~30 s on 2 quiet cores)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of (a), (b), (c); medians compared")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--asha-trials", type=int, default=8)
    parser.add_argument("--server", action="store_true", help="track to a local `mlflow server`, not SQLite")
    parser.add_argument("--system-metrics-interval", type=float, default=10.0,
                        help="seconds between system-metrics samples in (d) (10: what tracking.system_metrics uses)")
    args = parser.parse_args()

    import ray
    import torch

    from study.data.registry import load_data

    torch.set_num_threads(args.threads)
    cfg = make_config(args.trials, args.epochs, args.threads)
    data = load_data(cfg.data)
    work = Path(tempfile.mkdtemp(prefix="bench-study-"))
    t0 = time.perf_counter()
    from study.cluster.session import init_ray

    init_ray(num_cpus=args.threads)  # as the study stage starts it
    ray_start = time.perf_counter() - t0
    server = None
    try:
        if args.server:
            from tests.helpers.tracking_server import start_mlflow_server

            server = start_mlflow_server(work / "server")
            uri = server.uri
        else:
            uri = f"sqlite:///{work / 'mlflow.db'}"
        print(f"{args.trials} trials x {args.epochs} epochs of resnet20 on digits, {args.threads} threads; "
              f"tracking {uri}", flush=True)
        # Rounds interleave the variants (rotating their order) so drift in machine speed hits all three alike;
        # medians over rounds are compared, and every round's ratios are printed to show the spread.
        runners = {
            "a": lambda r: plain_loop(cfg, data)[0],
            "b": lambda r: tune_run(cfg, data, work / f"tune-only-{r}", None)[0],
            "c": lambda r: tune_run(cfg, data, work / f"tracked-{r}", uri)[0],
            "d": lambda r: tune_run(cfg, data, work / f"sysmetrics-{r}", uri, args.system_metrics_interval)[0],
        }
        walls: dict[str, list[float]] = {k: [] for k in runners}
        for r in range(args.repeats):
            order = list(runners)[r % len(runners):] + list(runners)[:r % len(runners)]
            for key in order:
                walls[key].append(runners[key](r))
                print(f"round {r + 1}/{args.repeats} {LABELS[key]}: {walls[key][-1]:.1f} s", flush=True)

        sample_wall_ms, sample_cpu_ms = sample_cost(uri)
        asha_cfg = make_config(args.trials, args.epochs, args.threads, [
            "search.algorithm=random", f"search.num_samples={args.asha_trials}", "search.scheduler=asha",
            "search.grace_period=2", "search.reduction_factor=2", "search.space={}",
            "search.space.train.lr={type: loguniform, low: 0.0003, high: 0.5}"])
        asha_wall, records = tune_run(asha_cfg, data, work / "asha", None)
        trained = sum(r.epochs for r in records)
        full = len(records) * args.epochs
    finally:
        if server is not None:
            server.stop()  # the whole process group: the launcher and its uvicorn worker
        ray.shutdown()

    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\nRay start-up (once per driver): {ray_start:.1f} s; {args.repeats} interleaved rounds, medians")
    print(f"{'variant':<36} {'wall s':>8} {'per trial s':>12} {'vs (a)':>8}   every round (s)")
    for key, wall in med.items():
        rounds = " ".join(f"{w:.1f}" for w in walls[key])
        print(f"{LABELS[key]:<36} {wall:8.1f} {wall / args.trials:12.1f} {wall / med['a']:8.3f}   {rounds}")
    per_round = lambda x, y: " ".join(f"{p / q:.3f}" for p, q in zip(walls[x], walls[y]))  # noqa: E731
    print(f"\nstudy / plain loop: {med['c'] / med['a']:.3f} (target <= 1.15; rounds {per_round('c', 'a')})")
    print(f"MLflow tracking overhead: {med['c'] / med['b']:.3f} (target <= 1.05; rounds {per_round('c', 'b')})")
    print(f"system metrics overhead (every {args.system_metrics_interval:g} s): {med['d'] / med['c']:.3f} "
          f"(target <= 1.02; rounds {per_round('d', 'c')})")
    print(f"one system-metrics sample: {sample_wall_ms:.1f} ms wall, {sample_cpu_ms:.1f} ms CPU of the sampling thread "
          f"({100 * sample_cpu_ms / (1000 * args.system_metrics_interval):.3f}% of one core at one sample every "
          f"{args.system_metrics_interval:g} s)")
    print(f"ASHA: {len(records)} trials trained {trained} of {full} epochs ({100 * trained / full:.0f}% of the full "
          f"budget, {asha_wall:.1f} s); epochs per trial {[r.epochs for r in records]}")


if __name__ == "__main__":
    main()
