"""The training loop: plain PyTorch, no Ray and no MLflow.

`Trainer.fit()` yields one `EpochResult` per epoch, so a Ray Tune trainable, the retrain stage, the `train`
command and the tests all drive the same loop (the shape of KellerJordan's cifar10-airbench and torchvision's
``references/classification/train.py``). The CutMix recipe follows Yun et al. 2019 (arXiv 1905.04899, and the
official clovaai/CutMix-PyTorch code): SGD with Nesterov momentum, step decay at 50%/75% of training (or cosine;
torch's own schedulers, see `build_scheduler`), mixing on the batch on the device, one soft-target cross-entropy
chosen once from the augmentation config.

Every random draw of an epoch (shuffle order, crop offsets, flips, CutMix boxes) comes from generators seeded
by (train.seed, epoch), so resuming from a checkpoint at an epoch boundary reproduces an uninterrupted run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from study.augment import build_mixer, soft_target_cross_entropy
from study.checkpoint import rng_state, set_rng_state
from study.config.schema import PipelineConfig, TrainConfig, to_dict
from study.data.batches import BatchAugment
from study.data.bundle import DataBundle, Split
from study.data.streaming import iterate_split
from study.metric_names import REPORTED
from study.models import build_model

EVAL_BATCH = 256


@dataclass
class EpochResult:
    """One finished epoch. `epoch` counts completed epochs (1-based); `metrics` holds floats such as
    `train/loss`, `val/top1_err` (percent), `val/top5_err`, `val/loss`, `lr`, `epoch_s` (seconds)."""

    epoch: int
    metrics: dict[str, float]
    is_best: bool
    trainer: Trainer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule of `cfg`, from torch's own schedulers (stepped once per epoch).

    Linear warmup over `warmup_epochs` (`LinearLR`: epoch e < W runs at (e + 1) / (W + 1) of the base lr), then
    either step decay (`MultiStepLR`: x `gamma` at each milestone, a fraction of `epochs` rounded to an epoch and
    counted from epoch 0, so a milestone inside the warmup applies from its end) or a cosine from the base lr
    to 0 over the remaining epochs (`CosineAnnealingLR`), joined by `SequentialLR`. Recipes: Yun et al. 2019
    (step at 50%/75%, official clovaai/CutMix-PyTorch), Goyal et al. 2017 (warmup), Loshchilov & Hutter 2017
    (cosine). Its `state_dict()` is plain data and goes into the checkpoint, so a resumed run continues it.
    """
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR

    warmup = cfg.warmup_epochs
    if cfg.schedule == "step":
        # Relative to the end of the warmup, where SequentialLR restarts the counter; <= 0 counts at the switch.
        main: torch.optim.lr_scheduler.LRScheduler = MultiStepLR(
            optimizer, [round(m * cfg.epochs) - warmup for m in cfg.milestones], gamma=cfg.gamma)
    else:
        main = CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs - warmup), eta_min=0.0)
    if warmup == 0:
        return main
    ramp = LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if mode == "min" else value > best


class Trainer:
    """Model, optimizer, schedule, augmentation and mixing for one configuration on one dataset.

    One process by default. `study.training.distributed.DistributedTrainer` sets `rank`/`world` (each rank takes its
    slice
    of every global batch), `wrapped` (the DDP module the training step calls) and `reduce_sum` (all-reduce)."""

    rank, world = 0, 1
    wrapped: torch.nn.Module | None = None

    def reduce_sum(self, totals: torch.Tensor) -> torch.Tensor:
        """Sum of `totals` over data-parallel ranks (identity in one process)."""
        return totals

    def __init__(self, cfg: PipelineConfig, data: DataBundle, device: str | torch.device | None = None):
        self.cfg, self.data = cfg, data
        t = cfg.train
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        self.device = torch.device(device) if device is not None else resolve_device(t.device)
        torch.manual_seed(t.seed)  # model init is a function of the seed alone
        self.model = build_model(cfg.model, data.num_classes, data.in_channels).to(self.device)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=t.lr, momentum=t.momentum,
                                         nesterov=t.nesterov and t.momentum > 0, weight_decay=t.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, t)
        # The loss is chosen once: soft-target CE when the batch is mixed, plain (smoothed) CE otherwise.
        self.mixer = build_mixer(cfg.cutmix, data.num_classes) if cfg.cutmix.mixes else None
        self.augment = BatchAugment(data.mean, data.std, cfg.data.pad, cfg.data.hflip, train=True)
        self.amp = t.amp and self.device.type == "cuda"
        self.epoch = 0
        self.best_value: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        # Runs trained on train+val (retrain, budget: study.training.runner.train_seed) turn `eval_val` off, since
        # their val images are training images and nothing selects on them, and `eval_train` on: the clean
        # (unaugmented, unmixed) error on the training split after the schedule's last epoch, `train/top1_err`,
        # which tells under- from over-fitting (a mixed batch's loss says little about it).
        self.eval_val = True
        self.eval_train = False

    # -- one epoch ------------------------------------------------------------------------------------------

    def _epoch_seed(self, epoch: int, stream: int) -> int:
        return (self.cfg.train.seed * 1_000_003 + epoch * 101 + stream) % (2**63)

    def mixes_at(self, epoch: int) -> bool:
        """Whether epoch `epoch` (0-based) mixes: always, but in the last `cutmix.off_epochs` of the schedule
        (timm's `mixup_off_epoch`: train.py switches mixing off from that epoch on). A function of the epoch
        alone, so a resumed run switches at the same step."""
        return self.mixer is not None and epoch < self.cfg.train.epochs - self.cfg.cutmix.off_epochs

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's training batches after augmentation and mixing, on the device:
        (images float [B,C,H,W] normalised, labels int64 [B], targets float [B,K] or None when unmixed)."""
        # Ranks share the shuffle seed (same global batches) but draw their own crops, flips and CutMix boxes.
        gen = torch.Generator().manual_seed(self._epoch_seed(epoch, 1) ^ (self.rank << 40))
        for x, y in iterate_split(self.data.train, self.cfg.train.batch_size, shuffle=True,
                                  seed=self._epoch_seed(epoch, 0), drop_last=True, rank=self.rank, world=self.world):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            x = self.augment(x, gen)
            targets = None
            if self.mixes_at(epoch):
                x, targets = self.mixer(x, y, generator=gen)
            yield x.contiguous(memory_format=self.memory_format), y, targets

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        smoothing = self.cfg.cutmix.label_smoothing
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        model = self.wrapped if self.wrapped is not None else self.model
        for x, y, targets in self.train_batches(epoch):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = model(x)
            logits = logits.float()
            if targets is None:
                loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
            else:
                loss = soft_target_cross_entropy(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * y.shape[0]  # summed on the device: no host sync per step
            seen += y.shape[0]
        if self.world > 1:
            loss_sum, seen = self.reduce_sum(torch.stack([loss_sum, torch.tensor(float(seen), device=self.device)]))
            seen = int(seen)
        return {"train/loss": float(loss_sum) / max(seen, 1)}

    @torch.no_grad()
    def evaluate(self, split: str | Split, name: str | None = None) -> dict[str, float]:
        """Loss and top-1/top-5 error (percent) on a split: {"{name}/loss", "{name}/top1_err", "{name}/top5_err"}."""
        data = self.data.split(split) if isinstance(split, str) else split
        name = name or (split if isinstance(split, str) else "eval")
        self.model.eval()
        k = min(5, self.data.num_classes)
        loss = torch.zeros((), device=self.device)
        wrong1 = torch.zeros((), device=self.device)
        wrong5 = torch.zeros((), device=self.device)
        for x, y in iterate_split(data, EVAL_BATCH, shuffle=False, rank=self.rank, world=self.world):
            x = self.augment.normalise(x.to(self.device)).contiguous(memory_format=self.memory_format)
            y = y.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum")
            topk = logits.topk(k, dim=1).indices
            hit = topk == y[:, None]
            wrong1 += (~hit[:, 0]).sum()
            wrong5 += (~hit.any(dim=1)).sum()
        n = max(len(data), 1)
        if self.world > 1:  # sums of errors and losses over the ranks' shards, never an average of rates
            loss, wrong1, wrong5 = self.reduce_sum(torch.stack([loss, wrong1, wrong5]))
        return {f"{name}/loss": float(loss) / n, f"{name}/top1_err": 100.0 * float(wrong1) / n,
                f"{name}/top5_err": 100.0 * float(wrong5) / n}

    def evaluation_metrics(self, due: bool) -> dict[str, float]:
        """The evaluation metrics `search.metric` names (study.evaluation.epoch_metrics on val, e.g.
        val/maxboxacc_v2), computed when `due` (every `search.eval_every` epochs and the last). In between the
        last values are carried, because Tune and ASHA need the metric in every report."""
        names = [m[len("val/"):] for m in self.cfg.search.metrics if m not in REPORTED]
        if not names:
            return {}
        if due or not getattr(self, "_evaluated", None):
            from study.evaluation.suite import epoch_metrics  # lazy: pulls cv2, matplotlib, torchmetrics

            val = self.data.val
            values = epoch_metrics(self.model, val.images, val.labels, self.data.mean, self.data.std, names=names,
                                   boxes=getattr(val, "boxes", None), device=self.device)
            self._evaluated = {f"val/{k}": float(v) for k, v in values.items()}
        return dict(self._evaluated)

    # -- the loop -------------------------------------------------------------------------------------------

    def fit(self, epochs: int | None = None) -> Iterator[EpochResult]:
        """Train from the current epoch to `epochs` (default train.epochs), yielding after every epoch."""
        total = epochs or self.cfg.train.epochs
        metric, mode = self.cfg.search.primary_metric, self.cfg.search.primary_mode
        for epoch in range(self.epoch, total):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            metrics = self.train_one_epoch(epoch)
            self.scheduler.step()
            if self.eval_val:
                metrics.update(self.evaluate("val"))
                metrics.update(self.evaluation_metrics(epoch + 1 == total or
                                                       (epoch + 1) % self.cfg.search.eval_every == 0))
            t = self.cfg.train
            if t.eval_test and (epoch + 1 == total or (epoch + 1) % t.test_every == 0):
                metrics.update(self.evaluate("test"))
            if self.eval_train and epoch + 1 == t.epochs:
                metrics.update(self.evaluate("train"))
            self.epoch = epoch + 1
            metrics.update({"epoch": float(self.epoch), "lr": lr, "epoch_s": time.perf_counter() - start})
            is_best = metric in metrics and better(metrics[metric], self.best_value, mode)
            if is_best:
                self.best_value = metrics[metric]
                self.best_metrics = dict(metrics)
            self.history.append(metrics)
            yield EpochResult(self.epoch, metrics, is_best, self)

    # -- checkpoints ----------------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume or export, as plain data (see study.checkpoint)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "rng": rng_state(),
            "config": to_dict(self.cfg),
            "num_classes": self.data.num_classes,
            "in_channels": self.data.in_channels,
            "metrics": self.history[-1] if self.history else {},
            "best_metrics": self.best_metrics,
            "best_value": self.best_value,
            "history": self.history,
            "normalisation": {"mean": list(self.data.mean), "std": list(self.data.std)},
            "input_size": self.data.image_size,
        }

    def load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        """Restore a `checkpoint()` so that `fit()` continues exactly where it stopped."""
        self.model.load_state_dict(ckpt["model"])
        if "lr_lambdas" in ckpt["scheduler"]:
            # Written before torch's schedulers replaced a LambdaLR: that state holds no schedule, which is a
            # function of the epoch alone, so replay it (before the optimizer state, which then sets the lr).
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(int(ckpt["epoch"])):
                    self.scheduler.step()
        else:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch = int(ckpt["epoch"])
        self.history = [dict(h) for h in ckpt.get("history", [])]
        self.best_metrics = dict(ckpt.get("best_metrics", {}))
        self.best_value = ckpt.get("best_value")
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])


def fit(cfg: PipelineConfig, data: DataBundle, *, device: str | torch.device | None = None,
        checkpoint: dict[str, Any] | None = None, epochs: int | None = None,
        on_start: Callable[[Trainer], None] | None = None) -> Iterator[EpochResult]:
    """Build a Trainer (optionally resumed from `checkpoint`) and yield one EpochResult per epoch."""
    trainer = Trainer(cfg, data, device)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
    if on_start is not None:
        on_start(trainer)
    yield from trainer.fit(epochs)
