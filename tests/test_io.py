"""Shared IO: reading checks, atomic writes, manifests, locks."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import polars as pl
import pytest

from coldrec import io
from coldrec.errors import EmptyInput, InputNotFound, NotParquet, OutputLocked


def _write(path: Path, frame: pl.DataFrame | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (frame if frame is not None else pl.DataFrame({"a": [1, 2]})).write_parquet(path)
    return path


def test_scan_reads_hive_partitions(tmp_path):
    _write(tmp_path / "logs" / "day=2026-01-01" / "part-0.parquet", pl.DataFrame({"x": [1]}))
    _write(tmp_path / "logs" / "day=2026-01-02" / "part-0.parquet", pl.DataFrame({"x": [2, 3]}))
    frame = io.scan_parquet(tmp_path / "logs").collect().sort("x")
    assert frame["x"].to_list() == [1, 2, 3]
    assert frame["day"].cast(pl.String).to_list() == ["2026-01-01", "2026-01-02", "2026-01-02"]


def test_hidden_temporary_outputs_are_not_read(tmp_path):
    _write(tmp_path / "logs" / "part-0.parquet")
    (tmp_path / "logs" / ".part-1.parquet.tmp-1").write_bytes(b"partial")
    _write(tmp_path / "logs" / "_tmp" / "x.parquet", pl.DataFrame({"a": [9]}))
    assert io.scan_parquet(tmp_path / "logs").collect().height == 2


@pytest.mark.parametrize(
    "content, error, words",
    [
        (b"", NotParquet, "empty"),
        (b"user_id,item_id\n1,2\n", NotParquet, "not a Parquet file"),
        (None, NotParquet, "truncated"),
    ],
)
def test_bad_files_are_named(tmp_path, content, error, words):
    path = tmp_path / "bad.parquet"
    if content is None:
        good = _write(tmp_path / "good.parquet").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(error) as caught:
        io.scan_parquet(path)
    assert words in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(InputNotFound, match="no such file"):
        io.scan_parquet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInput, match="no .parquet files"):
        io.scan_parquet(tmp_path / "empty")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_path(tmp_path):
    path = _write(tmp_path / "secret.parquet")
    path.chmod(0)
    with pytest.raises(InputNotFound, match="permission denied"):
        io.scan_parquet(path)


def test_atomic_file_failure_keeps_old_output_and_no_temp(tmp_path):
    final = tmp_path / "out.parquet"
    _write(final, pl.DataFrame({"a": [1]}))
    with pytest.raises(RuntimeError):
        with io.atomic_file(final) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert pl.read_parquet(final)["a"].to_list() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    final = tmp_path / "out"
    with io.atomic_dir(final) as temp:
        (temp / "a.txt").write_text("old")
        (temp / "stale.txt").write_text("old")
        (temp / "manifest.json").write_text("{}")
    with io.atomic_dir(final) as temp:
        (temp / "a.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert (final / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_failure_keeps_old_directory(tmp_path):
    final = tmp_path / "out"
    with io.atomic_dir(final) as temp:
        (temp / "a.txt").write_text("old")
        (temp / "manifest.json").write_text("{}")
    with pytest.raises(ValueError):
        with io.atomic_dir(final) as temp:
            (temp / "a.txt").write_text("half")
            raise ValueError("bad input found late")
    assert (final / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_open_reader_survives_swap(tmp_path):
    final = tmp_path / "out"
    with io.atomic_dir(final) as temp:
        (temp / "data.txt").write_text("old contents")
        (temp / "manifest.json").write_text("{}")
    handle = open(final / "data.txt")
    with io.atomic_dir(final) as temp:
        (temp / "data.txt").write_text("new contents")
    assert handle.read() == "old contents"
    handle.close()
    assert (final / "data.txt").read_text() == "new contents"


def test_manifest_round_trip(tmp_path):
    source = _write(tmp_path / "in.parquet")
    io.Manifest(
        command="test", parameters={"k": 3}, inputs=io.input_fingerprints(source=source), row_counts={"rows": 2}
    ).write(tmp_path / "out")
    manifest = io.read_manifest(tmp_path / "out")
    assert manifest["command"] == "test"
    assert manifest["parameters"] == {"k": 3}
    assert manifest["row_counts"] == {"rows": 2}
    assert manifest["inputs"]["source"] == io.fingerprint(source)
    assert manifest["coldrec_version"]
    json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    directory = tmp_path / "d"
    _write(directory / "a.parquet")
    before = io.fingerprint(directory)
    assert io.fingerprint(directory) == before
    time.sleep(0.01)
    _write(directory / "b.parquet")
    assert io.fingerprint(directory) != before


def _hold_lock(path: str, ready, release) -> None:
    with io.output_lock(Path(path), "holder"):
        ready.set()
        release.wait(10)


def test_second_writer_gets_locked_error_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(out), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(OutputLocked) as caught:
            with io.output_lock(out, "second"):
                pass
        assert caught.value.exit_code == 75
        assert f"pid {holder.pid}" in str(caught.value)
    finally:
        release.set()
        holder.join(10)
    with io.output_lock(out, "third"):  # released when the holder ended
        pass


def test_lock_is_released_when_holder_is_killed(tmp_path):
    out = tmp_path / "out"
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(out), ready, release))
    holder.start()
    assert ready.wait(10)
    holder.kill()
    holder.join(10)
    with io.output_lock(out, "after kill -9"):
        pass


def test_unreadable_file_even_as_root(tmp_path, monkeypatch, run_cli):
    """Root reads anything, so simulate the kernel's EACCES where coldrec opens the file."""
    import builtins

    path = _write(tmp_path / "e.parquet")
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)
    with pytest.raises(InputNotFound, match="permission denied"):
        io.scan_parquet(path)
    code, _, err = run_cli("prepare", "--exposures", path, "--clicks", path, "--out", tmp_path / "out")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "permission denied" in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_atomic_dir_refuses_a_foreign_non_empty_directory(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("important")
    from coldrec.errors import UsageError

    with pytest.raises(UsageError, match="not a coldrec output"):
        with io.atomic_dir(precious) as temp:
            (temp / "a.txt").write_text("x")
    assert (precious / "notes.txt").read_text() == "important"
    empty = tmp_path / "empty"
    empty.mkdir()
    with io.atomic_dir(empty) as temp:  # an empty directory is fine
        (temp / "a.txt").write_text("x")
    assert (empty / "a.txt").exists()


def test_the_working_directory_is_never_an_output(tmp_path, monkeypatch):
    from coldrec.errors import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="current directory"):
        io.check_output_dir(".")
    with pytest.raises(UsageError, match="current directory"):
        io.check_output_dir("..")


def test_file_output_naming_a_directory_is_refused(tmp_path):
    from coldrec.errors import UsageError

    with pytest.raises(UsageError, match="existing directory"):
        with io.atomic_file(tmp_path):
            pass


def test_cli_refuses_to_replace_a_foreign_directory(tmp_path, run_cli):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("important")
    code, _, err = run_cli("synth", "--out", precious, "--users", "20", "--items", "10", "--days", "2",
                           "--exposures-per-day", "50")
    assert code == 2 and "not a coldrec output" in err
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
