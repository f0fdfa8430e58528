"""Training: the plain-PyTorch fit loop (`engine`), one run with its checkpoints and pictures (`runner`), and
data-parallel training with Ray Train (`distributed`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.training.distributed import (  # noqa: F401
    CHECKPOINT_FILE, RUN_PREFIX, TRIAL_DRIVER_CPU, DistributedTrainer, check_workers, epoch_metrics,
    fit_distributed, fit_in_tune_trial, load_result_checkpoint, max_concurrent_trials, train_loop, trial_resources,
    worker_resources)
from study.training.engine import (  # noqa: F401
    EVAL_BATCH, EpochResult, Trainer, better, build_scheduler, fit, resolve_device)
from study.training.runner import (  # noqa: F401
    SHOWN, Progress, dataset, fmt_metrics, save_sample_grid_for, train_run, train_seed)
