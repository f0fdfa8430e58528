"""The typed configuration: frozen dataclasses (`schema`), YAML and `--set` loading (`load`), and the one
validation at the door (`validate`).

Each name is re-exported from its leaf module; inside `study/`, import the leaf module itself.
"""

from study.config.load import (  # noqa: F401
    DEFAULT_CONFIG, apply_overrides, dump_config, from_dict, load_config, parse_value, replace)
from study.config.schema import (  # noqa: F401
    ALGORITHMS, DATASETS, DETECT_DATA, DIM_TYPES, METHODS, MODEL_NAMES, MODES, SCHEDULERS, SCHEDULES, ConfigError,
    CutMixConfig, DataConfig, DetectConfig, Dimension, EvaluateConfig, ExportConfig, ModelConfig, PipelineConfig,
    ResourcesConfig,
    RetrainConfig, SearchConfig, TrackingConfig, TrainConfig, build, flatten, hints, to_dict, with_params)
from study.config.validate import (  # noqa: F401
    check_metrics, validate, validate_dimension)
