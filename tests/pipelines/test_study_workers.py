"""A study whose trials are data-parallel (`train.workers: 2`, gloo DDP on local Ray): what results.parquet and
MLflow report for each trial is what one process measures on the trial's final checkpoint."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from study.config.load import from_dict, load_config
from study.tracking.store import Tracker
from tests.helpers.cli import TINY


@pytest.fixture(scope="module")
def ray4():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Each trial: its actor (0.5 CPU) + 2 workers (1 CPU each); logical CPUs, the machine may have fewer cores.
    # The dashboard serves the state API Ray Train needs to free a stopped trial's workers
    # (study.cluster.session.init_ray).
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=True, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def final_checkpoint(run_dir: Path) -> dict:
    """The checkpoint of the highest epoch among those the Train run kept."""
    from study.checkpoint import load_checkpoint

    ckpts = [load_checkpoint(p) for p in run_dir.glob("checkpoint_*/checkpoint.pt")]
    assert ckpts, f"no checkpoint under {run_dir}"
    return max(ckpts, key=lambda c: c["epoch"])


@pytest.mark.slow
def test_two_worker_trials_report_what_one_process_measures_on_their_checkpoint(ray4, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.study_stage import run as run_study
    from study.data.registry import load_data
    from study.training.engine import Trainer

    cfg = load_config(None, TINY + [
        "name=workers", "train.workers=2", "train.device=cpu", "search.num_samples=2", "search.max_concurrent=2",
        "search.space.cutmix.prob={type: uniform, low: 0.0, high: 1.0}",
    ])
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_study(cfg, out, Tracker(uri, out))
    frame = pq.read_table(out / "results.parquet").to_pandas()
    assert len(frame) == 2 and frame["trial_id"].is_unique
    assert set(frame["status"]) == {"completed"} and (frame["epochs"] == 2).all()
    assert sorted(frame["cutmix.prob"]) == [0.0, 0.5]  # the baseline and the paper's default, evaluated first

    data = load_data(cfg.data)
    client = MlflowClient(tracking_uri=uri)
    for row in frame.to_dict("records"):
        # The trial trained as a Train run of its own, named after the trial, inside the experiment.
        ckpt = final_checkpoint(out / "tune" / "study" / "train" / f"train_{row['trial_id']}")
        assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
        trial_cfg = from_dict(ckpt["config"])
        assert trial_cfg.train.workers == 2 and trial_cfg.cutmix.prob == pytest.approx(row["cutmix.prob"])
        single = Trainer(trial_cfg, data, "cpu")
        single.load_checkpoint(ckpt)
        expected = single.evaluate("val")
        # Two ranks each evaluated half of val; their sums, all-reduced, give the one-process figures exactly.
        assert row["val/top1_err"] == pytest.approx(expected["val/top1_err"], abs=1e-9)
        assert row["val/top5_err"] == pytest.approx(expected["val/top5_err"], abs=1e-9)
        assert row["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-5)
        assert 0.0 < row["val/top1_err"] < 90.0  # it learnt: the ranks' gradients were combined

        run = client.get_run(row["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["ray.trial_id"] == row["trial_id"]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/top1_err")}
        assert sorted(history) == [1, 2] and history[2] == pytest.approx(row["val/top1_err"])
        # The searched value reached the mixer inside the workers (rank 0 reads it back).
        assert run.data.metrics["used/cutmix.prob"] == pytest.approx(row["cutmix.prob"])
    assert result.trials == 2


def test_workers_cannot_be_searched():
    from study.config.schema import ConfigError

    with pytest.raises(ConfigError, match="search.space.train.workers is not allowed"):
        load_config(None, TINY + ["search.space.train.workers={type: choice, values: [1, 2]}"])
