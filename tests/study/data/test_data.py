"""Datasets load from real formats (generated here, never downloaded) and batch augmentation is exact."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from study.config.schema import DataConfig
from study.data.batches import BatchAugment, iterate_batches
from study.data.bundle import DataError, Split
from study.data.registry import load_data


def test_digits_fixed_stratified_disjoint_splits():
    a = load_data(DataConfig(name="digits", image_size=16))
    b = load_data(DataConfig(name="digits", image_size=16))
    sizes = (len(a.train), len(a.val), len(a.test))
    assert sum(sizes) == 1797 and sizes[0] > 1000 and min(sizes) > 300
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (3, 16, 16)
    assert a.num_classes == 10 and set(a.test.labels.tolist()) == set(range(10))
    # Disjoint: no test image appears in train (digits has no exact duplicates across these splits).
    train_keys = {bytes(x.numpy()) for x in a.train.images}
    assert sum(bytes(x.numpy()) in train_keys for x in a.test.images) <= 2
    c = load_data(DataConfig(name="digits", image_size=16, split_seed=1))
    assert not torch.equal(a.test.labels, c.test.labels)


def test_synthetic_any_size_and_class_count():
    d = load_data(DataConfig(name="synthetic", num_classes=7, image_size=12, synthetic_sizes=(70, 21, 14)))
    assert (len(d.train), len(d.val), len(d.test)) == (70, 21, 14)
    assert d.num_classes == 7 and d.train.images.shape[1:] == (3, 12, 12)
    assert set(d.train.labels.tolist()) == set(range(7))


def test_iterate_batches_order_is_a_function_of_seed():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    a = torch.cat([y for _, y in iterate_batches(split, 3, shuffle=True, seed=5)])
    b = torch.cat([y for _, y in iterate_batches(split, 3, shuffle=True, seed=5)])
    c = torch.cat([y for _, y in iterate_batches(split, 3, shuffle=True, seed=6)])
    assert torch.equal(a, b) and not torch.equal(a, c) and sorted(a.tolist()) == list(range(10))
    assert [len(y) for _, y in iterate_batches(split, 3, shuffle=False, drop_last=True)] == [3, 3, 3]


def test_batch_augment_matches_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    aug = BatchAugment((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), pad=2, hflip=True)
    out = aug(x, torch.Generator().manual_seed(3))
    # Replay the same draws and build each sample by hand.
    g2 = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 5, (6,), generator=g2)
    ox = torch.randint(0, 5, (6,), generator=g2)
    flip = torch.rand(6, generator=g2) < 0.5
    norm = aug.normalise(x)
    padded = torch.nn.functional.pad(norm, (2, 2, 2, 2))
    for i in range(6):
        ref = padded[i, :, oy[i]:oy[i] + 8, :]
        ref = ref.flip(-1)[:, :, 4 - ox[i]:12 - ox[i]] if flip[i] else ref[:, :, ox[i]:ox[i] + 8]
        assert torch.equal(out[i], ref), i
    assert flip.any() and (~flip).any()
    assert torch.allclose(BatchAugment((0.5,) * 3, (0.25,) * 3, train=False)(x), norm)


def _write_cifar10(root, n_train=20, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train // 5 * 1 + 4
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        batch["labels"][:10] = list(range(10)) if n >= 10 else batch["labels"][:10]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar_reads_the_python_format_from_root(tmp_path, monkeypatch):
    import torchvision

    _write_cifar10(tmp_path)
    # torchvision checks archive md5s; these generated files cannot match them, the format itself is real.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    d = load_data(DataConfig(name="cifar10", root=str(tmp_path), image_size=32, val_fraction=0.2))
    assert len(d.train) + len(d.val) == 40 and len(d.test) == 10 and d.num_classes == 10
    assert d.train.images.shape[1:] == (3, 32, 32) and d.class_names[0] == "c0"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_says_what_to_put_where(tmp_path, name):
    with pytest.raises(DataError) as info:
        load_data(DataConfig(name=name, root=str(tmp_path)))
    msg = str(info.value)
    assert str(tmp_path) in msg and ("cifar-10-batches-py" in msg or "cifar-100-python" in msg) and "\n" not in msg
    with pytest.raises(DataError, match="data.root is empty"):
        load_data(DataConfig(name=name, root=""))


def test_imagefolder_reads_class_directories(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / sub / cls).mkdir(parents=True)
            for i in range(5 if sub == "train" else 2):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / sub / cls / f"{i}.png")
    d = load_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, val_fraction=0.2))
    assert d.class_names == ("cat", "dog") and len(d.test) == 4 and len(d.train) + len(d.val) == 10
    assert d.train.images.shape[1:] == (3, 16, 16) and d.train.images.dtype == torch.uint8
    with pytest.raises(DataError, match="expected .*train"):
        load_data(DataConfig(name="imagefolder", root=str(tmp_path / "nothing")))
