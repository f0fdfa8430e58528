"""The study's search: Ray Tune + Optuna wiring (`tune`), the search space (`space`), the MLflow trial
callback (`trial_callback`) and Pareto fronts (`pareto`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.search.space import (  # noqa: F401
    CONDITIONAL, applies, ordered_space, suggest, DefineByRun, grid_points, default_points, trial_params)
from study.search.pareto import (  # noqa: F401
    pareto_mask, save_pareto_plot)
from study.search.tune import (  # noqa: F401
    HISTORY_KEY, AUTO_CHECKPOINT_S, EXPERIMENT_NAME, TRAIN_DIR, make_searcher, LetFinishASHA, trial_name,
    used_values, distributed_metrics, ProgressCallback, TrialRecord, result_epoch, trial_history, storage_path,
    experiment_path, train_storage_path, can_resume, delete_experiment, run_search)
from study.search.trial_callback import (  # noqa: F401
    MlflowTrialCallback)
from study.search.output import (  # noqa: F401
    quiet_callbacks, quiet_tune, TrialErrors)
