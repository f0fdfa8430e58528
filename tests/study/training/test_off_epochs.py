"""`cutmix.off_epochs` (timm's mixup_off_epoch): no mixing in the last N epochs, searchable, bit-exact on resume."""

from __future__ import annotations

import pytest
import torch

from study.checkpoint import load_checkpoint, save_checkpoint
from study.config.load import load_config
from study.config.schema import ConfigError
from study.data.registry import load_data
from study.training.engine import Trainer, fit
from tests.helpers.cli import TINY

OFF = TINY + ["train.epochs=4", "cutmix.prob=1.0", "cutmix.off_epochs=2"]


@pytest.fixture(scope="module")
def digits8():
    return load_data(load_config(None, TINY).data)


def test_mixing_stops_for_the_last_off_epochs(digits8):
    t = Trainer(load_config(None, OFF), digits8)
    mixed = [next(t.train_batches(epoch))[2] is not None for epoch in range(4)]
    assert mixed == [True, True, False, False]
    # off_epochs = 0 mixes every epoch at p = 1; the switch changes what is trained (the test can fail)
    t0 = Trainer(load_config(None, OFF[:-1]), digits8)
    assert all(next(t0.train_batches(epoch))[2] is not None for epoch in range(4))
    a = list(fit(load_config(None, OFF), digits8))[-1].trainer.model.state_dict()
    b = list(fit(load_config(None, OFF[:-1]), digits8))[-1].trainer.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stop", [1, 3])  # interrupted before the switch, and inside the unmixed tail
def test_off_epochs_resume_is_bit_exact(digits8, tmp_path, stop):
    cfg = load_config(None, OFF)
    straight = list(fit(cfg, digits8))
    first = Trainer(cfg, digits8)
    for _ in first.fit(epochs=stop):
        pass
    save_checkpoint(first.checkpoint(), tmp_path / "ck.pt")
    torch.manual_seed(987)  # a fresh process: unrelated global RNG state
    resumed = Trainer(cfg, digits8)
    resumed.load_checkpoint(load_checkpoint(tmp_path / "ck.pt"))
    rest = list(resumed.fit())
    assert [r.epoch for r in rest] == list(range(stop + 1, 5))
    want = straight[-1].trainer.model.state_dict()
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert [h["train/loss"] for h in resumed.history] == [r.metrics["train/loss"] for r in straight]


def test_off_epochs_is_validated_and_searchable():
    with pytest.raises(ConfigError, match="cutmix.off_epochs"):
        load_config(None, TINY + ["train.epochs=4", "cutmix.off_epochs=4"])
    with pytest.raises(ConfigError, match="cutmix.off_epochs"):
        load_config(None, TINY + ["cutmix.off_epochs=-1"])
    cfg = load_config(None, TINY + ["train.epochs=6", "search.space={cutmix.off_epochs: {type: int, low: 0, high: 3}}"])
    assert cfg.search.space["cutmix.off_epochs"].high == 3
    with pytest.raises(ConfigError, match="off_epochs"):
        load_config(None, TINY + ["train.epochs=6",
                                  "search.space={cutmix.off_epochs: {type: int, low: 0, high: 6}}"])
