"""`cutmix-study retrain --from STUDY_DIR_OR_MLFLOW_RUN`: the winner, retrained before it is called better.

The study's best configuration is trained for the full budget on train+val with `retrain.seeds` seeds and
evaluated on the held-out test split; the figure reported is the mean ± sample std over seeds (Google's tuning
playbook; KellerJordan's airbench reports n and spread the same way). With `retrain.compare_baseline: true` the
same protocol runs with p=0, so the CutMix gain is measured with its spread, not assumed.

Writes `<output>/retrain/`: one run directory per seed (`cutmix/seed0/`, ... and `baseline/seed0/`, ...), and
`summary.json`. On train+val no split is left to pick an epoch by, so each seed's model is its final epoch; the
seed with the lowest test error is the one `export` takes (the mean ± std stays the unbiased figure).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipelines.common import (
    OutputError,
    check_writable,
    default_output,
    is_run_id,
    mean_std,
    prepare_output,
    tracking_uri,
)
from study.config import PipelineConfig, flatten, load_config, replace

REPORTED = ("test/top1_err", "test/top5_err", "test/loss")


def resolve_retrain_source(args: argparse.Namespace) -> tuple[PipelineConfig, Path, str | None, str | None]:
    """(config, study output dir, study MLflow run id, tracking uri) from --from / --config / --output."""
    source = args.source
    if source and is_run_id(source):
        from study import tracking

        out_hint = Path(args.output) if args.output else None
        uri = tracking_uri(args, out_hint or Path("runs"))
        client = tracking.client_for(uri)
        tags, _, _ = tracking.run_info(client, source)
        if tags.get("cutmix.stage") != "study":
            raise OutputError(f"MLflow run {source} is a {tags.get('cutmix.stage', 'non-cutmix')} run (give the "
                              "study's parent run id or a study directory)")
        tmp = Path(tempfile.mkdtemp(prefix="cutmix-retrain-"))
        try:
            path = tracking.download_artifacts(client, source, "best_config.yaml", tmp)
        except Exception:
            raise OutputError(f"MLflow run {source} has no best_config.yaml artifact (did the study finish?)") from None
        cfg = load_config(path, args.overrides)
        out = Path(args.output) if args.output else Path(tags.get("cutmix.output") or default_output(cfg))
        return cfg, out, source, uri
    if source:
        study_dir = Path(source)
        if not study_dir.is_dir():
            raise OutputError(f"--from {source}: no such directory or MLflow run id (a study output directory or "
                              "the study's 32-character MLflow run id)")
        best = study_dir / "best_config.yaml"
        if not best.is_file():
            raise OutputError(f"{study_dir} holds no best_config.yaml (run `cutmix-study study` there first)")
        cfg = load_config(args.config or best, args.overrides)
        out = Path(args.output or study_dir)
    else:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.output or default_output(cfg))
        best = out / "best_config.yaml"
        if args.config is None and best.is_file():
            cfg = load_config(best, args.overrides)
    run_file = out / "study_run.json"
    study_run = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
    return cfg, out, study_run, None


def run_retrain(cfg: PipelineConfig, out_dir: Path, uri: str, *, study_run_id: str | None = None,
                resume: bool = False, overwrite: bool = False, data=None) -> dict[str, Any]:
    """Train the config with K seeds (and the p=0 baseline if asked); returns the summary.json content."""
    from pipelines.train_stage import train_run
    from study import tracking
    from study.data import load_data
    from study.engine import mixes

    check_writable(out_dir)
    tracking.check_tracking_uri(uri)
    data = data if data is not None else load_data(cfg.data)
    out_dir = prepare_output(out_dir, ["retrain"], resume=resume, overwrite=overwrite)
    rdir = out_dir / "retrain"
    merged = data.merged_train_val()
    epochs = cfg.retrain.epochs or cfg.train.epochs
    variants = [("cutmix", cfg)]
    if cfg.retrain.compare_baseline and mixes(cfg):
        variants.append(("baseline", replace(cfg, {"cutmix.prob": 0.0})))

    client = tracking.client_for(uri)
    experiment_id = tracking.get_experiment(client, cfg.tracking.experiment or cfg.name)
    stage_tags = {"cutmix.stage": "retrain", "cutmix.output": str(out_dir)}
    parent, _ = tracking.start_run(client, experiment_id, "retrain", stage_tags, reuse=resume)
    tracking.set_tags(client, parent, {"cutmix.study_run_id": study_run_id or ""})
    tracking.log_params(client, parent, {**{k: v for k, v in flatten(cfg).items() if k != "search.space"},
                                         "retrain.epochs_used": epochs})

    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for variant, vcfg in variants:
            for k in range(cfg.retrain.seeds):
                scfg = replace(vcfg, {"train.seed": vcfg.train.seed + k, "train.epochs": epochs})
                run_dir = rdir / variant / f"seed{k}"
                child, _ = tracking.start_run(client, experiment_id, f"retrain-{variant}-seed{k}",
                                              {"mlflow.parentRunId": parent, "cutmix.stage": "retrain-seed",
                                               "cutmix.variant": variant, "cutmix.seed_index": str(k)}, reuse=resume)
                if (run_dir / "metrics.json").is_file() and resume:
                    summary = json.loads((run_dir / "metrics.json").read_text())
                else:
                    tracking.log_params(client, child, {"train.seed": scfg.train.seed, "cutmix.prob": scfg.cutmix.prob,
                                                        "train.epochs": epochs})
                    start = tracking.last_step(client, child, "epoch") if resume else -1

                    def log_epoch(result, child=child, start=start):
                        if result.epoch > start:
                            tracking.log_metrics(client, child, result.metrics, result.epoch)

                    summary = train_run(scfg, run_dir, data=merged, resume=resume, label=f"retrain {variant} seed {k}",
                                        on_epoch=log_epoch)
                    # On train+val the final epoch is the model (no held-out split to select another by).
                    shutil.copyfile(run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt")
                    for name in ("metrics.json", "curves.png", "samples.png", "config.yaml"):
                        tracking.log_artifact(client, child, run_dir / name)
                tracking.end_run(client, child)
                results.setdefault(variant, []).append({"seed": scfg.train.seed, "run_dir": str(run_dir),
                                                        **{m: summary["final"][m] for m in REPORTED}})
    except BaseException:
        tracking.end_run(client, parent, "FAILED")
        raise

    report: dict[str, Any] = {"config": str(out_dir / "best_config.yaml"), "epochs": epochs,
                              "study_run_id": study_run_id,
                              "retrain_run_id": parent, "variants": {}}
    for variant, rows in results.items():
        report["variants"][variant] = {"seeds": rows, **{m: mean_std([r[m] for r in rows]) for m in REPORTED}}
    best = min(results["cutmix"], key=lambda r: r["test/top1_err"])
    report["best_run_dir"] = best["run_dir"]
    report["best_checkpoint"] = str(Path(best["run_dir"]) / "checkpoints" / "best.pt")
    if "baseline" in results:
        means = {v: report["variants"][v]["test/top1_err"]["mean"] for v in ("baseline", "cutmix")}
        gain = means["baseline"] - means["cutmix"]
        report["cutmix_gain_top1_points"] = gain  # positive: CutMix lowers the error
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "summary.json").write_text(json.dumps(report, indent=2))

    flat: dict[str, float] = {}
    for variant, stats in report["variants"].items():
        for m in REPORTED:
            flat[f"{variant}/{m}_mean"] = stats[m]["mean"]
            flat[f"{variant}/{m}_std"] = stats[m]["std"]
    if "cutmix_gain_top1_points" in report:
        flat["cutmix_gain_top1_points"] = report["cutmix_gain_top1_points"]
    tracking.log_metrics(client, parent, flat, step=0)
    tracking.log_artifact(client, parent, rdir / "summary.json")
    tracking.log_artifact(client, parent, Path(report["best_checkpoint"]), "checkpoints")
    tracking.log_artifact(client, parent, Path(best["run_dir"]) / "config.yaml")
    tracking.log_artifact(client, parent, Path(best["run_dir"]) / "metrics.json")
    tracking.end_run(client, parent)
    return report


def gain_line(report: dict[str, Any]) -> str:
    """One line on the CutMix gain; a gain no larger than the seed-to-seed std of either variant is called a tie."""
    g = report["cutmix_gain_top1_points"]
    spread = max(report["variants"][v]["test/top1_err"]["std"] for v in ("baseline", "cutmix"))
    if abs(g) <= spread:
        verdict = f"within the seed spread of {spread:.2f}: no measured difference"
    else:
        verdict = "CutMix wins" if g > 0 else "the baseline wins"
    return f"CutMix gain: {g:+.2f} points of top-1 error ({verdict})"


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for variant, stats in report["variants"].items():
        t = stats["test/top1_err"]
        values = ", ".join(f"{v:.2f}" for v in t["values"])
        lines.append(f"{variant:>8}: test top-1 error {t['mean']:.2f} ± {t['std']:.2f} % over {t['n']} seeds "
                     f"({values})")
    if "cutmix_gain_top1_points" in report:
        lines.append(gain_line(report))
    lines.append(f"best checkpoint: {report['best_checkpoint']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    cfg, out, study_run, uri = resolve_retrain_source(args)
    report = run_retrain(cfg, out, uri or tracking_uri(args, out), study_run_id=study_run, resume=args.resume,
                         overwrite=args.overwrite)
    print(format_report(report))
    return 0
