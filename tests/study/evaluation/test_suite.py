"""The evaluation entry points: flat metric names, identities across evaluations, and one-line bad-input errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from study.config.schema import ModelConfig
from study.evaluation.suite import epoch_metrics, evaluate_model
from study.metric_names import EPOCH_METRICS, EVALUATIONS, CAMError, EvaluationError, fgsm_name, metric_mode
from study.models import build_model

torch.set_num_threads(1)
MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _split(n: int = 40, size: int = 16, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, classes, (n,), generator=g)
    lo = torch.randint(0, size // 2, (n, 2), generator=g)
    hi = lo + torch.randint(2, size // 2, (n, 2), generator=g)
    return images, labels, torch.cat([lo, hi], dim=1)


def _model(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="cnn", width=4), classes)


def test_evaluate_model_reports_every_metric():
    images, labels, boxes = _split()
    model = _model()
    model.train()
    res = evaluate_model(model, images, labels, MEAN, STD, boxes=boxes, fgsm_eps=[0.0, 8 / 255], hole_sizes=[0, 8, 16],
                         mix_steps=3, ood_sets={"flat": torch.full((10, 3, 8, 8), 0.5)}, batch_size=16,
                         cam_curve_interval=0.05)
    assert model.training  # the caller's mode is restored
    m = res.metrics
    expected = {"top1_err", "top5_err", "nll", "ece", "maxboxacc_v2", "maxboxacc_iou0.3", "maxboxacc_iou0.5",
                "maxboxacc_iou0.7", "top1_loc", "gt_known_loc", "random_cam_maxboxacc_v2", "occlusion_center_auc",
                "occlusion_boundary_auc", "in_between_mixup", "in_between_cutmix", "fgsm_acc_eps0.000",
                "fgsm_acc_eps0.031", "maxboxacc_v2_centre_prior", "maxboxacc_v2_over_prior", "loc_whole_image",
                "gt_known_loc_best", "loc_best_sigma", "gt_known_loc_best_centre_prior"}
    expected |= {f"ood_{s}_{k}" for s in ("flat", "uniform", "gaussian")
                 for k in ("auroc", "tnr95", "detacc", "auroc_lo", "auroc_hi")}
    assert set(m) == expected
    assert all(isinstance(v, float) for v in m.values())
    assert m["maxboxacc_v2_over_prior"] == pytest.approx(m["maxboxacc_v2"] - m["maxboxacc_v2_centre_prior"])
    # the best sigma of the sweep is at least as good as the paper's 0.15 (which is one point of the sweep)
    assert m["gt_known_loc_best"] >= m["gt_known_loc"] and 0.05 <= m["loc_best_sigma"] <= 0.95
    assert 0.0 <= m["loc_whole_image"] <= 100.0
    assert res.info["cam_size"] == [2, 2] and res.info["num_in"] == 40  # every image is in-distribution
    assert res.info["ood_kinds"] == {"flat": "far", "uniform": "noise", "gaussian": "noise"}
    assert all(0 <= m[f"ood_{s}_auroc_lo"] <= m[f"ood_{s}_auroc_hi"] <= 100 for s in ("flat", "uniform", "gaussian"))
    p = res.predictions
    assert p["preds"].shape == p["correct"].shape == (40,) and p["confidence"].dtype == torch.float64
    assert 100 * (1 - p["correct"].double().mean()) == pytest.approx(m["top1_err"])
    # identities across evaluations on the same images
    assert m[fgsm_name(0.0)] == pytest.approx(100 - m["top1_err"])
    assert res.curves["occlusion"]["center_err"][0] == pytest.approx(m["top1_err"])
    assert m["top1_loc"] <= m["gt_known_loc"]
    assert set(res.seconds) == set(EVALUATIONS)
    assert res.examples["scoremaps"].shape == (16, 16, 16) and res.examples["pred_boxes"].shape == (16, 4)
    assert all(metric_mode(k) in ("min", "max") for k in m)
    assert metric_mode("val/maxboxacc_v2") == "max" and metric_mode("top1_err") == "min"


def test_localization_is_skipped_or_refused_without_boxes_or_cam_head():
    images, labels, boxes = _split(n=12)
    res = evaluate_model(_model(), images, labels, MEAN, STD, evaluations=["classification"])
    assert set(res.metrics) == {"top1_err", "top5_err", "nll", "ece"}
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    res = evaluate_model(plain, images, labels, MEAN, STD, boxes=boxes, evaluations=None, hole_sizes=[0, 16],
                         mix_steps=2, fgsm_eps=[0.0])
    assert "maxboxacc_v2" not in res.metrics and "top1_err" in res.metrics  # default: what applies
    with pytest.raises(EvaluationError, match="boxes") as err:
        evaluate_model(_model(), images, labels, MEAN, STD, evaluations=["localization"])
    assert "\n" not in str(err.value)
    with pytest.raises(CAMError, match="global-average-pooling"):
        evaluate_model(plain, images, labels, MEAN, STD, boxes=boxes, evaluations=["localization"])
    with pytest.raises(EvaluationError, match="not allowed"):
        evaluate_model(_model(), images, labels, MEAN, STD, evaluations=["wsol"])
    for todo in (["classification"], None):
        with pytest.raises(EvaluationError, match="labels"):
            evaluate_model(_model(3), images, labels + 3, MEAN, STD, boxes=boxes, evaluations=todo)


def test_epoch_metrics_agree_with_the_full_evaluation():
    images, labels, boxes = _split()
    model = _model()
    names = list(EPOCH_METRICS)
    fast = epoch_metrics(model, images, labels, MEAN, STD, names=names, boxes=boxes, max_images=None)
    assert list(fast) == names
    full = evaluate_model(model, images, labels, MEAN, STD, boxes=boxes, evaluations=["classification", "localization"],
                          cam_curve_interval=0.05)
    for k in ("top1_err", "top5_err", "nll", "ece", "maxboxacc_v2", "top1_loc", "gt_known_loc"):
        assert fast[k] == pytest.approx(full.metrics[k]), k
    sub = epoch_metrics(model, images, labels, MEAN, STD, names=["top1_err"], max_images=10)
    assert sub["top1_err"] in {10.0 * k for k in range(11)}
    with pytest.raises(EvaluationError, match="per-epoch"):
        epoch_metrics(model, images, labels, MEAN, STD, names=["val/top1_err"])
    with pytest.raises(EvaluationError, match="boxes"):
        epoch_metrics(model, images, labels, MEAN, STD, names=["maxboxacc_v2"])
    with pytest.raises(EvaluationError, match="unknown evaluation metric"):
        metric_mode("accuracy_of_something")
