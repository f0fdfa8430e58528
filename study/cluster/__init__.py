"""Ray outside Tune and the command's life on a cluster: the session (`session`: start or join a cluster), Ray
tasks for retrain, evaluate and detect (`tasks`), placement checks (`capacity`), the output directory's lock
(`lock`) and clean signals (`signals`).

Each name is re-exported from its leaf module and imported on first use (study.lazy, PEP 562), so
importing one leaf module does not import its siblings; inside `study/`, import the leaf module itself.
"""

from study.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "session": ("started_locally", "init_ray", "shutdown_if_started", "has_dashboard", "dashboard_url"),
    "tasks": ("MAX_RETRIES", "DEFAULT_PLACEMENT_TIMEOUT_S", "run_tasks", "run_seed_tasks", "put"),
    "capacity": ("REPORT_S", "POLL_S", "PlacementError", "Demand", "trial_demand", "task_demand", "shortfall",
        "alive_nodes", "fixed_size", "check_placeable", "watch"),
    "lock": ("LOCK_NAME", "HEARTBEAT_S", "STALE_AFTER_S", "LockError", "OutputLock", "begin_session", "hold",
        "end_session"),
    "signals": ("Stopped", "install", "graceful", "polled", "reinstall", "uninstall", "received", "stop",
        "raise_if_stopped", "reason"),
})
