"""`cutmix-study retrain --from STUDY_DIR_OR_MLFLOW_RUN`: the winner, retrained before it is called better.

Every retrain carries fixed references (study.training.references, issue 15): `baseline` (no mixing) and
`cutmix_paper` (the paper's alpha = 1, p = 0.5), whatever the study found, beside the study's winner named by its
parameters (e.g. `cutmix_a0.12_p0.02`, shown as "cutmix α=0.12 p=0.02"; flagged when it mixes under 5 % of its
steps: in effect the baseline). The winner is the study's raced winner when it ran a race, and none when the race
found no setting distinguishable (the references alone are retrained); otherwise its best trial. `retrain.methods`
adds MixUp and Cutout at the paper's settings. All are trained for the full budget on train+val with the same
`retrain.seeds` seeds and tested on the held-out test split: mean ± sample std over seeds with a 95 % t-interval
(Google's tuning playbook; KellerJordan's airbench reports n and spread the same way), and each one's difference
to the baseline with Welch's t-interval and a verdict: better, worse or not resolved. The clean train error of
each model (`train/top1_err`) is reported beside its test error.

Writes `<output>/retrain/`: one run directory per variant and seed (`baseline/seed0/`, `cutmix_paper/seed0/`, ...)
and `summary.json` (RetrainResult). On train+val no split is left to pick an epoch by, so each seed's model is
its final epoch; the seed with the lowest test error is the one `export` takes (the mean ± std stays the unbiased
figure).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from pipelines.common import OutputError, Source, open_training_stage
from pipelines.results import RetrainResult, StudyResult
from study.cluster.tasks import run_seed_tasks
from study.config.load import dump_config, replace
from study.config.schema import PipelineConfig, flatten, to_dict
from study.decision import SEED_RULE, median_seed, race_eliminated, retrain_choice
from study.stats import compare, format_ci, format_diff, summarize
from study.summaries import SeedRun, VariantSummary
from study.training.references import CUTMIX_PAPER, retrain_variants, winner_name
from study.training.runner import Progress, log_seed_run, read_finished, train_seed

REPORTED = ("test/top1_err", "test/top5_err", "test/loss", "train/top1_err")


def study_winner(source: StudyResult | None) -> tuple[dict[str, Any] | None, str]:
    """(the study's pick's params, the race's verdict): the decision rule's pick (study.decision.study_pick: the
    raced winner, after a tie the best-evidence survivor, without a race the best trial); ({}, "") without a study
    (the config's own setting competes). A summary from before the rule: its raced winner (None after a tie: the
    references only), else its best trial's params."""
    if source is None:
        return {}, ""
    verdict = getattr(source, "race_verdict", "") or ""
    pick = getattr(source, "pick", None) or {}
    if pick:
        return dict(pick["params"]), verdict
    if verdict:
        winner = getattr(source, "winner_params", None)
        return (dict(winner) if winner is not None else None), verdict
    return dict(source.best_params or {}), ""


SOURCE_STAGES = ("study",)
SOURCE_HINT = "give the study's parent run id or a study directory"


def source_config(source: Source | None, out_dir: Path, tracker) -> Path | None:
    """The study's best_config.yaml (downloaded for a run id), used when --config is not given."""
    if source is not None and source.run_id:
        tmp = Path(tempfile.mkdtemp(prefix="cutmix-retrain-"))
        return source.download(tracker, "best_config.yaml", tmp, required="did the study finish?")
    study_dir = source.root() if source is not None else Path(out_dir)
    best = study_dir / "best_config.yaml"
    if source is not None and not best.is_file():
        raise OutputError(f"{study_dir} holds no best_config.yaml (run `cutmix-study study` there first)")
    return best if best.is_file() else None


def study_of(source: StudyResult | Source | None, out_dir: Path) -> StudyResult | None:
    """The study whose winner is retrained: given, named by a run id, in a directory, or none."""
    if source is None or isinstance(source, StudyResult):
        return source
    if source.run_id:
        return StudyResult(str(out_dir), parent_run_id=source.run_id)
    study_dir = source.root()
    if StudyResult.exists(study_dir):
        return StudyResult.from_dir(study_dir)
    if (study_dir / "study_run.json").is_file():  # a study from before study/summary.json
        run_id = json.loads((study_dir / "study_run.json").read_text())["run_id"]
        return StudyResult(str(study_dir), best_config=str(study_dir / "best_config.yaml"), parent_run_id=run_id)
    return None


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> RetrainResult:
    """Train every variant (study.training.references.retrain_variants) with K seeds on train+val; test metrics
    with intervals. `source`: the study whose winner is retrained beside the references (a StudyResult, or a
    resolved `--from`: its raced winner, else its best parameters; none when its race found no setting
    distinguishable), or None to retrain `cfg`'s own setting beside them."""

    source = study_of(source, Path(out_dir))
    winner, race_verdict = study_winner(source)
    study_run_id = source.parent_run_id if source is not None else None
    out_dir, done, data = open_training_stage(cfg, out_dir, tracker, ["retrain"], RetrainResult, resume=resume,
                                              overwrite=overwrite)
    if done is not None:
        return done
    merged = data.merged_train_val()
    epochs = cfg.retrain.epochs or cfg.train.epochs
    # The references (baseline, cutmix_paper), the study's winner named by its parameters, the paper's methods.
    pick = (getattr(source, "pick", None) or {}) if source is not None else {}
    chosen = retrain_variants(replace(cfg, {"train.epochs": epochs}), winner, cfg.retrain.methods,
                              role_label="study pick" if pick.get("tie") else "study winner")
    plan = [(v.name, k, replace(v.cfg, {"train.seed": v.cfg.train.seed + k}))
            for v in chosen for k in range(cfg.retrain.seeds)]
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    from study.tracking.context import dataset_specs  # lazy: pulls mlflow, like the tracker

    datasets = dataset_specs(to_dict(cfg)["data"], {"train+val": len(merged.train), "test": len(data.test)})
    with tracker.stage_run("retrain", cfg.tracking.experiment or cfg.name, reuse=resume,
                           tags={"cutmix.study_run_id": study_run_id or ""}, datasets=datasets,
                           system_metrics=cfg.tracking.system_metrics) as parent:
        parent.log_params({**{k: v for k, v in flatten(cfg).items() if k != "search.space"},
                           "retrain.epochs_used": epochs})
        jobs = []
        for variant, k, scfg in plan:
            run_dir = out_dir / "retrain" / variant / f"seed{k}"
            summary = read_finished(run_dir) if resume else None
            if summary is not None:  # a finished seed: read back, not retrained
                _log_seed(parent, variant, k, scfg, run_dir, summary, resume)  # what a killed driver did not log
                summaries[variant, k] = summary
                continue
            jobs.append(((variant, k), {"cfg": to_dict(scfg), "run_dir": str(run_dir),
                                        "label": f"retrain {variant} seed {k}"}))
        if jobs:
            progress = Progress(len(jobs), "retrain")
            configs = {(v, k): c for v, k, c in plan}
            done_before = len(summaries)

            def finished(key: tuple[str, int], summary: dict[str, Any]) -> None:
                variant, k = key
                _log_seed(parent, variant, k, configs[key], out_dir / "retrain" / variant / f"seed{k}", summary,
                          resume)
                summaries[key] = summary
                progress.update(len(summaries) - done_before,
                                f"{variant} seed {k}: test top-1 err {summary['final']['test/top1_err']:.2f} "
                                f"({summary['task']['ended'] - summary['task']['started']:.0f} s)")

            run_seed_tasks(train_seed, jobs, merged, cfg.retrain.resources, on_done=finished, what="a retrain task",
                           key="retrain.resources", placement_timeout_s=cfg.search.placement_timeout_s)
        rows: dict[str, list[SeedRun]] = {}
        for variant, k, scfg in plan:
            summary = summaries[variant, k]
            rows.setdefault(variant, []).append(SeedRun(scfg.train.seed, scfg.cutmix.method,
                                                        str(out_dir / "retrain" / variant / f"seed{k}"),
                                                        {m: summary["final"].get(m, math.nan) for m in REPORTED},
                                                        summary.get("task")))  # when and where it ran
        stats = {v: VariantSummary(tuple(r), {m: summarize([x.metrics[m] for x in r]) for m in REPORTED})
                 for v, r in rows.items()}
        comparisons = {v: {m: compare([x.metrics[m] for x in r], [x.metrics[m] for x in rows["baseline"]])
                           for m in REPORTED}
                       for v, r in rows.items() if v != "baseline" and "baseline" in rows}
        # The decision rule (study.decision): the study's pick (its own row or the reference it coincides with;
        # the paper's recipe without one), unless retrain measured it resolvably worse than another candidate;
        # of that variant the median seed by clean train error, never the test split.
        pick_variant = winner_name(chosen) or CUTMIX_PAPER
        candidates = [v.name for v in chosen if v.role != "method"]
        choice = retrain_choice(pick_variant, {v: [r.metrics["test/top1_err"] for r in rows[v]] for v in candidates},
                                eliminated=race_eliminated(getattr(source, "race", None)),
                                labels={v.name: v.label for v in chosen})
        main_variant = choice.variant
        k_best = median_seed([r.metrics["train/top1_err"] for r in rows[main_variant]])
        best = rows[main_variant][k_best]
        export_seed = {"variant": main_variant, "seed_index": k_best, "seed": best.seed, "rule": SEED_RULE,
                       "test/top1_err": best.metrics["test/top1_err"], "train/top1_err": best.metrics["train/top1_err"]}
        config_path = out_dir / "retrain" / "best_config.yaml"
        dump_config(next(v.cfg for v in chosen if v.name == main_variant), config_path)
        gain = None
        if "baseline" in rows and main_variant in stats:
            gain = stats["baseline"].metrics["test/top1_err"].mean - stats[main_variant].metrics["test/top1_err"].mean
        result = RetrainResult(str(out_dir), str(config_path), epochs, study_run_id, parent.run_id,
                               len(data.test), stats, comparisons,
                               best.run_dir, str(Path(best.run_dir) / "checkpoints" / "best.pt"), gain,
                               labels={v.name: v.label for v in chosen},
                               notes={v.name: v.note for v in chosen if v.note}, winner=winner_name(chosen),
                               race_verdict=race_verdict, choice=choice.to_dict(), export_seed=export_seed)
        result.to_json()
        flat: dict[str, float] = {"num_test": result.num_test}
        for variant, s in stats.items():
            for m in REPORTED:
                flat.update({f"{variant}/{m}_mean": s.metrics[m].mean, f"{variant}/{m}_std": s.metrics[m].std})
        for variant, c in comparisons.items():
            flat[f"{variant}/diff_test/top1_err"] = c["test/top1_err"].diff
        if gain is not None:
            flat["cutmix_gain_top1_points"] = gain
        parent.log_metrics(flat)
        parent.log_artifact(result.path(out_dir))
        parent.log_artifact(result.best_checkpoint, "checkpoints")
        parent.log_artifact(Path(best.run_dir) / "config.yaml")
        parent.log_artifact(Path(best.run_dir) / "metrics.json")
        parent.log_artifact(config_path)
        parent.set_tags({"cutmix.choice": main_variant, "cutmix.export_seed": str(k_best)})
    tracker.add_view_columns(cfg.tracking.experiment or cfg.name,
                             metrics=[f"{v}/test/top1_err_mean" for v in stats] + ["test/top1_err"])
    return result


def _log_seed(parent, variant: str, k: int, cfg: PipelineConfig, run_dir: Path, summary: dict, resume: bool) -> None:
    """A finished seed as a child run of the retrain run (study.training.runner.log_seed_run)."""
    log_seed_run(parent, f"retrain-{variant}-seed{k}", {"cutmix.stage": "retrain-seed", "cutmix.variant": variant,
                                                         "cutmix.seed_index": str(k)}, cfg, run_dir, summary, resume)


def report(result: RetrainResult) -> str:
    lines = [f"test top-1 error (%) on {result.num_test} test images, {result.epochs} epochs on train+val:"]
    if result.race_verdict:
        lines.append(f"study race: {result.race_verdict}")
    if result.winner is None:
        lines.append("no study winner retrained: the references only")
    width = max(len(result.labels.get(v, v)) for v in result.variants)
    for variant, stats in result.variants.items():
        t = stats.metrics["test/top1_err"]
        values = ", ".join(f"{v:.2f}" for v in t.values)
        note = f"  [{result.notes[variant]}]" if variant in result.notes else ""
        lines.append(f"{result.labels.get(variant, variant):>{width}}: {format_ci(t)} ({values}){note}")
    for variant, comp in result.comparisons.items():
        lines.append(f"{result.labels.get(variant, variant)} - baseline: {format_diff(comp['test/top1_err'])}")
    if result.choice:
        c, e = result.choice, result.export_seed
        lines.append(f"decision rule: {result.labels.get(c['variant'], c['variant'])}: {c['reason']}"
                     + (f" ({c['conflict']})" if c.get("conflict") else ""))
        t = result.variants[e["variant"]].metrics["test/top1_err"]
        lines.append(f"exported seed: {e['variant']} seed {e['seed_index']} ({e['rule']}): test top-1 err "
                     f"{e['test/top1_err']:.2f}, beside the variant's {format_ci(t)}")
    lines.append(f"best checkpoint: {result.best_checkpoint}")
    return "\n".join(lines)
