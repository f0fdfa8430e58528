"""Ray outside Tune: the session (`session`: start or join a cluster) and Ray tasks for retrain, evaluate and
detect (`tasks`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.cluster.session import (  # noqa: F401
    has_dashboard, init_ray, started_locally)
from study.cluster.tasks import (  # noqa: F401
    MAX_RETRIES, put, run_tasks)
