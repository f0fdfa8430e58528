"""Work the cluster cannot place fails loudly instead of waiting for ever.

A trial (or a retrain/evaluate/detect task) that asks for more than the cluster has is accepted by Ray and waits:
Tune keeps it PENDING, a task stays queued, and the command hangs with no epoch and no error (2 CPUs here and
`train.workers=2`: each trial needs 2 workers x 1 CPU + 0.5 for the trial actor). So before the first trial or
task:

- on a cluster of fixed size (the local Ray this command started, or any Ray joined without `RAY_ADDRESS`), a demand
  that can never be placed is refused at once: `check_placeable` raises PlacementError (exit 2, one line);
- on a joined cluster (`RAY_ADDRESS`: a Ray job, KubeRay), which an autoscaler may grow, `watch` prints what is
  waiting and what the cluster has every `REPORT_S` seconds while the demand does not fit, and once it has not fit
  for `search.placement_timeout_s` stops the command (study.cluster.signals.stop) with the same line.

A demand is a list of bundles (one per process: the trial actor, each Ray Train worker, a task); it can be placed
when every bundle fits on some alive node and their sum fits the cluster (Ray Train's PACK placement is soft, so
the workers may spread over nodes).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from study.cluster.signals import stop
from study.config.schema import PipelineConfig, ResourcesConfig
from study.training.distributed import TRIAL_DRIVER_CPU

REPORT_S = 30.0  # a joined cluster that cannot place the demand: one line this often
POLL_S = 2.0


class PlacementError(ValueError):
    """Work that the cluster cannot place; one-line message (exit 2)."""


@dataclass(frozen=True)
class Demand:
    """What one unit of work (a trial, a task) needs at once. `bundles`: resources per process ({"CPU": 1.0});
    `what`: "a trial" / "a retrain task"; `why`: {resource: how the amount comes about}; `knobs`: what to lower."""

    bundles: tuple[Mapping[str, float], ...]
    what: str
    why: Mapping[str, str]
    knobs: str

    def total(self, resource: str) -> float:
        return sum(float(b.get(resource, 0.0)) for b in self.bundles)


def _bundle(res: ResourcesConfig) -> dict[str, float]:
    return {"CPU": float(res.cpu), **({"GPU": float(res.gpu)} if res.gpu > 0 else {})}


def trial_demand(cfg: PipelineConfig) -> Demand:
    """A study trial: its own process with `search.resources_per_trial`, or with `train.workers: N > 1` a trial actor
    of half a CPU plus N Ray Train workers with `search.resources_per_trial` each."""
    res, w = cfg.search.resources_per_trial, cfg.train.workers
    knobs = "lower train.workers or search.resources_per_trial" if w > 1 else "lower search.resources_per_trial"
    if w == 1:
        return Demand((_bundle(res),), "a trial", {"CPU": f"search.resources_per_trial.cpu={res.cpu:g}",
                                                   "GPU": f"search.resources_per_trial.gpu={res.gpu:g}"}, knobs)
    bundles = (*(_bundle(res) for _ in range(w)), {"CPU": TRIAL_DRIVER_CPU})
    why = {"CPU": f"train.workers={w} × {res.cpu:g} CPU + {TRIAL_DRIVER_CPU:g} for the trial",
           "GPU": f"train.workers={w} × {res.gpu:g} GPU"}
    return Demand(bundles, "a trial", why, knobs)


def task_demand(res: ResourcesConfig, what: str, key: str) -> Demand:
    """A Ray task with `res` (CPUs, GPUs per task); `key` is the config field that sets it (retrain.resources)."""
    return Demand((_bundle(res),), what, {"CPU": f"{key}.cpu={res.cpu:g}", "GPU": f"{key}.gpu={res.gpu:g}"},
                  f"lower {key}")


def _plural(n: float, unit: str) -> str:
    return f"{n:g} {unit}" + ("" if n == 1 else "s")


def shortfall(demand: Demand, nodes: list[Mapping[str, float]], where: str) -> str | None:
    """Why `demand` cannot be placed on alive `nodes` (their total resources), as the one error line; None if it
    can. `where` names the cluster ("the local Ray", "the cluster")."""
    for resource, unit in (("CPU", "CPU"), ("GPU", "GPU")):
        need = demand.total(resource)
        if need <= 0:
            continue
        have = sum(float(n.get(resource, 0.0)) for n in nodes)
        if need > have + 1e-9:
            return (f"{demand.what} needs {_plural(need, unit)} ({demand.why[resource]}); {where} has {have:g} "
                    f"({demand.knobs})")
        biggest = max((float(n.get(resource, 0.0)) for n in nodes), default=0.0)
        for bundle in demand.bundles:
            if float(bundle.get(resource, 0.0)) > biggest + 1e-9:
                return (f"{demand.what} needs {_plural(float(bundle[resource]), unit)} in one process "
                        f"({demand.why[resource]}); the largest node of {where} has {biggest:g} ({demand.knobs})")
    return None


def alive_nodes() -> list[Mapping[str, float]]:
    import ray  # imported late (start-up time)

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def fixed_size() -> bool:
    """Whether the connected cluster cannot grow: not joined through RAY_ADDRESS (a Ray job, KubeRay)."""
    return not os.environ.get("RAY_ADDRESS")


def check_placeable(demand: Demand) -> None:
    """On a cluster of fixed size, PlacementError now unless `demand` can be placed (Ray must be initialised)."""
    if not fixed_size():
        return
    line = shortfall(demand, alive_nodes(), "the local Ray")
    if line is not None:
        raise PlacementError(line)


@contextlib.contextmanager
def watch(demand: Demand, timeout_s: float, *, stream=None) -> Iterator[None]:
    """While the block runs on a joined cluster: report a demand the cluster cannot place every REPORT_S seconds,
    and after `timeout_s` seconds of it stop the command with PlacementError. A no-op on a fixed-size cluster
    (`check_placeable` has refused what cannot fit there)."""
    if fixed_size():
        yield
        return
    stream = stream or sys.stderr
    done = threading.Event()

    def loop() -> None:
        since = reported = None
        while not done.wait(POLL_S):
            try:
                nodes = alive_nodes()
            except Exception:  # noqa: BLE001 - the GCS unreachable for a moment: judge at the next poll
                continue
            line = shortfall(demand, nodes, "the cluster")
            now = time.monotonic()
            if line is None:
                since = reported = None
                continue
            since = since or now
            if reported is None or now - reported >= REPORT_S:
                reported = now
                print(f"waiting for resources ({now - since:.0f} s of search.placement_timeout_s={timeout_s:g}; an "
                      f"autoscaler may add nodes): {line}", file=stream, flush=True)
            if now - since >= timeout_s:
                stop(PlacementError(f"{line}; the cluster did not grow within search.placement_timeout_s="
                                            f"{timeout_s:g} s"))
                return

    thread = threading.Thread(target=loop, name="placement-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
