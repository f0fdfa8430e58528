"""MLflow: the tracking policy (`store`: experiments, stage runs, reconciliation), finding runs again by their
tags (`lookup`) and the batching background logger (`async_logger`).

Each name is re-exported from its leaf module and imported on first use (study.lazy, PEP 562), so
importing one leaf module does not import its siblings; inside `study/`, import the leaf module itself.
"""

from study.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "async_logger": ("TrackingUnavailable", "AsyncLogger", "unreachable"),
    "store": ("CLIENT_ENV_DEFAULTS", "apply_client_defaults", "MAX_PARAMS_PER_BATCH", "MAX_PARAM_LEN",
        "ARTIFACTS_DIR", "EXPERIMENT_TAGS", "VIEW_KEY", "VIEW_TAG", "VIEW_ORDER", "PIPELINE", "KEY_TAG",
        "SYSTEM_METRICS_INTERVAL_S", "TrackingError", "check_tracking_uri", "client_for", "is_local_store",
        "get_experiment", "find_run", "start_run", "new_key", "log_params", "metric_entities", "log_metrics",
        "set_tags", "last_step", "log_artifact", "end_run", "register_model", "run_info", "download_artifacts",
        "StageRun", "start_system_metrics", "stop_system_metrics", "Tracker", "child_run_ids", "reconcile_runs"),
    "context": ("NOT_IDENTITY", "CONTEXTS", "source_tags", "settings_digest", "dataset_specs", "dataset_inputs",
        "log_datasets"),
    "lookup": ("find_stage_run", "stop_open_children"),
    "models": ("CHAMPION", "RegisteredModel", "requirements", "log_torch_model", "load_torch_model"),
})
