"""The evaluate stage's method table and the statistics behind its verdicts (issue 16, points 2-4).

One row per method (mean ± std over seeds), then the priors on the same test boxes, then three sections:

* **Primary endpoint: top-1 error.** Each method's difference to the baseline with Welch's 95 % t-interval and a
  verdict at alpha = 0.05 (uncorrected: it is the one pre-declared endpoint); beside it McNemar's exact test per
  seed pair (seed k of the method against seed k of the baseline on the same test images, from the saved
  per-image predictions), and the minimum detectable difference at 80 % power for the observed spread, with the
  seeds per arm that would detect the observed difference (``study.stats``).
* **Secondary columns** (every other headline column): the same Welch comparison, with the verdicts
  Holm-corrected across the whole table (every method x column cell is one hypothesis; Holm 1979 controls the
  family-wise error at 0.05 under any dependence). ``− centre prior`` is not compared between methods (it is
  MaxBoxAccV2 shifted by a constant); it says whether each method localizes beyond the prior at all.
* **OOD per set**: max-softmax AUROC per set and method, with each model's bootstrap interval; the noise sets are
  sanity rows (a ReLU network maps noise to one confident cluster, Hein et al. CVPR 2019), outside the headline.

Pure Python on the per-seed metric rows: no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.metric_names import metric_mode
from study.stats import (
    Comparison,
    McNemar,
    Summary,
    compare,
    holm,
    mcnemar,
    min_detectable_difference,
    pooled_sd,
    seeds_to_detect,
    summarize,
    welch_p,
)
from study.summaries import ModelRow

__all__ = ["ALPHA", "BASELINE", "HEADLINE", "PRIMARY", "MethodTable", "PriorVerdict", "comparisons", "method_table",
           "prior_verdicts"]

ALPHA = 0.05
PRIMARY = "top1_err"
BASELINE = "baseline"
PRIOR_DIFF = "maxboxacc_v2_over_prior"
# Headline columns (the paper's Tables 9-12 in one row per method) in order, when measured; near-OOD AUROC columns
# (one per near set) are appended after them.
HEADLINE = (("top1_err", "top-1 err"), ("ece", "ECE"), ("maxboxacc_v2", "MaxBoxAccV2"),
            (PRIOR_DIFF, "− centre prior"), ("top1_loc", "top-1 Loc"), ("gt_known_loc", "GT-known Loc"),
            ("gt_known_loc_best", "GT-known Loc (best σ)"), ("occlusion_center_auc", "occl. centre AUC"),
            ("occlusion_boundary_auc", "occl. boundary AUC"), ("in_between_cutmix", "in-between CutMix"),
            ("fgsm_acc_eps0.031", "FGSM acc ε=8/255"))
NOT_BEYOND = "not localizing beyond the prior"

PerSeed = Mapping[str, Sequence[ModelRow]]  # variant -> one row per evaluated model (seed)


@dataclass(frozen=True)
class PriorVerdict:
    """A variant's MaxBoxAccV2 minus the centre prior over seeds (percentage points), and whether it localizes
    beyond the prior: "beyond the prior" or NOT_BEYOND."""

    stat: Summary
    verdict: str


@dataclass(frozen=True)
class MethodTable:
    """What `method_table` measured besides the markdown it wrote: variant -> column -> summary over seeds,
    variant -> column -> comparison with the baseline, variant -> prior verdict, and the columns in table order."""

    metrics: dict[str, dict[str, Summary]]
    comparisons: dict[str, dict[str, Comparison]]
    prior: dict[str, PriorVerdict]
    columns: list[str]


def _values(rows: Sequence[ModelRow], key: str) -> list[float] | None:
    vals = [r.metrics.get(key) for r in rows]
    return None if any(v is None for v in vals) else [float(v) for v in vals]


def headline_columns(per_seed: PerSeed, near_sets: Sequence[str]) -> list[tuple[str, str]]:
    cols = [*HEADLINE, *((f"ood_{s}_auroc", f"OOD AUROC {s}") for s in near_sets)]
    return [(k, label) for k, label in cols if any(_values(rows, k) is not None for rows in per_seed.values())]


def comparisons(per_seed: PerSeed, columns: Sequence[str], baseline: str = BASELINE, alpha: float = ALPHA
                ) -> dict[str, dict[str, Comparison]]:
    """variant -> column -> ``stats.compare`` against ``baseline`` plus ``p`` (Welch), ``p_holm`` and the verdict:
    the primary column keeps its uncorrected verdict, every other column (but ``− centre prior``) is judged by its
    Holm-adjusted p-value across all cells of the table. Empty without a baseline or with one row."""
    if baseline not in per_seed or len(per_seed) < 2:
        return {}
    base = per_seed[baseline]
    out: dict[str, dict[str, Comparison]] = {}
    family: list[tuple[str, str]] = []
    for variant, rows in per_seed.items():
        if variant == baseline:
            continue
        for key in columns:
            a, b = _values(rows, key), _values(base, key)
            if a is None or b is None or key == PRIOR_DIFF:
                continue
            comp = compare(a, b, lower_is_better=metric_mode(key) == "min")
            out.setdefault(variant, {})[key] = dataclasses.replace(comp, p=welch_p(a, b))
            if key != PRIMARY:
                family.append((variant, key))
    for (variant, key), adj in zip(family, holm([out[v][k].p for v, k in family])):
        comp = out[variant][key]
        verdict = comp.verdict
        if adj > alpha:
            verdict = "not resolved"
        elif verdict == "not resolved":  # Welch's interval and its p-value agree except at the boundary
            verdict = "better" if (comp.diff < 0) == (metric_mode(key) == "min") else "worse"
        out[variant][key] = dataclasses.replace(comp, p_holm=adj, holm_m=len(family), verdict=verdict)
    return out


def prior_verdicts(per_seed: PerSeed) -> dict[str, PriorVerdict]:
    """variant -> ``summarize`` of MaxBoxAccV2 minus the centre prior over seeds, with ``verdict``: "beyond the
    prior" when the 95 % t-interval (one seed: the value) lies above zero, else "not localizing beyond the prior"."""
    out = {}
    for variant, rows in per_seed.items():
        vals = _values(rows, PRIOR_DIFF)
        if vals is None:
            continue
        s = summarize(vals)
        out[variant] = PriorVerdict(s, "beyond the prior" if s.ci95[0] > 0 else NOT_BEYOND)
    return out


def primary_lines(per_seed: PerSeed, comps: Mapping[str, Mapping[str, Comparison]],
                  paired: Mapping[str, Mapping[int, McNemar]], baseline: str = BASELINE) -> list[str]:
    """The primary endpoint's paragraph: Welch, McNemar per seed pair, the minimum detectable difference."""
    lines = []
    base = _values(per_seed.get(baseline, []), PRIMARY)
    for variant, cols in comps.items():
        comp = cols.get(PRIMARY)
        if comp is None or base is None:
            continue
        a = _values(per_seed[variant], PRIMARY)
        lo, hi = comp.ci95
        ci = "no interval with one seed" if lo is None or hi is None else f"95 % CI {lo:+.2f} to {hi:+.2f}"
        sd = pooled_sd(a, base)
        n = min(len(a), len(base))
        mdd = min_detectable_difference(sd, n)
        need = seeds_to_detect(comp.diff, sd)
        text = (f"- {variant} − {baseline}: {comp.diff:+.2f} points ({ci}, Welch, p = {comp.p:.3g}): "
                f"**{comp.verdict}**. Minimum detectable difference at 80 % power with {n} seeds per arm and the "
                f"observed spread (pooled sd {sd:.2f}): {_fmt_mdd(mdd)}")
        if comp.verdict == "not resolved":
            text += ("; the observed difference would need " + (f"{need} seeds per arm" if need else
                                                                 "more than 10,000 seeds per arm") + " to resolve")
        pairs = paired.get(variant, {})
        if pairs:
            text += ". McNemar per seed pair (exact, same test images): " + "; ".join(
                f"seed {seed}: {p.diff:+.2f} points, {p.a_only} vs {p.b_only} discordant images, "
                f"p = {p.p:.3g}" for seed, p in pairs.items())
        lines.append(text + ".")
    return lines


def _fmt_mdd(v: float) -> str:
    return "none (one seed)" if math.isinf(v) else f"{v:.2f} points"


def paired_tests(correct: Mapping[str, Mapping[int, Sequence[bool]]], baseline: str = BASELINE
                 ) -> dict[str, dict[int, McNemar]]:
    """variant -> seed -> McNemar (``stats.mcnemar``) of that seed against the baseline's seed of the same index,
    in increasing seed order, from per-image top-1 correctness (bool ``[N]`` per variant and seed)."""
    base = correct.get(baseline, {})
    out = {}
    for variant, seeds in correct.items():
        if variant == baseline:
            continue
        out[variant] = {k: mcnemar(c, base[k]) for k, c in sorted(seeds.items()) if k in base}
    return out


def _cell(stat: Summary | None, comp: Comparison | None) -> str:
    if stat is None:
        return "–"
    text = f"{stat.mean:.2f} ± {stat.std:.2f}"
    if comp is not None:
        text += f" ({comp.diff:+.2f}, {comp.verdict})"
    return text


def method_table(path: Path, per_seed: PerSeed, *, num_test: int, epochs: int | None, info: Mapping[str, Any],
                 priors: Mapping[str, Any], paired: Mapping[str, Mapping[int, McNemar]] | None = None,
                 baseline: str = BASELINE) -> MethodTable:
    """Write the markdown method table to ``path``; returns its summaries, comparisons, prior verdicts and columns.

    Args:
        per_seed: variant -> one row per seed (``evaluate_model`` metrics in ``ModelRow.metrics``).
        info: ``cam_size`` ``[h, w]``, ``image_size``, ``arch``, ``ood_kinds`` (set -> near / far / noise),
            ``num_in`` (in-distribution images of the OOD scores), ``ood_images``.
        priors: ``centre_prior`` and ``random_cam``: ``{"maxboxacc_v2", "per_iou"}`` on the same test boxes
            (``random_cam`` at the models' CAM size), ``sigma``.
        paired: ``paired_tests`` output (McNemar per seed pair), or None.
    """
    kinds = dict(info.get("ood_kinds", {}))
    near = [s for s, k in kinds.items() if k == "near"]
    cols = headline_columns(per_seed, near)
    keys = [k for k, _ in cols]
    metrics = {v: {k: summarize(vals) for k in keys if (vals := _values(rows, k)) is not None}
               for v, rows in per_seed.items()}
    comps = comparisons(per_seed, keys, baseline)
    prior = prior_verdicts(per_seed)
    cam, size = info.get("cam_size"), info.get("image_size", "?")
    size = size[-1] if isinstance(size, (list, tuple)) else size
    cam_text = f"CAM {cam[0]}×{cam[1]} at {size} px" if cam else "no CAM"
    m = next((c[k].holm_m for c in comps.values() for k in c if c[k].holm_m is not None), 0)
    lines = [f"Test split: {num_test} images" + (f"; trained for {epochs} epochs" if epochs else "")
             + f"; {cam_text}; mean ± std over seeds.",
             "Primary endpoint: top-1 error (Welch's 95 % interval against the baseline, α = 0.05). "
             + (f"The other columns' verdicts are Holm-corrected across the table ({m} tests, family-wise α = 0.05)."
                if m else "One model per method or no baseline: no verdicts."), "",
             "| method | seeds | " + " | ".join(label if k != "maxboxacc_v2" else f"{label} ({cam_text})"
                                             for k, label in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for variant, ms in metrics.items():
        n = len(per_seed[variant])
        cells = [_cell(ms.get(k), comps.get(variant, {}).get(k)) for k in keys]
        if PRIOR_DIFF in keys and variant in prior and prior[variant].verdict != "beyond the prior":
            cells[keys.index(PRIOR_DIFF)] += f" ({NOT_BEYOND})"
        lines.append(f"| {variant} | {n} | " + " | ".join(cells) + " |")
    for name, label in (("centre_prior", "centre prior (Gaussian)"), ("random_cam", "random CAM")):
        p = priors.get(name)
        if p is not None and "maxboxacc_v2" in keys:
            cells = ["–"] * len(keys)
            cells[keys.index("maxboxacc_v2")] = f"{p['maxboxacc_v2']:.2f}"
            if PRIOR_DIFF in keys:
                cells[keys.index(PRIOR_DIFF)] = f"{p['maxboxacc_v2'] - priors['centre_prior']['maxboxacc_v2']:+.2f}"
            if "gt_known_loc_best" in keys and "gt_known_loc_best" in p:
                cells[keys.index("gt_known_loc_best")] = f"{p['gt_known_loc_best']:.2f} (σ = {p['best_sigma']:g})"
            lines.append(f"| {label} | – | " + " | ".join(cells) + " |")
    if "maxboxacc_v2" in keys and "centre_prior" in priors:
        cp, rc = priors["centre_prior"], priors.get("random_cam")
        per = ", ".join(f"{float(d):g}: {v:.1f}" for d, v in cp["per_iou"].items())
        lines += ["", f"Localization priors on the same {num_test} test boxes: the centre Gaussian (σ = "
                  f"{priors.get('sigma', 0.25):g} of the image side, the same map for every image) scores MaxBoxAccV2 "
                  f"{cp['maxboxacc_v2']:.2f} (per IoU {per})"
                  + (f"; random CAMs at {cam_text} score {rc['maxboxacc_v2']:.2f}" if rc else "") + "."]
        for variant, pv in prior.items():
            lo, hi = pv.stat.ci95
            lines.append(f"- {variant}: MaxBoxAccV2 − centre prior = {pv.stat.mean:+.2f} (95 % CI {lo:+.2f} to "
                         f"{hi:+.2f} over {pv.stat.n} seeds): {pv.verdict}.")
    lines += _box_rule_lines(per_seed)
    primary = primary_lines(per_seed, comps, paired or {}, baseline)
    if primary:
        lines += ["", "Primary endpoint (top-1 error, uncorrected α = 0.05):", *primary]
    lines += _ood_section(per_seed, kinds, info)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return MethodTable(metrics, comps, prior, keys)


def _box_rule_lines(per_seed: PerSeed) -> list[str]:
    """What the paper's box rule did: how often its box at sigma = 0.15 is the whole image (then its IoU with a
    small object box is < 0.5 and top-1 Loc reads 0 whatever the CAM), and the sigma GT-known Loc is best at."""
    whole = {v: s for v, rows in per_seed.items() if (s := _values(rows, "loc_whole_image")) is not None}
    if not whole:
        return []
    parts = []
    for v, vals in whole.items():
        sig = _values(per_seed[v], "loc_best_sigma") or []
        best = f", GT-known Loc best at σ = {', '.join(f'{x:g}' for x in sig)}" if sig else ""
        parts.append(f"{v} {summarize(vals).mean:.1f} %{best}")
    return ["", "Top-1 Loc's box (the largest region at σ = 0.15 of the map's maximum, the paper's rule) is the whole "
            "image for: " + "; ".join(parts) + ". Where that share is high, top-1 and GT-known Loc at σ = 0.15 "
            "measure the rule, not the CAM: read GT-known Loc at the best σ (chosen on this split, as MaxBoxAcc's "
            "τ) beside the centre prior's."]


def _ood_section(per_seed: PerSeed, kinds: Mapping[str, str], info: Mapping[str, Any]) -> list[str]:
    sets = [s for s in kinds if any(_values(rows, f"ood_{s}_auroc") for rows in per_seed.values())]
    if not sets:
        return []
    order = {"near": 0, "far": 1, "noise": 2}
    sets.sort(key=lambda s: order.get(kinds[s], 1))
    variants = list(per_seed)
    lines = ["", f"OOD detection per set (max-softmax AUROC, %; in-distribution: {info.get('num_in', '?')} test "
             f"images; mean ± std over seeds, then each model's 95 % bootstrap interval). Near sets are headline "
             "columns; the noise sets are sanity rows only (a ReLU network maps noise to one confident cluster, "
             "Hein et al. 2019).", "",
             "| set | kind | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for s in sets:
        cells = []
        for v in variants:
            vals = _values(per_seed[v], f"ood_{s}_auroc")
            if vals is None:
                cells.append("–")
                continue
            st = summarize(vals)
            ci = [(r.metrics.get(f"ood_{s}_auroc_lo"), r.metrics.get(f"ood_{s}_auroc_hi")) for r in per_seed[v]]
            shown = ", ".join(f"[{lo:.1f}, {hi:.1f}]" for lo, hi in ci if lo is not None and hi is not None)
            cells.append(f"{st.mean:.2f} ± {st.std:.2f}" + (f" {shown}" if shown else ""))
        kind = {"noise": "sanity (noise)"}.get(kinds[s], kinds[s])
        lines.append(f"| {s} | {kind} | " + " | ".join(cells) + " |")
    return lines
