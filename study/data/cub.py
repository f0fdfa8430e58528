"""Local readers of the WSOL benchmarks with boxes (CUB-200-2011, ImageNet val) and of plain image folders.

Nothing is downloaded: a missing file raises ``study.data.DataError`` with one line saying what to put where.
Images are resized to ``image_size x image_size`` without cropping and boxes are rescaled with wsolevaluation's
``resize_bbox`` (``int(x * new / old)`` per coordinate), as its evaluation does at 224 x 224 (Choe et al. 2020,
clovaai/wsolevaluation ``data_loaders.py`` and ``evaluation.py``). Boxes are inclusive pixel ``[x0, y0, x1, y1]``.

* CUB-200-2011 (Wah et al. 2011), the archive ``CUB_200_2011.tgz`` extracted: ``images.txt`` (``id path``),
  ``image_class_labels.txt`` (``id class``, 1-based), ``train_test_split.txt`` (``id is_train``),
  ``bounding_boxes.txt`` (``id x y width height``, floats) and ``images/``; ``classes.txt`` names the classes.
  A box becomes ``[x, y, x + width, y + height]`` clipped to the image (the boxes of wsolevaluation's metadata).
* ImageNet val (ILSVRC 2012): images under ``val/`` (flat ``ILSVRC2012_val_*.JPEG`` or one folder per wnid) and the
  box XMLs of ``ILSVRC2012_bbox_val_v3.tgz`` (Pascal VOC format) under ``bbox_val/`` (or beside the images). The
  class index is the position of the wnid in the sorted list of the 1000 wnids (``LOC_synset_mapping.txt`` when
  present, else the val sub-folders, else the wnids of the XMLs). Every box of an image is kept: ``boxes`` is
  ``[N, M, 4]`` padded with rows of -1.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from study.data.bundle import DataBundle, DataError, Split, stratified_split

__all__ = ["BoxSplit", "read_cub", "read_image_folder", "read_imagenet_val", "resize_box"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class BoxSplit:
    """images uint8 ``[N, 3, S, S]``; labels int64 ``[N]``; boxes int64 ``[N, 4]`` or ``[N, M, 4]`` (-1 rows pad)
    inclusive pixel ``[x0, y0, x1, y1]`` in the resized images; ids: image paths relative to the root."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    class_names: tuple[str, ...]
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def resize_box(box: Sequence[float], size: tuple[int, int], new: tuple[int, int]) -> list[int]:
    """wsolevaluation's ``resize_bbox``: ``box`` in an image of ``size = (width, height)`` -> ``new`` size."""
    (w, h), (nw, nh) = size, new
    x0, y0, x1, y1 = (float(v) for v in box)
    return [int(x0 * nw / w), int(y0 * nh / h), int(x1 * nw / w), int(y1 * nh / h)]


def _decode(path: Path, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 ``[3, S, S]`` (bilinear, antialiased) and the original ``(width, height)``."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as exc:
        raise DataError(f"cannot decode image {path} ({exc.__class__.__name__}; JPEG, PNG or BMP files)") from None
    h, w = img.shape[-2:]
    out = F.interpolate(img[None].float(), size=(image_size, image_size), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8), (int(w), int(h))


def _table(root: Path, name: str, what: str) -> list[list[str]]:
    path = root / name
    if not path.is_file():
        raise DataError(f"CUB-200-2011 file {path} is missing (extract CUB_200_2011.tgz so that {root} holds "
                        f"images/, images.txt, image_class_labels.txt, train_test_split.txt, bounding_boxes.txt; "
                        f"{name}: {what})")
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def read_cub(root: str | Path, split: str = "test", image_size: int = 224, limit: int | None = None) -> BoxSplit:
    """CUB-200-2011's ``split`` ("train" or "test", the official ``train_test_split.txt``) with its boxes.

    ``root`` is the extracted ``CUB_200_2011/`` folder (or its parent). ``limit`` keeps the first images by id.
    """
    if split not in ("train", "test"):
        raise DataError(f"CUB split {split!r} is not allowed (train or test)")
    base = Path(root).expanduser()
    if (base / "CUB_200_2011" / "images.txt").is_file():
        base = base / "CUB_200_2011"
    if not base.is_dir():
        raise DataError(f"CUB-200-2011 root {base} does not exist (extract CUB_200_2011.tgz there: images/, "
                        "images.txt, image_class_labels.txt, train_test_split.txt, bounding_boxes.txt)")
    paths = {r[0]: r[1] for r in _table(base, "images.txt", "<id> <path under images/>")}
    labels = {r[0]: int(r[1]) - 1 for r in _table(base, "image_class_labels.txt", "<id> <class 1..200>")}
    is_train = {r[0]: r[1] == "1" for r in _table(base, "train_test_split.txt", "<id> <1 train | 0 test>")}
    boxes = {r[0]: [float(v) for v in r[1:5]] for r in _table(base, "bounding_boxes.txt", "<id> <x> <y> <w> <h>")}
    names = (tuple(r[1] for r in _table(base, "classes.txt", "<class id> <name>"))
             if (base / "classes.txt").is_file() else tuple(str(i) for i in range(max(labels.values()) + 1)))
    ids = sorted((i for i in paths if is_train.get(i) == (split == "train")), key=int)[:limit]
    missing = [i for i in ids if i not in labels or i not in boxes]
    if missing:
        raise DataError(f"CUB-200-2011 image id {missing[0]} has no label or box (complete image_class_labels.txt "
                        "and bounding_boxes.txt)")
    images, out_boxes = [], []
    for i in ids:
        path = base / "images" / paths[i]
        if not path.is_file():
            raise DataError(f"CUB-200-2011 image {path} is missing (images/<class folder>/<file> as in images.txt)")
        img, (w, h) = _decode(path, image_size)
        x, y, bw, bh = boxes[i]
        box = [max(0.0, x), max(0.0, y), min(x + bw, w - 1.0), min(y + bh, h - 1.0)]
        images.append(img)
        out_boxes.append(resize_box(box, (w, h), (image_size, image_size)))
    return BoxSplit(_stack(images, image_size), torch.tensor([labels[i] for i in ids], dtype=torch.int64),
                    torch.tensor(out_boxes, dtype=torch.int64).reshape(-1, 4), names, tuple(paths[i] for i in ids))


def _stack(images: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def _parse_xml(path: Path) -> tuple[str, tuple[int, int], list[list[float]]]:
    """(wnid of the first object, (width, height), boxes) of a Pascal VOC annotation."""
    try:
        tree = ET.parse(path).getroot()
        size = tree.find("size")
        wh = (int(size.findtext("width")), int(size.findtext("height")))
        objs = tree.findall("object")
        boxes = [[float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objs]
        return objs[0].findtext("name").strip(), wh, boxes
    except (ET.ParseError, AttributeError, TypeError, ValueError, IndexError):
        raise DataError(f"box annotation {path} is not a Pascal VOC XML with <size> and <object><name><bndbox> "
                        "(use the XMLs of ILSVRC2012_bbox_val_v3.tgz)") from None


def read_imagenet_val(root: str | Path, image_size: int = 224, limit: int | None = None,
                      wnids: Sequence[str] | None = None) -> BoxSplit:
    """ImageNet (ILSVRC 2012) validation images with their box XMLs, under ``root`` (see the module docstring).

    ``wnids``: the class order (default: ``root/LOC_synset_mapping.txt``, else ``val/`` sub-folders, else the
    XMLs' wnids, sorted). ``limit`` keeps the first images in file-name order.
    """
    base = Path(root).expanduser()
    val = base / "val"
    if not val.is_dir():
        raise DataError(f"ImageNet val not found: expected {val}/ with the ILSVRC2012_val_*.JPEG images and their "
                        f"box XMLs (ILSVRC2012_bbox_val_v3.tgz) in {base / 'bbox_val'}/ or beside the images")
    images_by_stem = {p.stem: p for p in sorted(val.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
    xml_dir = base / "bbox_val" if (base / "bbox_val").is_dir() else val
    xmls = {p.stem: p for p in sorted(xml_dir.rglob("*.xml"))}
    if not xmls:
        raise DataError(f"no box XMLs under {xml_dir}/ (extract ILSVRC2012_bbox_val_v3.tgz into {base / 'bbox_val'}/)")
    stems = sorted(s for s in images_by_stem if s in xmls)[:limit]
    if not stems:
        raise DataError(f"no ImageNet val image under {val}/ has a box XML in {xml_dir}/ (matching file names)")
    parsed = {s: _parse_xml(xmls[s]) for s in stems}
    if wnids is None:
        mapping = base / "LOC_synset_mapping.txt"
        subdirs = sorted(p.name for p in val.iterdir() if p.is_dir())
        wnids = ([ln.split()[0] for ln in mapping.read_text().splitlines() if ln.strip()] if mapping.is_file()
                 else subdirs or sorted({p[0] for p in parsed.values()}))
    index = {w: i for i, w in enumerate(wnids)}
    unknown = sorted({p[0] for p in parsed.values()} - set(index))
    if unknown:
        raise DataError(f"ImageNet val wnid {unknown[0]} is not in the class list ({len(index)} wnids given)")
    m = max(len(p[2]) for p in parsed.values())
    images, labels = [], []
    boxes = torch.full((len(stems), m, 4), -1, dtype=torch.int64)
    for k, s in enumerate(stems):
        wnid, (w, h), bxs = parsed[s]
        img, size = _decode(images_by_stem[s], image_size)
        images.append(img)
        labels.append(index[wnid])
        for j, b in enumerate(bxs):
            b = [max(0.0, b[0]), max(0.0, b[1]), min(b[2], size[0] - 1.0), min(b[3], size[1] - 1.0)]
            boxes[k, j] = torch.tensor(resize_box(b, size, (image_size, image_size)))
    return BoxSplit(_stack(images, image_size), torch.tensor(labels, dtype=torch.int64), boxes, tuple(wnids),
                    tuple(str(images_by_stem[s].relative_to(base)) for s in stems))


def read_image_folder(root: str | Path, image_size: int, limit: int | None = None) -> torch.Tensor:
    """Every image file under ``root`` (recursive, sorted, at most ``limit``) as uint8 ``[N, 3, S, S]``: an OOD
    set from a local folder."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist (a directory of .jpg/.png/.bmp files, any depth)")
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise DataError(f"image folder {base} holds no images (.jpg, .jpeg, .png or .bmp files, any depth)")
    return _stack([_decode(p, image_size)[0] for p in files], image_size)


def load_cub_bundle(cfg):
    """CUB-200-2011 as a training dataset with boxes (`data.name: cub`, `data.root` the extracted folder): the
    official train split, `val_fraction` of it held out (stratified, `split_seed`), the official test split as test;
    decoded at `image_size` and held in memory (11,788 images at 224 px: ~1.8 GB of uint8)."""
    if not cfg.root:
        raise DataError("data.name=cub needs data.root (the extracted CUB_200_2011/ folder: images/, images.txt, "
                        "image_class_labels.txt, train_test_split.txt, bounding_boxes.txt)")
    train = read_cub(cfg.root, "train", cfg.image_size)
    test = read_cub(cfg.root, "test", cfg.image_size)
    fit, held = stratified_split(train.labels.numpy(), (1 - cfg.val_fraction, cfg.val_fraction), cfg.split_seed)
    def pick(split: BoxSplit, idx: np.ndarray) -> Split:
        keep = torch.as_tensor(np.sort(idx))
        return Split(split.images[keep], split.labels[keep], split.boxes[keep])

    mean = tuple(float(v) for v in train.images.float().mean((0, 2, 3)) / 255.0)
    std = tuple(float(v) for v in train.images.float().std((0, 2, 3)) / 255.0)
    return DataBundle("cub", pick(train, fit), pick(train, held), Split(test.images, test.labels, test.boxes),
                      len(train.class_names), mean, std, train.class_names)
