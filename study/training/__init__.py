"""Training: the plain-PyTorch fit loop (`engine`), one run with its checkpoints and pictures (`runner`),
data-parallel training with Ray Train (`distributed`), the fixed references of a retrain (`references`) and the
budget axis (`budget`).

Each name is re-exported from its leaf module and imported on first use (study.lazy, PEP 562), so
importing one leaf module does not import its siblings; inside `study/`, import the leaf module itself.
"""

from study.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "engine": ("EVAL_BATCH", "EpochResult", "resolve_device", "build_scheduler", "better", "Trainer", "fit"),
    "runner": ("SHOWN", "load_dataset", "Progress", "fmt_metrics", "save_sample_grid_for", "train_run", "train_seed",
        "read_finished", "log_seed_run"),
    "distributed": ("TRIAL_DRIVER_CPU", "RUN_PREFIX", "DistributedTrainer", "epoch_metrics", "train_loop",
        "worker_resources", "fit_distributed", "fit_in_tune_trial", "load_result_checkpoint", "trial_resources",
        "max_concurrent_trials"),
    "budget": ("ARMS", "METRIC", "TRAIN_METRIC", "BudgetRun", "plan", "analyse", "format_table"),
    "references": ("BASELINE", "CUTMIX_PAPER", "REFERENCES", "PAPER_METHODS", "RARE_MIXING", "mixed_fraction",
        "mixing_key", "variant_name", "Variant", "reference_config", "rare_mixing_note", "retrain_variants",
        "winner_name"),
})
