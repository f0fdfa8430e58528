"""The fixed references every retrain and method table carries, and how a study's winner is named.

`baseline` is the same model and schedule with no mixing (p = 0); `cutmix_paper` is CutMix's own recipe (Yun et
al. 2019, arXiv 1905.04899, section 4.1: alpha = 1, mixing with probability 0.5, one box per batch, as in
clovaai/CutMix-PyTorch), whatever a study found. MixUp and Cutout take the settings the paper compares them at
(its Table 3: MixUp alpha = 1 on every batch; Cutout a hole of half the image side).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from study.config.load import replace
from study.config.schema import PipelineConfig

BASELINE = "baseline"
CUTMIX_PAPER = "cutmix_paper"
REFERENCES: dict[str, dict[str, Any]] = {
    BASELINE: {"cutmix.method": "none", "cutmix.prob": 0.0, "cutmix.off_epochs": 0},
    CUTMIX_PAPER: {"cutmix.method": "cutmix", "cutmix.alpha": 1.0, "cutmix.prob": 0.5, "cutmix.mode": "batch",
                   "cutmix.off_epochs": 0},
}
PAPER_METHODS: dict[str, dict[str, Any]] = {
    "mixup": {"cutmix.method": "mixup", "cutmix.alpha": 1.0, "cutmix.prob": 1.0, "cutmix.off_epochs": 0},
    "cutout": {"cutmix.method": "cutout", "cutmix.prob": 1.0, "cutmix.cutout_size": 0.5, "cutmix.off_epochs": 0},
}
WINNER_NOTE = "the study's pick"  # a reference that the study's pick coincides with
# A setting that mixes in fewer than this fraction of its steps is, in effect, the baseline (issue 15).
RARE_MIXING = 0.05


def mixed_fraction(cfg: PipelineConfig) -> float:
    """Expected fraction of training steps whose batch is mixed: p times the share of epochs mixing is on."""
    c, epochs = cfg.cutmix, cfg.train.epochs
    if not c.mixes:
        return 0.0
    return c.prob * max(epochs - c.off_epochs, 0) / epochs


def mixing_key(cfg: PipelineConfig) -> tuple[Any, ...]:
    """What the augmentation does, as a comparable tuple: two configs with one key train identically."""
    c = cfg.cutmix
    if not c.mixes:
        return ("none",)
    shape = c.cutout_size if c.method == "cutout" else c.alpha
    return (c.method, float(shape), float(c.prob), c.mode, c.off_epochs, c.label_smoothing)


def variant_name(cfg: PipelineConfig) -> tuple[str, str]:
    """(slug, label) of a mixing setting, named by its parameters: ("cutmix_a0.12_p0.02", "cutmix α=0.12 p=0.02").
    The slug is safe in directory names and MLflow metric keys; the label is what tables show."""
    c = cfg.cutmix
    if not c.mixes:
        return BASELINE, BASELINE
    shape = (f"s{c.cutout_size:.2g}", f"size={c.cutout_size:.2g}") if c.method == "cutout" else \
        (f"a{c.alpha:.2g}", f"α={c.alpha:.2g}")
    parts = [(shape[0], shape[1]), (f"p{c.prob:.2g}", f"p={c.prob:.2g}")]
    if c.off_epochs:
        parts.append((f"off{c.off_epochs}", f"off={c.off_epochs}"))
    if c.mode != "batch":
        parts.append((c.mode, c.mode))
    return "_".join([c.method, *(s for s, _ in parts)]), " ".join([c.method, *(label for _, label in parts)])


@dataclass(frozen=True)
class Variant:
    """One retrained setting: `name` (slug: directories, MLflow keys, the table's row key), `label` (what a table
    shows), its config, its `role` (baseline | cutmix_paper | winner | method) and a `note` (e.g. the rare-mixing
    flag, or that the study's winner coincides with this reference)."""

    name: str
    label: str
    cfg: PipelineConfig
    role: str
    note: str = ""


def reference_config(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """`cfg` with a reference's (REFERENCES) or a paper method's (PAPER_METHODS) mixing settings."""
    return replace(cfg, {**REFERENCES, **PAPER_METHODS}[name])


def rare_mixing_note(cfg: PipelineConfig) -> str:
    """The flag for a setting that mixes in under RARE_MIXING of its steps, or ""."""
    share = mixed_fraction(cfg)
    if cfg.cutmix.mixes and share < RARE_MIXING:
        return (f"mixes ~{100 * share:.1f} % of steps (< {100 * RARE_MIXING:.0f} %): in effect the baseline")
    return ""


def retrain_variants(cfg: PipelineConfig, winner: Mapping[str, Any] | None,
                     methods: tuple[str, ...] | list[str] = (), *, role_label: str = "study winner") -> list[Variant]:
    """What a retrain trains, with the same seeds: `baseline` and `cutmix_paper` always; the study's `winner`
    (dotted params, e.g. {"cutmix.alpha": 0.12, "cutmix.prob": 0.02}) named by its parameters unless it is one of
    them (then that reference carries a note); and MixUp / Cutout at the paper's settings when `methods` lists
    them ("none" and "cutmix" are the baseline and the winner, always there). `winner=None`: the study declared
    none (a summary from before the decision rule whose race tied), so only the references are trained.
    `role_label`: how the winner's label says what it is ("study winner"; "study pick" after a tied race).

    The winner's parameters outside `cutmix.*` (architecture, schedule) apply to every variant, so the references
    are the same model trained without mixing and with the paper's recipe; only the mixing differs.
    """
    shared = {k: v for k, v in (winner or {}).items() if not k.startswith("cutmix.")}
    base = replace(cfg, shared) if shared else cfg
    out = [Variant(BASELINE, BASELINE, reference_config(base, BASELINE), "baseline"),
           Variant(CUTMIX_PAPER, "cutmix_paper (α=1 p=0.5)", reference_config(base, CUTMIX_PAPER), "cutmix_paper")]
    if winner is not None:
        wcfg = replace(base, {k: v for k, v in winner.items() if k.startswith("cutmix.")})
        same = next((i for i, v in enumerate(out) if mixing_key(v.cfg) == mixing_key(wcfg)), None)
        if same is not None:
            out[same] = dataclasses.replace(out[same], note=WINNER_NOTE)
        else:
            slug, label = variant_name(wcfg)
            out.append(Variant(slug, f"{label} ({role_label})", wcfg, "winner", rare_mixing_note(wcfg)))
    for method in methods:
        if method in PAPER_METHODS:
            mcfg = reference_config(base, method)
            if all(mixing_key(v.cfg) != mixing_key(mcfg) for v in out):
                out.append(Variant(method, f"{method} (paper)", mcfg, "method"))
    return out


def winner_name(variants: list[Variant]) -> str | None:
    """The variant that is the study's winner: its own row, or the reference it coincides with; None if none."""
    return next((v.name for v in variants if v.role == "winner" or v.note == WINNER_NOTE), None)
