"""Training: the plain-PyTorch fit loop (`engine`), one run with its checkpoints and pictures (`runner`), and
data-parallel training with Ray Train (`distributed`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.training.engine import (  # noqa: F401
    EVAL_BATCH, EpochResult, resolve_device, build_scheduler, better, Trainer, fit)
from study.training.runner import (  # noqa: F401
    SHOWN, load_dataset, Progress, fmt_metrics, save_sample_grid_for, train_run, train_seed, read_finished,
    log_seed_run)
from study.training.distributed import (  # noqa: F401
    TRIAL_DRIVER_CPU, RUN_PREFIX, DistributedTrainer, epoch_metrics, train_loop, worker_resources, fit_distributed,
    fit_in_tune_trial, load_result_checkpoint, trial_resources, max_concurrent_trials)
