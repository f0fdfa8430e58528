"""Ray outside Tune: the session (`session`: start or join a cluster) and Ray tasks for retrain, evaluate and
detect (`tasks`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.cluster.session import (  # noqa: F401
    started_locally, init_ray, has_dashboard)
from study.cluster.tasks import (  # noqa: F401
    MAX_RETRIES, run_tasks, put)
