"""Shared plumbing of the evaluations (``study.evaluation`` and its sibling modules): input checks, the
pixel-space -> normalised-space step, batched forward passes and the evaluations' one error type.

Conventions every evaluation follows:

* ``images``: ``[N, C, H, W]`` in **pixel space**, either uint8 (0..255) or floating in [0, 1]. Perturbations
  (occlusion fill, blends, FGSM steps, noise) are applied in pixel space or, where documented, in normalised
  space; the model always receives ``(x - mean) / std`` with per-channel ``mean``/``std`` given in [0, 1] units
  (the same numbers as ``study.data.DataBundle.mean``/``std``).
* ``labels``: int64 ``[N]`` class indices.
* Work is done in batches of ``batch_size`` on ``device`` (default: the model's device); results come back on
  the CPU. The model is put in eval mode for the call and its previous mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from study.metric_names import EvaluationError


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise EvaluationError unless ``images`` is ``[N, C, H, W]`` uint8 or floating (values checked elsewhere)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise EvaluationError(f"{name} of shape {shape} are not allowed ([N, C, H, W] tensor)")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise EvaluationError(f"{name} of dtype {images.dtype} are not allowed (uint8 0..255 or float in [0, 1])")


def check_labels(labels: torch.Tensor, n: int, num_classes: int | None = None) -> None:
    """Raise EvaluationError unless ``labels`` is int64 ``[n]`` with values in ``[0, num_classes)``."""
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise EvaluationError(f"labels of shape {shape} are not allowed (int64 [{n}], one per image)")
    if labels.dtype != torch.int64:
        raise EvaluationError(f"labels of dtype {labels.dtype} are not allowed (int64)")
    if n and num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise EvaluationError(f"labels in [{int(labels.min())}, {int(labels.max())}] are not allowed "
                              f"(0..{num_classes - 1} for a {num_classes}-class model)")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Pixel-space images as float32 in [0, 1]: uint8 is divided by 255; floats must already lie in [0, 1]."""
    check_images(images)
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    x = images.float()
    if x.numel() and (bool(torch.isnan(x).any()) or float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise EvaluationError(f"float images in [{float(x.min()):.3g}, {float(x.max()):.3g}] are not allowed "
                              "(pixel space in [0, 1], not normalised; or uint8)")
    return x


class Normalise:
    """``(x - mean) / std`` per channel for float pixel-space images ``[B, C, H, W]`` in [0, 1]; ``mean``/``std``
    are C floats in [0, 1] units. One instance per call keeps the constants on the working device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device) -> None:
        m = torch.as_tensor([float(v) for v in mean], dtype=torch.float32)
        s = torch.as_tensor([float(v) for v in std], dtype=torch.float32)
        if m.numel() != channels or s.numel() != channels or bool((s <= 0).any()):
            raise EvaluationError(f"mean/std of lengths {m.numel()}/{s.numel()} are not allowed ({channels} values "
                                  "each, std > 0)")
        self.mean = m.view(1, -1, 1, 1).to(device)
        self.std = s.view(1, -1, 1, 1).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def batch_ranges(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise EvaluationError(f"batch_size={batch_size} is not allowed (>= 1)")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def resolve(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The working device: ``device`` when given (the model is moved there), else the model's own."""
    if device is None:
        return model_device(model)
    dev = torch.device(device)
    model.to(dev)
    return dev


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
                   batch_size: int = 256, device: str | torch.device | None = None) -> torch.Tensor:
    """Logits float32 ``[N, K]`` (CPU) of pixel-space ``images`` (uint8 or float in [0, 1])."""
    check_images(images)
    dev = resolve(model, device)
    norm = Normalise(mean, std, images.shape[1], dev)
    out = []
    with eval_mode(model):
        for sl in batch_ranges(images.shape[0], batch_size):
            out.append(model(norm(to_unit(images[sl].to(dev)))).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)
