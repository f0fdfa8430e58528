"""Tests of study.plots: every picture is a readable, non-empty PNG, and odd study frames never crash it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from study.augment import CutMix
from study.grids import save_sample_grid
from study.plots import save_learning_curves, save_study_plots
from tests.helpers.images import assert_png, colour_share

torch.set_num_threads(1)


# matplotlib's default cycle (train, val, test lines) and the colours study.plots draws its markers in.
C0, C1, C2, TAB_RED, RED = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#ff0000"


# ---------------------------------------------------------------------------------------------------------------
# Sample grids


@pytest.mark.parametrize(("channels", "dtype"), [(3, torch.float32), (1, torch.float32), (3, torch.uint8),
                                                 (1, torch.uint8)])
def test_sample_grid_of_mixed_batch(tmp_path, channels, dtype):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(10, channels, 16, 16, generator=g)
    mean, std = [0.5] * channels, [0.25] * channels
    if dtype == torch.uint8:
        images, mean, std = (images * 255).to(torch.uint8), None, None
    else:
        images = (images - 0.5) / 0.25
    labels = torch.arange(10) % 4
    mixed, targets = CutMix(1.0, 1.0, "sample", num_classes=4, label_smoothing=0.1)(images, labels, g)
    path = save_sample_grid(mixed, tmp_path / "sub" / "grid.png", targets=targets, mean=mean, std=std, nrow=4,
                            class_names=["cat", "dog", "car", "ship"], title="CutMix p=1")
    assert path == tmp_path / "sub" / "grid.png"
    assert_png(path)


def test_sample_grid_lays_out_the_tiles_in_nrow_columns(tmp_path):
    # Ten solid-colour tiles, four per row: the PNG shows each tile's colour where its tile sits, and white where
    # the last row has no image.
    colours = torch.stack([torch.tensor([25 * i, 250 - 25 * i, 60 + 15 * i]) for i in range(10)]).to(torch.uint8)
    images = colours[:, :, None, None].expand(10, 3, 16, 16).contiguous()
    pixels = assert_png(save_sample_grid(images, tmp_path / "g.png", nrow=4))
    rows, cols, side, pad = 3, 4, 16, 1  # pad = round(6% of the side), at least 1
    scale_y, scale_x = pixels.shape[0] / (rows * (side + pad) + pad), pixels.shape[1] / (cols * (side + pad) + pad)
    assert scale_x == pytest.approx(scale_y, rel=0.05)  # tiles stay square
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        y, x = int((pad + r * (side + pad) + side / 2) * scale_y), int((pad + c * (side + pad) + side / 2) * scale_x)
        want = colours[i].float().numpy() / 255 if i < 10 else np.ones(3)
        np.testing.assert_allclose(pixels[y, x, :3], want, atol=0.02, err_msg=f"tile {i}")


def test_sample_grid_without_targets_and_unnormalised_floats(tmp_path):
    assert_png(save_sample_grid(torch.randn(3, 3, 8, 8) * 4, tmp_path / "a.png"))
    assert_png(save_sample_grid(torch.rand(1, 1, 8, 8), tmp_path / "b.png", targets=torch.tensor([2])))


def test_sample_grid_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"images of shape \(2, 4, 8, 8\)"):
        save_sample_grid(torch.rand(2, 4, 8, 8), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"targets of shape \(3, 4\)"):
        save_sample_grid(torch.rand(2, 3, 8, 8), tmp_path / "x.png", targets=torch.rand(3, 4))


# ---------------------------------------------------------------------------------------------------------------
# Learning curves


def test_learning_curves(tmp_path):
    history = [{"epoch": e, "train/loss": 2.0 / e, "val/loss": 2.2 / e, "val/top1_err": 60.0 / e,
                "test/top1_err": 62.0 / e, "train/top1_err": 55.0 / e, "lr": 0.1 * 0.1 ** (e > 3)}
               for e in range(1, 7)]
    history[2]["val/loss"] = math.nan
    pixels = assert_png(save_learning_curves(history, tmp_path / "curves.png", title="resnet20"))
    # Two panels side by side: loss on the left (train and val lines; this history has no test loss), top-1
    # error on the right (train, val and test lines).
    half = pixels.shape[1] // 2
    loss, err = pixels[:, :half], pixels[:, half:]
    assert colour_share(loss, C0) > 1e-3 and colour_share(loss, C1) > 1e-3 and colour_share(loss, C2) == 0
    assert min(colour_share(err, c) for c in (C0, C1, C2)) > 1e-3


@pytest.mark.parametrize("history", [[], [{"epoch": 1, "train/loss": 1.0}], [{"lr": 0.1}, {"lr": 0.01}]])
def test_learning_curves_sparse_histories(tmp_path, history):
    assert_png(save_learning_curves(history, tmp_path / "curves.png"))


# ---------------------------------------------------------------------------------------------------------------
# Study plots


def study_frame(n: int = 16, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    prob = rng.choice([0.0, 0.25, 0.5, 1.0], n)
    alpha = np.where(prob == 0, np.nan, np.exp(rng.uniform(np.log(0.1), np.log(4), n)))
    arch = rng.choice(["resnet20", "pyramidnet"], n)
    lr = np.exp(rng.uniform(np.log(0.01), np.log(0.3), n))
    err = 30 - 5 * prob + rng.normal(0, 1, n)
    # The statuses study.search emits: completed, stopped (ASHA), error (no result).
    status = np.where(np.arange(n) == 3, "error", np.where(np.arange(n) % 4 == 1, "stopped", "completed"))
    err[3] = np.nan
    return pd.DataFrame({"trial_id": [f"t{i:03d}" for i in range(n)], "status": status, "cutmix.alpha": alpha,
                         "cutmix.prob": prob, "model.arch": arch, "train.lr": lr, "val/top1_err": err + 1,
                         "best/val/top1_err": err, "epochs": 5, "wall_s": 12.5, "mlflow_run_id": None})


def names(paths) -> set[str]:
    return {Path(p).name for p in paths}


def test_study_plots_full_frame(tmp_path):
    paths = save_study_plots(study_frame(), "val/top1_err", "min", tmp_path / "plots")
    assert names(paths) == {"alpha_prob_resnet20.png", "alpha_prob_pyramidnet.png", "isolation.png",
                            "best_so_far.png"}
    pixels = {Path(p).name: assert_png(p) for p in paths}
    for arch in ("resnet20", "pyramidnet"):
        assert colour_share(pixels[f"alpha_prob_{arch}.png"], RED) > 1e-4  # the best trial's red star
    assert colour_share(pixels["best_so_far.png"], TAB_RED) > 1e-3  # the running-best line
    assert_panel_grid(pixels["isolation.png"], n_params=4)  # alpha, p, arch, lr


def assert_panel_grid(pixels: np.ndarray, n_params: int) -> None:
    """isolation.png has one 4.2 x 3.3 inch panel per searched parameter, three to a row: its aspect says how
    many rows and columns it has."""
    cols, rows = min(3, n_params), math.ceil(n_params / 3)
    assert pixels.shape[1] / pixels.shape[0] == pytest.approx(4.2 * cols / (3.3 * rows), rel=0.1)


@pytest.mark.parametrize("case", ["one_trial", "one_arch", "no_arch", "all_alpha_nan", "only_metric", "max_mode",
                                  "string_params", "nan_metric_rows", "no_alpha"])
def test_study_plots_edge_cases(tmp_path, case):
    df, mode, want = study_frame(), "min", None
    if case == "one_trial":
        df = df.iloc[[0]].assign(**{"cutmix.prob": 0.5, "cutmix.alpha": 1.0})
        want = {f"alpha_prob_{df['model.arch'].iloc[0]}.png", "isolation.png", "best_so_far.png"}
    elif case == "one_arch":
        df = df.assign(**{"model.arch": "resnet20"})
        want = {"alpha_prob_resnet20.png", "isolation.png", "best_so_far.png"}
    elif case == "no_arch":
        df = df.drop(columns=["model.arch"])
        want = {"alpha_prob_all.png", "isolation.png", "best_so_far.png"}
    elif case == "all_alpha_nan":  # only baselines: every trial in the "alpha n/a" column
        df = df.assign(**{"cutmix.alpha": np.nan, "cutmix.prob": 0.0})
        want = {"alpha_prob_resnet20.png", "alpha_prob_pyramidnet.png", "isolation.png", "best_so_far.png"}
    elif case == "only_metric":  # no params at all, and no best/ column: rank by the final metric
        df = df[["trial_id", "status", "val/top1_err"]]
        want = {"best_so_far.png"}
    elif case == "max_mode":
        mode = "max"
        want = {"alpha_prob_resnet20.png", "alpha_prob_pyramidnet.png", "isolation.png", "best_so_far.png"}
    elif case == "string_params":  # object columns with None, as pandas gives for mixed cells
        df = df.assign(**{"cutmix.alpha": [None if math.isnan(a) else a for a in df["cutmix.alpha"]],
                          "cutmix.method": ["cutmix", "mixup"] * 8})
        want = {"alpha_prob_resnet20.png", "alpha_prob_pyramidnet.png", "isolation.png", "best_so_far.png"}
    elif case == "nan_metric_rows":
        df = df.assign(**{"best/val/top1_err": [np.nan] * 15 + [20.0]})
        # Only the last trial has a result: the map of its architecture alone.
        want = {f"alpha_prob_{df['model.arch'].iloc[15]}.png", "isolation.png", "best_so_far.png"}
    elif case == "no_alpha":
        df = df.drop(columns=["cutmix.alpha"])
        want = {"isolation.png", "best_so_far.png"}
    paths = save_study_plots(df, "val/top1_err", mode, tmp_path)
    assert names(paths) == want
    pixels = {Path(p).name: assert_png(p) for p in paths}
    if "isolation.png" in pixels:
        n_params = len([c for c in df.columns if "." in c and "/" not in c])
        assert_panel_grid(pixels["isolation.png"], n_params)
    if case == "max_mode":  # the other direction ranks differently: a different running best
        same = save_study_plots(study_frame(), "val/top1_err", "min", tmp_path / "min")
        assert not np.array_equal(pixels["best_so_far.png"], assert_png(tmp_path / "min" / "best_so_far.png"))
        assert len(same) == 4


def test_study_plots_without_results_write_nothing(tmp_path):
    df = study_frame().assign(**{"best/val/top1_err": np.nan})
    assert save_study_plots(df, "val/top1_err", "min", tmp_path) == []
    assert save_study_plots(df, "val/accuracy", "max", tmp_path) == []
    assert save_study_plots(study_frame().iloc[:0], "val/top1_err", "min", tmp_path) == []
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"mode='best'"):
        save_study_plots(study_frame(), "val/top1_err", "best", tmp_path)


def test_study_plots_read_back_from_parquet(tmp_path):
    df = study_frame()
    df.to_parquet(tmp_path / "results.parquet")
    paths = save_study_plots(pd.read_parquet(tmp_path / "results.parquet"), "val/top1_err", "min", tmp_path / "p")
    direct = save_study_plots(df, "val/top1_err", "min", tmp_path / "d")
    assert names(paths) == names(direct) and len(paths) == 4
    for p, d in zip(sorted(paths), sorted(direct)):  # the same pictures, pixel for pixel
        assert np.array_equal(assert_png(p), assert_png(d)), p.name
