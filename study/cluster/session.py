"""The Ray session of a cutmix-study command: join the cluster of a Ray job / KubeRay, or start a local one.

No Tune import here: the Ray-task stages (retrain, evaluate, detect) start Ray without loading Tune.
"""

from __future__ import annotations

import os

from study.cluster.signals import current_handlers, reinstall, restore_handlers

_STARTED = {"here": False}  # whether init_ray started the local cluster of this process (shut down on a signal)


def started_locally() -> bool:
    """Whether this process is connected to a local cluster it started (not a joined one: RAY_ADDRESS unset).

    `init_ray` is the only place that starts Ray, and it starts it only when RAY_ADDRESS is unset, so the environment
    and `ray.is_initialized()` say it without a module-global flag."""
    import ray  # late: importing ray costs ~1 s, and the CLI's bad-input paths never need it

    return ray.is_initialized() and not os.environ.get("RAY_ADDRESS")


def init_ray(num_cpus: int | None = None, *, dashboard: bool = False) -> None:
    """Join the cluster inside a Ray job or KubeRay (RAY_ADDRESS set), else start a local one on 127.0.0.1.

    `dashboard` starts the local cluster with Ray's dashboard (127.0.0.1; ~11 more processes, ~1 GB here), which
    serves the state API. Data-parallel trials need it: when Tune stops one (ASHA, or at max_t) it kills the trial
    actor, and Ray Train's placement-group cleaner, which frees the dead run's workers' CPUs/GPUs, asks the state
    API whether the run's controller is alive; without it the resources stay reserved and the next trial waits for
    ever. A local cluster this function started without it is restarted with it (before any trial)."""
    import ray  # late: start-up time

    # Tune warns on every forced experiment snapshot (each trial checkpoint); our progress lines say enough.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        if not (dashboard and started_locally() and not has_dashboard()):
            return
        ray.shutdown()
    if os.environ.get("RAY_ADDRESS"):
        # passing num_cpus to an existing cluster raises. log_to_driver: the workers' stdout/stderr (trials, Ray
        # tasks) reach the driver's output, which is what `ray job logs` shows; a local run keeps them out of the
        # terminal (our progress lines say what happens).
        ray.init(log_to_driver=True)
    else:
        # address="local": a new cluster of our own. Without it ray.init() joins the machine's latest `ray start`
        # cluster (/tmp/ray/ray_current_cluster), which may be another user's or already gone.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 log_to_driver=False, _node_ip_address="127.0.0.1", configure_logging=True, logging_level="WARNING")
        _STARTED["here"] = True
    reinstall()  # ray.init replaced the SIGTERM handler with one that exits without cleaning up


def shutdown_if_started() -> None:
    """Stop the local Ray that `init_ray` started in this process (a joined cluster is left alone)."""
    if not _STARTED["here"]:
        return
    import ray  # late: start-up time

    _STARTED["here"] = False
    if ray.is_initialized():
        handlers = current_handlers()
        ray.shutdown()
        # ray.shutdown puts back, at the C level, the SIGTERM action the core worker found at ray.init (SIG_DFL)
        # while Python still reports its own handler: a SIGTERM after it would kill the process with -15 (measured
        # with a handler set after ray.init). Setting Python's handlers again makes them true.
        restore_handlers(handlers)


def has_dashboard() -> bool:
    """Whether the connected Ray cluster serves its dashboard (and with it the state API)."""
    # Private API, on purpose: Ray 2.60 has no public getter of a connected cluster's dashboard URL
    # (ray.runtime_context has none; only the RayContext that ray.init returns carries it, and a joined or
    # test-started cluster was not initialised here).
    import ray._private.worker  # late: start-up time

    try:
        return bool(ray._private.worker.get_dashboard_url())
    except Exception:  # noqa: BLE001 - unknown: assume the cluster has one (KubeRay heads do)
        return True


def dashboard_url() -> str | None:
    """`http://host:port` of the connected cluster's dashboard, or None when it serves none."""
    import ray._private.worker

    try:
        url = ray._private.worker.get_dashboard_url()
    except Exception:  # noqa: BLE001 - not connected, or a client without the address
        return None
    return None if not url else (url if "://" in url else f"http://{url}")
