"""Evaluation pictures are readable, non-empty PNGs, for one model and for several on the same axes."""

from __future__ import annotations

import pytest
import torch

from study.config.schema import ModelConfig
from study.evaluation.plots import (
    save_cam_grid,
    save_evaluation_plots,
    save_fgsm_curve,
    save_occlusion_curves,
    save_reliability_diagram,
)
from study.evaluation.suite import evaluate_model
from study.models import build_model
from tests.helpers.images import assert_png

torch.set_num_threads(1)


def test_all_pictures_of_an_evaluation(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="cnn", width=4), 3)
    images = (torch.rand(20, 3, 16, 16) * 255).to(torch.uint8)
    labels = torch.arange(20) % 3
    boxes = torch.tensor([[2, 2, 9, 11]] * 20)
    res = evaluate_model(model, images, labels, (0.5,) * 3, (0.25,) * 3, boxes=boxes, hole_sizes=[0, 8, 16],
                         mix_steps=3, fgsm_eps=[0, 4 / 255], cam_curve_interval=0.1, n_examples=5)
    paths = save_evaluation_plots(res, tmp_path / "plots", prefix="none_s0_", class_names=["a", "b", "c"])
    assert sorted(p.name for p in paths) == sorted(f"none_s0_{k}.png" for k in ("cam_grid", "reliability",
                                                                                 "occlusion", "in_between", "fgsm"))
    for p in paths:
        assert_png(p)
    two = {"none": res.curves, "cutmix": res.curves}
    assert_png(save_occlusion_curves({k: v["occlusion"] for k, v in two.items()}, tmp_path / "occ.png"))
    assert_png(save_fgsm_curve({k: v["fgsm"] for k, v in two.items()}, tmp_path / "fgsm.png"))
    assert_png(save_reliability_diagram({k: v["reliability"] for k, v in two.items()}, tmp_path / "rel.png"))


def test_cam_grid_with_padded_boxes_and_bad_shapes(tmp_path):
    images = torch.rand(3, 1, 12, 12)
    maps = torch.rand(3, 12, 12)
    gt = torch.tensor([[[1, 1, 5, 5], [-1, -1, -1, -1]]] * 3)
    assert_png(save_cam_grid(images, maps, tmp_path / "g.png", gt_boxes=gt, pred_boxes=gt[:, 0]))
    with pytest.raises(ValueError, match="same N"):
        save_cam_grid(images, maps[:2], tmp_path / "bad.png")
