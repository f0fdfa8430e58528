"""OOD detection: metrics equal scikit-learn's on the same scores; ODIN's noise sets; the end-to-end call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from study.config.schema import ModelConfig
from study.evaluation.ood import max_softmax, noise_images, ood_metrics, ood_scores, prepare_ood_images
from study.metric_names import EvaluationError
from study.models import build_model

torch.set_num_threads(1)


def _sklearn(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auroc": 100 * roc_auc_score(y, s), "tnr95": 100 * (1 - fpr[tpr >= 0.95]).max(),
            "detacc": 100 * (0.5 * (tpr + 1 - fpr)).max()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    pos = rng.beta(5, 2, size=400)
    neg = rng.beta(2, 3, size=300)
    if seed == 2:  # ties and saturated probabilities, as confident softmax outputs have
        pos = np.round(pos, 2)
        neg = np.round(neg, 2)
        pos[:50] = 1.0
    ours = ood_metrics(torch.from_numpy(pos).float(), torch.from_numpy(neg).float())
    ref = _sklearn(pos.astype(np.float32), neg.astype(np.float32))
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-4), k  # torchmetrics integrates in float32


def test_separable_and_identical_scores():
    perfect = ood_metrics(torch.tensor([0.9, 0.8, 0.95]), torch.tensor([0.1, 0.2]))
    assert perfect == {"auroc": 100.0, "tnr95": 100.0, "detacc": 100.0}
    same = ood_metrics(torch.full((10,), 0.5), torch.full((10,), 0.5))
    assert same["auroc"] == 50.0 and same["tnr95"] == 0.0 and same["detacc"] == 50.0
    with pytest.raises(EvaluationError, match="sigmoid"):
        ood_metrics(torch.tensor([2.0, 0.5]), torch.tensor([0.1]))  # logits, not probabilities
    with pytest.raises(EvaluationError, match="non-empty"):
        ood_metrics(torch.tensor([0.5]), torch.tensor([]))


def test_noise_sets_as_odin_defines_them():
    u = noise_images("uniform", 200, (3, 8, 8), seed=0)
    g = noise_images("gaussian", 200, (3, 8, 8), seed=0)
    assert u.shape == g.shape == (200, 3, 8, 8) and u.min() >= 0 and u.max() <= 1
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.var()) - 1 / 12) < 0.01
    # N(0.5, 1) clamped: P(x <= 0) = P(x >= 1) = Phi(-0.5) ~ 0.3085
    assert abs(float((g == 0).double().mean()) - 0.3085) < 0.02 and abs(float((g == 1).double().mean()) - 0.3085) < 0.02
    assert torch.equal(noise_images("uniform", 5, (3, 4, 4), seed=1), noise_images("uniform", 5, (3, 4, 4), seed=1))
    with pytest.raises(EvaluationError, match="uniform"):
        noise_images("salt", 1, (3, 4, 4))


def test_prepare_resizes_and_fixes_channels():
    grey = (torch.rand(4, 1, 20, 20) * 255).to(torch.uint8)
    out = prepare_ood_images(grey, (3, 10, 10))
    assert out.shape == (4, 3, 10, 10) and out.dtype == torch.float32 and out.max() <= 1
    assert torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(EvaluationError, match="channels"):
        prepare_ood_images(torch.rand(2, 2, 5, 5), (3, 5, 5))


def test_ood_scores_end_to_end():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="cnn", width=4), 5).eval()
    images = (torch.rand(40, 3, 16, 16) * 255).to(torch.uint8)
    other = torch.rand(30, 3, 32, 32)
    res = ood_scores(model, images, (0.5,) * 3, (0.25,) * 3, ood_sets={"other": other}, batch_size=16)
    assert set(res) == {"other", "uniform", "gaussian"}
    s_in = max_softmax(model, images, (0.5,) * 3, (0.25,) * 3)
    s_out = max_softmax(model, prepare_ood_images(other, (3, 16, 16)), (0.5,) * 3, (0.25,) * 3)
    assert res["other"] == ood_metrics(s_in, s_out)
    with pytest.raises(EvaluationError, match="reserved"):
        ood_scores(model, images, (0.5,) * 3, (0.25,) * 3, ood_sets={"uniform": other})


def test_bootstrap_auroc_interval():
    from study.evaluation.ood import bootstrap_auroc

    g = torch.Generator().manual_seed(0)
    inside = (torch.rand(3000, generator=g) ** 0.5 * 50).round() / 50  # ties, as saturated softmax scores have
    outside = (torch.rand(1000, generator=g) * 50).round() / 50
    exact = ood_metrics(inside, outside)["auroc"]
    lo, hi = bootstrap_auroc(inside, outside, n_boot=400, seed=1)
    assert lo < exact < hi and hi - lo < 6  # about 4 standard errors of an AUROC on these counts
    assert bootstrap_auroc(inside, outside, n_boot=400, seed=1) == (lo, hi)  # seeded
    assert bootstrap_auroc(torch.full((50,), 0.7), torch.full((20,), 0.7), n_boot=50) == (50.0, 50.0)  # ties: half
    assert bootstrap_auroc(torch.ones(30), torch.zeros(10), n_boot=50) == (100.0, 100.0)
    with pytest.raises(EvaluationError):
        bootstrap_auroc(inside, outside[:0])
