"""coldrec pipeline: config validation, skip/reuse by key, dry run, lock, resume, rollback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from coldrec.errors import ConfigError, OutputLocked, UsageError
from coldrec.pipeline import STAGES, PipelineConfig, plan, run_pipeline

CONFIG = """
[inputs]
exposures = "{data}/exposures"
clicks = "{data}/clicks"
users = "{data}/users.parquet"
items = "{data}/items.parquet"

[output]
root = "{root}"

[train]
init_from = "previous"
threads = 1

[train.model]
dim = 8
hidden = [16]

[train.training]
epochs = 1
batch_size = 256

[index]
trees = 5

[recall]
k = 10
"""


def write_config(directory: Path, data: Path, root: Path, extra: str = "") -> Path:
    path = directory / "coldrec.toml"
    path.write_text(CONFIG.format(data=data, root=root) + textwrap.dedent(extra))
    return path


def snapshot(path: Path) -> dict[str, str]:
    """Every entry under `path` (links as their target, files as their bytes' hash)."""
    state: dict[str, str] = {}
    if not path.exists():
        return state
    for entry in sorted(path.rglob("*")):
        key = str(entry.relative_to(path))
        if entry.is_symlink():
            state[key] = "-> " + os.readlink(entry)
        elif entry.is_file():
            state[key] = hashlib.sha256(entry.read_bytes()).hexdigest()
        else:
            state[key] = "dir"
    return state


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from coldrec.synth import SynthConfig, run_synth

    out = tmp_path_factory.mktemp("pipeline-data") / "data"
    run_synth(SynthConfig(users=150, items=80, days=5, exposures_per_day=600, seed=5), out)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> Path:
    """A root with one complete run (shared: tests copy it before changing anything)."""
    base = tmp_path_factory.mktemp("pipeline-root")
    config = write_config(base, data, base / "out")
    result = run_pipeline(config, echo=lambda line: None)
    assert result.current_updated
    return base


def copy_root(finished: Path, tmp_path: Path, data: Path, extra: str = "") -> Path:
    shutil.copytree(finished / "out", tmp_path / "out", symlinks=True)
    return write_config(tmp_path, data, tmp_path / "out", extra)


def test_first_run_writes_every_stage_and_points_current(finished):
    root = finished / "out"
    current = root / "current"
    assert current.is_symlink() and not os.path.isabs(os.readlink(current))
    for stage in STAGES:
        manifest = json.loads((current / stage / "manifest.json").read_text())
        assert manifest["pipeline"]["key"]
    recs = pl.read_parquet(current / "recall" / "recs.parquet")
    assert recs.columns[:4] == ["user_id", "rank", "item_id", "score"]
    assert recs.group_by("user_id").len()["len"].max() == 10
    assert json.loads((current / "pipeline.json").read_text())["complete"] is True


def test_unchanged_rerun_writes_no_new_run(finished, data, tmp_path):
    config = copy_root(finished, tmp_path, data)
    before = snapshot(tmp_path / "out")
    result = run_pipeline(config, echo=lambda line: None)
    assert [s.action for s in result.stages] == ["reuse"] * len(STAGES)
    assert not result.current_updated and snapshot(tmp_path / "out") == before


def test_changed_input_reruns_only_what_depends_on_it(finished, data, tmp_path):
    private = tmp_path / "data"
    shutil.copytree(data, private)
    config = copy_root(finished, tmp_path, private)
    # copytree keeps sizes and mtimes, so the fingerprints (not the paths) still match.
    assert all(s.action == "reuse" for s in plan(PipelineConfig.load(config)))
    os.utime(private / "users.parquet", ns=(1, 1))
    plans = {s.name: s for s in plan(PipelineConfig.load(config))}
    assert plans["prepare"].action == "reuse"
    assert all(plans[name].action == "run" for name in ("stats", "train", "embed", "index", "recall"))
    assert "users" in plans["stats"].reason


def test_dry_run_writes_nothing(finished, data, tmp_path, capsys):
    config = copy_root(finished, tmp_path, data, extra="")
    text = config.read_text().replace("k = 10", "k = 12")
    config.write_text(text)
    before = snapshot(tmp_path)
    result = run_pipeline(config, dry_run=True)
    assert snapshot(tmp_path) == before
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("prepare: reuse (unchanged since")
    assert lines[-1].startswith("recall: run (changed since") and "parameters" in lines[-1]
    assert result.fields()["ran"] == ["recall"]


def test_dry_run_on_a_fresh_root_creates_nothing(data, tmp_path, run_cli):
    config = write_config(tmp_path, data, tmp_path / "out")
    before = snapshot(tmp_path)
    code, out, err = run_cli("pipeline", "--config", config, "--dry-run")
    assert code == 0, err
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
    assert out.count("run (no previous output)") == len(STAGES)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[recal]\nk = 3\n", "did you mean 'recall'"),
        ("[prepare]\natribution_window = '1h'\n", "did you mean 'prepare.attribution_window'"),
        ("[train.modle]\ndim = 4\n", "did you mean 'train.model'"),
        ("[stats]\nprior_strength = 'high'\n", "stats.prior_strength"),
        ("[prepare]\nvalid_fraction = 2.0\n", "--valid-fraction"),
        ("[prepare]\nstart = 2026-01-02\n", 'quote it: start = "2026-01-02"'),
        ("[embed]\nbatch_sise = 5\n", "did you mean 'embed.batch_size'"),
    ],
)
def test_bad_config_exits_2_with_a_suggestion(data, tmp_path, run_cli, extra, message):
    config = write_config(tmp_path, data, tmp_path / "out", extra)
    code, _, err = run_cli("pipeline", "--config", config)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_train_subsection_key_uses_the_train_loader(data, tmp_path):
    config = write_config(tmp_path, data, tmp_path / "out").read_text().replace("dim = 8", "dimm = 8")
    path = tmp_path / "c.toml"
    path.write_text(config)
    with pytest.raises(ConfigError, match="did you mean 'model.dim'"):
        PipelineConfig.load(path)


def test_failed_stage_keeps_current_and_a_rerun_resumes(finished, data, tmp_path, monkeypatch):
    import coldrec.pipeline as pipeline

    config = copy_root(finished, tmp_path, data, extra="")
    config.write_text(config.read_text().replace("trees = 5", "trees = 6"))
    before = os.readlink(tmp_path / "out" / "current")

    def boom(config, run_dir):
        raise RuntimeError("killed")

    monkeypatch.setitem(pipeline.RUNNERS, "index", boom)
    with pytest.raises(RuntimeError):
        run_pipeline(config, echo=lambda line: None)
    assert os.readlink(tmp_path / "out" / "current") == before
    monkeypatch.undo()
    result = run_pipeline(config, echo=lambda line: None)
    actions = {s.name: s.action for s in result.stages}
    assert actions == {"prepare": "reuse", "stats": "reuse", "train": "reuse", "embed": "reuse", "index": "run", "recall": "run"}
    assert os.readlink(tmp_path / "out" / "current") != before
    first = (tmp_path / "out" / before).resolve()
    for stage in ("prepare", "stats", "train", "embed"):  # reused by hard link: the same bytes, no copy
        for name in ("manifest.json", *(p.name for p in (first / stage).glob("*.parquet"))):
            assert (result.run_dir / stage / name).stat().st_ino == (first / stage / name).stat().st_ino


def test_from_train_warm_starts_from_the_current_model(finished, data, tmp_path):
    config = copy_root(finished, tmp_path, data)
    previous_model = (tmp_path / "out" / "current" / "train").resolve()
    result = run_pipeline(config, from_stage="train", echo=lambda line: None)
    actions = [s.action for s in result.stages]
    assert actions == ["reuse", "reuse", "run", "run", "run", "run"]
    train = next(s for s in result.stages if s.name == "train")
    assert train.fields["init_from"] == str(previous_model)


def test_only_a_stage_needs_its_upstream_and_leaves_current(finished, data, tmp_path):
    config = copy_root(finished, tmp_path, data)
    before = os.readlink(tmp_path / "out" / "current")
    result = run_pipeline(config, only="index", echo=lambda line: None)
    assert [s.action for s in result.stages] == ["reuse"] * 4 + ["run", "skip"]
    assert os.readlink(tmp_path / "out" / "current") == before
    with pytest.raises(UsageError, match="--only"):
        run_pipeline(config, only="index", from_stage="train")


def test_json_log_has_one_line_per_stage(finished, data, tmp_path, run_cli):
    config = copy_root(finished, tmp_path, data)
    code, _, err = run_cli("--log-format", "json", "pipeline", "--config", config)
    assert code == 0, err
    records = [json.loads(line) for line in err.strip().splitlines()]
    stages = [r for r in records if r.get("event") == "pipeline.stage"]
    assert [r["stage"] for r in stages] == list(STAGES)
    assert all("seconds" in r and r["action"] == "reuse" for r in stages)


HOLD_LOCK = """
import sys
from coldrec import io
with io.output_lock(sys.argv[1], "test holder"):
    print("locked", flush=True)
    sys.stdin.readline()  # holds the lock until the test writes a line (or closes stdin)
"""


def test_second_pipeline_on_a_locked_root_exits_75_untouched(finished, data, tmp_path):
    config = copy_root(finished, tmp_path, data)
    root = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(root)
        second = subprocess.run(
            [sys.executable, "-m", "coldrec", "pipeline", "--config", str(config)], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 75, second.stderr
        assert "locked by pid" in second.stderr and "Traceback" not in second.stderr
        assert snapshot(root) == before
    finally:
        holder.kill()
        holder.wait()


def test_wait_blocks_until_the_other_run_lets_go(finished, data, tmp_path):
    config = copy_root(finished, tmp_path, data)
    root = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked):
            run_pipeline(config, echo=lambda line: None)
        outcome: dict = {}
        waiter = threading.Thread(target=lambda: outcome.update(result=run_pipeline(config, wait=True, echo=lambda line: None)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not outcome  # still waiting: the holder has not let go
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.wait(timeout=10) == 0  # the holder finished normally: we did not steal its lock
        waiter.join(timeout=120)
        assert [s.action for s in outcome["result"].stages] == ["reuse"] * len(STAGES)
    finally:
        holder.kill()
        holder.wait()


def test_rollback_by_relinking_current(finished, data, tmp_path):
    config = copy_root(finished, tmp_path, data)
    root = tmp_path / "out"
    old = os.readlink(root / "current")
    run_pipeline(config, from_stage="recall", echo=lambda line: None)
    assert os.readlink(root / "current") != old
    subprocess.run(["ln", "-sfn", old, str(root / "current")], check=True)  # docs/operations.md
    assert os.readlink(root / "current") == old
    assert (root / "current" / "recall" / "recs.parquet").exists()


# --------------------------------------------------------------------------- index swap under recall


def _embeddings(path: Path, ids: range, seed: int, dim: int = 8) -> np.ndarray:
    from coldrec.embed import write_embeddings

    vectors = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_embeddings(path, pl.Series("item_id", list(ids), dtype=pl.Int64), vectors, np.zeros(len(ids), bool), model_fingerprint="m")
    return vectors


def test_a_loaded_index_keeps_answering_from_the_old_files_after_a_swap(tmp_path):
    from coldrec.index import load_index, run_index

    old_ids, new_ids = range(0, 300), range(1000, 1300)
    _embeddings(tmp_path / "a.parquet", old_ids, seed=1)
    _embeddings(tmp_path / "b.parquet", new_ids, seed=2)
    run_index(out=tmp_path / "index", embeddings=tmp_path / "a.parquet", trees=5)
    reader = load_index(tmp_path / "index")
    queries = np.random.default_rng(3).normal(size=(20, 8)).astype(np.float32)
    run_index(out=tmp_path / "index", embeddings=tmp_path / "b.parquet", trees=5)  # swapped in under the reader
    for searcher in (reader.main_searcher(exact=True), reader.main_searcher(exact=False)):
        positions, _ = searcher.search(queries, 10)
        found = set(reader.item_ids.gather(positions.reshape(-1)).to_list())
        assert found <= set(old_ids)
    fresh = load_index(tmp_path / "index")
    positions, _ = fresh.main_searcher(exact=False).search(queries, 10)
    assert set(fresh.item_ids.gather(positions.reshape(-1)).to_list()) <= set(new_ids)


def test_recall_during_repeated_index_swaps_sees_one_whole_index(tmp_path):
    import threading

    from coldrec.embed import write_embeddings
    from coldrec.index import run_index
    from coldrec.recall import run_recall

    sets = {"a": range(0, 200), "b": range(5000, 5200)}
    vectors = {name: _embeddings(tmp_path / f"{name}.parquet", ids, seed=i) for i, (name, ids) in enumerate(sets.items())}
    lookup = {}
    for name, ids in sets.items():
        lookup.update(dict(zip(ids, vectors[name])))
    users = np.random.default_rng(9).normal(size=(40, 8)).astype(np.float32)
    user_ids = [f"u{i}" for i in range(40)]
    write_embeddings(tmp_path / "users.parquet", pl.Series("user_id", user_ids), users, np.zeros(40, bool), model_fingerprint="m")
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    run_index(out=tmp_path / "index", embeddings=tmp_path / "a.parquet", trees=4)
    stop = threading.Event()
    errors: list[BaseException] = []

    def swapper() -> None:
        try:
            for turn in range(12):
                run_index(out=tmp_path / "index", embeddings=tmp_path / f"{'ba'[turn % 2]}.parquet", trees=4)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            stop.set()

    thread = threading.Thread(target=swapper)
    thread.start()
    seen = set()
    rounds = 0
    while not stop.is_set() or rounds < 3:
        out = tmp_path / f"recs{rounds}.parquet"
        run_recall(index=tmp_path / "index", queries=tmp_path / "users.parquet", out=out, k=5, exact=rounds % 2 == 0, threads=1)
        recs = pl.read_parquet(out)
        items = set(recs["item_id"].to_list())
        owner = [name for name, ids in sets.items() if items <= set(ids)]
        assert len(owner) == 1, f"round {rounds}: a mixture of two indexes"
        seen.add(owner[0])
        # ids and vectors come from the same index: each score is that item's cosine.
        row_user = {u: users[i] for i, u in enumerate(user_ids)}
        for user, item, score in recs.select("user_id", "item_id", "score").iter_rows():
            assert abs(float(row_user[user] @ lookup[item]) - score) < 1e-4, (rounds, user, item, score)
        rounds += 1
    thread.join()
    assert not errors, errors
    assert rounds >= 3
