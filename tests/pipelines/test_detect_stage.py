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
from study.config.load import load_config
from study.export import export_backbone
from study.tracking.store import Tracker
from study.training.runner import train_run
from tests.helpers.cli import TINY, assert_one_line_error, run_main, set_args

# The default pair (issue 10): the embedded default's classifier (cluttered digits, 24 px, the small CNN, 12 epochs,
# with the config's CutMix) pretrains the backbone; Faster R-CNN is fine-tuned on scenes of the same generator with
# several digits (48 px, 192 train / 64 val scenes, 5 epochs, ~80 CPU-s per detector) from it and from a random-init
# control. Measured on the earlier default (3,000 train images): pretrained mAP@0.5 0.563 / 0.571 / 0.544 against
# 0.095 / 0.093 / 0.083 (gaps 0.46-0.48). Since issue 15's default (1,500 train images) this test measured 0.358
# against 0.076 (gap 0.28), and the no-argument runs' baseline backbones 0.482 and 0.447 against 0.076. The 0.15
# margin (a pretrained detector about three times the control's mAP) leaves 0.13 of the smallest measured gap for
# the spread between pretraining runs and thread scheduling.
PRETRAIN = ["name=transfer", "train.eval_test=false"]
MARGIN = 0.15


@pytest.mark.slow
def test_default_pair_pretrained_backbone_beats_random_init(tmp_path):
    cfg = load_config(None, PRETRAIN)
    summary = train_run(cfg, tmp_path / "train")
    export_backbone(tmp_path / "train", tmp_path / "export")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_detect(cfg, tmp_path / "out", Tracker(uri, tmp_path / "out"), source=tmp_path / "export")
    report = json.loads((tmp_path / "out" / "detect" / "metrics.json").read_text())
    assert (result.map_50, result.random_map_50) == (report["map_50"], report["random_map_50"])

    # the backbone learned the digits (chance: 90); the default trains on 1,500 images since issue 15, with CutMix
    assert summary["best"]["val/top1_err"] < 60, summary["best"]
    pre, rnd = report["map_50"], report["random_map_50"]
    assert pre - rnd > MARGIN, (pre, rnd)
    assert report["gain_map_50"] == pytest.approx(pre - rnd)

    metrics = json.loads((tmp_path / "out" / "detect" / "metrics.json").read_text())
    assert metrics["arch"] == "cnn" and metrics["classes"] == [str(d) for d in range(10)]
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
    assert run.data.params["backbone.dataset"] == "cluttered_digits"
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


def test_a_detect_task_the_local_ray_can_never_place_is_refused_before_it_starts(capsys, tmp_path, tiny_export):
    """Each detector is a Ray task with detect.resources: more than the command's own local Ray has is exit 2 and
    one line naming the field (study.cluster.capacity), and no detector is trained."""
    code, _, err = run_main(capsys, "detect", "--backbone", str(tiny_export), "--output", str(tmp_path / "out"),
                            *set_args(TINY + ["detect.resources.cpu=64"]))
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and "Traceback" not in err, err
    assert line.startswith("error: a detect task needs 64 CPUs (detect.resources.cpu=64); the local Ray has "), line
    assert line.endswith("(lower detect.resources)"), line
    assert not (tmp_path / "out" / "detect" / "detector.pt").exists() and \
        not (tmp_path / "out" / "detect" / "metrics.json").exists()
