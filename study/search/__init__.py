"""The study's search: Ray Tune + Optuna wiring (`tune`), the search space (`space`), the MLflow trial
callback (`trial_callback`) and Pareto fronts (`pareto`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.search.pareto import (  # noqa: F401
    pareto_mask, save_pareto_plot)
from study.search.space import (  # noqa: F401
    CONDITIONAL, DefineByRun, applies, default_points, grid_points, ordered_space, suggest, trial_params)
from study.search.trial_callback import (  # noqa: F401
    MlflowTrialCallback)
from study.search.tune import (  # noqa: F401
    AUTO_CHECKPOINT_S, EXPERIMENT_NAME, HISTORY_KEY, TRAIN_DIR, TRIAL_CHECKPOINT, LetFinishASHA, ProgressCallback,
    TrialRecord, can_resume, delete_experiment, distributed_metrics, experiment_path, make_searcher, result_epoch,
    run_search, storage_path, train_storage_path, trial_history, trial_name, used_values)
