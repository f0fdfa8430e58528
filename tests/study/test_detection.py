"""Tests for study/detection.py: VOC loading, the detector builder, mAP and fine-tuning.

Everything runs on the CPU at 64 px with randomly initialised backbones; nothing is downloaded.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork

from study.config.schema import DetectConfig
from study.data.shapes import CLASSES_SYNTHETIC, SyntheticShapes
from study.detection import (
    VOC_CLASSES,
    DetectionDataError,
    MapMeter,
    build_detector,
    collate,
    detection_datasets,
    evaluate_map,
    finetune,
    make_loader,
    train_one_epoch,
    voc_dataset,
)

torch.set_num_threads(1)

LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


class TinyFPN(nn.Module):
    """Three conv stages (strides 2, 4, 8) with BatchNorm under torchvision's FeaturePyramidNetwork: 3 levels."""

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        chans = (8, 16, 32)
        stages, cin = [], 3
        for c in chans:
            stages.append(nn.Sequential(nn.Conv2d(cin, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(chans), out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[f"c{i + 3}"] = x
        return self.fpn(feats)


def _resnet18_fpn() -> nn.Module:
    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)


# ---------------------------------------------------------------------------------------------------------------
# VOC


def test_voc_missing_raises_one_line_error_with_path(tmp_path):
    with pytest.raises(DetectionDataError) as info:
        voc_dataset(tmp_path, "2007", "trainval")
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path / "VOCdevkit" / "VOC2007") in msg and "VOCtrainval_06-Nov-2007.tar" in msg
    with pytest.raises(DetectionDataError, match="year"):
        voc_dataset(tmp_path, "1999")


def _write_voc(root: Path) -> dict[str, list[tuple[str, tuple[int, int, int, int], int]]]:
    """Two images with 1-based inclusive VOC boxes; returns the objects written per image id."""
    voc = root / "VOCdevkit" / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    objects = {
        "000001": [("dog", (10, 20, 50, 60), 0), ("person", (1, 1, 80, 40), 1)],
        "000002": [("tvmonitor", (5, 6, 30, 31), 0)],
    }
    sizes = {"000001": (96, 72), "000002": (64, 48)}  # width, height
    for name, objs in objects.items():
        w, h = sizes[name]
        Image.fromarray(np.full((h, w, 3), 128, dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        xml_objs = "".join(
            f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
            f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for c, b, d in objs)
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{xml_objs}</annotation>")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    return objects


def test_voc_tiny_layout_loads_boxes_labels_and_difficult(tmp_path):
    objects = _write_voc(tmp_path)
    ds = voc_dataset(tmp_path, "2007", "trainval")
    assert len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 72, 96) and image.dtype == torch.float32
    assert abs(float(image.mean()) - 128 / 255) < 0.02
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[9, 19, 50, 60], [0, 0, 80, 40]]  # 1-based inclusive -> [x-1, x_max)
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    assert target["difficult"].tolist() == [False, True]
    _, target = ds[1]
    assert target["labels"].tolist() == [20] and target["boxes"].tolist() == [[4, 5, 30, 31]]
    assert len(objects["000002"]) == 1

    # Flipping mirrors the boxes about the image's width; both outcomes occur.
    flipped = voc_dataset(tmp_path, "2007", "trainval", hflip=True)
    torch.manual_seed(0)
    seen = {tuple(flipped[1][1]["boxes"][0].tolist()) for _ in range(20)}
    assert seen == {(4.0, 5.0, 30.0, 31.0), (64 - 30.0, 5.0, 64 - 4.0, 31.0)}


def test_voc_missing_listed_file_and_split(tmp_path):
    _write_voc(tmp_path)
    jpeg = tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000002.jpg"
    jpeg.unlink()
    with pytest.raises(DetectionDataError, match="000002.jpg"):
        voc_dataset(tmp_path, "2007", "trainval")
    with pytest.raises(DetectionDataError, match=r"test\.txt.*VOCtest_06-Nov-2007\.tar"):
        voc_dataset(tmp_path, "2007", "test")


# ---------------------------------------------------------------------------------------------------------------
# Detector


def _batch(n: int, size: int = 64) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return collate([SyntheticShapes(n, size, seed=5)[i] for i in range(n)])


def _train_step_and_infer(model: nn.Module, size: int = 64) -> None:
    images, targets = _batch(2, size)
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    assert out[0]["boxes"].shape[1] == 4 and out[0]["boxes"].dtype == torch.float32


def test_build_detector_resnet18_fpn_train_step_and_inference():
    torch.manual_seed(0)
    model = build_detector(_resnet18_fpn(), num_classes=4, image_size=64)
    assert model.transform.min_size == (64,) and model.transform.max_size == 64
    # resnet_fpn_backbone returns "0".."3" plus "pool": 5 RPN levels, RoIs pooled from the 4 real ones.
    assert len(model.rpn.anchor_generator.sizes) == 5
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    # The reduced sampling budgets reach the RPN and the RoI heads.
    assert model.rpn.fg_bg_sampler.batch_size_per_image == 128
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert model.rpn._post_nms_top_n == {"training": 500, "testing": 250}
    _train_step_and_infer(model)


def test_build_detector_three_level_custom_fpn_and_bn_untouched():
    torch.manual_seed(0)
    backbone = TinyFPN()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = build_detector(backbone, num_classes=4, image_size=64, representation_size=32)
    # The level probe ran in eval mode: BatchNorm statistics are those of a fresh module.
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert backbone.training
    assert model.roi_heads.box_roi_pool.featmap_names == ["c3", "c4", "c5"]
    sizes = model.rpn.anchor_generator.sizes
    assert len(sizes) == 3 and all(len(s) == 2 for s in sizes)  # ceil(5 / 3) sizes per level
    flat = [x for s in sizes for x in s]
    assert flat == sorted(flat) and flat[0] == 4 and flat[-1] == 64  # image_size/16 .. image_size
    assert model.rpn.head.cls_logits.out_channels == 6  # 2 sizes x 3 aspect ratios
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    _train_step_and_infer(model)


def test_build_detector_finest_levels_only_and_anchor_scale():
    """levels=k keeps the k finest maps for the RPN and the RoIs; anchor_scale spans the objects' sizes."""
    torch.manual_seed(0)
    backbone = TinyFPN()
    model = build_detector(backbone, num_classes=4, image_size=64, levels=1, anchor_scale=(0.1, 0.5),
                           representation_size=32, box_batch_size_per_image=16)
    assert model.backbone.out_channels == backbone.out_channels and model.backbone.body is backbone
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 64, 64))
    assert list(feats) == ["c3"] and feats["c3"].shape[-1] == 32  # the stride-2 map alone
    assert model.rpn.anchor_generator.sizes == ((6, 14, 32),)  # 0.1..0.5 of 64 px, about one per octave
    assert model.roi_heads.box_roi_pool.featmap_names == ["c3"]
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    _train_step_and_infer(model)
    # Two levels: the sizes split fine to coarse; the default scale is image_size/16 .. image_size.
    model = build_detector(TinyFPN(), num_classes=4, image_size=64, levels=2, anchor_scale=(0.1, 0.5))
    assert model.rpn.anchor_generator.sizes == ((6, 11), (19, 32))
    assert build_detector(TinyFPN(), 4, 64, levels=1).rpn.anchor_generator.sizes == ((4, 8, 16, 32, 64),)
    with pytest.raises(ValueError, match="levels=0"):
        build_detector(TinyFPN(), num_classes=4, image_size=64, levels=0)
    with pytest.raises(ValueError, match="anchor scale"):
        build_detector(TinyFPN(), num_classes=4, image_size=64, anchor_scale=(0.5, 0.1))


def test_build_detector_rejects_backbone_without_out_channels():
    with pytest.raises(ValueError, match="out_channels"):
        build_detector(nn.Sequential(nn.Conv2d(3, 8, 3)), num_classes=4, image_size=64)


# ---------------------------------------------------------------------------------------------------------------
# mAP


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[2.0, 3.0, 30.0, 40.0], [35.0, 10.0, 60.0, 22.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([2])},
    ]


def test_map_meter_perfect_predictions_score_one():
    targets = _targets()
    preds = [{"boxes": t["boxes"].clone(), "labels": t["labels"].clone(), "scores": torch.rand(len(t["labels"]))}
             for t in targets]
    meter = MapMeter()
    meter.update(preds[:1], targets[:1])  # accumulated over two batches
    meter.update(preds[1:], targets[1:])
    result = meter.compute()
    assert set(result) == {"map", "map_50", "map_75"} and all(isinstance(v, float) for v in result.values())
    assert result["map_50"] == pytest.approx(1.0) and result["map"] == pytest.approx(1.0)


def test_map_meter_wrong_boxes_or_labels_score_zero():
    targets = _targets()
    far = [{"boxes": t["boxes"] + 100.0, "labels": t["labels"], "scores": torch.full((len(t["labels"]),), 0.9)}
           for t in targets]
    meter = MapMeter()
    meter.update(far, targets)
    assert meter.compute()["map_50"] == pytest.approx(0.0, abs=1e-6)
    wrong_class = [{"boxes": t["boxes"], "labels": t["labels"] % 3 + 1, "scores": torch.full((len(t["labels"]),), 0.9)}
                   for t in targets]
    meter = MapMeter()
    meter.update(wrong_class, targets)
    assert meter.compute()["map_50"] == pytest.approx(0.0, abs=1e-6)


def test_map_meter_ignores_difficult_objects():
    targets = _targets()
    targets[0]["difficult"] = torch.tensor([False, True])
    # Predict only the non-difficult objects: the missed difficult one must not count as a miss.
    preds = [{"boxes": targets[0]["boxes"][:1], "labels": targets[0]["labels"][:1], "scores": torch.tensor([0.9])},
             {"boxes": targets[1]["boxes"], "labels": targets[1]["labels"], "scores": torch.tensor([0.9])}]
    meter = MapMeter()
    meter.update(preds, targets)
    assert meter.compute()["map_50"] == pytest.approx(1.0)
    targets[0]["difficult"] = torch.tensor([False, False])
    meter = MapMeter()
    meter.update(preds, targets)
    assert meter.compute()["map_50"] < 0.9  # without the flag the miss costs class 3 its AP


# ---------------------------------------------------------------------------------------------------------------
# Training loop


def test_train_one_epoch_and_evaluate_map_on_tiny_detector():
    torch.manual_seed(0)
    model = build_detector(TinyFPN(), num_classes=4, image_size=64, representation_size=32)
    loader = make_loader(SyntheticShapes(4, 64, seed=0), batch_size=2, shuffle=True, seed=0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_one_epoch(model, loader, optimizer, "cpu")
    assert set(stats) == LOSS_KEYS | {"loss"} and all(math.isfinite(v) for v in stats.values())
    assert stats["loss"] == pytest.approx(sum(stats[k] for k in LOSS_KEYS), rel=1e-5)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    result = evaluate_map(model, loader, "cpu")
    assert set(result) == {"map", "map_50", "map_75"} and all(0.0 <= v <= 1.0 for v in result.values())


def test_make_loader_order_is_seeded():
    ds = SyntheticShapes(16, 16, seed=0)

    def order(seed: int) -> list[float]:
        return [float(t["boxes"].sum()) for _, targets in make_loader(ds, 4, True, seed) for t in targets]

    assert order(1) == order(1) and order(1) != order(2)


def test_finetune_yields_well_formed_epochs_and_is_seeded():
    cfg = DetectConfig(image_size=64, num_train=8, num_val=4, epochs=1, batch_size=4, lr=0.01, seed=0)
    train, val, names = detection_datasets(cfg)
    assert names == CLASSES_SYNTHETIC and len(train) == 8 and len(val) == 4
    assert not torch.equal(train[0][0], val[0][0])  # disjoint streams of one seed

    def run(backbone_fn) -> list[dict]:
        torch.manual_seed(cfg.seed)
        model = build_detector(backbone_fn(), len(names) + 1, cfg.image_size)
        logs: list[str] = []
        rows = list(finetune(model, train, val, cfg, log=logs.append))
        assert any("2 iterations/epoch" in line for line in logs)
        return rows

    rows = run(_resnet18_fpn)
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == {"epoch", "train/loss", "val/map", "val/map_50", "val/map_75", "wall_s"}
    assert row["epoch"] == 1 and math.isfinite(row["train/loss"]) and row["wall_s"] > 0
    assert all(0.0 <= row[k] <= 1.0 for k in ("val/map", "val/map_50", "val/map_75"))
    # Same seed, same run (RPN/RoI sampling and shuffling both follow cfg.seed).
    assert run(TinyFPN)[0]["train/loss"] == run(TinyFPN)[0]["train/loss"]


def test_detection_datasets_voc_without_root_is_a_data_error(tmp_path):
    with pytest.raises(DetectionDataError, match="detect.root"):
        detection_datasets(DetectConfig(data="voc", root=""))
    with pytest.raises(DetectionDataError, match="VOCdevkit"):
        detection_datasets(DetectConfig(data="voc", root=str(tmp_path)))


def test_finetune_learns_to_detect_shapes():
    """Overfitting 8 images must lift mAP@.5 well above chance: anchors, RoI levels and box conventions agree."""
    cfg = DetectConfig(image_size=64, num_train=8, num_val=8, epochs=40, batch_size=4, lr=0.05, seed=0)
    ds = SyntheticShapes(8, 64, seed=0)
    torch.manual_seed(cfg.seed)
    model = build_detector(TinyFPN(32), len(CLASSES_SYNTHETIC) + 1, cfg.image_size, representation_size=128)
    rows = list(finetune(model, ds, ds, cfg, log=lambda _: None))
    assert rows[0]["val/map_50"] < 0.05  # untrained
    assert rows[-1]["val/map_50"] > 0.25, [round(r["val/map_50"], 3) for r in rows]  # measured 0.43
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
