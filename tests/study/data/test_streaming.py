"""study.data.streaming: ImageNet-style folders and manifests decoded per batch in DataLoader workers, on generated
JPEGs."""

from __future__ import annotations

import gc
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from study.config.load import load_config
from study.config.schema import DataConfig
from study.data.bundle import DataError
from study.data.registry import load_data
from tests.helpers.image_folders import SIZE, stream_cfg, write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("imgs"), 200, 40)


def test_bundle_holds_paths_not_pixels(folder: Path) -> None:
    from study.data.streaming import FileSplit, StreamingBundle

    data = load_data(stream_cfg(folder).data)
    assert isinstance(data, StreamingBundle) and isinstance(data.train, FileSplit)
    assert data.num_classes == 4 and data.class_names == ("class0", "class1", "class2", "class3")
    assert (len(data.train), len(data.val), len(data.test)) == (161, 40, 41)  # 201 train files, 20 % held out
    assert data.image_size == SIZE and data.in_channels == 3
    assert data.train.train and not data.val.train and not data.test.train
    # No decoded pixels anywhere: the whole bundle pickles to paths and labels (~100 bytes an image).
    assert len(pickle.dumps(data)) < 200 * (len(data.train) + len(data.val) + len(data.test))
    merged = data.merged_train_val()
    assert len(merged.train) == 201 and merged.train.train and merged.test is data.test


def test_batches_are_fixed_size_uint8_and_reproducible(folder: Path) -> None:
    from study.data.streaming import iterate_split

    data = load_data(stream_cfg(folder, "data.loader_workers=2").data)
    batches = list(iterate_split(data.train, 32, shuffle=True, seed=3, drop_last=True))
    assert len(batches) == len(data.train) // 32
    for x, y in batches:
        assert x.dtype == torch.uint8 and x.shape == (32, 3, SIZE, SIZE) and y.dtype == torch.int64
    # The same (seed, order) gives the same crops, whatever the number of decode processes.
    in_process = load_data(stream_cfg(folder, "data.loader_workers=0").data)
    again = list(iterate_split(in_process.train, 32, shuffle=True, seed=3, drop_last=True))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    other = next(iterate_split(data.train, 32, shuffle=True, seed=4, drop_last=True))
    assert not torch.equal(other[0], batches[0][0])
    # Eval splits: centre crops in file order; the class colour survives decoding (labels match pixels).
    xs, ys = zip(*iterate_split(data.test, 16, shuffle=False))
    x, y = torch.cat(xs), torch.cat(ys)
    assert len(y) == len(data.test) and torch.equal(y, data.test.labels)
    grey = [i for i, path in enumerate(data.test.paths) if path.endswith(b"grey.png")]
    assert len(grey) == 1 and torch.equal(x[grey[0]], torch.full((3, SIZE, SIZE), 99, dtype=torch.uint8))
    jpg = torch.ones(len(y), dtype=torch.bool)
    jpg[grey[0]] = False
    red = x[:, 0].float().mean((1, 2))
    assert torch.all(red[jpg & (y == 3)] > red[jpg & (y == 0)].max())


def test_rank_shards_decode_only_their_slice(folder: Path) -> None:
    from study.data.streaming import iterate_split

    data = load_data(stream_cfg(folder, "data.loader_workers=0").data)
    whole = list(iterate_split(data.train, 32, shuffle=True, seed=1, drop_last=True))
    shards = [list(iterate_split(data.train, 32, shuffle=True, seed=1, drop_last=True, rank=r, world=2))
              for r in range(2)]
    for b, (x, y) in enumerate(whole):
        assert shards[0][b][0].shape[0] == 16
        assert torch.equal(torch.cat([shards[0][b][0], shards[1][b][0]]), x)  # same crops: seeded per sample
        assert torch.equal(torch.cat([shards[0][b][1], shards[1][b][1]]), y)


def test_manifest_layout(tmp_path: Path, folder: Path) -> None:
    import shutil

    root = tmp_path / "m"
    for sub in ("train", "val"):
        lines = []
        for path in sorted((folder / sub).rglob("*.*")):
            rel = Path("files") / sub / path.name if path.parent.name != "class0" else Path("files") / sub / (
                "c0_" + path.name)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / rel)
            lines.append(f"{rel},{path.parent.name}")
        (root / f"{sub}.csv").write_text("\n".join(lines) + "\n")
    data = load_data(stream_cfg(root).data)
    ref = load_data(stream_cfg(folder).data)
    assert data.class_names == ref.class_names and len(data.train) == len(ref.train) and len(data.test) == len(ref.test)
    assert torch.equal(torch.bincount(data.test.labels), torch.bincount(ref.test.labels))


def test_bad_input_is_one_line_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root is empty"):
        load_data(DataConfig(name="imagefolder", streaming=True))
    with pytest.raises(DataError, match=r"train/<class>/<image> or a manifest"):
        load_data(stream_cfg(tmp_path / "nothing").data)
    bad = write_folder(tmp_path / "bad", 8, 4)
    (bad / "train" / "class1" / "broken.jpg").write_bytes(b"not a jpeg")
    data = load_data(stream_cfg(bad, "data.loader_workers=0").data)
    from study.data.streaming import iterate_split

    with pytest.raises(DataError, match="cannot decode .*broken.jpg"):
        list(iterate_split(data.train, 4, shuffle=False))
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "train.csv").write_text("only-a-path.jpg\n")
    (tmp_path / "csv" / "val.csv").write_text("x.jpg,a\n")
    with pytest.raises(DataError, match="line 1"):
        load_data(stream_cfg(tmp_path / "csv").data)
    with pytest.raises(DataError, match="only imagefolder"):
        load_data(load_config(None, ["data.streaming=true"]).data)


def test_engine_trains_and_evaluates_on_a_stream(folder: Path) -> None:
    from study.training.engine import Trainer

    cfg = stream_cfg(folder, "data.loader_workers=1", "cutmix.prob=1.0")
    trainer = Trainer(cfg, load_data(cfg.data), "cpu")
    first = [x for x, _, _ in trainer.train_batches(0)]
    assert all(x.dtype == torch.float32 and x.shape == (16, 3, SIZE, SIZE) for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _, _ in trainer.train_batches(0)]))
    (result,) = list(trainer.fit())
    assert {"train/loss", "val/top1_err", "test/top1_err"} <= set(result.metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())


def _live_tensor_bytes() -> int:
    """Bytes of distinct tensor storages reachable from the garbage collector (this process)."""
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance() on torch.distributed's deprecated module attributes warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if obj.device.type != "cpu":
            continue
        try:
            storage = obj.untyped_storage()
            ptr = storage.data_ptr()
        except RuntimeError:  # fake/functional tensors left by earlier torch.export/compile tests own no memory
            continue
        if ptr not in seen:
            seen.add(ptr)
            total += storage.nbytes()
    return total


def _peak_while_streaming(root: Path) -> tuple[int, int]:
    from study.data.streaming import iterate_split

    data = load_data(stream_cfg(root, "data.loader_workers=2", "data.val_fraction=0.1").data)
    gc.collect()
    base = _live_tensor_bytes()
    peak, n = 0, 0
    for x, _ in iterate_split(data.train, 32, shuffle=True, seed=0, drop_last=True):
        n += x.shape[0]
        peak = max(peak, _live_tensor_bytes() - base)
    return peak, n


def test_memory_stays_bounded_as_the_folder_grows(tmp_path: Path) -> None:
    small, n_small = _peak_while_streaming(write_folder(tmp_path / "s", 200, 8))
    large, n_large = _peak_while_streaming(write_folder(tmp_path / "l", 800, 8, seed=1))
    batch = 32 * 3 * SIZE * SIZE
    assert n_large > 3 * n_small
    # What the training process holds is a few batches, not a growing share of the data: at most what 2 loader
    # workers x prefetch_factor 2 keep in flight, the batch in use and the one being collated (how many of those
    # are alive at a moment depends on the machine's load, so the bound is the depth, not the small run's peak).
    in_flight = (2 * 2 + 2) * batch
    assert small <= in_flight and large <= in_flight, (small, large, in_flight)
    assert large < 0.25 * n_large * 3 * SIZE * SIZE, (large, n_large)
