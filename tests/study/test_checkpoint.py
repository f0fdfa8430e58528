"""study.checkpoint: a save/load round trip is exact, the RNG state restores the same random stream bit for bit,
a failed save leaves the earlier checkpoint intact, and a file that is missing, corrupt, truncated or not ours is a
one-line CheckpointError."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from study.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def _checkpoint() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()  # momentum buffers exist now
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "rng": rng_state(),
            "config": {"train": {"lr": 0.1, "milestones": [0.5, 0.75]}}, "metrics": {"val/top1_err": 12.5}}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_round_trip_is_exact(tmp_path):
    ckpt = _checkpoint()
    path = save_checkpoint(ckpt, tmp_path / "a" / "b" / "last.pt")  # parents are created
    assert path == tmp_path / "a" / "b" / "last.pt" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left
    back = load_checkpoint(path)
    assert back["format_version"] == FORMAT_VERSION
    assert back["epoch"] == 3 and back["config"] == ckpt["config"] and back["metrics"] == ckpt["metrics"]
    assert back["model"].keys() == ckpt["model"].keys()
    for key, value in ckpt["model"].items():
        assert torch.equal(back["model"][key], value), key
    momentum = [s["momentum_buffer"] for s in ckpt["optimizer"]["state"].values()]
    restored = [s["momentum_buffer"] for s in back["optimizer"]["state"].values()]
    assert len(momentum) == len(restored) > 0 and all(torch.equal(a, b) for a, b in zip(momentum, restored))
    assert back["optimizer"]["param_groups"] == ckpt["optimizer"]["param_groups"]


def test_the_loaded_state_rebuilds_the_same_model(tmp_path):
    ckpt = _checkpoint()
    save_checkpoint(ckpt, tmp_path / "c.pt")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    model.load_state_dict(load_checkpoint(tmp_path / "c.pt")["model"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key])


def test_rng_state_restores_the_same_stream_bit_exactly(tmp_path):
    torch.manual_seed(1234)
    torch.rand(7)  # somewhere in the middle of a stream
    save_checkpoint({"model": {}, "rng": rng_state()}, tmp_path / "rng.pt")
    expected = torch.rand(1000), torch.randn(50), torch.randint(0, 10**6, (20,))
    torch.manual_seed(999)  # a different stream
    assert not torch.equal(torch.rand(1000), expected[0])
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = torch.rand(1000), torch.randn(50), torch.randint(0, 10**6, (20,))
    assert all(torch.equal(a, b) for a, b in zip(again, expected))


def test_rng_state_is_a_copy_not_a_view():
    torch.manual_seed(5)
    state = rng_state()
    first = torch.rand(3)
    torch.rand(100)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_a_failed_save_keeps_the_earlier_checkpoint(tmp_path):
    path = save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, tmp_path / "last.pt")
    good = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "bad": lambda: 0}, path)  # a lambda cannot be pickled
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert _one_line(info) == f"checkpoint not found: {tmp_path / 'nope.pt'}"
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "dir.pt")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_file_is_one_line(tmp_path, damage):
    path = save_checkpoint(_checkpoint(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint\xff" * 10,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = _one_line(info)
    assert msg.startswith(f"checkpoint {path} is unreadable (") and "it may be truncated" in msg
    assert msg.endswith("--overwrite)")


def test_pickled_objects_are_refused(tmp_path):
    """weights_only loading: a file holding an arbitrary Python object is not executed, it is an error."""
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": pickle.PicklingError("x")}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "is unreadable" in _one_line(info)


@pytest.mark.parametrize("content", [{"state_dict": {}}, [1, 2, 3], torch.zeros(2)])
def test_a_file_that_is_not_ours(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert _one_line(info) == f"{path} is not a cutmix-study checkpoint (no 'model' entry)"
