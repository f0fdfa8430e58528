"""Pascal VOC detection reader: local files only, never downloaded; a missing root says what to put where.

Items are (float image [3, H, W] in [0, 1], target dict with `boxes` float32 [K, 4] xyxy pixels and `labels` int64
[K], 1-based), the format torchvision's detection models and `study.detection.finetune` take.
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch.utils.data import Dataset

Target = dict[str, torch.Tensor]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


class DetectionDataError(ValueError):
    """Detection data missing or malformed. The message is one line saying what to put where."""


# ---------------------------------------------------------------------------------------------------------------
# Pascal VOC


def _voc_archive(year: str, image_set: str) -> str:
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    key = "2007-test" if year == "2007" and image_set == "test" else year
    return DATASET_YEAR_DICT.get(key, {}).get("filename", f"the VOC{year} archive")


class _VOC(Dataset):
    """VOCDetection with targets in our format plus ``difficult`` (bool [N]) and PIL -> float tensor."""

    classes = VOC_CLASSES

    def __init__(self, base: torchvision.datasets.VOCDetection, hflip: bool) -> None:
        self.base = base
        self.hflip = hflip
        self._index = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        img, ann = self.base[index]
        image = torchvision.transforms.functional.pil_to_tensor(img).to(torch.float32).div_(255)
        objects = ann["annotation"].get("object", [])
        if isinstance(objects, dict):  # defensive: parse_voc_xml returns a list, but a single dict is also valid
            objects = [objects]
        boxes, labels, difficult = [], [], []
        for obj in objects:
            b = obj["bndbox"]
            # VOC boxes are 1-based and inclusive: [xmin - 1, xmax) in our pixel-interval convention.
            boxes.append([float(b["xmin"]) - 1, float(b["ymin"]) - 1, float(b["xmax"]), float(b["ymax"])])
            name = obj["name"].strip()
            if name not in self._index:
                raise DetectionDataError(f"unknown VOC class {name!r} in {self.base.annotations[index]} "
                                         f"(one of: {', '.join(VOC_CLASSES)})")
            labels.append(self._index[name])
            difficult.append(str(obj.get("difficult", "0")).strip() == "1")
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor(difficult, dtype=torch.bool),
        }
        if self.hflip and bool(torch.rand(()) < 0.5):
            w = image.shape[-1]
            image = image.flip(-1)
            target["boxes"] = torch.stack([w - target["boxes"][:, 2], target["boxes"][:, 1],
                                           w - target["boxes"][:, 0], target["boxes"][:, 3]], dim=1)
        return image, target


def voc_dataset(root: str | os.PathLike, year: str = "2007", image_set: str = "trainval", *,
                hflip: bool = False) -> Dataset:
    """Pascal VOC detection from ``root/VOCdevkit/VOC<year>``, never downloaded.

    Items are ``(image float32 [3, H, W] in [0, 1], target)`` with ``target["boxes"]`` float32 ``[N, 4]``
    xyxy pixels, ``target["labels"]`` int64 ``[N]`` in 1..20 (``VOC_CLASSES`` index plus one) and
    ``target["difficult"]`` bool ``[N]``. Difficult objects are **kept and flagged**: they are trained on
    (as detectron2 does) and :class:`MapMeter` passes them to COCO evaluation as ``iscrowd`` so they are
    ignored, neither true nor false positives, as in the VOC protocol. ``hflip`` flips half the images at
    random (torch's global RNG), the one augmentation of torchvision's detection reference.

    Raises:
        DetectionDataError: one line naming the missing path and the archive to extract there.
    """
    year = str(year)
    years = [str(y) for y in range(2007, 2013)]
    if year not in years:
        raise DetectionDataError(f"VOC year {year!r} is not supported (one of: {', '.join(years)})")
    sets = ["train", "val", "trainval"] + (["test"] if year == "2007" else [])
    if image_set not in sets:
        raise DetectionDataError(f"VOC {year} image_set {image_set!r} is not supported (one of: {', '.join(sets)})")
    root = os.path.abspath(os.fspath(root))
    voc = os.path.join(root, "VOCdevkit", f"VOC{year}")
    archive = _voc_archive(year, image_set)
    fix = f"(download {archive} and extract it under {root})"
    needed = [os.path.join(voc, d) for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main"))]
    if not all(os.path.isdir(d) for d in needed):
        raise DetectionDataError(f"VOC {year} not found under {root}: expected "
                                 f"{voc}/{{Annotations,JPEGImages,ImageSets/Main}} {fix}")
    split = os.path.join(voc, "ImageSets", "Main", f"{image_set}.txt")
    if not os.path.isfile(split):
        raise DetectionDataError(f"VOC {year} split list {split} not found {fix}")
    base = torchvision.datasets.VOCDetection(root, year=year, image_set=image_set, download=False)
    missing = [p for p in base.images + base.annotations if not os.path.isfile(p)]
    if missing:
        raise DetectionDataError(f"VOC {year} {image_set}: {len(missing)} listed files are missing, first "
                                 f"{missing[0]} {fix}")
    return _VOC(base, hflip)
