"""A full or failing disk, and state left torn by one: a write that fails (ENOSPC, EIO; injected at the fsync of
the real write path, as a full volume reports it) exits 1 with one line naming the file and what to free, and the
previous checkpoint stays intact (study.atomic); a truncated last.pt, summary.json or results.parquet found by
--resume is named with the way out (--overwrite) instead of a traceback."""

from __future__ import annotations

import errno
import os

import pytest

from pipelines.results import StudyResult
from study.checkpoint import load_checkpoint
from tests.helpers.cli import TINY, assert_one_line_error, run_main, set_args

TRAIN = TINY + ["name=disk", "train.epochs=3"]


def fail_fsync_of(monkeypatch, name: str, after: int, code: int) -> None:
    """Make the fsync of every write of a file called `name` fail with `code`, from its `after`+1-th write on."""
    real = os.fsync
    seen = {"n": 0}

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(target).startswith(f".{name}."):
            seen["n"] += 1
            if seen["n"] > after:
                raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_checkpoint_write_exits_1_naming_the_file_and_keeps_the_previous_one(capsys, tmp_path, monkeypatch,
                                                                                       code):
    out = tmp_path / "run"
    fail_fsync_of(monkeypatch, "last.pt", after=1, code=code)  # epoch 1 is saved, epoch 2's save fails
    rc, _, err = run_main(capsys, "train", "--output", str(out), *set_args(TRAIN))
    last = out / "train" / "checkpoints" / "last.pt"
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write {last}" in lines[0]
    assert ("free on the volume holding" in lines[0]) if code == errno.ENOSPC else ("input/output error" in lines[0])
    assert load_checkpoint(last)["epoch"] == 1  # the previous checkpoint, intact
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind

    monkeypatch.undo()  # space freed: --resume continues from epoch 1
    rc, _, err = run_main(capsys, "train", "--output", str(out), "--resume", *set_args(TRAIN))
    assert rc == 0, err
    assert load_checkpoint(last)["epoch"] == 3


def test_truncated_state_found_by_resume_is_named_with_the_way_out(capsys, tmp_path):
    out = tmp_path / "run"
    rc, _, err = run_main(capsys, "train", "--output", str(out), *set_args(TINY + ["name=torn", "train.epochs=1"]))
    assert rc == 0, err
    resume = ["train", "--output", str(out), "--resume", *set_args(TINY + ["name=torn", "train.epochs=2"])]

    summary = out / "train" / "summary.json"
    summary.write_text(summary.read_text()[:20])
    rc, _, err = run_main(capsys, *resume)
    assert_one_line_error(rc, err, str(summary), "--overwrite")
    summary.unlink()

    last = out / "train" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    rc, _, err = run_main(capsys, *resume)
    assert_one_line_error(rc, err, str(last), "truncated", "--overwrite")

    rc, _, err = run_main(capsys, "train", "--output", str(out), "--overwrite",
                          *set_args(TINY + ["name=torn", "train.epochs=2"]))
    assert rc == 0, err


def test_a_truncated_results_parquet_is_named_with_the_way_out(capsys, tmp_path):
    out = tmp_path / "study"
    StudyResult(str(out), {"cutmix.prob": 0.5}, 10.0, best_config=str(out / "best_config.yaml")).to_json()
    (out / "results.parquet").write_bytes(b"PAR1\x00\x00torn")
    rc, _, err = run_main(capsys, "study", "--output", str(out), "--resume", *set_args(TINY + ["name=torn"]))
    assert_one_line_error(rc, err, str(out / "results.parquet"), "--overwrite")
