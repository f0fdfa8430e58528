"""Tests of the backbone export (study.export): torchvision compatibility, file integrity, Faster R-CNN loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from study.config.load import dump_config, load_config
from study.config.schema import to_dict
from study.export import ExportError, export_backbone, verify_export
from study.fpn import load_backbone
from study.models import build_model

torch.set_num_threads(1)

NUM_CLASSES = 4


def assert_same_features(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 rounding. FrozenBatchNorm2d folds BN into scale and shift, which rounds differently
    from BatchNorm2d where x is close to the running mean, so the error is measured against the tensor's norm."""
    assert got.shape == want.shape
    err = float((got - want).norm() / want.norm())
    assert err < 1e-5, err


def make_run(root: Path, overrides: list[str], steps: int = 0,
             extra_ckpt: dict | None = None) -> tuple[Path, torch.nn.Module]:
    """A run directory as `train` writes it, for a model trained `steps` SGD steps on a tiny generated set."""
    cfg = load_config(None, ["data.name=digits", "data.image_size=16", *overrides])  # a 16-px digits run
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_CLASSES, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % NUM_CLASSES
    model.train()
    for step in range(steps):  # one short "epoch" of 4-image batches
        sl = slice(4 * (step % 4), 4 * (step % 4) + 4)
        opt.zero_grad()
        F.cross_entropy(model(images[sl]), labels[sl]).backward()
        opt.step()
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    metrics = {"val/top1_err": 0.5, "epoch": 1}
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {}, "epoch": 1,
                "rng": {"torch": torch.get_rng_state()}, "config": to_dict(cfg), "num_classes": NUM_CLASSES,
                "in_channels": 3, "metrics": metrics, **(extra_ckpt or {})}, run / "checkpoints" / "best.pt")
    dump_config(cfg, run / "config.yaml")
    (run / "metrics.json").write_text(json.dumps({"best": metrics, "best_epoch": 1}))
    return run, model.eval()


@pytest.fixture(scope="module")
def resnet18_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, dict]:
    root = tmp_path_factory.mktemp("r18")
    run, model = make_run(root, ["model.arch=resnet18"], steps=4)
    manifest = export_backbone(run, root / "export", extra={"mlflow_run_id": "abc123"})
    return root / "export", model, manifest


def test_backbone_pt_loads_strictly_into_torchvision_fpn_body(resnet18_export) -> None:
    out, model, manifest = resnet18_export
    body = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5).body
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    body.eval()
    with torch.no_grad():
        untrained = body(x)["3"]
    state = torch.load(out / "backbone.pt", weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    body.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = body(x)["3"]  # layer4
        want = model.backbone(x)
    assert not torch.allclose(untrained, want, atol=1e-3)  # the comparison below can fail
    assert_same_features(got, want)


def test_manifest_contents(resnet18_export) -> None:
    out, model, manifest = resnet18_export
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["arch"] == "resnet18" and manifest["family"] == "torchvision-resnet"
    assert manifest["torchvision_body"] == "resnet18"
    assert manifest["num_classes"] == NUM_CLASSES and manifest["in_channels"] == 3
    assert manifest["stage_names"] == ["layer1", "layer2", "layer3", "layer4"]
    assert manifest["channels"] == [64, 128, 256, 512] and manifest["feature_strides"] == [4, 8, 16, 32]
    assert manifest["dataset"] == "digits" and manifest["input_size"] == 16  # the run's data.image_size
    assert manifest["normalisation"] is None  # digits statistics are measured at load time, not known here
    assert manifest["metrics"]["best"]["val/top1_err"] == 0.5  # from metrics.json
    assert manifest["config"]["model"]["arch"] == "resnet18" and manifest["model"]["arch"] == "resnet18"
    assert manifest["mlflow_run_id"] == "abc123"
    assert manifest["torch"] == torch.__version__ and manifest["created"].endswith("+00:00")
    assert set(manifest["files"]) == {"backbone.pt", "backbone.safetensors", "backbone_mmdet.pth"}


def test_safetensors_and_mmdet_hold_the_same_tensors(resnet18_export) -> None:
    out, _, _ = resnet18_export
    pt = torch.load(out / "backbone.pt", weights_only=True)
    st = load_file(str(out / "backbone.safetensors"))
    mm = torch.load(out / "backbone_mmdet.pth", weights_only=True)
    assert set(mm) == {"state_dict", "meta"} and mm["meta"]["arch"] == "resnet18"
    for other in (st, mm["state_dict"]):
        assert list(other) == list(pt) if other is mm["state_dict"] else set(other) == set(pt)
        for k, v in pt.items():
            assert torch.equal(other[k], v), k


def test_sha256_is_checked(resnet18_export, tmp_path: Path) -> None:
    out, _, manifest = resnet18_export
    import hashlib
    import shutil

    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    assert verify_export(out)["arch"] == "resnet18"

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / "backbone.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, different hash
    (bad / "backbone.pt").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"backbone\.pt is corrupted.*re-run"):
        verify_export(bad)
    with pytest.raises(ExportError, match=r"backbone\.pt is corrupted"):
        load_backbone(bad / "backbone.pt")

    (bad / "backbone.pt").write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ExportError, match=r"backbone\.pt has \d+ bytes.*truncated"):
        load_backbone(bad / "backbone.pt")
    (bad / "backbone.pt").unlink()
    with pytest.raises(ExportError, match=r"backbone\.pt is missing"):
        verify_export(bad)

    # A file the manifest vouches for but torch cannot read: an ExportError, not an unpickling traceback.
    (bad / "backbone.pt").write_bytes(b"not a checkpoint")
    m = json.loads((bad / "manifest.json").read_text())
    m["files"]["backbone.pt"] = {"sha256": hashlib.sha256(b"not a checkpoint").hexdigest(), "bytes": 16}
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ExportError, match=r"cannot read export file .*backbone\.pt"):
        load_backbone(bad / "backbone.pt")


def test_no_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "backbone.pt").write_bytes(b"x")
    with pytest.raises(ExportError, match="no manifest.json"):
        load_backbone(tmp_path)
    with pytest.raises(ExportError, match="no manifest.json"):
        verify_export(tmp_path)
    with pytest.raises(ExportError, match="not found"):
        load_backbone(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="no checkpoint"):
        export_backbone(tmp_path, tmp_path / "out")


def test_load_backbone_torchvision_family(resnet18_export) -> None:
    out, model, _ = resnet18_export
    fpn = load_backbone(out)
    assert fpn.out_channels == 256
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = fpn(x)
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]
    # torchvision's default trainable_layers=3: stem and layer1 frozen, layer2..4 trainable.
    frozen = {n.split(".")[0] for n, p in fpn.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}
    assert all(p.requires_grad for p in load_backbone(out, trainable_layers=5).parameters())
    assert not any(p.requires_grad for p in load_backbone(out, trainable_layers=0).body.parameters())
    with pytest.raises(ExportError, match="trainable_layers=6"):
        load_backbone(out, trainable_layers=6)


def test_cifar_stem_variant_round_trip(tmp_path: Path) -> None:
    norm = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    run, model = make_run(tmp_path, ["model.arch=resnet18_cifar"], steps=1,
                          extra_ckpt={"normalisation": norm, "input_size": 32})
    manifest = export_backbone(run / "checkpoints" / "best.pt", tmp_path / "export")
    assert manifest["torchvision_body"] is None and manifest["feature_strides"] == [1, 2, 4, 8]
    assert manifest["normalisation"] == norm and manifest["input_size"] == 32
    assert manifest["metrics"]["best_epoch"] == 1  # metrics.json found next to checkpoints/
    fpn = load_backbone(tmp_path / "export" / "backbone.pt").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert_same_features(fpn.body(x)["3"], model.backbone(x))


@pytest.mark.parametrize("overrides", [["model.arch=pyramidnet", "model.depth=11", "model.widen=12"],
                                       ["model.arch=resnet20"]], ids=["pyramidnet11", "resnet20"])
def test_faster_rcnn_trains_and_infers(tmp_path: Path, overrides: list[str]) -> None:
    run, model = make_run(tmp_path, overrides, steps=1)
    export_backbone(run, tmp_path / "export")
    backbone = load_backbone(tmp_path / "export")
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]  # padded to FasterRCNN's five default levels
    # The pyramid levels come from the trained weights (frozen-BN body == classifier backbone in eval mode).
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        last = list(backbone.body(x).values())[-1]
        assert_same_features(last, model.backbone(x))

    torch.manual_seed(0)
    detector = FasterRCNN(backbone, num_classes=4, min_size=64, max_size=64)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 8.0, 50.0, 30.0], [2.0, 2.0, 20.0, 20.0]]),
                "labels": torch.tensor([2, 3])}]
    detector.train()
    losses = detector(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values())
    total.backward()
    # Default trainable_layers: the deepest stages learn, the stem and first stage stay frozen.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.body["layer3"].parameters())
    assert backbone.body["conv1"].weight.grad is None and not backbone.body["conv1"].weight.requires_grad
    assert all(p.grad is None for p in backbone.body["layer1"].parameters())
    assert any(p.grad is not None for p in backbone.fpn.parameters())
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}
