"""The training loop: every config key reaches its component, exact resume, per-epoch results, accuracy floor."""

from __future__ import annotations

import pytest
import torch

from study.config import load_config
from study.data import load_data
from study.engine import Trainer, fit, lr_factor
from tests.conftest import TINY


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


def test_lr_schedules():
    step = load_config(None, ["train.epochs=300", "train.schedule=step"]).train
    assert lr_factor(step, 0) == 1.0 and lr_factor(step, 149) == 1.0
    assert lr_factor(step, 150) == pytest.approx(0.1) and lr_factor(step, 225) == pytest.approx(0.01)
    cos = load_config(None, ["train.epochs=10", "train.schedule=cosine", "train.warmup_epochs=2"]).train
    assert lr_factor(cos, 0) == pytest.approx(1 / 3) and lr_factor(cos, 2) == 1.0 and lr_factor(cos, 9) < 0.1


def test_per_epoch_results_have_the_metric_names(digits8):
    r = next(fit(load_config(None, TINY), digits8))
    for split in ("val", "test"):
        for m in ("top1_err", "top5_err", "loss"):
            v = r.metrics[f"{split}/{m}"]
            assert v == v and v >= 0
    assert 0 <= r.metrics["val/top1_err"] <= 100 and r.metrics["val/top5_err"] <= r.metrics["val/top1_err"]
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


@pytest.mark.slow
def test_default_digits_config_reaches_5_percent_test_error():
    cfg = load_config(None, ["train.num_threads=1"])
    data = load_data(cfg.data)
    results = list(fit(cfg, data))
    assert results[-1].metrics["test/top1_err"] <= 5.0
