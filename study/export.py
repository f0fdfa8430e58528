"""Export a trained classifier's backbone for detection, and load it back as a feature pyramid.

The last stage of a CutMix study reuses the CutMix-pretrained backbone in a detector, as the paper's transfer
experiments do (Yun et al. 2019, arXiv 1905.04899: ImageNet-pretrained ResNet-50 fine-tuned in Faster R-CNN and
SSD on Pascal VOC). This module writes the files of the ``export/`` contract (docs/architecture.md section 3):

* ``backbone.pt``: the backbone's ``state_dict`` (``torch.save``). For the torchvision ResNets (He et al. 2016)
  the keys are torchvision's (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...; no ``fc.*``), so it
  loads with ``strict=True`` into ``torchvision.models.detection.backbone_utils.resnet_fpn_backbone(...).body``.
* ``backbone.safetensors``: the same tensors in the pickle-free safetensors format (huggingface/safetensors).
* ``backbone_mmdet.pth``: ``{"state_dict": ..., "meta": {...}}`` as mmengine writes checkpoints, with the same
  (torchvision) key names, which mmdetection's ``ResNet(init_cfg=dict(type="Pretrained", checkpoint=...))``
  reads (mmdet's ResNet uses torchvision's parameter names, see open-mmlab/mmdetection ``backbones/resnet.py``).
* ``manifest.json``: architecture, channels, feature strides, input size, normalisation, dataset, metrics,
  the full config, sha256 and size of each file, the MLflow run id, versions, creation time.

:func:`study.fpn.load_backbone` reads these files back as a detection feature pyramid. Every failure a user
can cause (a missing, truncated or corrupted file, a directory that is not an export) raises
:class:`ExportError` with a one-line message. No MLflow or Ray here: the pipeline's export stage logs
:func:`serving_models` (the classifier and the backbone as ``nn.Module``s that take [0, 1] images) with
``mlflow.pytorch.log_model`` and registers them, through ``study.tracking``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save as _st_save
from torch import nn

from study.atomic import atomic_write, atomic_write_text
from study.config.load import from_dict
from study.config.schema import ConfigError
from study.data.bundle import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from study.models import Backbone, Classifier, build_model

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PT_FILE = "backbone.pt"
SAFETENSORS_FILE = "backbone.safetensors"
MMDET_FILE = "backbone_mmdet.pth"
FPN_CHANNELS = 256  # torchvision's resnet_fpn_backbone width
# torchvision's detection heads (default AnchorGenerator: 5 sizes; MultiScaleRoIAlign over "0".."3") expect
# five feature maps named "0", "1", "2", "3", "pool".
NUM_FPN_LEVELS = 5
RERUN = "re-run `cutmix-study export` to rewrite it"


class ExportError(ValueError):
    """An export that cannot be written, verified or loaded. The message is one line."""


# ---------------------------------------------------------------------------------------------------------------
# Small helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _jsonable(x: Any) -> Any:
    """Plain JSON data from metrics/config values: tensors and numpy scalars to numbers, NaN/inf to None."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.item() if x.numel() == 1 else x.tolist())
    if hasattr(x, "item") and hasattr(x, "dtype"):  # numpy scalar or 0-d array, without importing numpy
        return _jsonable(x.item() if getattr(x, "size", 1) == 1 else x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; None says "no finite value"
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return str(x)


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # torch.compile ("_orig_mod.") and DataParallel/DDP ("module.") wrap the model and prefix every key.
    out = dict(state)
    for prefix in ("_orig_mod.", "module."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Export


def _resolve_source(source: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None) for a run directory or a checkpoint path."""
    if source.is_dir():
        for rel in ("checkpoints/best.pt", "checkpoints/last.pt", "best.pt", "last.pt"):
            if (source / rel).is_file():
                return source / rel, source
        raise ExportError(f"no checkpoint in {source} (expected checkpoints/best.pt or checkpoints/last.pt; "
                          f"give a train/retrain run directory or a checkpoint file)")
    if source.is_file():
        run_dir = source.parent.parent if source.parent.name == "checkpoints" else source.parent
        return source, run_dir
    raise ExportError(f"export source not found: {source} (give a run directory or a checkpoint file)")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # weights_only: a checkpoint is data (tensors and plain values); never unpickle code from a file.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; the user needs one line
        raise ExportError(f"cannot read checkpoint {path} ({first_line(exc)}; is it a complete training "
                          f"checkpoint?)") from None
    if not isinstance(ckpt, Mapping):
        raise ExportError(f"checkpoint {path} is not a dict (expected the training loop's checkpoint format)")
    missing = [k for k in ("model", "config", "num_classes", "in_channels") if k not in ckpt]
    if missing:
        raise ExportError(f"checkpoint {path} lacks {', '.join(missing)} (expected the training loop's format: "
                          f"model, config, num_classes, in_channels, metrics, ...)")
    return dict(ckpt)


def _normalisation(ckpt: Mapping[str, Any], dataset: str) -> dict[str, list[float]] | None:
    """The input normalisation the backbone was trained with, when it is known."""
    norm = ckpt.get("normalisation")
    if isinstance(norm, Mapping) and "mean" in norm and "std" in norm:
        return {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}
    # Older checkpoints: fixed statistics of the datasets that have them (digits/synthetic are measured per
    # split at load time, so they are unknown here and left null rather than guessed).
    table = {**{k: (CIFAR_MEAN[k], CIFAR_STD[k]) for k in CIFAR_MEAN}, "imagefolder": (IMAGENET_MEAN, IMAGENET_STD)}
    if dataset in table:
        mean, std = table[dataset]
        return {"mean": list(mean), "std": list(std)}
    return None


def _torchvision_body_name(model: Classifier) -> str | None:
    """The ``resnet_fpn_backbone(backbone_name=...)`` whose body ``backbone.pt`` loads into strictly, if any."""
    if model.family != "torchvision-resnet" or model.arch.endswith("_cifar") or model.in_channels != 3:
        return None  # same key names, but conv1 has another shape (3x3 stem or other channel count)
    return model.arch


def export_backbone(source: str | Path, out_dir: str | Path, extra: dict | None = None) -> dict:
    """Write the backbone of a trained run to ``out_dir`` and return the manifest (also in manifest.json).

    Args:
        source: a run directory (``checkpoints/best.pt``, else ``last.pt``; ``metrics.json`` is read when there)
            or a checkpoint file written by the training loop.
        out_dir: created if needed; files of an earlier export there are replaced.
        extra: merged into the manifest last (e.g. ``{"mlflow_run_id": "..."}``).

    Files: backbone.pt, backbone.safetensors, backbone_mmdet.pth (float tensors as trained, CPU, contiguous;
    BatchNorm ``num_batches_tracked`` int64 included) and manifest.json, written last so a directory with a
    manifest always describes complete files. Raises ExportError on a bad source.
    """
    source, out_dir = Path(source), Path(out_dir)
    ckpt_path, run_dir = _resolve_source(source)
    ckpt = _load_checkpoint(ckpt_path)
    try:
        cfg = from_dict(ckpt["config"])
    except ConfigError as exc:
        raise ExportError(f"checkpoint {ckpt_path} has an invalid config: {exc}") from None
    num_classes, in_channels = int(ckpt["num_classes"]), int(ckpt["in_channels"])
    try:
        model = build_model(cfg.model, num_classes, in_channels)
        model.load_state_dict(_strip_prefixes(ckpt["model"]), strict=True)
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"checkpoint {ckpt_path} does not match model.arch={cfg.model.arch!r} "
                          f"({first_line(exc)})") from None
    backbone: Backbone = model.backbone
    # clone(): own storage per tensor (safetensors refuses shared storage); contiguous(): channels_last weights
    # are saved in the default layout that every reader expects.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in backbone.state_dict().items()}

    metrics: Any = ckpt.get("metrics") or {}
    if run_dir is not None and (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass  # the checkpoint's own metrics are still a faithful record

    out_dir.mkdir(parents=True, exist_ok=True)
    # A stale manifest must not vouch for files that are about to change.
    (out_dir / MANIFEST).unlink(missing_ok=True)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta = {"arch": model.arch, "family": backbone.family, "source": "cutmix-study", "time": created,
            "torch": str(torch.__version__), "torchvision": str(torchvision.__version__), "num_classes": num_classes}
    atomic_write(out_dir / PT_FILE, lambda fh: torch.save(state, fh))
    atomic_write(out_dir / SAFETENSORS_FILE,
                 lambda fh: fh.write(_st_save(state, metadata={"format": "pt", "arch": model.arch})))
    atomic_write(out_dir / MMDET_FILE, lambda fh: torch.save({"state_dict": state, "meta": meta}, fh))

    files = {name: {"sha256": _sha256(out_dir / name), "bytes": (out_dir / name).stat().st_size}
             for name in (PT_FILE, SAFETENSORS_FILE, MMDET_FILE)}
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "family": backbone.family,
        "key_format": "torchvision" if backbone.family == "torchvision-resnet" else "cutmix-study",
        "torchvision_body": _torchvision_body_name(model),
        "model": dataclasses.asdict(cfg.model),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": int(ckpt.get("input_size") or cfg.data.image_size),
        "normalisation": _normalisation(ckpt, cfg.data.name),
        "stage_names": list(backbone.stage_names),
        "channels": list(backbone.stage_channels),
        "feature_strides": list(backbone.stage_strides),
        "dataset": cfg.data.name,
        "epoch": ckpt.get("epoch"),
        "metrics": _jsonable(metrics),
        "source": str(ckpt_path.resolve()),
        "config": _jsonable(ckpt["config"]),
        "files": files,
        "mlflow_run_id": None,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "created": created,
    }
    manifest.update(_jsonable(extra or {}))
    text = json.dumps(manifest, indent=2)
    atomic_write_text(out_dir / MANIFEST, text)
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# Verify


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """The manifest of an export directory. Raises ExportError when it is missing or unreadable."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ExportError(f"export directory not found: {export_dir} (give the directory `cutmix-study export` "
                          f"wrote, or a file in it)")
    path = export_dir / MANIFEST
    if not path.is_file():
        raise ExportError(f"{export_dir} has no {MANIFEST}, so it is not an export directory "
                          f"(run `cutmix-study export` to create one)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({first_line(exc)}; {RERUN})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ExportError(f"{path} lists no files ({RERUN})")
    return manifest


def verify_export(export_dir: str | Path, files: Iterable[str] | None = None) -> dict:
    """Check size and sha256 of every file the manifest lists (or only ``files``); return the manifest.

    Raises ExportError naming the first missing, truncated or corrupted file.
    """
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    listed: dict[str, Any] = manifest["files"]
    names = list(listed) if files is None else list(files)
    for name in names:
        if name not in listed:
            raise ExportError(f"{name} is not listed in {export_dir / MANIFEST} (listed: {', '.join(listed)})")
        path = export_dir / name
        want = listed[name]
        if not path.is_file():
            raise ExportError(f"export file {path} is missing ({RERUN})")
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise ExportError(f"export file {path} has {size} bytes, the manifest says {want.get('bytes')} "
                              f"(truncated or changed; {RERUN})")
        if _sha256(path) != want.get("sha256"):
            raise ExportError(f"export file {path} is corrupted (sha256 differs from the manifest; {RERUN})")
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# Serving models (what the export stage logs with mlflow.pytorch.log_model through study.tracking)


class Normalised(nn.Module):
    """``module((x - mean) / std)``: a trained network that takes images as they are stored, scaled to [0, 1].

    Input: float32 ``[B, C, H, W]`` in [0, 1] (uint8 pixels / 255). The mean and std (C values each, [0, 1] units)
    are the training normalisation from the checkpoint; identity when the checkpoint does not record one.
    """

    def __init__(self, module: nn.Module, mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("mean", torch.tensor(mean or [0.0], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module((x - self.mean) / self.std)


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """A module to log as an MLflow model, and the input example its signature is inferred from."""

    module: nn.Module  # eval mode, CPU
    example: Any  # numpy float32 [2, C, H, W] in [0, 1]
    description: str


def serving_models(source: str | Path) -> dict[str, ServingModel]:
    """The classifier and its backbone from a run directory or checkpoint, each wrapped in :class:`Normalised`:

    * ``classifier``: float ``[B, C, S, S]`` in [0, 1] -> logits float ``[B, num_classes]``;
    * ``backbone``: the same input -> the last stage's feature map float ``[B, channels[-1], S / stride, S / stride]``
      (``backbone.pt`` beside it is the torchvision-strict state_dict a detector loads).

    ``S`` is the training input size. The input example is a fixed pseudo-random image pair (seed 0), enough for
    MLflow to infer the signature and check that the logged model serves. Raises ExportError on a bad source.
    """
    ckpt_path, _ = _resolve_source(Path(source))
    ckpt = _load_checkpoint(ckpt_path)
    try:
        cfg = from_dict(ckpt["config"])
        model = build_model(cfg.model, int(ckpt["num_classes"]), int(ckpt["in_channels"]))
        model.load_state_dict(_strip_prefixes(ckpt["model"]), strict=True)
    except (ConfigError, ValueError, RuntimeError) as exc:
        raise ExportError(f"checkpoint {ckpt_path} cannot be rebuilt ({first_line(exc)})") from None
    model = model.eval().to(memory_format=torch.contiguous_format)
    norm = _normalisation(ckpt, cfg.data.name) or {}
    mean, std = norm.get("mean"), norm.get("std")
    size = int(ckpt.get("input_size") or cfg.data.image_size)
    example = torch.rand(2, model.in_channels, size, size, generator=torch.Generator().manual_seed(0)).numpy()
    return {
        "classifier": ServingModel(Normalised(model, mean, std).eval(), example,
                                   f"{model.arch} classifier: images float [B, C, {size}, {size}] in [0, 1] -> logits"),
        "backbone": ServingModel(Normalised(model.backbone, mean, std).eval(), example,
                                 f"{model.arch} backbone: images float [B, C, {size}, {size}] in [0, 1] -> last "
                                 "feature map"),
    }
