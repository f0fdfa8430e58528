"""`cutmix-study export --from RUN_DIR_OR_MLFLOW_RUN`: the detection-ready backbone, registered in MLflow.

`--from` takes a study output directory (its `retrain/summary.json` names the best seed), a `retrain/` directory,
a `train`/seed run directory, or an MLflow run id of a `retrain` or `train` run (its checkpoint is downloaded).
Writes `<output>/export/` (DESIGN.md section 3) and registers the backbone as a new version of the MLflow model
`<name>-backbone`, with the manifest as tags.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from pipelines.common import OutputError, check_writable, is_run_id, prepare_output, tracking_uri

MANIFEST_TAGS = ("arch", "family", "dataset", "input_size", "channels", "feature_strides", "torchvision_body")


def resolve_run_dir(source: Path) -> tuple[Path, str | None]:
    """(run directory holding checkpoints/best.pt, the retrain MLflow run id if known) for a local source."""
    for summary in (source / "retrain" / "summary.json", source / "summary.json"):
        if summary.is_file():
            report = json.loads(summary.read_text())
            return Path(report["best_run_dir"]), report.get("retrain_run_id")
    if (source / "checkpoints").is_dir() or source.is_file():
        return source, None
    raise OutputError(f"--from {source}: no retrain/summary.json or checkpoints/ there (give a study output "
                      "directory after `retrain`, a run directory, or an MLflow run id)")


def fetch_run(uri: str, run_id: str, tmp: Path) -> tuple[Path, dict[str, str]]:
    """Download the checkpoint, config and metrics of an MLflow retrain/train run into a run-directory layout."""
    from study import tracking

    client = tracking.client_for(uri)
    tags, _, _ = tracking.run_info(client, run_id)
    run_dir = tmp / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    try:
        tracking.download_artifacts(client, run_id, "checkpoints/best.pt", run_dir / "checkpoints")
    except Exception:
        raise OutputError(f"MLflow run {run_id} has no checkpoints/best.pt artifact (give a retrain run id)") from None
    for name in ("config.yaml", "metrics.json"):
        try:
            tracking.download_artifacts(client, run_id, name, run_dir)
        except Exception:  # optional: the checkpoint holds the config and metrics too
            pass
    return run_dir, dict(tags)


def run_export(source: str | Path, out_dir: Path, uri: str, *, overwrite: bool = False, resume: bool = False,
               source_run_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Export the backbone of `source` (a run dir) into `out_dir/export`, log and register it; the manifest."""
    from study import export, tracking

    check_writable(out_dir)
    tracking.check_tracking_uri(uri)
    out_dir = prepare_output(out_dir, ["export"], resume=resume, overwrite=overwrite)
    edir = out_dir / "export"
    if resume and (edir / export.MANIFEST).is_file():
        return export.verify_export(edir)
    run_dir, retrain_run = resolve_run_dir(Path(source))
    source_run_id = source_run_id or retrain_run
    # Export first: a bad checkpoint is refused before anything is logged.
    manifest = export.export_backbone(run_dir, edir, extra={"source_run_id": source_run_id})
    study_name = name or manifest.get("config", {}).get("name") or "cutmix-study"
    experiment = manifest.get("config", {}).get("tracking", {}).get("experiment") or study_name

    client = tracking.client_for(uri)
    experiment_id = tracking.get_experiment(client, experiment)
    run_id, _ = tracking.start_run(client, experiment_id, "export",
                                   {"cutmix.stage": "export", "cutmix.output": str(out_dir)}, reuse=False)
    manifest["mlflow_run_id"] = run_id  # the manifest is not among the hashed files: updating it is safe
    (edir / export.MANIFEST).write_text(json.dumps(manifest, indent=2))
    tracking.set_tags(client, run_id, {"cutmix.source_run_id": source_run_id or "", "cutmix.source": str(run_dir)})
    tracking.log_params(client, run_id, {f"manifest.{k}": manifest.get(k) for k in MANIFEST_TAGS})
    tracking.log_metrics(client, run_id, {k: v for k, v in (manifest.get("metrics") or {}).items()
                                          if isinstance(v, int | float)}, step=0)
    tracking.log_artifact(client, run_id, edir, "backbone")
    tags = {k: manifest.get(k) for k in MANIFEST_TAGS}
    tags.update({f"sha256.{f}": info["sha256"] for f, info in manifest["files"].items()})
    version = tracking.register_model(client, f"{study_name}-backbone", run_id, "backbone", tags)
    tracking.end_run(client, run_id)
    manifest["registered_model"] = {"name": f"{study_name}-backbone", "version": version}
    return manifest


def main(args: argparse.Namespace) -> int:
    from study.config import load_config

    source = args.source
    tmp = None
    run_id = None
    if source and is_run_id(source):
        out = Path(args.output or "runs/export")
        uri = tracking_uri(args, out)
        tmp = tempfile.TemporaryDirectory(prefix="cutmix-export-")
        source_dir, tags = fetch_run(uri, source, Path(tmp.name))
        run_id = source
        out = Path(args.output or tags.get("cutmix.output") or out)
    else:
        default = Path("runs") / load_config(args.config, args.overrides).name
        source_dir = Path(source or args.output or default)
        if not source_dir.exists():
            raise OutputError(f"--from {source_dir}: no such directory (a study/run directory or an MLflow run id)")
        out = Path(args.output or (source_dir if (source_dir / "retrain").is_dir() or source_dir.name != "retrain"
                                   else source_dir.parent))
        uri = tracking_uri(args, out)
    try:
        manifest = run_export(source_dir, out, uri, overwrite=args.overwrite, resume=args.resume, source_run_id=run_id)
    finally:
        if tmp is not None:
            tmp.cleanup()
    edir = Path(out).resolve() / "export"
    print(f"backbone: {edir / 'backbone.pt'} ({manifest['arch']}, channels {manifest['channels']}, "
          f"strides {manifest['feature_strides']})")
    reg = manifest.get("registered_model")
    if reg:
        print(f"registered in MLflow as {reg['name']} version {reg['version']}")
    return 0
