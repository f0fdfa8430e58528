"""study.detection's fine-tuning schedule (torch's LinearLR + CosineAnnealingLR) against its closed form.

Kept apart from test_detection.py (the detector and its data) so that file can change without touching this one.
"""

from __future__ import annotations

import math

import pytest
import torch

from study.detection import _warmup_cosine


def closed_form(it: int, total: int, warmup: int, warmup_factor: float = 1e-3) -> float:
    """The multiplier the detector used before torch's schedulers (a LambdaLR of this), kept as the reference."""
    if it < warmup:
        a = it / warmup
        return warmup_factor * (1 - a) + a
    progress = (it - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize(("total", "warmup"), [(1, 1), (2, 1), (8, 2), (12, 3), (100, 25), (600, 50)])
def test_warmup_cosine_equals_the_closed_form_per_iteration(total, warmup):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02, momentum=0.9)
    sched = _warmup_cosine(opt, total, warmup)
    got = []
    for _ in range(total):  # finetune() reads the lr, steps the optimizer, then the scheduler, every iteration
        got.append(opt.param_groups[0]["lr"] / 0.02)
        opt.step()
        sched.step()
    want = [closed_form(i, total, warmup) for i in range(total)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got[0] == pytest.approx(1e-3) and (total == warmup or max(got) == pytest.approx(1.0))
    # After the last iteration too (cosine at 0 once past the warmup).
    assert opt.param_groups[0]["lr"] / 0.02 == pytest.approx(closed_form(total, total, warmup), rel=1e-12, abs=1e-15)
