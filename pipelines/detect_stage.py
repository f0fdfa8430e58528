"""`cutmix-study detect --from EXPORT_DIR_OR_MLFLOW_RUN [--data VOC_ROOT | synthetic]`: the transfer proof.

`--from` (or its alias `--backbone`) takes an export directory, a pipeline output directory holding `export/`, or
the MLflow run id of an `export` run (its `backbone` artifacts are downloaded); default `<output>/export`.

Fine-tunes Faster R-CNN with FPN from the exported backbone and reports mAP@0.5 and COCO mAP@[.5:.95]. With
`detect.compare_random: true` (the default) the same detector, seeded the same way, is also fine-tuned from a
randomly initialised backbone at the same budget: the pretrained backbone has to beat that control for the
export to count as a better starting point (the CutMix paper's section 4.2 argument, on our data).

Writes `<output>/detect/metrics.json` (per-epoch history of both detectors), `detector.pt`, `scenes.png` and
`summary.json` (DetectResult), and logs a `detect` MLflow run tagged with the export's run id.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.common import OutputError, Source, check_writable, open_stage, resolve_source
from pipelines.results import DetectResult, ExportResult
from study.cluster.session import init_ray
from study.config.schema import PipelineConfig, to_dict

SOURCE_STAGES = ("export",)
SOURCE_HINT = "give an export directory, a pipeline output directory after `export`, or an export MLflow run id"


def arg_overrides(args: argparse.Namespace) -> list[str]:
    """`--data synthetic` / `--data VOC_ROOT` as the config overrides they stand for."""
    data = getattr(args, "data", None)
    if not data:
        return []
    return ["detect.data=synthetic"] if data == "synthetic" else ["detect.data=voc", f"detect.root={data}"]


def export_dir_of(source: ExportResult | Source | None, out_dir: Path, tracker) -> Path:
    """The export directory to fine-tune from: given, in a directory (the export itself or a pipeline output
    holding `export/`), downloaded from an export MLflow run, or `<out_dir>/export`."""
    from study.export import MANIFEST, ExportError  # lazy: pulls safetensors, torch, torchvision

    if isinstance(source, ExportResult):
        return source.stage_dir
    source = resolve_source(source, tracker, stages=SOURCE_STAGES, hint=SOURCE_HINT)  # a path or run id as given
    if source is not None and source.run_id:
        dst = Path(tempfile.mkdtemp(prefix="cutmix-detect-"))
        got = source.download(tracker, "backbone", dst, required="give an export run id")
        return Path(got)
    export_dir = Path(source.path) if source is not None else Path(out_dir) / "export"
    if export_dir.is_dir() and not (export_dir / MANIFEST).is_file() and (export_dir / "export").is_dir():
        export_dir = export_dir / "export"
    if not export_dir.is_dir():
        raise ExportError(f"export directory not found: {export_dir} (run `cutmix-study export` or pass --from)")
    return export_dir


def source_config(source: Source | None, out_dir: Path, tracker) -> dict | None:
    """The exported run's config (detect settings included), used when --config is not given."""
    from study.export import read_manifest  # lazy: pulls safetensors, torch, torchvision

    try:
        return read_manifest(export_dir_of(source, out_dir, tracker)).get("config") or None
    except Exception:  # noqa: BLE001 - no readable export yet: run() reports it in one line
        return None


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> DetectResult:
    """Fine-tune the detector from `source` (an ExportResult or a resolved `--from`; default `<out_dir>/export`)
    and its random-init control; mAP on the detection val set."""
    from study.detection import detection_datasets  # lazy: pulls torch, torchvision
    from study.export import verify_export  # lazy: pulls safetensors, torch, torchvision

    export_dir = export_dir_of(source, Path(out_dir), tracker)
    if Path(out_dir).resolve() == export_dir.resolve():
        raise OutputError(f"--output {out_dir} is the export directory itself (choose its parent or another directory)")
    manifest = verify_export(export_dir)  # a corrupted export is refused before any work
    check_writable(out_dir)
    tracker.check()
    datasets = detection_datasets(cfg.detect, cfg.data.split_seed)
    out_dir, done = open_stage(out_dir, ["detect"], resume=resume, overwrite=overwrite, result=DetectResult)
    if done is not None:
        return done
    ddir = out_dir / "detect"
    ddir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"backbone": str(export_dir.resolve() / "backbone.pt"), "arch": manifest["arch"],
                              "pretrained_on": manifest.get("dataset") or "", "data": cfg.detect.data,
                              "classes": list(datasets[2]), "runs": {}}
    with tracker.stage_run("detect", cfg.tracking.experiment or cfg.name,
                           tags={"cutmix.export_run_id": manifest.get("mlflow_run_id") or "",
                                 "cutmix.backbone": str(export_dir)},
                           system_metrics=cfg.tracking.system_metrics) as stage:
        stage.log_params({f"detect.{k}": v for k, v in vars(cfg.detect).items()}
                         | {"backbone.arch": manifest["arch"], "backbone.dataset": manifest.get("dataset")})
        _log_scene_grid(datasets[0], datasets[2], ddir / "scenes.png", stage)
        from study.cluster.tasks import run_tasks  # lazy: pulls torch, torchvision
        from study.detection import finetune_task  # lazy: pulls torch, torchvision

        variants = [("pretrained", False)] + ([("random", True)] if cfg.detect.compare_random else [])
        print(f"detect: fine-tuning {' and '.join(n for n, _ in variants)} detectors ({manifest['arch']}) as Ray tasks")
        init_ray()
        jobs = [(name, {"export_dir": str(export_dir), "detect": to_dict(cfg.detect), "random_init": random_init,
                        "save_to": str(ddir / "detector.pt") if name == "pretrained" else None,
                        "split_seed": cfg.data.split_seed})
                for name, random_init in variants]

        def finished(name: str, out: dict[str, Any]) -> None:
            final = out["rows"][-1]
            print(f"detect: {name} backbone mAP@0.5 {final['val/map_50']:.3f} "
                f"({out['task']['ended'] - out['task']['started']:.0f} s)")

        outs = run_tasks(finetune_task, jobs, cfg.detect.resources, on_done=finished, what="a detect task",
                         key="detect.resources", placement_timeout_s=cfg.search.placement_timeout_s)
        for name, _ in variants:
            rows = outs[name]["rows"]
            for row in rows:
                stage.log_metrics({f"{name}/{k}": v for k, v in row.items() if k != "epoch"}, int(row["epoch"]))
            report["runs"][name] = {"final": rows[-1], "history": rows}
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
        stage.log_metrics(summary, step=cfg.detect.epochs)
        stage.log_artifact(ddir / "metrics.json")
        result = DetectResult(str(out_dir), report["backbone"], report["arch"], report["pretrained_on"],
                              report["data"], stage.run_id, summary["map"], summary["map_50"],
                              summary.get("random_map_50"), summary.get("random_map"), summary.get("gain_map_50"),
                              report["wall_s"])
        result.to_json()
    tracker.add_view_columns(cfg.tracking.experiment or cfg.name, metrics=["map_50", "random_map_50"])
    return result


def _log_scene_grid(dataset, classes, path: Path, stage, n: int = 16) -> None:
    """The first detection training scenes with their ground-truth boxes and labels, as a PNG on the detect run."""
    import torch

    from study.grids import save_box_grid  # lazy: pulls matplotlib, torch

    items = [dataset[i] for i in range(min(n, len(dataset)))]
    save_box_grid(torch.stack([image for image, _ in items]), [t["boxes"] for _, t in items], path,
                  [t["labels"] for _, t in items], class_names=classes, label_offset=1, nrow=8,
                  title="detection training scenes, ground-truth boxes")
    stage.log_artifact(path)


def report(result: DetectResult) -> str:
    line = f"detector from {result.backbone}: mAP@0.5 {result.map_50:.3f}, mAP@[.5:.95] {result.map:.3f}"
    if result.random_map_50 is not None:
        source = f" on {result.pretrained_on}" if result.pretrained_on else ""
        verdict = "pretrained wins" if result.gain_map_50 > 0 else f"pretraining{source} did not help here"
        line += f"; random-init control mAP@0.5 {result.random_map_50:.3f} ({verdict})"
    return line
