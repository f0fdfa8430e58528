"""Training work placed on the cluster: each retrain seed, evaluated model and detector is a Ray task with its own
resources, so a job's driver (on a KubeRay head without a GPU) only orchestrates.

Ray's documented pattern for K independent training runs from a GPU-less driver (REFERENCES.md section 6):
`@ray.remote(num_gpus=...)` tasks. A task whose worker process dies (OOM, a node lost, SIGKILL) is retried by Ray
(`max_retries`); our task functions resume from the run directory's last checkpoint, so a retry continues where
the dead attempt stopped. An exception raised by our own code is not retried: it is re-raised in the driver as
its own type, so bad input still exits 2. Tasks run concurrently up to what the cluster holds; on a laptop the
same code runs on the local Ray the study started. Outputs go to the run directories given to the tasks (a shared
path on a multi-node cluster).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from study.cluster.capacity import check_placeable, task_demand, watch
from study.cluster.session import init_ray  # noqa: F401 - the one way this package starts or joins Ray
from study.cluster.signals import polled, raise_if_stopped
from study.config.schema import ResourcesConfig

MAX_RETRIES = 3  # retries of a task whose worker process died (Ray's default for tasks)
DEFAULT_PLACEMENT_TIMEOUT_S = 900.0  # as search.placement_timeout_s
WAIT_S = 1.0  # how often the driver comes back from ray.wait to run pending signal handlers


def run_tasks(fn: Callable[..., Any], jobs: Iterable[tuple[Any, dict[str, Any]]], resources: ResourcesConfig, *,
              what: str, key: str, on_done: Callable[[Any, Any], None] | None = None, max_retries: int = MAX_RETRIES,
              placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S) -> dict[Any, Any]:
    """Run `fn(**kwargs)` for every (key, kwargs) job as a Ray task with `resources` (CPU, GPU per task), all
    submitted at once; `on_done(key, result)` is called in the driver as each one finishes (in finishing order).
    Returns {key: result}. The first task that raises stops the rest and its exception is re-raised here.

    A task the cluster can never place is refused first (study.cluster.capacity: PlacementError, naming `what`, "a
    retrain task", and the config field `key` that sets `resources`, "retrain.resources": required, so that no stage
    is told to lower another stage's field); on a joined cluster the wait for it is reported and bounded by
    `placement_timeout_s`. A signal (study.cluster.signals) cancels the running tasks: each keeps the checkpoint of
    its last finished epoch."""
    import ray

    demand = task_demand(resources, what, key)
    check_placeable(demand)
    remote = ray.remote(_call).options(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=max_retries,
                                       retry_exceptions=False)
    threads = max(1, int(resources.cpu))
    pending = {remote.remote(fn, threads, **kwargs): job for job, kwargs in jobs}
    results: dict[Any, Any] = {}
    try:
        with watch(demand, placement_timeout_s), polled():
            while pending:
                # A bounded wait, then the stop check: a blocked ray.wait never ran the handler of a stop requested by
                # the placement watch (it waited for ever behind a task no node could place), and a handler that
                # raised inside it came out as a bare KeyboardInterrupt or a SystemError (study.cluster.signals).
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                raise_if_stopped()
                if not done:
                    continue
                job = pending.pop(done[0])
                try:
                    results[job] = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:
                    raise _cause(exc) from None
                if on_done is not None:
                    on_done(job, results[job])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return results


def _cause(exc: Any) -> BaseException:
    """The exception a task raised, as its own type and message: a WriteError or a bad-input error stays one line for
    the CLI (RayTaskError.as_instanceof_cause would give it a str() of the whole remote traceback); the remote
    traceback is kept as a note, which Python prints under a bug's traceback."""
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, Exception):
        return exc.as_instanceof_cause()
    cause.add_note(f"raised in a Ray task:\n{exc}")
    return cause


def run_seed_tasks(fn: Callable[..., Any], jobs: list[tuple[Any, dict[str, Any]]], data: Any,
                   resources: ResourcesConfig, **kwargs: Any) -> dict[Any, Any]:
    """`run_tasks` for training runs that share one dataset (retrain seeds, budget runs, race runs): Ray started or
    joined, `data` stored once in the object store, every job given its reference as `data`; `kwargs` go to
    run_tasks (what, key, on_done, placement_timeout_s)."""
    init_ray()
    shared = put(data)  # one copy in the object store for every task
    return run_tasks(fn, [(key, {**kw, "data": shared}) for key, kw in jobs], resources, **kwargs)


def _call(fn: Callable[..., Any], threads: int, **kwargs: Any) -> Any:
    """In the task's worker: torch threads = the task's CPUs, then the work, with when and where it ran."""
    import torch

    torch.set_num_threads(threads)
    start = time.time()
    out = fn(**kwargs)
    timing = {"started": start, "ended": time.time(), "pid": os.getpid()}
    return {**out, "task": timing} if isinstance(out, dict) else (out, timing)


def put(value: Any) -> Any:
    """Store a large object (a dataset) once in Ray's object store; tasks given the reference read it zero-copy."""
    import ray

    return ray.put(value)
