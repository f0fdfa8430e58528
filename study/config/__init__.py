"""The typed configuration: frozen dataclasses (`schema`), YAML and `--set` loading (`load`), and the one
validation at the door (`validate`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.config.schema import (  # noqa: F401
    MODEL_NAMES, DATASETS, METHODS, MODES, SCHEDULES, ALGORITHMS, SCHEDULERS, DIM_TYPES, DETECT_DATA, ConfigError,
    DataConfig, ModelConfig, CutMixConfig, TrainConfig, Dimension, ResourcesConfig, SearchConfig, RetrainConfig,
    EvaluateConfig, DetectConfig, TrackingConfig, ExportConfig, BudgetConfig, PipelineConfig, hints, build, to_dict,
    flatten, with_params)
from study.config.load import (  # noqa: F401
    DEFAULT_CONFIG, from_dict, parse_value, apply_overrides, load_config, dump_config, replace)
from study.config.validate import (  # noqa: F401
    validate, validate_dimension, check_metrics, validate_workers, validate_study)
