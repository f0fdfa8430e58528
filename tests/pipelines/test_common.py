"""pipelines.common at the door of every stage: --resume / --overwrite on the output directory, the writability
probe that leaves nothing behind, MLflow run ids, and `--from` given as a path (a directory, a file, one that does
not exist). `--from` as a run id, and `stage_main`/`door`, are covered stage by stage in test_stage_contract.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.common import OutputError, Source, check_writable, is_run_id, open_stage, prepare_output, resolve_source
from pipelines.results import ResultError, StudyResult

ALREADY = "already holds results (pass --resume to continue, --overwrite to replace, or choose another --output)"


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _outputs(root: Path) -> Path:
    """An output directory with two stages' entries and one that belongs to neither."""
    (root / "study" / "tune").mkdir(parents=True)
    (root / "study" / "tune" / "state.json").write_text("{}")
    (root / "results.parquet").write_bytes(b"PAR1")
    (root / "retrain").mkdir()
    (root / "retrain" / "summary.json").write_text("{}")
    return root


def test_a_fresh_directory_is_created(tmp_path):
    out = prepare_output(tmp_path / "a" / "b", ["study"], resume=False, overwrite=False)
    assert out == (tmp_path / "a" / "b").resolve() and out.is_dir() and not any(out.iterdir())


def test_other_stages_outputs_do_not_block_a_stage(tmp_path):
    root = _outputs(tmp_path / "out")
    before = _tree(root)
    prepare_output(root, ["evaluate"], resume=False, overwrite=False)
    assert _tree(root) == before


@pytest.mark.parametrize(("owned", "shown"), [(["study", "results.parquet"], "study"),
                                              (["plots", "results.parquet"], "results.parquet")])
def test_existing_outputs_refuse_without_a_flag_and_nothing_is_touched(tmp_path, owned, shown):
    root = _outputs(tmp_path / "out")
    before = _tree(root)
    with pytest.raises(OutputError) as info:
        prepare_output(root, owned, resume=False, overwrite=False)
    assert str(info.value) == f"{root / shown} {ALREADY}"
    assert isinstance(info.value, ResultError) and _tree(root) == before


def test_overwrite_removes_the_stages_own_entries_only(tmp_path):
    root = _outputs(tmp_path / "out")
    prepare_output(root, ["study", "results.parquet", "plots"], resume=False, overwrite=True)
    assert _tree(root) == {"retrain", "retrain/summary.json"}


def test_resume_keeps_everything(tmp_path):
    root = _outputs(tmp_path / "out")
    before = _tree(root)
    prepare_output(root, ["study", "results.parquet"], resume=True, overwrite=False)
    assert _tree(root) == before


def test_a_stage_that_owns_the_whole_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_output(empty, ["."], resume=False, overwrite=False)  # an empty directory holds no results yet
    root = _outputs(tmp_path / "out")
    with pytest.raises(OutputError) as info:
        prepare_output(root, ["."], resume=False, overwrite=False)
    assert str(info.value) == f"{root} {ALREADY}"
    prepare_output(root, ["."], resume=False, overwrite=True)
    assert root.is_dir() and not any(root.iterdir())


def test_an_output_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create output directory .*choose a writable --output\)$"):
        prepare_output(tmp_path / "f", ["study"], resume=False, overwrite=False)
    assert (tmp_path / "f").read_text() == "x"


def test_open_stage_returns_a_finished_result_only_when_resuming(tmp_path):
    root = tmp_path / "out"
    out, done = open_stage(root, ["study"], resume=False, overwrite=False, result=StudyResult)
    assert out == root.resolve() and done is None
    StudyResult(out_dir=str(out), trials=4, best_value=3.0).to_json()
    out, done = open_stage(root, ["study"], resume=True, overwrite=False, result=StudyResult)
    assert isinstance(done, StudyResult) and done.trials == 4 and done.best_value == 3.0
    with pytest.raises(OutputError, match="already holds results"):
        open_stage(root, ["study"], resume=False, overwrite=False, result=StudyResult)
    out, done = open_stage(root, ["study"], resume=False, overwrite=True, result=StudyResult)
    assert done is None and not StudyResult.exists(out)


def test_open_stage_resuming_an_unfinished_stage(tmp_path):
    root = _outputs(tmp_path / "out")  # study/tune exists, study/summary.json does not: the study was interrupted
    out, done = open_stage(root, ["study"], resume=True, overwrite=False, result=StudyResult)
    assert done is None and (out / "study" / "tune" / "state.json").is_file()
    out, done = open_stage(root, ["study"], resume=True, overwrite=False)  # a stage without a result type
    assert done is None


def test_check_writable_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "a" / "b" / "c")
    assert not (tmp_path / "a").exists()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "x").write_text("1")
    check_writable(tmp_path / "keep")
    check_writable(tmp_path / "keep" / "new")
    assert _tree(tmp_path) == {"keep", "keep/x"}  # no probe file, no created directory


def test_check_writable_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "file" / "out")
    msg = str(info.value)
    assert msg.startswith(f"output directory {tmp_path / 'file' / 'out'} is not writable (")
    assert msg.endswith("; choose a writable --output)") and "\n" not in msg
    assert _tree(tmp_path) == {"file"}


def test_check_writable_refuses_where_even_root_cannot_write():
    """Permission bits do not stop root; /proc does. Nothing is created there (nothing can be)."""
    with pytest.raises(OutputError, match=r"output directory /proc/cutmix-study-test/out is not writable"):
        check_writable(Path("/proc/cutmix-study-test/out"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_check_writable_refuses_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputError, match="is not writable"):
            check_writable(ro / "out")
        assert not (ro / "out").exists()
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize(("text", "expected"), [
    ("0123456789abcdef0123456789abcdef", True),
    ("0123456789ABCDEF0123456789ABCDEF", False),  # MLflow ids are lowercase
    ("0123456789abcdef0123456789abcde", False),
    ("0123456789abcdef0123456789abcdef0", False),
    ("0123456789abcdef0123456789abcdeg", False),
    ("runs/0123456789abcdef0123456789a", False),
    ("", False),
    (None, False),
])
def test_is_run_id(text, expected):
    assert is_run_id(text) is expected


def test_resolve_source_none_means_the_output_directory():
    assert resolve_source(None, None, stages=("retrain",), hint="x") is None
    assert resolve_source("", None, stages=("retrain",), hint="x") is None


def _no_tracker():
    raise AssertionError("a path source must not build a tracker")


def test_resolve_source_directory_or_file(tmp_path):
    src = resolve_source(tmp_path, _no_tracker, stages=("retrain",), hint="x")
    assert src == Source(path=tmp_path) and src.run_id is None and src.stage is None
    assert resolve_source(str(tmp_path), _no_tracker, stages=("retrain",), hint="x").path == tmp_path
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"")
    assert resolve_source(ckpt, _no_tracker, stages=("evaluate",), hint="x").path == ckpt
    assert resolve_source(src, _no_tracker, stages=("retrain",), hint="x") is src  # already resolved


def test_a_path_source_belongs_to_the_output_directory_above_it(tmp_path):
    out = tmp_path / "out"
    (out / "retrain" / "cutmix" / "seed0" / "checkpoints").mkdir(parents=True)
    ckpt = out / "retrain" / "cutmix" / "seed0" / "checkpoints" / "best.pt"
    ckpt.write_bytes(b"")
    (out / "export").mkdir()
    (out / "export" / "manifest.json").write_text("{}")
    assert Source(path=out).root() == out
    assert Source(path=out / "retrain").root() == out  # a stage directory: the pipeline above it
    assert Source(path=out / "export" / "manifest.json").root() == out  # a file in a stage directory
    assert Source(path=ckpt).root() == out / "retrain" / "cutmix" / "seed0"  # a checkpoint: its run directory


def test_resolve_source_bad_path_is_one_line_with_the_hint(tmp_path):
    bad = tmp_path / "no-such-run"
    hint = "give a retrain output directory or its MLflow run id"
    with pytest.raises(OutputError) as info:
        resolve_source(bad, None, stages=("retrain",), hint=hint)
    assert str(info.value) == f"--from {bad}: no such file, directory or MLflow run id ({hint})"
    assert not bad.exists()
