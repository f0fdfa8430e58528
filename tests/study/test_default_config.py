"""The embedded default measures something: its p=0 baseline has headroom (test error between 5 % and 35 % on
thousands of test images, issue 10), and a model trained on it localizes the target digit far above a random-CAM
baseline (issue 11: CutMix's "localizable features" claim is measurable on the default) and beyond the
centre-Gaussian prior on the same boxes (issue 16)."""

from __future__ import annotations

import pytest

from study.config.load import load_config
from study.data.registry import load_data
from study.evaluation.suite import evaluate_model
from study.training.engine import fit


@pytest.mark.slow
def test_default_baseline_has_headroom_and_its_cams_localize_the_digit():
    cfg = load_config(None, ["cutmix.prob=0", "train.num_threads=1"])
    data = load_data(cfg.data)
    assert len(data.test) >= 5000 and data.test.boxes is not None
    results = list(fit(cfg, data))
    err = results[-1].metrics["test/top1_err"]
    assert 5.0 <= err <= 35.0, err
    model = results[-1].trainer.model.eval()
    n = 1000
    out = evaluate_model(model, data.test.images[:n], data.test.labels[:n], data.mean, data.std,
                         boxes=data.test.boxes[:n], evaluations=["classification", "localization"])
    m = out.metrics
    assert m["maxboxacc_v2"] > m["random_cam_maxboxacc_v2"] + 20, m
    # Beyond the centre prior (MaxBoxAccV2 33.1 on these 1,000 boxes) by 8 points. Measured with the 6x6 CAM of the
    # default: +17.2 (train.seed 0) and +18.5 (seed 1); the sampling s.e. of MaxBoxAccV2 on 1,000 images is about
    # 1.2 points. The 3x3 CAM of the earlier default stayed within +4.7 of the prior (same training, 5,000 test
    # images): the resolution, not the prior, is what this margin checks.
    assert m["maxboxacc_v2_over_prior"] > 8.0, m
