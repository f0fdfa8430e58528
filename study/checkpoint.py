"""Plain-dict checkpoints: model, optimizer, scheduler, epoch, RNG states, config, metrics.

A checkpoint is what `torch.save` writes for a dict of tensors and plain Python values, so it loads with
`torch.load(weights_only=True)` (no pickled classes) and any tool can read it. Writes are atomic (study.atomic:
temporary file, fsync, `os.replace`) so a run killed mid-save, or a full disk, never leaves a truncated checkpoint
where a good one was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from study.atomic import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"  # inside a Tune / Ray Train checkpoint directory

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write `ckpt` atomically to `path` (parents created; study.atomic: WriteError on a full or failing volume,
    the previous checkpoint intact)."""
    # torch.save into a Python file object: a failed write surfaces as OSError (ENOSPC, EIO) with its errno, where
    # torch's own file writer raises a RuntimeError that says neither.
    return atomic_write(path, lambda fh: torch.save({"format_version": FORMAT_VERSION, **ckpt}, fh))


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; one-line message."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`. Raises CheckpointError on a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file; the user needs one line
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}); it may be truncated (delete it "
                              "to train that run from its start, or rerun the stage with --overwrite)") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a cutmix-study checkpoint (no 'model' entry)")
    return ckpt
