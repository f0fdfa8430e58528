"""`cutmix-study train`: one training run of a config, with everything a person wants to look at afterwards.

Writes `<output>/train/` (default `runs/<name>/train`): `config.yaml` (resolved), `metrics.json` (final and best
val/test metrics), `checkpoints/best.pt` and `checkpoints/last.pt`, `samples.png` (a grid of augmented, mixed
training samples with their soft targets), `curves.png` (learning curves) and `summary.json`; and a `train` MLflow
run with the config as params, every epoch's metrics and those files (so `evaluate --from <run id>` finds it).
The run itself is `study.training.runner.train_run`, which `retrain` calls per seed.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.common import open_stage
from pipelines.results import TrainResult
from study.config.schema import PipelineConfig, flatten
from study.training.runner import fmt_metrics, load_dataset, train_run

SOURCE_STAGES: tuple[str, ...] = ()  # a training run starts from its config: no --from
SOURCE_HINT = ""
ARTIFACTS = ("config.yaml", "metrics.json", "samples.png", "curves.png")


def run(cfg: PipelineConfig, out_dir: Path, tracker, *, source=None, resume: bool = False,
        overwrite: bool = False) -> TrainResult:
    """Train `cfg` into `out_dir/train`, tracked as one `train` MLflow run. `source` is unused (see SOURCE_STAGES)."""
    data = load_dataset(cfg.data)  # before any file is written: a missing dataset is exit 2 with nothing left behind
    tracker.check()
    out_dir, done = open_stage(out_dir, ["train"], resume=resume, overwrite=overwrite, result=TrainResult)
    run_dir = out_dir / "train"
    if done is not None and (run_dir / "metrics.json").is_file():
        return done
    with tracker.stage_run("train", cfg.tracking.experiment or cfg.name, reuse=resume) as stage:
        stage.log_params({k: v for k, v in flatten(cfg).items() if k != "search.space"})
        logged = stage.last_step("train/loss") if stage.reused else -1

        def on_epoch(result) -> None:
            if result.epoch > logged:  # a resumed run logs only the epochs its killed predecessor did not
                stage.log_metrics(result.metrics, result.epoch)

        summary = train_run(cfg, run_dir, data=data, resume=resume, on_epoch=on_epoch)
        for name in ARTIFACTS:
            stage.log_artifact(run_dir / name)
        stage.log_artifact(run_dir / "checkpoints" / "best.pt", "checkpoints")
        result = TrainResult(str(out_dir), summary["final"], summary["best"], summary["best_epoch"],
                             summary["epochs"], summary["wall_s"], stage.run_id)
        result.to_json()
    return result


def report(result: TrainResult) -> str:
    shown = ("val/top1_err", "test/top1_err", "test/top5_err")
    return "\n".join([f"best epoch {result.best_epoch}: " + fmt_metrics(result.best, shown),
                      f"final epoch {result.epochs}: " + fmt_metrics(result.final, shown),
                      f"outputs in {result.stage_dir}"])
