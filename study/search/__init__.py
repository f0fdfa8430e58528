"""The study's search: Ray Tune + Optuna wiring (`tune`), the search space (`space`), the MLflow trial
callback (`trial_callback`), Pareto fronts (`pareto`), the stored Optuna study (`optuna_search`) and the
rung-vs-final fidelity (`fidelity`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.search.space import (  # noqa: F401
    CONDITIONAL, applies, ordered_space, suggest, DefineByRun, grid_points, default_points, typed_value, trial_params)
from study.search.pareto import (  # noqa: F401
    pareto_mask, save_pareto_plot)
from study.search.tune import (  # noqa: F401
    HISTORY_KEY, AUTO_CHECKPOINT_S, EXPERIMENT_NAME, TRAIN_DIR, make_searcher, LetFinishASHA, trial_name,
    used_values, distributed_metrics, ProgressCallback, TrialRecord, result_epoch, trial_history, storage_path,
    experiment_path, train_storage_path, can_resume, delete_experiment, run_search, optuna_url, is_reproducible,
    smoothed_metrics)
from study.search.optuna_search import (  # noqa: F401
    DB_FILE, STORAGE_ENV, storage_url, is_shared_storage, rdb_storage, study_exists, delete_study, StoredOptunaSearch,
    BatchLimiter,
    save_optuna_plots)
from study.search.fidelity import (  # noqa: F401
    RHO_WARN, MIN_TRIALS, SMOOTH_SUFFIX, smooth_key, smoothed, smoothed_history, rung_epochs, measure, rho_metrics,
    describe_fidelity)
from study.search.trial_callback import (  # noqa: F401
    MlflowTrialCallback)
from study.search.output import (  # noqa: F401
    quiet_callbacks, quiet_tune, TrialErrors)
