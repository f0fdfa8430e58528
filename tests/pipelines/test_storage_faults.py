"""A full or failing disk, and state left torn by one: a write that fails (ENOSPC, EIO) exits 1 with one line naming
the file and what to free, and the previous checkpoint stays intact (study.atomic); a truncated last.pt,
summary.json or results.parquet found by --resume is named with the way out (--overwrite) instead of a traceback.

Two ways to fail a write: injected at the fsync of the real write path, as a full volume reports it (the train
stage, in-process: a checkpoint and a summary), and a real full volume, a small tmpfs mounted for the test, under
retrain's Ray tasks (another process, where nothing can be injected); that one needs mount rights (root here)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.results import StudyResult
from study.checkpoint import load_checkpoint
from tests.helpers.cli import TINY, assert_one_line_error, run_main, set_args
from tests.helpers.processes import beside

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


def test_a_failed_summary_write_exits_1_and_resume_writes_it_from_the_finished_checkpoint(capsys, tmp_path,
                                                                                         monkeypatch):
    out = tmp_path / "run"
    fail_fsync_of(monkeypatch, "summary.json", after=0, code=errno.ENOSPC)
    rc, _, err = run_main(capsys, "train", "--output", str(out), *set_args(TRAIN))
    summary, last = out / "train" / "summary.json", out / "train" / "checkpoints" / "last.pt"
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write {summary}" in lines[0] and "free on the volume holding" in lines[0], lines[0]
    assert not summary.exists() and load_checkpoint(last)["epoch"] == 3  # the training itself is kept

    monkeypatch.undo()
    rc, _, err = run_main(capsys, "train", "--output", str(out), "--resume", *set_args(TRAIN))
    assert rc == 0, err
    assert json.loads(summary.read_text())["final"] and load_checkpoint(last)["epoch"] == 3


@pytest.fixture
def small_volume(tmp_path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted on a fresh directory for the test, unmounted after it (skipped without mount rights)."""
    where = tmp_path / "volume"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected-error tests cover the same path)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(volume: Path) -> Path:
    """Fill `volume` to the last byte; the filler file, to delete to free it again."""
    filler = volume / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.slow
def test_a_full_volume_under_a_retrain_task_exits_1_naming_the_file_and_resume_continues(small_volume, tmp_path,
                                                                                         capsys):
    """The volume of `--output` fills up while the retrain's Ray tasks train: the command exits 1 with one line
    naming the file it could not write, every checkpoint on it still loads (the last finished epoch), and once space
    is freed --resume continues from those checkpoints."""
    epochs = 8  # the volume fills right after seed 0's first checkpoint: the next epoch's write meets it
    out = small_volume / "out"
    args = ["retrain", "--output", str(out),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",  # the store elsewhere: only --output fills
            *set_args(TINY + ["name=full", "data.image_size=16", "model.width=16", f"train.epochs={epochs}",
                              "retrain.seeds=1", "retrain.methods=[cutmix]"])]
    seed0 = out / "retrain" / "cutmix_paper" / "seed0" / "checkpoints" / "last.pt"
    with beside(lambda: fill(small_volume) if seed0.is_file() else None, every=0.1) as fillers:
        code, _, err = run_main(capsys, *args)
    assert fillers, "seed 0 never checkpointed"
    (filler,) = fillers
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"cannot write {out}/" in lines[0] and "no space left on device" in lines[0], lines[0]
    assert "free on the volume holding" in lines[0] and "--resume" in lines[0], lines[0]
    saved = {p: load_checkpoint(p)["epoch"] for p in out.glob("retrain/*/seed*/checkpoints/last.pt")}
    assert saved and all(1 <= e < epochs for e in saved.values()), saved  # intact, and stopped part-way

    filler.unlink()  # space freed
    code, _, err = run_main(capsys, *args, "--resume")
    assert code == 0, err[-3000:]
    summary = json.loads((out / "retrain" / "summary.json").read_text())
    assert summary["variants"]["cutmix_paper"]["test/top1_err"]["n"] == 1
    task = json.loads((seed0.parent.parent / "task.json").read_text())
    assert task["resumed_from"] == saved[seed0]  # continued from the checkpoint the full volume left
    assert not list(out.rglob(".*.tmp"))  # no temporary file left behind


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


def test_truncated_retrain_seed_state_found_by_resume_is_named_with_the_way_out(capsys, tmp_path):
    """A retrain seed's state torn: a finished seed's metrics.json (read by the driver) and an unfinished seed's
    last.pt (read in its Ray task, whose error must reach the CLI as the same one line)."""
    out = tmp_path / "run"
    argv = ["retrain", "--output", str(out), *set_args(TINY + ["name=torn-retrain", "retrain.seeds=1"])]
    rc, _, err = run_main(capsys, *argv)
    assert rc == 0, err
    (out / "retrain" / "summary.json").unlink()  # as if the driver was killed before the summary

    def one_error_line(needles: tuple[str, ...]) -> None:
        rc, _, err = run_main(capsys, *argv, "--resume")
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
        assert all(n in lines[0] for n in needles), lines[0]

    seed = out / "retrain" / "cutmix_paper" / "seed0"
    metrics = seed / "metrics.json"
    metrics.write_text(metrics.read_text()[:30])
    one_error_line((str(metrics), "truncated", "--overwrite"))

    metrics.unlink()  # unfinished now: its task resumes from last.pt, which is torn too
    last = seed / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    one_error_line((str(last), "truncated", "--overwrite"))

    rc, _, err = run_main(capsys, *argv, "--overwrite")
    assert rc == 0, err


def test_a_truncated_results_parquet_is_named_with_the_way_out(capsys, tmp_path):
    out = tmp_path / "study"
    StudyResult(str(out), {"cutmix.prob": 0.5}, 10.0, best_config=str(out / "best_config.yaml")).to_json()
    (out / "results.parquet").write_bytes(b"PAR1\x00\x00torn")
    rc, _, err = run_main(capsys, "study", "--output", str(out), "--resume", *set_args(TINY + ["name=torn"]))
    assert_one_line_error(rc, err, str(out / "results.parquet"), "--overwrite")
