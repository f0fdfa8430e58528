"""The study's search: Ray Tune + Optuna wiring (`tune`), the search space (`space`), the MLflow trial
callback (`trial_callback`), Pareto fronts (`pareto`), the stored Optuna study (`optuna_search`) and the
rung-vs-final fidelity (`fidelity`).

Each name is re-exported from its leaf module and imported on first use (study.lazy, PEP 562), so
importing one leaf module does not import its siblings; inside `study/`, import the leaf module itself.
"""

from study.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "space": ("CONDITIONAL", "applies", "ordered_space", "suggest", "DefineByRun", "grid_points", "default_points",
        "typed_value", "trial_params"),
    "pareto": ("pareto_mask", "save_pareto_plot"),
    "tune": ("HISTORY_KEY", "AUTO_CHECKPOINT_S", "EXPERIMENT_NAME", "TRAIN_DIR", "make_searcher", "LetFinishASHA",
        "trial_name", "used_values", "distributed_metrics", "ProgressCallback", "TrialRecord", "result_epoch",
        "trial_history", "storage_path", "experiment_path", "train_storage_path", "can_resume", "delete_experiment",
        "run_search", "optuna_url", "is_reproducible", "smoothed_metrics"),
    "optuna_search": ("DB_FILE", "storage_url", "is_shared_storage", "rdb_storage", "study_exists",
        "delete_study", "StoredOptunaSearch", "BatchLimiter", "save_optuna_plots"),
    "fidelity": ("RHO_WARN", "MIN_TRIALS", "SMOOTH_SUFFIX", "smooth_key", "smoothed", "smoothed_history",
        "rung_epochs", "measure", "rho_metrics", "describe_fidelity"),
    "trial_callback": ("MlflowTrialCallback",),
    "output": ("quiet_callbacks", "quiet_tune", "TrialErrors"),
})
