"""Occlusion, in-between-class and FGSM: exact identities at the ends of their curves and FGSM's closed form on a
linear model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from study.config.schema import ModelConfig
from study.evaluation.common import predict_logits
from study.evaluation.robustness import (
    default_hole_sizes,
    fgsm_curve,
    fgsm_perturb,
    in_between_curves,
    occlusion_curves,
)
from study.metric_names import EvaluationError
from study.models import build_model

torch.set_num_threads(1)
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _data(n: int = 48, size: int = 16, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8), torch.randint(0, classes, (n,),
                                                                                            generator=g)


def _model(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="cnn", width=4), classes).eval()


def _err(model, images, labels) -> float:
    pred = predict_logits(model, images, MEAN, STD).argmax(1)
    return 100.0 * float((pred != labels).double().mean())


def test_occlusion_ends_are_clean_and_mean_images():
    images, labels = _data()
    model = _model()
    occ = occlusion_curves(model, images, labels, MEAN, STD, batch_size=20)
    assert occ.hole_size == default_hole_sizes(16) == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    clean = _err(model, images, labels)
    assert occ.center_err[0] == pytest.approx(clean) and occ.boundary_err[-1] == pytest.approx(clean)
    # Fully occluded images are the dataset mean colour: zero in normalised space, one prediction for all.
    with torch.no_grad():
        mean_class = int(model(torch.zeros(1, 3, 16, 16)).argmax())
    full = 100.0 * float((labels != mean_class).double().mean())
    assert occ.center_err[-1] == pytest.approx(full) and occ.boundary_err[0] == pytest.approx(full)
    assert 0 <= occ.center_auc <= 100 and 0 <= occ.boundary_auc <= 100
    with pytest.raises(EvaluationError, match="hole_sizes"):
        occlusion_curves(model, images, labels, MEAN, STD, hole_sizes=[0, 17])


def test_in_between_ends_are_the_unmixed_images():
    images, labels = _data()
    model = _model()
    ib = in_between_curves(model, images, labels, MEAN, STD, steps=5, seed=3, batch_size=16)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
    a = torch.arange(len(labels))
    keep = labels != labels[perm]
    a, b = a[keep], perm[keep]
    pred = predict_logits(model, images, MEAN, STD).argmax(1)

    def neither(p):
        return 100.0 * float(((p != labels[a]) & (p != labels[b])).double().mean())

    assert ib.pairs == len(a) and ib.ratio == [0.0, 0.25, 0.5, 0.75, 1.0]
    for curve in (ib.mixup_neither, ib.cutmix_neither):
        assert curve[0] == pytest.approx(neither(pred[a])) and curve[-1] == pytest.approx(neither(pred[b]))
    with pytest.raises(EvaluationError, match="two classes"):
        in_between_curves(model, images, torch.zeros_like(labels), MEAN, STD)


def test_fgsm_at_zero_is_clean_accuracy():
    images, labels = _data()
    model = _model()
    curve = fgsm_curve(model, images, labels, MEAN, STD, eps=[0.0, 8 / 255, 0.5], batch_size=20)
    assert curve.acc[0] == pytest.approx(100.0 - _err(model, images, labels))
    assert curve.acc[2] <= curve.acc[0]


def test_fgsm_on_a_linear_model_is_the_closed_form():
    images, labels = _data(n=32, size=8)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    w, b = model[1].weight.detach(), model[1].bias.detach()
    x = images.float() / 255
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    z = ((x - mean) / std).flatten(1)
    p = torch.softmax(z @ w.T + b, dim=1)
    # d CE / dz = (p - onehot) W ; dz/dx = 1/std > 0, so sign(d CE / dx) = sign((p - onehot) W)
    grad_z = (p - nn.functional.one_hot(labels, 4).float()) @ w
    eps = [0.0, 2 / 255, 0.1]
    adv = fgsm_perturb(model, images, labels, eps, MEAN, STD)
    for i, e in enumerate(eps):
        expected = (x + e * grad_z.sign().view_as(x)).clamp(0, 1)
        assert torch.allclose(adv[i], expected, atol=1e-6)
    expected_acc = [100.0 * float(((((adv[i] - mean) / std).flatten(1) @ w.T + b).argmax(1) == labels).double()
                                  .mean()) for i in range(len(eps))]
    assert fgsm_curve(model, images, labels, MEAN, STD, eps=eps).acc == pytest.approx(expected_acc)


def test_bad_inputs():
    images, labels = _data(n=4)
    model = _model()
    with pytest.raises(EvaluationError, match=r"\[0, 1\]"):
        fgsm_curve(model, images.float(), labels, MEAN, STD)  # 0..255 floats: not pixel space in [0, 1]
    with pytest.raises(EvaluationError, match="eps"):
        fgsm_curve(model, images, labels, MEAN, STD, eps=[2.0])
    with pytest.raises(EvaluationError, match="labels"):
        occlusion_curves(model, images, labels[:3], MEAN, STD)
    with pytest.raises(EvaluationError, match="mean/std"):
        occlusion_curves(model, images, labels, (0.5,), (0.2,))
    with pytest.raises(EvaluationError, match="images"):
        occlusion_curves(model, images[0], labels, MEAN, STD)
