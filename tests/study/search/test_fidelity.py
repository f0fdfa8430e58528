"""study.search.fidelity on synthetic studies whose rungs are known to agree or to disagree with the end."""

from __future__ import annotations

import math

import pytest

from study.search.fidelity import RHO_WARN, describe_fidelity, measure, rho_metrics, rung_epochs, smooth_key, smoothed

M = "val/top1_err"


def curve(values):
    return [{M: float(v), "epoch": i + 1} for i, v in enumerate(values)]


def test_smoothed_is_the_mean_of_the_last_k_epochs_up_to_an_epoch():
    assert smoothed([10, 20, 30, 40], 2) == 35
    assert smoothed([10, 20, 30, 40], 3, upto=3) == 20
    assert smoothed([10, 20], 5) == 15  # fewer epochs than k: all of them
    assert smoothed([10, math.nan, 30], 2) == 30
    assert math.isnan(smoothed([], 2))
    assert smooth_key(M) == "val/top1_err_smooth"


def test_rungs_are_ashas_milestones_below_the_budget():
    assert rung_epochs(4, 2, 12) == [4, 8]
    assert rung_epochs(1, 2, 4) == [1, 2]
    assert rung_epochs(4, 3, 4) == []


def test_rungs_that_reverse_the_final_ranking_give_rho_minus_one_and_the_warning():
    # A regularizer's short-horizon bias, made exact: the trials that are best at epoch 4 are worst at epoch 12
    # (and epoch 8 already agrees with the end).
    histories = {}
    for i in range(5):
        early = 40 + 2 * i  # trial 0 leads at epoch 4 ...
        late = 30 - 3 * i  # ... and trails at the end
        histories[f"t{i}"] = curve([early] * 4 + [late + 1] * 4 + [late] * 4)
    out = measure(histories, M, [4, 8], 12, k=2)
    by_epoch = {r["epoch"]: r for r in out["rungs"]}
    assert by_epoch[4]["rho"] == pytest.approx(-1.0) and by_epoch[8]["rho"] == pytest.approx(1.0)
    assert out["trials"] == 5 and out["min_rho"] == pytest.approx(-1.0) and out["reason"] == ""
    assert out["warning"].startswith("early stopping at epoch 4 ranks trials unlike epoch 12: rho = -1.00")
    assert rho_metrics(out) == {"fidelity/rho_epoch4": pytest.approx(-1.0), "fidelity/rho_epoch8": pytest.approx(1.0),
                            "fidelity/trials": 5.0}
    line = describe_fidelity(out)
    assert "epoch 4 -1.00, epoch 8 1.00" in line and "warning: early stopping" in line
    # With search.scheduler=none nothing was stopped: the warning says what ASHA would do at that rung (issue 26.6)
    off = measure(histories, M, [4, 8], 12, k=2, active=False)
    assert off["warning"].startswith("early stopping is off; ASHA would cut at epoch 4 by a ranking unlike epoch "
                                     "12's: rho = -1.00") and off["rungs"] == out["rungs"]


def test_rungs_that_agree_give_no_warning():
    histories = {f"t{i}": curve([50 - i, 40 - i, 30 - 2 * i, 20 - 3 * i]) for i in range(4)}
    out = measure(histories, M, [2], 4, k=1)
    assert out["rungs"][0]["rho"] == pytest.approx(1.0) and out["warning"] == "" and out["min_rho"] >= RHO_WARN


def test_smoothing_decides_what_a_rung_sees():
    # Epoch 4 alone ranks the trials one way; the mean of epochs 3-4 the other way (the noisy jump at epoch 4).
    histories = {"a": curve([50, 50, 30, 41, 10, 10]), "b": curve([50, 50, 40, 40, 20, 20]),
                 "c": curve([50, 50, 50, 39, 30, 30])}
    assert measure(histories, M, [4], 6, k=1)["rungs"][0]["rho"] == pytest.approx(-1.0)
    assert measure(histories, M, [4], 6, k=2)["rungs"][0]["rho"] == pytest.approx(1.0)


def test_only_trials_that_reached_the_end_count_and_too_few_is_a_reason_not_a_number():
    histories = {"a": curve([3, 2, 1, 0]), "b": curve([4, 3, 2, 1]), "stopped": curve([9])}
    out = measure(histories, M, [1, 2], 4, k=2)
    assert out["rungs"] == [] and out["min_rho"] is None and out["trials"] == 2
    assert "only 2 trial(s) reached epoch 4" in out["reason"] and "pilot" in out["reason"]
    assert rho_metrics(out) == {"fidelity/trials": 2.0} and "not measured" in describe_fidelity(out)


def test_constant_values_leave_rho_undefined():
    histories = {f"t{i}": curve([5, 5, i]) for i in range(3)}
    out = measure(histories, M, [2], 3, k=1)
    assert out["rungs"][0]["rho"] is None and out["min_rho"] is None and "undefined" in out["reason"]
