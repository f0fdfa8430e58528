"""The one typed configuration object of cutmix-study: its types and their structural (unvalidated) builders.

Nested frozen dataclasses, loaded from YAML, strict about unknown keys (a misspelt key is an error, not a
silent default: the lesson of nanoGPT's configurator and lightning-hydra-template's structured configs),
overridable with ``--set a.b=c`` and validated once at the door. Dotted names (``cutmix.alpha``) are shared by
YAML, Ray Tune's param space, MLflow params and the ``results.parquet`` columns.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from study.metric_names import metric_mode

# The environment variable that stands in for an empty `search.optuna_storage` (Optuna's own CLI reads it): read by
# study.search.optuna_search.storage_url and checked by study.config.validate.
OPTUNA_STORAGE_ENV = "OPTUNA_STORAGE"

# Architectures of the model registry (study.models builds each; it checks it covers exactly these).
MODEL_NAMES: tuple[str, ...] = (
    "cnn",
    "resnet8",
    "resnet20",
    "resnet56",
    "resnet110",
    "resnet18_cifar",
    "resnet50_cifar",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "pyramidnet",
    "pyramidnet110",
    "pyramidnet200",
)
DATASETS = ("digits", "cluttered_digits", "synthetic", "shapes", "cifar10", "cifar100", "imagefolder", "cub")
METHODS = ("cutmix", "mixup", "cutout", "none")
MODES = ("batch", "sample")
SCHEDULES = ("step", "cosine")
ALGORITHMS = ("tpe", "qmc", "random", "grid")
SCHEDULERS = ("asha", "none")
DIM_TYPES = ("uniform", "loguniform", "int", "choice")
DETECT_DATA = ("synthetic", "cluttered_digits", "voc")


class ConfigError(ValueError):
    """Bad configuration. The message is one line: what is wrong and what is allowed."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str = ""  # local directory for cifar10/cifar100/imagefolder; never downloaded
    image_size: int = 32  # side in pixels after resizing (digits are 8x8 upsampled)
    num_classes: int = 10  # used by `synthetic`; the other datasets know their own
    synthetic_sizes: tuple[int, int, int] = (2000, 500, 500)  # train, val, test
    val_fraction: float = 0.1  # cifar/imagefolder: held out of train for model selection
    pad: int = 4  # random-crop padding in pixels (0 disables the crop)
    hflip: bool = True
    split_seed: int = 0  # fixed splits: independent of train.seed
    # imagefolder: decode per batch in DataLoader workers, never all at once (study.data.streaming)
    streaming: bool = False
    loader_workers: int = -1  # streaming decode processes per training process; -1: auto, 0: in-process
    clutter: int = 4  # cluttered_digits: distractor fragments (cut from other digits) per image
    digit_scale: tuple[float, float] = (0.4, 0.7)  # cluttered_digits: target digit side, fractions of image_size
    # cluttered_digits: digit classes held out of every split (the rest relabelled 0..K-1); their test identities
    # become the `held_out` near-OOD set of evaluate. It changes the classifier, so it needs training runs of its own.
    ood_classes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet20"
    depth: int = 0  # pyramidnet only: 0 means the arch's default
    widen: float = 0.0  # pyramidnet alpha-tilde (total widening); 0 means the arch's default
    width: int = 32  # base width of the small `cnn`
    # Stride of the `cnn`'s last feature map, the CAM's (study.models._cnn): 0 = 8 (three 2x2 pools: 3x3 at 24 px),
    # 4 or 2 keep 6x6 or 12x12 with stride-1 pools after that. Ignored by the other architectures (paper shapes).
    cam_stride: int = 0


@dataclass(frozen=True)
class CutMixConfig:
    method: str = "cutmix"
    alpha: float = 1.0  # Beta(alpha, alpha)
    prob: float = 0.5  # probability a batch is mixed
    mode: str = "batch"
    label_smoothing: float = 0.0
    cutout_size: float = 0.5  # cutout: square side as a fraction of the image side
    # No mixing in the last N epochs of the schedule (timm's mixup_off_epoch; a searchable int dimension): the
    # model ends on clean batches. 0 <= off_epochs < train.epochs.
    off_epochs: int = 0

    @property
    def mixes(self) -> bool:
        """Whether the augmentation changes the batch at all: a method other than ``none`` applied with p > 0.
        The one place this rule lives (engine picks soft-target CE, build_mixer picks NoMix, the search drops
        alpha, the stages compare a baseline by it)."""
        return self.method != "none" and self.prob > 0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1  # for batch_size 64; not rescaled
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of `epochs` (paper: 150, 225 of 300)
    gamma: float = 0.1
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # CUDA only
    channels_last: bool = True
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default
    eval_test: bool = True
    test_every: int = 1  # with eval_test: the test split every N epochs and at the last (5,000 images cost time)
    workers: int = 1  # data-parallel training processes per run (Ray Train TorchTrainer, DDP); 1: one process


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter. `choice` takes `values`; the others take `low`/`high`. `when` makes it
    conditional on other searched `choice` dimensions, e.g. `{model.arch: cnn}` or `{model.arch: [cnn, resnet20]}`
    (a value or a list of values each): a per-architecture parameter is sampled, gridded and recorded only for the
    architectures it belongs to (study.search.space.applies)."""

    type: str = "choice"
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()
    when: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = "tpe"
    scheduler: str = "asha"
    num_samples: int = 8  # ignored by `grid`, which runs every combination once
    max_concurrent: int = 1
    # One metric reported on val every epoch (val/top1_err, val/loss, or an evaluation metric of
    # study.evaluation.EPOCH_METRICS such as val/maxboxacc_v2), or a list of two for a multi-objective study.
    metric: str | tuple[str, ...] = "val/top1_err"
    mode: str | tuple[str, ...] = "min"  # min | max | auto (from the metric's name), or one per metric
    eval_every: int = 1  # evaluation metrics in `metric`: computed every N epochs (and the last), else carried
    grace_period: int = 2  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2
    resources_per_trial: ResourcesConfig = field(default_factory=ResourcesConfig)
    storage: str = ""  # Ray Tune storage path or URI (s3://...); default <output>/tune
    seed: int = 0  # sampler seed
    evaluate_defaults: bool = True  # paper defaults (alpha=1, p=0.5) and the no-CutMix baseline first
    checkpoint_every: int = 0  # trial checkpoints: every N epochs and the last; 0 = auto (about every 10 s)
    max_failures: int = 2  # retries of a trial whose process died (killed, node lost), each from its last checkpoint
    # On a joined cluster (RAY_ADDRESS; an autoscaler may add nodes): how long a trial or task that the cluster cannot
    # place may wait before the command fails (study.cluster.capacity); a local Ray refuses such work at once.
    placement_timeout_s: float = 900.0
    # Issue 15 (fidelity, reproducibility) and 17 (the stored Optuna study), one block:
    # Rung decisions (ASHA, Optuna's intermediate values) and the final ranking use the mean of a trial's last
    # `smooth_epochs` epochs, not one epoch or the minimum over epochs: one seed's val error jumps 3-6 points from
    # epoch to epoch, and the minimum over epochs picks the luckiest jump (study.search.fidelity).
    smooth_epochs: int = 3
    # Optuna's study: any Optuna RDB URL (postgresql+psycopg2://..., mysql://...); "" = sqlite:///<output>/optuna.db.
    # Named after the study (`name`) and continued by --resume.
    optuna_storage: str = ""
    # A deterministic history: trial n is asked once trials 0 .. n-max_concurrent-1 have finished, and Optuna sees
    # exactly those, whichever trial finished first, so a study is reproducible given its seed
    # (study.search.optuna_search).
    reproducible: bool = True
    space: Mapping[str, Dimension] = field(default_factory=dict)
    # The race after the search (study.search.race, issue 15): the top `race_top_k` settings, cutmix_paper and the
    # baseline re-run on train/val with `race_seeds` new seeds each per round, for at most `race_rounds` rounds,
    # eliminated at level `race_alpha` (Friedman, then paired t-tests against the best, Holm). 0 disables the race.
    race_top_k: int = 3
    race_seeds: int = 2
    race_rounds: int = 3
    race_alpha: float = 0.05

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,) if isinstance(self.metric, str) else tuple(self.metric)

    @property
    def modes(self) -> tuple[str, ...]:
        """One optimisation mode per metric; `auto` reads it from the metric's name (study.evaluation)."""
        modes = (self.mode,) * len(self.metrics) if isinstance(self.mode, str) else tuple(self.mode)
        if "auto" not in modes:
            return modes

        return tuple(metric_mode(m) if mode == "auto" else mode for m, mode in zip(self.metrics, modes))

    @property
    def primary_metric(self) -> str:
        """The metric that selects a trial's best epoch, the study's best trial and ASHA's cut (the first)."""
        return self.metrics[0]

    @property
    def primary_mode(self) -> str:
        return self.modes[0]


@dataclass(frozen=True)
class RetrainConfig:
    seeds: int = 3
    epochs: int = 0  # 0 means train.epochs
    compare_baseline: bool = False
    # Methods retrained with the same seeds, the paper's comparison (none, mixup, cutout, cutmix): `cutmix` is the
    # study's best config, `none` its p=0 baseline, mixup and cutout the paper's settings (alpha 1, p 1; a hole of
    # half the side). Empty: the best config, plus the baseline when compare_baseline.
    methods: tuple[str, ...] = ()
    # Each seed (and each evaluated model) is a Ray task with these resources; tasks run side by side up to what
    # the cluster holds (study.cluster.tasks).
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate stage (study.evaluation.suite.evaluate_model), per retrained model on the test split."""

    cam_curve_interval: float = 0.01  # MaxBoxAccV2 threshold step (wsolevaluation's paper setting: 0.001)
    loc_sigma: float = 0.15  # the paper's top-1 Loc threshold, a fraction of the CAM maximum
    robustness_images: int = 1000  # occlusion, in-between and FGSM use the first this-many test images
    fgsm_eps: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)  # in [0, 1] pixel units
    ood_root: str = ""  # a local image folder used as one more (far) out-of-distribution set
    # Images per generated OOD set (clutter-only, held-out classes, the other embedded dataset, each noise set);
    # the in-distribution side is always every test image.
    ood_images: int = 2000
    ood_bootstrap: int = 1000  # resamples of each OOD set's AUROC interval per model (0: no interval)
    prior_sigma: float = 0.25  # the centre-Gaussian localization prior's std, a fraction of the image side


@dataclass(frozen=True)
class DetectConfig:
    # Sized for a CPU (2 cores: ~1 min per detector, pretrained and random control alike) on 64-px synthetic
    # shapes; a VOC/GPU config raises image_size, epochs, representation_size (FPN: 1024) and rois_per_image.
    data: str = "synthetic"
    root: str = ""  # VOC root (the directory holding VOCdevkit/)
    year: str = "2007"
    image_size: int = 64  # longer image side in pixels; synthetic objects span 10-50 % of it
    num_train: int = 256  # synthetic set sizes
    num_val: int = 64
    epochs: int = 6
    batch_size: int = 8
    lr: float = 0.02  # SGD, linear warm-up over the first epoch, then cosine to 0
    representation_size: int = 256  # width of the box head's two fc layers
    rois_per_image: int = 32  # RoIs sampled per image for the box-head loss (a quarter positive at most)
    seed: int = 0
    trainable_layers: int = -1  # backbone stages fine-tuned, from the deepest; -1: all but the first
    compare_random: bool = True  # also fine-tune the same detector from a random backbone: the transfer control
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)  # per detector (a Ray task each)


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = ""  # empty: sqlite:///<output>/mlflow.db
    experiment: str = ""  # empty: the study name
    # MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) on every run the pipeline opens,
    # sampled every 10 s by a thread of the process that opened it (bench/study_overhead.py measures the cost)
    system_metrics: bool = False


@dataclass(frozen=True)
class ExportConfig:
    # MLflow registered model of the exported classifier (`<name>-backbone`: its backbone), both aliased
    # `champion`; empty: the study name
    registered_model: str = ""


@dataclass(frozen=True)
class BudgetConfig:
    """`cutmix-study budget` (study.training.budget): baseline vs cutmix_paper at several training budgets."""

    epochs: tuple[int, ...] = (6, 12, 24, 48, 96)  # each budget a full schedule of its own (>= 2 budgets, increasing)
    seeds: int = 3  # per arm and budget
    bootstrap: int = 2000  # seed resamples for the crossover's interval (study.stats.crossover)
    bootstrap_seed: int = 0
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)  # per model (a Ray task each)


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "digits"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cutmix: CutMixConfig = field(default_factory=CutMixConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)


# ---------------------------------------------------------------------------------------------------------------
# Building from plain data


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check and convert one YAML value to the annotated type; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # `str | tuple[str, ...]`: the first type the value fits
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], where)
    if origin is Mapping or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - a programming error


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """The dataclass `cls` from plain data, types checked and converted, unknown keys refused; not validated
    (`study.config.load.from_dict` validates)."""
    known = hints(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known under {prefix or 'top level'}: "
                          f"{', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, known[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """A dataclass tree as plain YAML-safe data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-name view of a config, `{"cutmix.alpha": 1.0, ...}`; lists are kept as values."""
    out: dict[str, Any] = {}
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not (prefix == "search." and k == "space"):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def with_params(cfg: PipelineConfig, params: Mapping[str, Any]) -> PipelineConfig:
    """A copy of `cfg` with dotted-name params set (`{"cutmix.alpha": 0.5}`), types checked but *not* validated
    (`study.config.load.replace` validates; `study.config.validate` uses this one to check candidate values)."""
    data = to_dict(cfg)
    for key, value in params.items():
        node = data
        *head, last = key.split(".")
        for part in head:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"unknown config key {key}")
            node = node[part]
        if last not in node:
            raise ConfigError(f"unknown config key {key}")
        node[last] = value
    return build(PipelineConfig, data)
