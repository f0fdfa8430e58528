"""Local WSOL readers on tiny generated copies of the real layouts (CUB-200-2011, ImageNet val + box XMLs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from study.data.bundle import DataError
from study.data.cub import read_cub, read_image_folder, read_imagenet_val, resize_box


def _image(path: Path, w: int, h: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = torch.full((3, h, w), value, dtype=torch.uint8)
    img[0, : h // 2] = 255 - value  # some structure
    if path.suffix == ".png":
        write_png(img, str(path))
    else:
        write_jpeg(img, str(path), quality=95)


def _fake_cub(root: Path) -> Path:
    base = root / "CUB_200_2011"
    files = [("1", "001.Black_footed_Albatross/a.jpg", 1, "1", (100, 80), "10.0 20.0 50.0 40.0"),
             ("2", "001.Black_footed_Albatross/b.jpg", 1, "0", (60, 60), "0.0 0.0 60.0 60.0"),
             ("3", "002.Laysan_Albatross/c.png", 2, "0", (120, 90), "30.5 15.0 30.0 45.0")]
    for _, rel, _, _, (w, h), _ in files:
        _image(base / "images" / rel, w, h, 60)
    (base / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, *_ in files))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, *_ in files))
    (base / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t, *_ in files))
    (base / "bounding_boxes.txt").write_text("".join(f"{i} {b}\n" for i, *_, b in files))
    (base / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    return root


def test_resize_box_as_wsolevaluation():
    assert resize_box((1, 2, 4, 3), (10, 20), (35, 10)) == [3, 1, 14, 1]
    assert resize_box((1, 2, 1, 2), (3, 3), (3, 3)) == [1, 2, 1, 2]


def test_read_cub_splits_labels_and_boxes(tmp_path):
    root = _fake_cub(tmp_path)
    test = read_cub(root, "test", image_size=32)
    assert test.images.shape == (2, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.tolist() == [0, 1] and test.class_names[1] == "002.Laysan_Albatross"
    # [x, y, x + w, y + h] clipped to the image, then resized to 32 x 32: image 2 is 60 x 60 with a full box
    assert test.boxes[0].tolist() == resize_box([0, 0, 59, 59], (60, 60), (32, 32)) == [0, 0, 31, 31]
    assert test.boxes[1].tolist() == resize_box([30.5, 15, 60.5, 60], (120, 90), (32, 32))
    train = read_cub(tmp_path / "CUB_200_2011", "train", image_size=16)
    assert len(train) == 1 and train.boxes.tolist() == [resize_box([10, 20, 60, 60], (100, 80), (16, 16))]
    assert len(read_cub(root, "test", image_size=8, limit=1)) == 1


def test_read_cub_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(DataError, match="CUB_200_2011.tgz"):
        read_cub(tmp_path / "nowhere")
    root = _fake_cub(tmp_path)
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(DataError, match="bounding_boxes.txt") as err:
        read_cub(root)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="train or test"):
        read_cub(root, "val")


def _voc(path: Path, wnid: str, size: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> None:
    objs = "".join(f"<object><name>{wnid}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
                    f"{objs}</annotation>")


def test_read_imagenet_val_with_several_boxes(tmp_path):
    _image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", 100, 50, 40)
    _image(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG", 64, 64, 90)
    _voc(tmp_path / "bbox_val" / "ILSVRC2012_val_00000001.xml", "n02", (100, 50), [(10, 5, 60, 40), (0, 0, 99, 49)])
    _voc(tmp_path / "bbox_val" / "ILSVRC2012_val_00000002.xml", "n01", (64, 64), [(8, 8, 31, 31)])
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01 tench\nn02 goldfish\nn03 shark\n")
    split = read_imagenet_val(tmp_path, image_size=32)
    assert split.labels.tolist() == [1, 0] and split.boxes.shape == (2, 2, 4)
    assert split.boxes[0].tolist() == [resize_box((10, 5, 60, 40), (100, 50), (32, 32)), [0, 0, 31, 31]]
    assert split.boxes[1].tolist() == [[4, 4, 15, 15], [-1, -1, -1, -1]]
    assert split.class_names == ("n01", "n02", "n03")


def test_read_imagenet_val_errors(tmp_path):
    with pytest.raises(DataError, match="ILSVRC2012_bbox_val_v3.tgz"):
        read_imagenet_val(tmp_path)
    _image(tmp_path / "val" / "n01" / "x.JPEG", 10, 10, 0)
    with pytest.raises(DataError, match="no box XMLs"):
        read_imagenet_val(tmp_path)
    (tmp_path / "val" / "x.xml").write_text("<annotation>broken")
    with pytest.raises(DataError, match="Pascal VOC"):
        read_imagenet_val(tmp_path)
    _voc(tmp_path / "val" / "x.xml", "n99", (10, 10), [(0, 0, 5, 5)])
    with pytest.raises(DataError, match="n99"):
        read_imagenet_val(tmp_path)  # the class list comes from the val/ sub-folders: n01 only


def test_read_image_folder(tmp_path):
    _image(tmp_path / "a" / "1.png", 20, 10, 0)
    _image(tmp_path / "a" / "b" / "2.jpg", 8, 8, 200)
    (tmp_path / "notes.txt").write_text("not an image")
    x = read_image_folder(tmp_path, 16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.uint8
    with pytest.raises(DataError, match="does not exist"):
        read_image_folder(tmp_path / "missing", 16)
    with pytest.raises(DataError, match="no images"):
        read_image_folder(tmp_path / "a" / "b" / "..", 16, limit=0)


def test_cub_as_a_dataset_with_a_missing_root_is_one_line_and_exit_2(tmp_path, capsys):
    from tests.helpers.cli import assert_one_line_error, run_main

    code, _, err = run_main(capsys, "train", "--set", "data.name=cub", "--set", f"data.root={tmp_path / 'nowhere'}",
                            "--output", str(tmp_path / "out"))
    assert_one_line_error(code, err, str(tmp_path / "nowhere"), "CUB_200_2011.tgz")
    assert not (tmp_path / "out").exists()
    code, _, err = run_main(capsys, "train", "--set", "data.name=cub", "--output", str(tmp_path / "out"))
    assert_one_line_error(code, err, "data.root")
