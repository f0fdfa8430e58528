"""Ray outside Tune and the command's life on a cluster: the session (`session`: start or join a cluster), Ray
tasks for retrain, evaluate and detect (`tasks`), placement checks (`capacity`), the output directory's lock
(`lock`) and clean signals (`signals`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.cluster.session import (  # noqa: F401
    started_locally, init_ray, shutdown_if_started, has_dashboard, dashboard_url)
from study.cluster.tasks import (  # noqa: F401
    MAX_RETRIES, DEFAULT_PLACEMENT_TIMEOUT_S, run_tasks, run_seed_tasks, put)
from study.cluster.capacity import (  # noqa: F401
    REPORT_S, POLL_S, PlacementError, Demand, trial_demand, task_demand, shortfall, alive_nodes, fixed_size,
    check_placeable, watch)
from study.cluster.lock import (  # noqa: F401
    LOCK_NAME, HEARTBEAT_S, STALE_AFTER_S, LockError, OutputLock, begin_session, hold, end_session)
from study.cluster.signals import (  # noqa: F401
    Stopped, install, graceful, polled, reinstall, uninstall, received, stop, raise_if_stopped, reason)
