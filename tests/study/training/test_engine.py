"""The training loop: every config key reaches its component, exact resume, per-epoch results, accuracy floor."""

from __future__ import annotations

import math

import pytest
import torch

from study.config.load import load_config
from study.data.registry import load_data
from study.training.engine import Trainer, build_scheduler, fit
from tests.helpers.cli import TINY


@pytest.fixture(scope="module")
def digits8():
    cfg = load_config(None, TINY)
    return load_data(cfg.data)


def test_every_config_key_reaches_its_component(digits8):
    cfg = load_config(None, TINY + ["cutmix.alpha=0.37", "cutmix.prob=0.81", "cutmix.mode=sample",
                                    "cutmix.label_smoothing=0.1", "train.lr=0.023", "train.weight_decay=0.0007",
                                    "train.momentum=0.8", "train.nesterov=false", "train.batch_size=32",
                                    "model.width=12"])
    t = Trainer(cfg, digits8)
    assert (t.mixer.alpha, t.mixer.prob, t.mixer.mode, t.mixer.label_smoothing) == (0.37, 0.81, "sample", 0.1)
    assert type(t.mixer).__name__ == "CutMix"
    group = t.optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"], group["nesterov"]) == (0.023, 0.0007, 0.8, False)
    assert t.model.arch == "cnn" and t.model.num_classes == 10
    x, y, targets = next(t.train_batches(0))
    assert x.shape == (32, 3, 8, 8) and targets.shape == (32, 10)
    assert any(m.out_channels == 12 for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    for method, cls in (("mixup", "MixUp"), ("cutout", "Cutout")):
        assert type(Trainer(load_config(None, TINY + [f"cutmix.method={method}"]), digits8).mixer).__name__ == cls
    assert Trainer(load_config(None, TINY + ["cutmix.method=none"]), digits8).mixer is None
    assert Trainer(load_config(None, TINY + ["cutmix.prob=0"]), digits8).mixer is None
    results = list(fit(load_config(None, TINY + ["train.epochs=3"]), digits8))
    assert [r.epoch for r in results] == [1, 2, 3]


def test_data_keys_reach_the_loader():
    cfg = load_config(None, TINY + ["data.image_size=12", "data.name=synthetic", "data.num_classes=4",
                                    "data.synthetic_sizes=[40, 8, 8]"])
    data = load_data(cfg.data)
    t = Trainer(cfg, data)
    assert data.train.images.shape[-1] == 12 and t.model.num_classes == 4 and len(data.train) == 40


def test_seed_changes_init_and_order(digits8):
    a = Trainer(load_config(None, TINY), digits8)
    b = Trainer(load_config(None, TINY + ["train.seed=1"]), digits8)
    pa, pb = next(a.model.parameters()), next(b.model.parameters())
    assert not torch.equal(pa, pb)
    assert not torch.equal(next(a.train_batches(0))[1], next(b.train_batches(0))[1])


def closed_form_lr_factor(cfg, epoch: int) -> float:
    """The schedule as the engine computed it before torch's schedulers (a LambdaLR of this), kept as the reference:
    warmup (e + 1) / (W + 1), then gamma ** (milestones passed, counted from epoch 0) or a cosine over the rest."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch >= round(m * cfg.epochs) for m in cfg.milestones)
    span = max(1, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


def schedule_factors(train_cfg, base_lr: float = 0.1) -> list[float]:
    """The lr multiplier of each epoch as `Trainer` sees it: read before the epoch, scheduler stepped after it."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = build_scheduler(opt, train_cfg)
    factors = []
    for _ in range(train_cfg.epochs):
        factors.append(opt.param_groups[0]["lr"] / base_lr)
        opt.step()
        sched.step()
    return factors


@pytest.mark.parametrize("schedule", ["step", "cosine"])
@pytest.mark.parametrize(("epochs", "warmup"), [(e, w) for e in (1, 2, 3, 7, 30, 300) for w in (0, 1, 5) if w < e])
@pytest.mark.parametrize("milestones", ["[0.5, 0.75]", "[0.05, 0.3, 0.3]"])  # early, and a repeated milestone
def test_torch_schedule_equals_the_closed_form_per_epoch(schedule, epochs, warmup, milestones):
    cfg = load_config(None, [f"train.epochs={epochs}", f"train.schedule={schedule}", f"train.warmup_epochs={warmup}",
                             f"train.milestones={milestones}", "train.gamma=0.2"]).train
    want = [closed_form_lr_factor(cfg, e) for e in range(epochs)]
    assert schedule_factors(cfg) == pytest.approx(want, rel=1e-12, abs=0)


def test_lr_schedules_hit_the_paper_values():
    step = load_config(None, ["train.epochs=300", "train.schedule=step"]).train
    f = schedule_factors(step)
    assert f[0] == 1.0 and f[149] == 1.0  # Yun et al.: lr 0.1 until epoch 150, 0.01 until 225, then 0.001
    assert f[150] == pytest.approx(0.1, rel=1e-12) and f[224] == pytest.approx(0.1, rel=1e-12)
    assert f[225] == pytest.approx(0.01, rel=1e-12) and f[299] == pytest.approx(0.01, rel=1e-12)
    cos = load_config(None, ["train.epochs=10", "train.schedule=cosine", "train.warmup_epochs=2"]).train
    f = schedule_factors(cos)
    assert f[0] == pytest.approx(1 / 3) and f[1] == pytest.approx(2 / 3) and f[2] == 1.0
    assert all(a > b for a, b in zip(f[2:], f[3:])) and 0 < f[9] < 0.05


def test_trainer_steps_the_schedule_once_per_epoch_and_logs_it(digits8):
    cfg = load_config(None, TINY + ["train.epochs=4", "train.schedule=step", "train.milestones=[0.5]",
                                    "train.gamma=0.5", "train.warmup_epochs=1"])
    lrs = [r.metrics["lr"] for r in fit(cfg, digits8)]
    assert lrs == pytest.approx([0.05 * f for f in (0.5, 1.0, 0.5, 0.5)], rel=1e-12)


def test_per_epoch_results_have_the_metric_names(digits8):
    r = next(fit(load_config(None, TINY), digits8))
    n_val, n_test = len(digits8.val), len(digits8.test)
    for split, n in (("val", n_val), ("test", n_test)):
        top1, top5, loss = (r.metrics[f"{split}/{m}"] for m in ("top1_err", "top5_err", "loss"))
        assert 0 <= top5 <= top1 <= 100
        # Errors are counts of wrong images in percent: a multiple of 100 / n, not a loose float.
        assert round(top1 * n / 100, 6) == int(round(top1 * n / 100))
        assert math.isfinite(loss) and loss > 0  # cross-entropy after one epoch is never exactly 0
    assert r.metrics["train/loss"] > 0 and math.isfinite(r.metrics["train/loss"])
    assert r.metrics["epoch"] == 1.0 and r.metrics["lr"] == pytest.approx(0.05) and r.metrics["epoch_s"] > 0
    assert r.is_best and r.trainer.best_metrics["epoch"] == 1.0


def test_resume_from_checkpoint_reproduces_uninterrupted_run(digits8, tmp_path):
    from study.checkpoint import load_checkpoint, save_checkpoint

    cfg = load_config(None, TINY + ["train.epochs=3", "cutmix.prob=1.0", "train.schedule=step"])
    straight = list(fit(cfg, digits8))
    interrupted = Trainer(cfg, digits8)
    for _ in interrupted.fit(epochs=2):
        pass
    save_checkpoint(interrupted.checkpoint(), tmp_path / "ck.pt")
    torch.manual_seed(12345)  # a resumed process starts with unrelated global RNG state
    resumed = Trainer(cfg, digits8)
    resumed.load_checkpoint(load_checkpoint(tmp_path / "ck.pt"))
    rest = list(resumed.fit())
    assert [r.epoch for r in rest] == [3]
    final_a, final_b = straight[-1].trainer.model.state_dict(), resumed.model.state_dict()
    for k in final_a:
        assert torch.equal(final_a[k], final_b[k]), k
    assert rest[-1].metrics["val/loss"] == straight[-1].metrics["val/loss"]
    assert [h["val/loss"] for h in resumed.history] == [r.metrics["val/loss"] for r in straight]


def test_resume_from_a_checkpoint_written_with_the_old_lambdalr(digits8):
    """Checkpoints from before torch's schedulers hold a LambdaLR state (no schedule in it): resuming replays the
    schedule from the epoch and continues exactly as an uninterrupted run."""
    cfg = load_config(None, TINY + ["train.epochs=3", "train.warmup_epochs=1", "train.schedule=cosine"])
    straight = list(fit(cfg, digits8))
    interrupted = Trainer(cfg, digits8)
    for _ in interrupted.fit(epochs=2):
        pass
    ckpt = interrupted.checkpoint()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    legacy = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: closed_form_lr_factor(cfg.train, e))
    for _ in range(2):
        opt.step()
        legacy.step()
    ckpt["scheduler"] = legacy.state_dict()
    assert "lr_lambdas" in ckpt["scheduler"] and "_schedulers" not in ckpt["scheduler"]
    resumed = Trainer(cfg, digits8)
    resumed.load_checkpoint(ckpt)
    rest = list(resumed.fit())
    assert rest[-1].metrics["lr"] == straight[-1].metrics["lr"]
    assert resumed.scheduler.state_dict()["last_epoch"] == straight[-1].trainer.scheduler.state_dict()["last_epoch"]
    for k, v in straight[-1].trainer.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
