"""MLflow: the tracking policy (`store`: experiments, the pipeline's tree of runs, reconciliation), the batching
background logger (`async_logger`), source tags and datasets (`context`), and MLflow models (`models`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.tracking.async_logger import (  # noqa: F401
    AsyncLogger, TrackingUnavailable, unreachable)
from study.tracking.context import (  # noqa: F401
    dataset_specs,
    log_datasets,
    source_tags,
)
from study.tracking.models import (  # noqa: F401
    CHAMPION,
    RegisteredModel,
    load_torch_model,
    log_torch_model,
)
from study.tracking.store import (  # noqa: F401
    ARTIFACTS_DIR, EXPERIMENT_TAGS, MAX_PARAM_LEN, MAX_PARAMS_PER_BATCH, VIEW_KEY, VIEW_TAG, StageRun, Tracker,
    TrackingError, check_tracking_uri, child_run_ids, client_for, download_artifacts, end_run, find_run,
    get_experiment, is_local_store, last_step, log_artifact, log_metrics, log_params, metric_entities,
    reconcile_runs, register_model, run_info, set_tags, start_run)
