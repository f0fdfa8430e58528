"""Training: the plain-PyTorch fit loop (`engine`), one run with its checkpoints and pictures (`runner`),
data-parallel training with Ray Train (`distributed`), the fixed references of a retrain (`references`) and the
budget axis (`budget`).

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
from study.training.budget import (  # noqa: F401
    ARMS, METRIC, TRAIN_METRIC, BudgetRun, plan, analyse, format_table)
from study.training.references import (  # noqa: F401
    BASELINE, CUTMIX_PAPER, REFERENCES, PAPER_METHODS, RARE_MIXING, mixed_fraction, mixing_key, variant_name,
    Variant, reference_config, rare_mixing_note, retrain_variants, winner_name)
