"""Data-parallel training runs: one run (`study.training.engine`) as a Ray Train `TorchTrainer` with `train.workers`
processes.

Ray 2.60's pattern (Ray Train V2; ``Tuner(trainer)`` is deprecated): a Tune *function* trainable builds and fits a
`TorchTrainer` whose ``RunConfig.callbacks`` hold ``ray.tune.integration.ray_train.TuneReportCallback()``, which
forwards rank 0's reports to Tune (`fit_in_tune_trial`). Each worker runs `train_loop`: the same `Trainer.fit()` as a
single process, with DDP (Li et al. 2020, "PyTorch Distributed"; NCCL on GPUs, gloo on CPUs) and:

- the same global batches: every rank draws the epoch's permutation from the same (train.seed, epoch) seed and
  takes its contiguous slice of each global batch of ``train.batch_size`` (`study.data.streaming.batch_indices`), so
  ``train.batch_size`` and ``train.lr`` mean the same for any number of workers (DDP averages the ranks' mean
  gradients: the global batch's mean gradient, as in Goyal et al. 2017 with a fixed global batch);
- per-rank augmentation draws: each rank seeds its crops, flips and boxes with (epoch seed, rank). CutMix in
  ``batch`` mode therefore draws **one box and one lambda per rank's slice**: a global batch of B images on N ranks
  carries N independent boxes, each pasting partners from the same slice of B/N images. The paper's algorithm
  (Yun et al. 2019, Alg. A1) draws one box per batch; the official clovaai/CutMix-PyTorch code mixes the whole batch
  before ``nn.DataParallel`` scatters it, so there one box covers all GPUs. Per-rank boxes keep the expected mixing
  ratio and the per-image target rule, and add box diversity per step; with N = 1 nothing changes, and
  ``cutmix.mode: sample`` (a box per image) is the same for any N;
- validation summed, not averaged: each rank evaluates its slice of the split with rank 0's weights and batch-norm
  statistics (broadcast first), and the loss sum and error counts are all-reduced before dividing by the split's
  size, so the reported metrics are those of a single-process evaluation of rank 0's checkpoint;
- checkpoints from rank 0 only (the plain dict of `study.checkpoint`, file ``checkpoint.pt``), every
  ``checkpoint_every`` epochs and the last; every rank calls ``ray.train.report`` every epoch (it is a barrier);
- resume: Ray Train restores the run's latest checkpoint when a run of the same ``RunConfig.name`` exists under
  ``storage_path`` (worker failures within ``max_failures``, a retried Tune trial, a resubmitted job). The name is
  derived from the Tune trial id, never from a clock.

Batch norm is per rank (no SyncBatchNorm), as in torchvision's reference recipes; with ``train.workers: 1`` the
engine's single-process path runs unchanged (and keeps its exact resume).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from study.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from study.config.load import from_dict
from study.config.schema import PipelineConfig, ResourcesConfig, to_dict
from study.config.validate import validate_workers
from study.data.bundle import DataBundle
from study.training.engine import EpochResult, Trainer

TRIAL_DRIVER_CPU = 0.5  # Tune's trial actor only starts the TorchTrainer and waits; Tune rejects {"cpu": 0}
RUN_PREFIX = "train_"


class DistributedTrainer(Trainer):
    """`Trainer` as rank `rank` of `world` in an initialised `torch.distributed` process group (Ray Train sets it
    up). The model is wrapped in DDP for the training step; checkpoints hold the unwrapped model."""

    def __init__(self, cfg: PipelineConfig, data: DataBundle, device: str | torch.device | None = None, *,
                 rank: int = 0, world: int = 1):
        super().__init__(cfg, data, device)
        self.rank, self.world = rank, world
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=ids)

    def reduce_sum(self, totals: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        totals = totals.detach().clone()
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        return totals

    @torch.no_grad()
    def evaluate(self, split: Any, name: str | None = None) -> dict[str, float]:
        if self.world > 1:
            import torch.distributed as dist

            # DDP broadcasts buffers at the start of each training forward, then every rank updates its batch-norm
            # running statistics from its own slice: evaluate with rank 0's (the checkpointed model) everywhere.
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)
        return super().evaluate(split, name)


def epoch_metrics(result: EpochResult) -> dict[str, Any]:
    """What a worker reports per epoch: the epoch's metrics plus `best/<metric>` of the run so far."""
    metrics = dict(result.metrics)
    metrics.update({f"best/{k}": v for k, v in result.trainer.best_metrics.items() if "/" in k})
    return metrics


def _device(use_gpu: bool) -> torch.device:
    if use_gpu:
        import ray.train.torch

        return ray.train.torch.get_device()  # cuda:<local rank> of the GPUs Ray gave this worker
    return torch.device("cpu")


def train_loop(config: dict[str, Any]) -> None:
    """The per-worker function of `TorchTrainer` (Ray Train V2). `config` keys: cfg (plain dict), data (a
    DataBundle or an ObjectRef to one), use_gpu, threads, checkpoint_every, metrics_fn (module-level callable)."""
    import ray
    import ray.train

    cfg = from_dict(config["cfg"])
    data = config["data"]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    trainer = DistributedTrainer(cfg, data, _device(bool(config.get("use_gpu"))), rank=rank, world=world)
    if resume is not None:
        trainer.load_checkpoint(resume)
    metrics_fn: Callable[[EpochResult], dict[str, Any]] = config.get("metrics_fn") or epoch_metrics
    every = max(1, int(config.get("checkpoint_every", 1)))
    for result in trainer.fit():
        metrics = metrics_fn(result)
        due = result.epoch >= cfg.train.epochs or result.epoch % every == 0
        if due and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(trainer.checkpoint(), Path(d) / CHECKPOINT_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)  # a barrier: every rank reports every epoch


def worker_resources(cfg: PipelineConfig, resources: ResourcesConfig | None = None) -> dict[str, float]:
    """Ray resources of one training process: `resources` (default `search.resources_per_trial`) per worker."""
    res = resources or cfg.search.resources_per_trial
    out = {"CPU": float(res.cpu)}
    if res.gpu > 0:
        out["GPU"] = float(res.gpu)
    return out


def fit_distributed(cfg: PipelineConfig, data: Any, *, name: str, storage_path: str,
                    resources: ResourcesConfig | None = None, callbacks: Sequence[Any] = (),
                    metrics_fn: Callable[[EpochResult], dict[str, Any]] | None = None, checkpoint_every: int = 1,
                    max_failures: int = 0, num_to_keep: int = 2) -> Any:
    """Train `cfg` on `data` (a DataBundle or an ObjectRef to one) with `cfg.train.workers` DDP workers; return the
    `ray.train.Result` (its `.checkpoint` holds ``checkpoint.pt``, see `load_result_checkpoint`).

    `name` must be stable across restarts: a run of the same name under `storage_path` (a local path reachable by
    every node, or a URI such as s3://bucket/prefix) resumes from its latest checkpoint. Raises ConfigError for a
    bad `train.workers`, and `ray.train.TrainingFailedError` when the run fails beyond `max_failures` retries.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    validate_workers(cfg, resources)
    per_worker = worker_resources(cfg, resources)
    use_gpu = per_worker.get("GPU", 0) > 0 and cfg.train.device != "cpu"
    if not isinstance(data, ray.ObjectRef):
        data = ray.put(data)  # one copy in the object store, read by every worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": to_dict(cfg), "data": data, "use_gpu": use_gpu, "threads": per_worker["CPU"],
                           "checkpoint_every": checkpoint_every, "metrics_fn": metrics_fn},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.train.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=storage_path, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep)),
    )
    return trainer.fit()


def fit_in_tune_trial(cfg: PipelineConfig, data: Any, *, storage_path: str, resources: ResourcesConfig | None = None,
                      metrics_fn: Callable[[EpochResult], dict[str, Any]] | None = None, checkpoint_every: int = 1,
                      max_failures: int = 0) -> Any:
    """Call from INSIDE a Tune function trainable: fit `cfg` data-parallel and forward rank 0's per-epoch reports to
    Tune (``TuneReportCallback``; each carries ``checkpoint_path`` when a checkpoint was saved). The Train run is
    named after the Tune trial id, so a retried trial resumes its own run from `storage_path`."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    name = RUN_PREFIX + tune.get_context().get_trial_id()
    return fit_distributed(cfg, data, name=name, storage_path=storage_path, resources=resources,
                           callbacks=[TuneReportCallback()], metrics_fn=metrics_fn,
                           checkpoint_every=checkpoint_every, max_failures=max_failures)


def load_result_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """The `study.checkpoint` dict inside a `ray.train.Checkpoint`, or at a reported ``checkpoint_path`` (local
    path or URI, as `TuneReportCallback` forwards it)."""
    if isinstance(checkpoint, str):
        from ray.train import Checkpoint

        checkpoint = Checkpoint(checkpoint) if "://" not in checkpoint else Checkpoint.from_uri(checkpoint)
    with checkpoint.as_directory() as d:
        return load_checkpoint(Path(d) / CHECKPOINT_FILE)


def trial_resources(cfg: PipelineConfig) -> dict[str, float]:
    """Tune resources of the trial actor itself: with `train.workers > 1` it only starts the TorchTrainer (whose
    workers take their own placement group at `fit()`), so a fraction of a CPU and no GPU; with one worker the trial
    trains in-process and needs `search.resources_per_trial`."""
    if cfg.train.workers > 1:
        return {"cpu": TRIAL_DRIVER_CPU, "gpu": 0.0}
    res = cfg.search.resources_per_trial
    return {"cpu": res.cpu, "gpu": res.gpu}


def max_concurrent_trials(cfg: PipelineConfig, cluster: Mapping[str, float],
                          resources: ResourcesConfig | None = None) -> int:
    """How many trials can hold their workers at once on `cluster` (``ray.cluster_resources()``), so that trials
    never wait on each other's placement groups: GPUs // (workers x GPUs per worker) when trials use GPUs, else
    CPUs // (workers x CPUs per worker + the trial actor's CPU); at least 1, at most `search.max_concurrent`."""
    per = worker_resources(cfg, resources)
    w = cfg.train.workers
    if per.get("GPU", 0) > 0:
        fit = math.floor(cluster.get("GPU", 0) / (w * per["GPU"]) + 1e-9)
    else:
        driver = TRIAL_DRIVER_CPU if w > 1 else 0.0
        fit = math.floor(cluster.get("CPU", 0) / (w * per["CPU"] + driver) + 1e-9)
    return max(1, min(cfg.search.max_concurrent, fit))
