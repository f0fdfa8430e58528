"""study.training.runner.train_run on the tiny digits config: what a run directory holds, what metrics.json says,
and a run interrupted after an epoch that resumes from checkpoints/last.pt to the same weights, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from study.checkpoint import load_checkpoint
from study.config.load import load_config, replace
from study.config.schema import to_dict
from study.training.runner import train_run, train_seed
from tests.helpers.cli import TINY

PNG = b"\x89PNG\r\n\x1a\n"
VOLATILE = ("epoch_s",)  # wall-clock time, the one per-epoch value a rerun may change


class Interrupted(RuntimeError):
    pass


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, TINY + ["train.epochs=3"])


@pytest.fixture(scope="module")
def data(cfg):
    from study.data.registry import load_data

    return load_data(cfg.data)


@pytest.fixture(scope="module")
def straight(cfg, data, tmp_path_factory):
    """One uninterrupted run: (its directory, train_run's return value, the EpochResults on_epoch saw)."""
    out = tmp_path_factory.mktemp("straight")
    seen = []
    summary = train_run(cfg, out, data=data, on_epoch=lambda r: seen.append((r.epoch, r.is_best, dict(r.metrics))))
    return out, summary, seen


def _stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def test_a_run_directory_holds_its_outputs(straight, cfg):
    out, _, _ = straight
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.json", "samples.png", "curves.png",
                                               "checkpoints"}
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    assert load_config(out / "config.yaml") == cfg  # the resolved config, loadable as it is
    assert (out / "samples.png").read_bytes()[:8] == PNG and (out / "curves.png").read_bytes()[:8] == PNG


def test_metrics_json_reports_final_and_best_epochs(straight, cfg):
    out, summary, seen = straight
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"final", "best", "best_epoch", "metric", "epochs", "wall_s", "num_classes", "dataset"}
    assert summary == {**metrics, "history": summary["history"], "resumed_from": 0}
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0] and metrics["epochs"] == 3
    assert metrics["final"] == history[-1]
    assert (metrics["metric"], metrics["num_classes"], metrics["dataset"]) == ("val/top1_err", 10, "digits")
    # The best epoch has the lowest val/top1_err, the first of equals (a later tie is not "better").
    errors = [h["val/top1_err"] for h in history]
    best = errors.index(min(errors))
    assert metrics["best_epoch"] == best + 1 and metrics["best"] == history[best]
    assert all(k in metrics["final"] for k in ("train/loss", "val/loss", "val/top5_err", "test/top1_err", "lr"))
    assert 0 < metrics["wall_s"] and metrics["final"]["val/top1_err"] < 50  # 3 epochs learn 8x8 digits
    # on_epoch saw every epoch in order, flagged best exactly where the best value improved.
    assert [e for e, _, _ in seen] == [1, 2, 3] and [m for _, _, m in seen] == history
    running = [min(errors[: i + 1]) for i in range(3)]
    assert [b for _, b, _ in seen] == [i == 0 or running[i] < running[i - 1] for i in range(3)]


def test_checkpoints_hold_the_best_and_the_last_epoch(straight):
    out, summary, _ = straight
    last, best = load_checkpoint(out / "checkpoints" / "last.pt"), load_checkpoint(out / "checkpoints" / "best.pt")
    assert last["epoch"] == 3 and best["epoch"] == summary["best_epoch"]
    assert last["history"] == summary["history"] and last["metrics"] == summary["final"]
    assert best["metrics"] == summary["best"]


def test_resume_from_last_continues_bit_exactly(straight, cfg, data, tmp_path):
    out, summary, _ = straight

    def stop_after_first(result):
        if result.epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_run(cfg, tmp_path, data=data, on_epoch=stop_after_first)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists()  # written only when the run is done
    torch.manual_seed(4321)  # a new process starts from unrelated global RNG state
    epochs = []
    resumed = train_run(cfg, tmp_path, data=data, resume=True, on_epoch=lambda r: epochs.append(r.epoch))
    assert epochs == [2, 3]  # epoch 1 is not trained again
    a = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [_stable(h) for h in resumed["history"]] == [_stable(h) for h in summary["history"]]
    assert resumed["best_epoch"] == summary["best_epoch"] and _stable(resumed["best"]) == _stable(summary["best"])


def test_without_resume_an_earlier_last_pt_is_not_used(straight, cfg, data, tmp_path):
    out, summary, _ = straight
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes((out / "checkpoints" / "last.pt").read_bytes())
    epochs = []
    again = train_run(replace(cfg, {"train.epochs": 1}), tmp_path, data=data, on_epoch=lambda r: epochs.append(r.epoch))
    assert epochs == [1] and again["epochs"] == 1
    assert _stable(again["history"][0]) == _stable(summary["history"][0])  # the same first epoch, from scratch


def test_train_seed_selects_the_last_epoch_and_a_retry_resumes(cfg, data, tmp_path):
    plain = to_dict(load_config(None, TINY))  # 2 epochs
    first = train_seed(plain, str(tmp_path / "seed0"), data, "seed 0")
    run = tmp_path / "seed0"
    assert first["attempt"] == 1 and json.loads((run / "task.json").read_text())["attempt"] == 1
    last = run / "checkpoints" / "last.pt"
    assert (run / "checkpoints" / "best.pt").read_bytes() == last.read_bytes()  # the final epoch is the model
    before = last.read_bytes()
    # Ray retries a task whose worker died: here the first try had finished, so nothing is trained again.
    second = train_seed(plain, str(run), data, "seed 0")
    assert second["attempt"] == 2 and json.loads((run / "task.json").read_text())["attempt"] == 2
    assert last.read_bytes() == before
    assert second["history"] == first["history"] and second["final"] == first["final"] and second["epochs"] == 2
