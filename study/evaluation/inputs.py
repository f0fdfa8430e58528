"""The inputs of the evaluate stage: the test split of the models' data, its OOD sets, the localization priors.

``test_split`` is what every model's task receives (one Ray object); the priors are computed once per stage, as
they depend only on the boxes and the CAM size. The OOD sets, each reported on its own (issue 16, point 3):

* **near** (headline columns), from the embedded generator at no download cost (``study.data.cluttered_digits``):
  ``clutter``, the test images with their target digit left out (same backgrounds, fragments, inks and places);
  ``held_out``, digits of the classes ``data.ood_classes`` holds out of training (only when a model was trained
  with that option: it changes the classifier, so it costs a training run of its own);
* **far**: another embedded dataset at this size (``shapes`` for digit data, ``digits`` otherwise) and
  ``evaluate.ood_root``, a local image folder, when given;
* **noise** (sanity rows, added by ``evaluate_model``): ODIN's uniform and Gaussian noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from study import models
from study.config.load import from_dict
from study.config.schema import DataConfig, EvaluateConfig, ModelConfig
from study.data.cluttered_digits import clutter_only_images, held_out_class_images
from study.data.cub import read_image_folder
from study.data.registry import load_data
from study.evaluation.sources import ModelRef, SourceError
from study.evaluation.wsol import centre_gaussian_map, gt_known_sweep, prior_max_box_acc, random_cam_baseline

__all__ = ["OOD_KINDS", "cam_size", "localization_priors", "ood_sets", "test_split"]

OOD_KINDS = ("near", "far", "noise")


def ood_sets(cfg: DataConfig, image_size: int, n: int, ood_root: str = "") -> tuple[dict[str, torch.Tensor],
                                                                                      dict[str, str]]:
    """``(sets, kinds)``: named uint8 image tensors (at most ``n`` images each, ``image_size`` px) and each set's
    kind (near / far). A missing ``ood_root`` raises ``study.data.bundle.DataError`` (exit 2)."""
    sets: dict[str, torch.Tensor] = {}
    kinds: dict[str, str] = {}
    if cfg.name == "cluttered_digits":
        sets["clutter"], kinds["clutter"] = clutter_only_images(cfg, n).images, "near"
        if cfg.ood_classes:
            sets["held_out"], kinds["held_out"] = held_out_class_images(cfg, n).images, "near"
    other = "shapes" if "digits" in cfg.name else "digits"
    ocfg = dataclasses.replace(cfg, name=other, image_size=image_size, synthetic_sizes=(64, 64, n), ood_classes=())
    sets[other], kinds[other] = load_data(ocfg).test.images, "far"
    if ood_root:
        sets["folder"], kinds["folder"] = read_image_folder(ood_root, image_size, n), "far"
    return sets, kinds


def cam_size(model: ModelConfig, num_classes: int, in_channels: int, image_size: int) -> tuple[int, int]:
    """``(h, w)`` of the class activation maps of ``model`` at ``image_size`` px (``study.models.cam_size`` of an
    untrained one: the size does not depend on the weights)."""
    return models.cam_size(models.build_model(model, num_classes, in_channels), image_size)


def localization_priors(boxes: torch.Tensor, image_size: int, cam: tuple[int, int], e: EvaluateConfig
                        ) -> dict[str, Any]:
    """What a localizer must beat on these boxes: ``{"centre_prior", "random_cam": {"maxboxacc_v2", "per_iou"},
    "sigma"}`` (the centre prior also with ``gt_known_loc_best`` and its ``best_sigma``), the centre-Gaussian map
    (``e.prior_sigma``) and random CAMs at the ``cam`` size (seed 0), both with ``e.cam_curve_interval``
    (``study.evaluation.wsol``)."""
    size = (image_size, image_size)
    centre = prior_max_box_acc(centre_gaussian_map(size, e.prior_sigma), boxes, cam_curve_interval=e.cam_curve_interval)
    rnd = random_cam_baseline(boxes, size, cam, seed=0, cam_curve_interval=e.cam_curve_interval)
    sweep = gt_known_sweep(centre_gaussian_map(size, e.prior_sigma), boxes)  # the prior at its own best sigma
    return {"centre_prior": {"maxboxacc_v2": centre.value, "per_iou": centre.per_iou,
                             "gt_known_loc_best": sweep["best"], "best_sigma": sweep["best_sigma"]},
            "random_cam": {"maxboxacc_v2": rnd.value, "per_iou": rnd.per_iou}, "sigma": e.prior_sigma}


def test_split(refs: Sequence[ModelRef], e: EvaluateConfig, load: Callable[[DataConfig], Any] | None = None
               ) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """``(split, info, epochs)`` for evaluating ``refs``: the test split of their data (one data config for all,
    else SourceError) with its OOD sets as the evaluate tasks take it, the table's ``info`` (arch, image size,
    CAM size and priors when the split has boxes) and the models' training epochs (None if they differ).
    ``load``: the data loader (default ``study.data.registry.load_data``; the stage passes its cached one)."""
    cfgs = [from_dict(r.config) for r in refs]
    data_cfg = cfgs[0].data
    if any(c.data != data_cfg for c in cfgs):
        raise SourceError("the models to evaluate were trained on different data configs (evaluate models of one "
                          "dataset together)")
    data = (load or load_data)(data_cfg)
    t = data.test
    sets, kinds = ood_sets(data_cfg, data.image_size, e.ood_images, e.ood_root)
    split = {"images": t.images, "labels": t.labels, "boxes": t.boxes, "mean": data.mean, "std": data.std,
             "ood_sets": sets, "ood_kinds": kinds, "num_classes": data.num_classes, "in_channels": data.in_channels,
             "class_names": data.class_names}
    info: dict[str, Any] = {"arch": cfgs[0].model.arch, "image_size": data.image_size}
    if t.boxes is not None:
        cam = cam_size(cfgs[0].model, data.num_classes, data.in_channels, data.image_size)
        info["priors"] = localization_priors(t.boxes, data.image_size, cam, e)
    epochs = {c.train.epochs for c in cfgs}
    return split, info, epochs.pop() if len(epochs) == 1 else None
