"""The typed configuration: frozen dataclasses (`schema`), YAML and `--set` loading (`load`), and the one
validation at the door (`validate`).

Each name is re-exported from its leaf module and imported on first use (study.lazy, PEP 562), so
importing one leaf module does not import its siblings; inside `study/`, import the leaf module itself.
"""

from study.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "schema": ("MODEL_NAMES", "DATASETS", "METHODS", "MODES", "SCHEDULES", "ALGORITHMS", "SCHEDULERS", "DIM_TYPES",
        "DETECT_DATA", "ConfigError", "DataConfig", "ModelConfig", "CutMixConfig", "TrainConfig", "Dimension",
        "ResourcesConfig", "SearchConfig", "RetrainConfig", "EvaluateConfig", "DetectConfig", "TrackingConfig",
        "ExportConfig", "BudgetConfig", "PipelineConfig", "hints", "build", "to_dict", "flatten", "with_params"),
    "load": ("DEFAULT_CONFIG", "from_dict", "parse_value", "apply_overrides", "load_config", "dump_config", "replace"),
    "validate": ("validate", "validate_dimension", "check_metrics", "validate_workers", "validate_study"),
})
