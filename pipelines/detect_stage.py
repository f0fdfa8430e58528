"""`cutmix-study detect --backbone EXPORT_DIR [--data VOC_ROOT | synthetic]`: the transfer proof.

Fine-tunes Faster R-CNN with FPN from the exported backbone and reports mAP@0.5 and COCO mAP@[.5:.95]. With
`detect.compare_random: true` (the default) the same detector, seeded the same way, is also fine-tuned from a
randomly initialised backbone at the same budget: the pretrained backbone has to beat that control for the
export to count as a better starting point (the CutMix paper's section 4.2 argument, on our data).

Writes `<output>/detect/metrics.json` and `detector.pt`, and logs a `detect` MLflow run tagged with the export's
run id.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pipelines.common import OutputError, check_writable, prepare_output, tracking_uri
from study.config import PipelineConfig, from_dict, load_config

SHOWN = ("val/map", "val/map_50", "val/map_75")


def pyramid_stages(strides: list[int]) -> list[int] | None:
    """1-based stages fed to the FPN: those of stride >= 4, as torchvision's FPN starts at C2 (stride 4).

    A CIFAR network's stride-1 and stride-2 stages would put 256-channel pyramid maps at full or half image size:
    at 64 px a ResNet-20 detector's step takes twice as long with its stride-2 level, and objects of 6-32 px are
    pooled from the stride-4 map anyway. A network with no stage that deep keeps its deepest stage; None when the
    manifest lists no strides (then every stage is returned).
    """
    if not strides:
        return None
    return [i + 1 for i, st in enumerate(strides) if st >= 4] or [len(strides)]


def finetune_from(export_dir: Path, cfg: PipelineConfig, datasets, *, random_init: bool, log) -> tuple[dict, Any]:
    """Fine-tune a detector on the exported backbone (or its random-init control); (per-epoch rows, model)."""
    import torch

    from study.detection import build_detector, finetune
    from study.export import load_backbone, read_manifest

    d = cfg.detect
    train_ds, val_ds, classes = datasets
    torch.manual_seed(d.seed)  # the same head initialisation for the pretrained run and its control
    manifest = read_manifest(export_dir)
    layers = None if d.trainable_layers < 0 else d.trainable_layers
    if random_init:
        # The control trains every layer: frozen random early layers would handicap it and flatter transfer.
        layers = len(manifest["stage_names"]) + 1
    returned = pyramid_stages(manifest.get("feature_strides") or [])
    backbone = load_backbone(export_dir, trainable_layers=layers, random_init=random_init, returned_layers=returned)
    norm = backbone.manifest.get("normalisation") or {}
    extra = {"image_mean": norm["mean"], "image_std": norm["std"]} if norm.get("mean") else {}
    # Only the levels the network computes: load_backbone's padding levels are subsampled copies (see FinestLevels).
    # Anchors span the dataset's object sizes when it states them (SyntheticShapes: 0.1-0.5 of the side).
    if hasattr(train_ds, "object_scale"):
        extra["anchor_scale"] = tuple(train_ds.object_scale)
    model = build_detector(backbone, len(classes) + 1, d.image_size, levels=len(returned) if returned else None,
                           representation_size=d.representation_size, box_batch_size_per_image=d.rois_per_image,
                           **extra)
    rows = list(finetune(model, train_ds, val_ds, d, device="cuda" if torch.cuda.is_available() else "cpu", log=log))
    return rows, model


def run_detect(export_dir: Path, cfg: PipelineConfig, out_dir: Path, uri: str, *, resume: bool = False,
               overwrite: bool = False, log=print) -> dict[str, Any]:
    import torch

    from study import tracking
    from study.detection import detection_datasets
    from study.export import verify_export

    manifest = verify_export(export_dir)  # a corrupted export is refused before any work
    check_writable(out_dir)
    tracking.check_tracking_uri(uri)
    datasets = detection_datasets(cfg.detect)
    out_dir = prepare_output(out_dir, ["detect"], resume=resume, overwrite=overwrite)
    ddir = out_dir / "detect"
    if resume and (ddir / "metrics.json").is_file():
        return json.loads((ddir / "metrics.json").read_text())
    ddir.mkdir(parents=True, exist_ok=True)

    client = tracking.client_for(uri)
    experiment_id = tracking.get_experiment(client, cfg.tracking.experiment or cfg.name)
    run_id, _ = tracking.start_run(client, experiment_id, "detect",
                                   {"cutmix.stage": "detect", "cutmix.output": str(out_dir)}, reuse=False)
    tracking.set_tags(client, run_id, {"cutmix.export_run_id": manifest.get("mlflow_run_id") or "",
                                       "cutmix.backbone": str(export_dir)})
    tracking.log_params(client, run_id, {f"detect.{k}": v for k, v in vars(cfg.detect).items()}
                        | {"backbone.arch": manifest["arch"], "backbone.dataset": manifest.get("dataset")})
    start = time.perf_counter()
    report: dict[str, Any] = {"backbone": str(Path(export_dir).resolve() / "backbone.pt"), "arch": manifest["arch"],
                              "pretrained_on": manifest.get("dataset") or "", "data": cfg.detect.data,
                              "classes": list(datasets[2]), "runs": {}}
    try:
        variants = [("pretrained", False)] + ([("random", True)] if cfg.detect.compare_random else [])
        for name, random_init in variants:
            log(f"detect: fine-tuning from the {name} backbone ({manifest['arch']})")
            rows, model = finetune_from(export_dir, cfg, datasets, random_init=random_init, log=log)
            for row in rows:
                tracking.log_metrics(client, run_id, {f"{name}/{k}": v for k, v in row.items() if k != "epoch"},
                                     step=int(row["epoch"]))
            report["runs"][name] = {"final": rows[-1], "history": rows}
            if name == "pretrained":
                torch.save(model.state_dict(), ddir / "detector.pt")
    except BaseException:
        tracking.end_run(client, run_id, "FAILED")
        raise
    pre = report["runs"]["pretrained"]["final"]
    report.update({"map": pre["val/map"], "map_50": pre["val/map_50"], "wall_s": time.perf_counter() - start})
    summary = {"map": pre["val/map"], "map_50": pre["val/map_50"]}
    if "random" in report["runs"]:
        rnd = report["runs"]["random"]["final"]
        report["random_map_50"] = rnd["val/map_50"]
        report["gain_map_50"] = pre["val/map_50"] - rnd["val/map_50"]
        summary.update({"random_map": rnd["val/map"], "random_map_50": rnd["val/map_50"],
                        "gain_map_50": report["gain_map_50"]})
    (ddir / "metrics.json").write_text(json.dumps(report, indent=2))
    tracking.log_metrics(client, run_id, summary, step=cfg.detect.epochs)
    tracking.log_artifact(client, run_id, ddir / "metrics.json")
    tracking.end_run(client, run_id)
    return report


def format_report(report: dict[str, Any]) -> str:
    line = f"detector from {report['backbone']}: mAP@0.5 {report['map_50']:.3f}, mAP@[.5:.95] {report['map']:.3f}"
    if "random_map_50" in report:
        source = f" on {report['pretrained_on']}" if report.get("pretrained_on") else ""
        verdict = "pretrained wins" if report["gain_map_50"] > 0 else f"pretraining{source} did not help here"
        line += f"; random-init control mAP@0.5 {report['random_map_50']:.3f} ({verdict})"
    return line


def detect_config(args: argparse.Namespace, manifest: dict[str, Any]) -> PipelineConfig:
    """The exported run's config (detect settings included) unless --config is given; --set and --data apply."""
    overrides = list(args.overrides)
    if args.data:
        overrides += ["detect.data=synthetic"] if args.data == "synthetic" else ["detect.data=voc",
                                                                                 f"detect.root={args.data}"]
    if args.config is not None or not manifest.get("config"):
        return load_config(args.config, overrides)
    from study.config import apply_overrides

    return from_dict(apply_overrides(manifest["config"], overrides))


def main(args: argparse.Namespace) -> int:
    from study.export import ExportError, read_manifest

    default_root = Path(args.output) if args.output else None
    export_dir = Path(args.backbone) if args.backbone else (default_root or Path("runs") /
                                                            load_config(args.config, args.overrides).name) / "export"
    if not export_dir.is_dir():
        raise ExportError(f"export directory not found: {export_dir} (run `cutmix-study export` or pass --backbone)")
    cfg = detect_config(args, read_manifest(export_dir))
    out = Path(args.output or export_dir.resolve().parent)
    if out.resolve() == export_dir.resolve():
        raise OutputError(f"--output {out} is the export directory itself (choose its parent or another directory)")
    report = run_detect(export_dir, cfg, out, tracking_uri(args, out), resume=args.resume, overwrite=args.overwrite)
    print(format_report(report))
    return 0
