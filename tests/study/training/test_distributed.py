"""study.training.distributed: data-parallel runs on a real local Ray (gloo DDP on the CPU), the Tune-trial wrapper, the
rules that size them, and the batch sharding they rely on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from study.config.load import load_config
from study.config.schema import ConfigError, ResourcesConfig
from study.data.batches import iterate_batches
from study.data.bundle import Split
from study.data.streaming import batch_indices, iterate_split

TINY = ["data.name=digits", "data.image_size=8", "data.pad=1", "model.arch=cnn", "model.width=8", "train.epochs=2",
        "train.batch_size=64", "train.lr=0.05", "train.num_threads=1", "train.device=cpu", "train.workers=2"]


def _cfg(*extra: str):
    return load_config(None, [*TINY, *extra])


# ---------------------------------------------------------------------------------------------------------------
# Sharding and sizing rules (fast)


@pytest.mark.parametrize("n, batch, drop_last", [(100, 16, True), (100, 16, False), (7, 4, False)])
def test_rank_shards_rebuild_the_global_batches(n: int, batch: int, drop_last: bool) -> None:
    split = Split(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(),
                  torch.arange(n))
    whole = [y for _, y in iterate_batches(split, batch, shuffle=True, seed=5, drop_last=drop_last)]
    for world in (2, 3):
        shards = [[y for _, y in iterate_split(split, batch, shuffle=True, seed=5, drop_last=drop_last, rank=r,
                                               world=world)] for r in range(world)]
        idx = [list(batch_indices(n, batch, shuffle=True, seed=5, drop_last=drop_last, rank=r, world=world))
               for r in range(world)]
        assert len(idx[0]) == len(whole)
        for b, expected in enumerate(whole):
            got = torch.cat([idx[r][b] for r in range(world)])
            assert torch.equal(got, expected)  # same global order, ranks' slices concatenated
        assert sum(len(s) for s in shards) >= len(whole)  # ranks skip empty slices of a short last batch only
    one = [y for _, y in iterate_split(split, batch, shuffle=True, seed=5, drop_last=drop_last)]
    assert all(torch.equal(a, b) for a, b in zip(one, whole))


def test_workers_are_validated_at_the_door() -> None:
    from study.config.validate import validate_workers

    validate_workers(_cfg())
    with pytest.raises(ConfigError, match="train.workers=0"):
        _cfg("train.workers=0")  # load_config validates: refused before anything runs
    with pytest.raises(ConfigError, match="multiple of the workers"):
        _cfg("train.workers=3")
    with pytest.raises(ConfigError, match="whole GPUs"):
        validate_workers(_cfg(), ResourcesConfig(cpu=2, gpu=0.5))
    validate_workers(_cfg("train.workers=1"), ResourcesConfig(cpu=2, gpu=0.25))  # fractional is fine in one process


def test_max_concurrent_trials_never_oversubscribes() -> None:
    from study.training.distributed import max_concurrent_trials, trial_resources

    cfg = _cfg("search.max_concurrent=64", "train.batch_size=256", "train.workers=8")
    two_nodes = {"CPU": 2 * 64 + 8, "GPU": 16}  # 2 nodes x 8 GPUs, plus a head with CPUs only
    assert max_concurrent_trials(cfg, two_nodes, ResourcesConfig(cpu=6, gpu=1)) == 2
    assert max_concurrent_trials(cfg, two_nodes, ResourcesConfig(cpu=6, gpu=2)) == 1
    assert max_concurrent_trials(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workers=1)),
                                 two_nodes, ResourcesConfig(cpu=4, gpu=0.25)) == 64  # capped by search.max_concurrent
    # CPU only: 2 workers x 1 CPU + the trial actor's 0.5 CPU per trial.
    assert max_concurrent_trials(_cfg("search.max_concurrent=8"), {"CPU": 4}, ResourcesConfig(cpu=1)) == 1
    assert max_concurrent_trials(_cfg("search.max_concurrent=8"), {"CPU": 5}, ResourcesConfig(cpu=1)) == 2
    assert max_concurrent_trials(_cfg(), {"CPU": 1}) == 1  # never 0
    assert trial_resources(_cfg()) == {"cpu": 0.5, "gpu": 0.0}
    assert trial_resources(_cfg("train.workers=1"))["cpu"] == _cfg().search.resources_per_trial.cpu


# ---------------------------------------------------------------------------------------------------------------
# Real runs on local Ray (slow)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = False
    if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) < 3:
        ray.shutdown()
    if not ray.is_initialized():
        # A trial actor (0.5 CPU) + 2 workers (1 CPU each) need 2.5 logical CPUs; 4 leave room for Ray's own.
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=True, logging_level="WARNING")
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_two_worker_run_reports_single_process_metrics_and_resumes(local_ray, tmp_path) -> None:
    from study.data.registry import load_data
    from study.training.distributed import fit_distributed, load_result_checkpoint
    from study.training.engine import Trainer

    cfg = _cfg()
    data = load_data(cfg.data)
    result = fit_distributed(cfg, data, name="run", storage_path=str(tmp_path))
    reported = result.metrics
    assert reported["epoch"] == 2.0
    ckpt = load_result_checkpoint(result.checkpoint)
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    # A single process evaluating rank 0's checkpoint sees exactly what the two ranks reported together.
    single = Trainer(cfg, data, "cpu")
    single.load_checkpoint(ckpt)
    for split in ("val", "test"):
        expected = single.evaluate(split)
        assert reported[f"{split}/top1_err"] == pytest.approx(expected[f"{split}/top1_err"], abs=1e-9)
        assert reported[f"{split}/top5_err"] == pytest.approx(expected[f"{split}/top5_err"], abs=1e-9)
        assert reported[f"{split}/loss"] == pytest.approx(expected[f"{split}/loss"], rel=1e-5)
    assert 0.0 < reported["val/top1_err"] < 90.0  # it learnt something: the ranks' gradients were combined
    # The same run name resumes from its latest checkpoint: a third epoch follows the first two unchanged.
    more = fit_distributed(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3)), data,
                           name="run", storage_path=str(tmp_path))
    resumed = load_result_checkpoint(more.checkpoint)
    assert resumed["epoch"] == 3 and len(resumed["history"]) == 3
    assert resumed["history"][:2] == ckpt["history"]


@pytest.mark.slow
def test_fit_in_tune_trial_reports_rank0_metrics_to_tune(local_ray, tmp_path) -> None:
    from ray import tune

    from study.data.registry import load_data
    from study.training.distributed import fit_in_tune_trial, load_result_checkpoint, trial_resources

    cfg = _cfg()
    data = load_data(cfg.data)
    train_storage = str(tmp_path / "train")

    def trainable(config, data=None):
        fit_in_tune_trial(cfg, data, storage_path=train_storage)

    class Seen(tune.Callback):
        epochs: list[float] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.epochs.append(result["epoch"])

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), trial_resources(cfg)),
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="study", storage_path=str(tmp_path / "tune"), verbose=0, callbacks=[Seen()]),
    )
    (result,) = list(tuner.fit())
    assert result.error is None, result.error
    assert result.metrics["epoch"] == 2.0 and result.metrics["training_iteration"] == 2
    assert Seen.epochs == [1.0, 2.0]  # one Tune result per epoch, from rank 0
    ckpt = load_result_checkpoint(result.metrics["checkpoint_path"])
    assert ckpt["history"][-1]["val/top1_err"] == result.metrics["val/top1_err"]
    assert (tmp_path / "train" / f"train_{result.metrics['trial_id']}").is_dir()  # run named after the trial


@pytest.mark.slow
def test_two_workers_stream_an_image_folder(local_ray, tmp_path) -> None:
    """DataLoader decode workers inside Ray Train workers, each rank decoding only its slice of every batch."""
    from study.data.registry import load_data
    from study.training.distributed import fit_distributed, load_result_checkpoint
    from study.training.engine import Trainer
    from tests.helpers.image_folders import stream_cfg, write_folder

    cfg = stream_cfg(write_folder(tmp_path / "imgs", 96, 24), "train.workers=2", "data.loader_workers=1")
    data = load_data(cfg.data)
    result = fit_distributed(cfg, data, name="stream", storage_path=str(tmp_path / "train"))
    single = Trainer(cfg, data, "cpu")
    single.load_checkpoint(load_result_checkpoint(result.checkpoint))
    expected = single.evaluate("val")
    assert result.metrics["val/top1_err"] == pytest.approx(expected["val/top1_err"], abs=1e-9)
    assert result.metrics["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-5)
