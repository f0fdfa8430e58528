"""`cutmix-study export --from RUN_DIR_OR_MLFLOW_RUN`: the detection-ready backbone, registered in MLflow.

`--from` takes a pipeline output directory (after `retrain`: the seed the decision rule chose, study.decision;
after `train`: its model), a `retrain/` directory, a `train`/seed run directory, or an MLflow run id of a `retrain`
run (its checkpoint is downloaded). Writes `<output>/export/`
(docs/architecture.md section 3) and `export/summary.json` (ExportResult). In MLflow the export run holds
the classifier and its backbone as MLflow models (`mlflow.pytorch.log_model`: MLmodel, signature, input example;
both take images as float [B, C, H, W] in [0, 1]), registered as new versions of `export.registered_model` (default:
the study name) and `<that>-backbone` with the alias `champion` and the manifest as version tags, so
`mlflow.pytorch.load_model("models:/<name>@champion")` loads the classifier; the torchvision-strict files and the
manifest stay beside them as the run's `backbone/` artifacts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pipelines.common import OutputError, check_writable, open_stage, resolve_source
from pipelines.results import ExportResult, RetrainResult, TrainResult
from study import export
from study.config.schema import PipelineConfig

MANIFEST_TAGS = ("arch", "family", "dataset", "input_size", "channels", "feature_strides", "torchvision_body")
HINT = "give a pipeline output directory after `retrain` or `train`, a run directory, or a retrain MLflow run id"
SOURCE_STAGES = ("retrain", "retrain-seed")
SOURCE_HINT = HINT


def local_run_dir(source: Path) -> tuple[Path, str | None]:
    """(run directory holding checkpoints/best.pt, the retrain MLflow run id if known) for a local source."""
    for root in (source, source.parent):
        if RetrainResult.exists(root) and (source == root or source.name == RetrainResult.STAGE):
            retrain = RetrainResult.from_dir(root)
            return Path(retrain.best_run_dir), retrain.retrain_run_id
    if (source / "checkpoints").is_dir() or source.is_file():
        return source, None
    if TrainResult.exists(source):  # the --output directory of `cutmix-study train`: its run directory is train/
        return source / TrainResult.STAGE, TrainResult.from_dir(source).run_id or None
    raise OutputError(f"--from {source}: no retrain/summary.json or checkpoints/ there ({HINT})")


def fetch_run(tracker, src, tmp: Path) -> Path:
    """The checkpoint, config and metrics of an MLflow retrain run, downloaded into a run-directory layout."""
    run_dir = tmp / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    src.download(tracker, "checkpoints/best.pt", run_dir / "checkpoints", required="give a retrain run id")
    for name in ("config.yaml", "metrics.json"):  # optional: the checkpoint holds the config and metrics too
        src.download(tracker, name, run_dir)
    return run_dir


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> ExportResult:
    """Export the backbone of `source` (a RetrainResult, a directory or a retrain MLflow run id; default the output
    directory) into `out_dir/export`, log and register it. The study name comes from the checkpoint's config."""
    check_writable(out_dir)
    tracker.check()
    with tempfile.TemporaryDirectory(prefix="cutmix-export-") as tmp:
        if isinstance(source, RetrainResult):
            run_dir, source_run_id = Path(source.best_run_dir), source.retrain_run_id
        else:
            src = resolve_source(source, tracker, stages=("retrain", "retrain-seed"), hint=HINT)
            if src is not None and src.run_id:
                run_dir, source_run_id = fetch_run(tracker, src, Path(tmp)), src.run_id
            else:
                run_dir, source_run_id = local_run_dir(src.path if src is not None else Path(out_dir))
        out_dir, done = open_stage(out_dir, ["export"], resume=resume, overwrite=overwrite, result=ExportResult)
        edir = out_dir / "export"
        if done is not None:
            export.verify_export(edir)
            return done
        # Export first: a bad checkpoint is refused before anything is logged.
        manifest = export.export_backbone(run_dir, edir, extra={"source_run_id": source_run_id})
        serving = export.serving_models(run_dir)  # the classifier and backbone as MLflow models take [0, 1] images
    config = manifest.get("config") or {}
    study_name = config.get("name") or cfg.name
    experiment = (config.get("tracking") or {}).get("experiment") or study_name
    registered = ((cfg.export.registered_model if cfg is not None else "")
                  or (config.get("export") or {}).get("registered_model") or study_name)
    system_metrics = bool(cfg.tracking.system_metrics) if cfg is not None else False
    with tracker.stage_run("export", experiment, tags={"cutmix.source_run_id": source_run_id or "",
                                                       "cutmix.source": str(run_dir)},
                           system_metrics=system_metrics) as stage:
        manifest["mlflow_run_id"] = stage.run_id  # the manifest is not among the hashed files: updating it is safe
        (edir / export.MANIFEST).write_text(json.dumps(manifest, indent=2))
        stage.log_params({f"manifest.{k}": manifest.get(k) for k in MANIFEST_TAGS})
        stage.log_metrics({k: v for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, int | float)})
        stage.log_artifact(edir, "backbone")  # the torchvision-strict files and the manifest, beside the models
        tags = {k: manifest.get(k) for k in MANIFEST_TAGS}
        tags.update({f"sha256.{f}": info["sha256"] for f, info in manifest["files"].items()})
        models = {}
        for key, name in (("classifier", registered), ("backbone", f"{registered}-backbone")):
            m = serving[key]
            # "backbone_model": the run's `backbone/` artifacts are the strict files (MLflow 3 resolves a run's
            # artifact path that equals a logged model's name to that model)
            logged = stage.log_model(m.module, f"{key}_model" if key == "backbone" else key, m.example,
                                     registered_name=name,
                                     tags={**tags, "cutmix.model": m.description})
            models[key] = {"name": logged.name, "version": logged.version, "alias": logged.alias,
                           "uri": logged.alias_uri, "model_uri": logged.model_uri}
        result = ExportResult(str(out_dir), manifest, {**models["classifier"], "backbone": models["backbone"]})
        result.to_json()
    return result


def report(result: ExportResult) -> str:
    m = result.manifest
    lines = [f"backbone: {result.backbone.resolve()} ({m['arch']}, channels {m['channels']}, "
             f"strides {m['feature_strides']})"]
    for m in (result.registered_model, result.registered_model.get("backbone") or {}):
        if m:
            lines.append(f"registered in MLflow as {m['name']} version {m['version']}: {m.get('uri', '')}")
    return "\n".join(lines)
