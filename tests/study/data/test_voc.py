"""study.data.voc on a VOC tree built on disk: pixels in RGB order, 1-based class indices for all 20 classes,
boxes from 1-based inclusive corners, empty and odd annotations, and one-line DetectionDataErrors that say what to
put where. (tests/study/test_detection.py covers the flip, `difficult` and a missing JPEG of a 2007 tree.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from study.data.voc import VOC_CLASSES, DetectionDataError, voc_dataset


def _object_xml(name: str, box: tuple, difficult: str | None) -> str:
    tag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    corners = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name>{tag}<bndbox>{corners}</bndbox></object>"


def _voc(root: Path, images: dict[str, tuple[tuple[int, int], tuple[int, int, int], list[tuple]]], *,
         year: str = "2007", image_set: str = "trainval") -> Path:
    """Write root/VOCdevkit/VOC<year> with one solid-colour JPEG and one XML per image id: {id: ((width, height),
    RGB colour, objects)}, each object (name, (xmin, ymin, xmax, ymax)[, difficult]) in VOC's 1-based inclusive
    pixel corners. Returns the VOC<year> directory."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for image_id, ((w, h), colour, objects) in images.items():
        Image.fromarray(np.full((h, w, 3), colour, dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg",
                                                                         quality=95)
        body = "".join(_object_xml(o[0], o[1], o[2] if len(o) > 2 else None) for o in objects)
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{body}</annotation>")
    (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in images))
    return voc


def test_image_is_float_rgb_in_unit_range(tmp_path):
    _voc(tmp_path, {"red": ((40, 24), (255, 0, 0), [("cat", (1, 1, 10, 10))]),
                    "blue": ((16, 32), (0, 0, 255), [("cat", (1, 1, 10, 10))])})
    ds = voc_dataset(tmp_path)
    red, _ = ds[0]
    blue, _ = ds[1]
    assert red.shape == (3, 24, 40) and blue.shape == (3, 32, 16) and red.dtype == torch.float32
    assert 0.0 <= float(red.min()) and float(red.max()) <= 1.0
    means = red.mean(dim=(1, 2)).tolist()
    assert means[0] > 0.9 and means[1] < 0.1 and means[2] < 0.1  # channel 0 is red
    assert blue.mean(dim=(1, 2)).argmax().item() == 2


def test_every_class_maps_to_its_one_based_index(tmp_path):
    objects = [(name, (i + 1, i + 2, i + 11, i + 12)) for i, name in enumerate(VOC_CLASSES)]
    _voc(tmp_path, {"000001": ((64, 64), (90, 90, 90), objects)})
    _, target = voc_dataset(tmp_path)[0]
    assert target["labels"].tolist() == list(range(1, 21))
    assert [VOC_CLASSES[i - 1] for i in target["labels"].tolist()] == list(VOC_CLASSES)  # 0 stays background
    assert target["boxes"].shape == (20, 4) and target["boxes"].dtype == torch.float32
    # [xmin - 1, ymin - 1, xmax, ymax]: a box from pixel 1 to pixel 10 (inclusive, 1-based) is 10 wide.
    expected = torch.tensor([[i, i + 1, i + 11, i + 12] for i in range(20)], dtype=torch.float32)
    assert torch.equal(target["boxes"], expected)
    assert ((target["boxes"][:, 2] - target["boxes"][:, 0]) == 11).all()


def test_an_image_without_objects_has_empty_typed_targets(tmp_path):
    _voc(tmp_path, {"empty": ((20, 20), (0, 0, 0), [])})
    _, target = voc_dataset(tmp_path)[0]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["difficult"].shape == (0,) and target["difficult"].dtype == torch.bool


def test_names_are_stripped_coordinates_may_be_fractional_and_difficult_defaults_to_false(tmp_path):
    _voc(tmp_path, {"x": ((50, 50), (0, 0, 0), [("  dog\n", (10.5, 3, 20, 30.5)), ("horse", (1, 1, 5, 5), " 1 ")])})
    _, target = voc_dataset(tmp_path)[0]
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("horse") + 1]
    assert target["boxes"].tolist() == [[9.5, 2.0, 20.0, 30.5], [0.0, 0.0, 5.0, 5.0]]
    assert target["difficult"].tolist() == [False, True]


def test_an_unknown_class_names_the_file_and_the_classes(tmp_path):
    voc = _voc(tmp_path, {"u": ((20, 20), (0, 0, 0), [("unicorn", (1, 1, 5, 5))])})
    ds = voc_dataset(tmp_path)  # read lazily: the item raises, not the constructor
    with pytest.raises(DetectionDataError) as info:
        ds[0]
    assert str(info.value) == (f"unknown VOC class 'unicorn' in {voc / 'Annotations' / 'u.xml'} "
                               f"(one of: {', '.join(VOC_CLASSES)})")


def test_another_year_and_split(tmp_path):
    _voc(tmp_path, {"2012_000001": ((30, 20), (0, 0, 0), [("person", (2, 3, 12, 13))])}, year="2012",
         image_set="val")
    ds = voc_dataset(tmp_path, 2012, "val")  # the year may be given as a number
    assert len(ds) == 1 and ds[0][1]["boxes"].tolist() == [[1.0, 2.0, 12.0, 13.0]]


def test_a_partial_tree_says_which_directories_and_which_archive(tmp_path):
    voc = _voc(tmp_path, {"a": ((20, 20), (0, 0, 0), [])})
    for f in (voc / "JPEGImages").iterdir():
        f.unlink()
    (voc / "JPEGImages").rmdir()
    root = tmp_path.resolve()
    with pytest.raises(DetectionDataError) as info:
        voc_dataset(tmp_path)
    assert str(info.value) == (f"VOC 2007 not found under {root}: expected {voc}/{{Annotations,JPEGImages,"
                               f"ImageSets/Main}} (download VOCtrainval_06-Nov-2007.tar and extract it under {root})")


def test_missing_listed_annotations_are_counted_and_the_first_is_named(tmp_path):
    voc = _voc(tmp_path, {"a": ((20, 20), (0, 0, 0), []), "b": ((20, 20), (0, 0, 0), []),
                          "c": ((20, 20), (0, 0, 0), [])})
    (voc / "Annotations" / "b.xml").unlink()
    (voc / "JPEGImages" / "c.jpg").unlink()
    with pytest.raises(DetectionDataError) as info:
        voc_dataset(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"VOC 2007 trainval: 2 listed files are missing, first {voc / 'JPEGImages' / 'c.jpg'} ")
    assert msg.endswith(f"(download VOCtrainval_06-Nov-2007.tar and extract it under {tmp_path.resolve()})")


def test_a_missing_split_list_names_the_file(tmp_path):
    voc = _voc(tmp_path, {"a": ((20, 20), (0, 0, 0), [])}, year="2012", image_set="train")
    with pytest.raises(DetectionDataError) as info:
        voc_dataset(tmp_path, "2012", "val")
    assert str(info.value) == (f"VOC 2012 split list {voc / 'ImageSets' / 'Main' / 'val.txt'} not found (download "
                               f"VOCtrainval_11-May-2012.tar and extract it under {tmp_path.resolve()})")


@pytest.mark.parametrize(("year", "image_set", "message"), [
    ("2006", "trainval", "VOC year '2006' is not supported (one of: 2007, 2008, 2009, 2010, 2011, 2012)"),
    ("2012", "test", "VOC 2012 image_set 'test' is not supported (one of: train, val, trainval)"),
    ("2007", "all", "VOC 2007 image_set 'all' is not supported (one of: train, val, trainval, test)"),
])
def test_unsupported_year_or_split(tmp_path, year, image_set, message):
    with pytest.raises(DetectionDataError) as info:
        voc_dataset(tmp_path, year, image_set)
    assert str(info.value) == message
