"""The detect stage: a shapes-pretrained backbone must beat its random-init control, and bad exports are refused.

The transfer test is the CutMix paper's sec. 4.2 argument on our own data: pretrain a CIFAR ResNet-20 with our
training loop on `shapes` (single coloured shapes, the generator of the detection set), export it, fine-tune
Faster R-CNN (FPN) from it and from the same architecture randomly initialised, same settings and budget, and
require a clear mAP@0.5 gap. The CLI tests corrupt an export and expect exit 2 with one `error:` line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.detect_stage import run as run_detect
from study.config import load_config
from study.export import export_backbone
from study.runner import train_run
from study.tracking import Tracker
from tests.conftest import TINY, assert_one_line_error, run_main, set_args

# Pretraining: 10k shapes at 16 px (at 32 px the loss sits at ln 3 for a seed-dependent 5-10+ epochs before it
# falls; at 16 px it falls steadily: val error ~20 % after 20 epochs for seeds 0 and 1), no mixing (a pasted patch
# often removes or adds the one object, so CutMix labels would be wrong). ~1.5 min on one thread. Detection: the
# default detect settings but 4 epochs, ~45 s per detector on one thread.
PRETRAIN = [
    "name=transfer", "data.name=shapes", "data.image_size=16", "data.synthetic_sizes=[10000,500,500]",
    "model.arch=resnet20", "cutmix.method=none", "train.epochs=20", "train.batch_size=64", "train.lr=0.05",
    "train.schedule=cosine", "train.eval_test=false", "detect.epochs=4",
]
MARGIN = 0.3  # mAP@0.5, pretrained minus random: measured 0.78, 0.56, 0.58 for seeds 0, 1, 2 (pretrain + detect)


@pytest.mark.slow
def test_shapes_pretrained_backbone_beats_random_init(tmp_path):
    cfg = load_config(None, PRETRAIN)
    summary = train_run(cfg, tmp_path / "train")
    export_backbone(tmp_path / "train", tmp_path / "export")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_detect(cfg, tmp_path / "out", Tracker(uri, tmp_path / "out"), source=tmp_path / "export",
                        log=lambda _: None)
    report = json.loads((tmp_path / "out" / "detect" / "metrics.json").read_text())
    assert (result.map_50, result.random_map_50) == (report["map_50"], report["random_map_50"])

    assert summary["best"]["val/top1_err"] < 50, summary["best"]  # the backbone learned shapes (chance: 66.7)
    pre, rnd = report["map_50"], report["random_map_50"]
    assert pre - rnd > MARGIN, (pre, rnd)
    assert report["gain_map_50"] == pytest.approx(pre - rnd)

    metrics = json.loads((tmp_path / "out" / "detect" / "metrics.json").read_text())
    assert metrics["arch"] == "resnet20" and metrics["classes"] == ["rectangle", "ellipse", "triangle"]
    assert metrics["map_50"] == pre and metrics["random_map_50"] == rnd
    for name in ("pretrained", "random"):
        history = metrics["runs"][name]["history"]
        assert [row["epoch"] for row in history] == list(range(1, cfg.detect.epochs + 1))
        assert metrics["runs"][name]["final"] == history[-1]
    assert (tmp_path / "out" / "detect" / "detector.pt").is_file()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("transfer")
    runs = client.search_runs([experiment.experiment_id], "tags.`cutmix.stage` = 'detect'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["detect.image_size"] == str(cfg.detect.image_size)
    assert run.data.params["backbone.dataset"] == "shapes"
    per_epoch = client.get_metric_history(run.info.run_id, "pretrained/val/map_50")
    assert [m.step for m in per_epoch] == list(range(1, cfg.detect.epochs + 1))
    assert per_epoch[-1].value == pytest.approx(pre)
    assert len(client.get_metric_history(run.info.run_id, "random/val/map_50")) == cfg.detect.epochs
    assert run.data.metrics["gain_map_50"] == pytest.approx(pre - rnd)


# ---------------------------------------------------------------------------------------------------------------
# Bad exports through the CLI


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """A real export of a seconds-long run (digits at 8 px, the small CNN)."""
    root = tmp_path_factory.mktemp("tiny_export")
    cfg = load_config(None, TINY)
    train_run(cfg, root / "train")
    export_backbone(root / "train", root / "export")
    return root / "export"


def _copy(export: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(export, dst)
    return dst


def _detect(capsys, export: Path, tmp_path: Path) -> tuple[int, str, str]:
    return run_main(capsys, "detect", "--backbone", str(export), "--output", str(tmp_path / "out"),
                    *set_args(TINY))


def test_detect_refuses_a_corrupted_safetensors_byte(capsys, tmp_path, tiny_export):
    export = _copy(tiny_export, tmp_path)
    path = export / "backbone.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed: only the sha256 can tell
    path.write_bytes(bytes(data))
    code, _, err = _detect(capsys, export, tmp_path)
    assert_one_line_error(code, err, str(path), "corrupted")
    assert not (tmp_path / "out" / "detect").exists()  # refused before any work


def test_detect_refuses_a_truncated_backbone_pt(capsys, tmp_path, tiny_export):
    export = _copy(tiny_export, tmp_path)
    path = export / "backbone.pt"
    path.write_bytes(path.read_bytes()[:-100])
    code, _, err = _detect(capsys, export, tmp_path)
    assert_one_line_error(code, err, str(path), "bytes")
    assert not (tmp_path / "out" / "detect").exists()


def test_detect_refuses_an_export_without_manifest(capsys, tmp_path, tiny_export):
    export = _copy(tiny_export, tmp_path)
    (export / "manifest.json").unlink()
    code, _, err = _detect(capsys, export, tmp_path)
    assert_one_line_error(code, err, str(export), "manifest.json")


def test_detect_tiny_export_runs_end_to_end(capsys, tmp_path, tiny_export):
    code, out, err = _detect(capsys, tiny_export, tmp_path)
    assert code == 0, err
    assert "mAP@0.5" in out and "random-init control" in out
    report = json.loads((tmp_path / "out" / "detect" / "metrics.json").read_text())
    assert set(report["runs"]) == {"pretrained", "random"} and report["arch"] == "cnn"
