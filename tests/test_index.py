"""Searchers (one contract, two backends), index build/load, delta, atomic swap."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from coldrec import index as index_mod
from coldrec.embed import write_embeddings
from coldrec.errors import IncompatibleModel, InputNotFound, UsageError, WrongDtype
from coldrec.index import (
    AnnoySearcher,
    ExactSearcher,
    add_to_index,
    build_index,
    cosine_from_angular,
    load_index,
)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def random_unit(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    return unit(rng.standard_normal((count, dim)).astype(np.float32))


def write_items(path, vectors, *, ids=None, fingerprint="model-a", first_seen=None):
    ids = pl.Series("item_id", np.arange(len(vectors), dtype=np.int64) if ids is None else ids)
    return write_embeddings(
        path, ids, vectors, np.zeros(len(vectors), dtype=bool), model_fingerprint=fingerprint, first_seen=first_seen
    )


def annoy_searcher(vectors: np.ndarray, trees: int = 20) -> AnnoySearcher:
    from annoy import AnnoyIndex

    forest = AnnoyIndex(vectors.shape[1], "angular")
    forest.set_seed(1)
    for position, vector in enumerate(vectors):
        forest.add_item(position, vector)
    forest.build(trees, n_jobs=1)
    return AnnoySearcher(forest, threads=2)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    items = random_unit(rng, 3000, 16)  # (3000, 16)
    # Queries near known items, so the top hit is planted.
    planted = rng.integers(0, len(items), 200)
    queries = unit(items[planted] + 0.05 * rng.standard_normal((200, 16)).astype(np.float32))
    return items, queries, planted


@pytest.fixture(scope="module", params=["exact", "annoy"])
def searcher(request, corpus):
    items = corpus[0]
    return ExactSearcher(items) if request.param == "exact" else annoy_searcher(items)


# --------------------------------------------------------------------------- the contract


def test_contract_shapes_order_and_scores(searcher, corpus):
    items, queries, _ = corpus
    indices, scores = searcher.search(queries, 10)
    assert indices.shape == (len(queries), 10) and indices.dtype == np.int64
    assert scores.shape == (len(queries), 10) and scores.dtype == np.float32
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # Scores are cosines of the returned items.
    expected = np.einsum("qd,qkd->qk", queries, items[indices])
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_contract_finds_planted_neighbour(searcher, corpus):
    _, queries, planted = corpus
    indices, _ = searcher.search(queries, 5)
    assert (indices[:, 0] == planted).mean() >= 0.98


def test_contract_pads_when_fewer_items_than_k(searcher, corpus):
    items = corpus[0][:7]
    small = ExactSearcher(items) if isinstance(searcher, ExactSearcher) else annoy_searcher(items, trees=5)
    indices, scores = small.search(corpus[1][:3], 10)
    assert indices.shape == (3, 10)
    assert (indices[:, :7] >= 0).all() and (indices[:, 7:] == -1).all()
    assert np.isneginf(scores[:, 7:]).all()
    assert sorted(indices[0, :7].tolist()) == list(range(7))


def test_contract_per_query_k(searcher, corpus):
    indices, scores = searcher.search(corpus[1][:3], np.array([1, 4, 2]))
    assert indices.shape == (3, 4)
    assert ((indices >= 0).sum(axis=1) == [1, 4, 2]).all()
    assert np.isneginf(scores[0, 1:]).all()


def test_contract_rejects_bad_k_and_dim(searcher, corpus):
    with pytest.raises(UsageError):
        searcher.search(corpus[1][:2], 0)
    with pytest.raises(IncompatibleModel):
        searcher.search(np.zeros((2, 5), dtype=np.float32), 3)


def test_exact_matches_numpy_bruteforce(corpus):
    items, queries, _ = corpus
    indices, scores = ExactSearcher(items).search(queries, 20)
    brute = queries @ items.T
    expected = np.argsort(-brute, axis=1)[:, :20]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), atol=1e-5)


def test_annoy_recall_against_exact_oracle():
    rng = np.random.default_rng(3)
    items = random_unit(rng, 4000, 16)
    queries = random_unit(rng, 100, 16)
    exact, _ = ExactSearcher(items).search(queries, 10)
    approx, _ = annoy_searcher(items, trees=20).search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9


def test_exact_blocks_large_catalogues(monkeypatch, corpus):
    items, queries, _ = corpus
    monkeypatch.setattr(index_mod, "EXACT_BLOCK_PAIRS", 3000 * 7)  # 7 queries per block
    indices, _ = ExactSearcher(items).search(queries, 5)
    reference, _ = ExactSearcher(items).search(queries[:1], 5)
    np.testing.assert_array_equal(indices[0], reference[0])
    assert (indices[:, 0] >= 0).all()


def test_cosine_from_angular():
    angles = np.array([0.0, np.pi / 3, np.pi / 2, np.pi])
    distances = np.sqrt(2 - 2 * np.cos(angles))
    np.testing.assert_allclose(cosine_from_angular(distances), np.cos(angles), atol=1e-6)


# --------------------------------------------------------------------------- index directory


@pytest.fixture
def built(tmp_path):
    rng = np.random.default_rng(5)
    items = random_unit(rng, 500, 8)
    ids = np.arange(500, dtype=np.int64) * 7 + 1000
    emb = write_items(tmp_path / "items.parquet", items, ids=ids)
    out = tmp_path / "index"
    build_index(emb, out, trees=10)
    return out, items, ids


def test_build_writes_manifest_ids_and_forest(built):
    out, items, ids = built
    manifest = json.loads((out / "manifest.json").read_text())
    extra = manifest["extra"]
    assert extra["dim"] == 8 and extra["metric"] == "angular" and extra["count"] == 500
    assert extra["trees"] == 10 and extra["model_fingerprint"] == "model-a"
    assert len(extra["embeddings_fingerprint"]) == 16
    mapping = pl.read_parquet(out / "ids.parquet")
    assert mapping["item_id"].to_list() == ids.tolist()
    loaded = load_index(out)
    np.testing.assert_allclose(loaded.main_vectors, items, atol=1e-6)
    # Annoy positions map back to item ids through ids.parquet.
    forest = loaded.forest()
    assert forest.get_n_items() == 500
    nearest = forest.get_nns_by_vector(items[42], 1)[0]
    assert loaded.item_ids[nearest] == ids[42]
    assert not list(out.parent.glob(".index.tmp-*"))


def test_build_rejects_user_embeddings_and_bad_trees(tmp_path):
    rng = np.random.default_rng(0)
    path = write_embeddings(
        tmp_path / "users.parquet", pl.Series("user_id", ["a", "b"]), random_unit(rng, 2, 4),
        np.zeros(2, dtype=bool), model_fingerprint=None,
    )
    with pytest.raises(WrongDtype):
        build_index(path, tmp_path / "index", trees=2)
    items = write_items(tmp_path / "items.parquet", random_unit(rng, 5, 4))
    with pytest.raises(UsageError):
        build_index(items, tmp_path / "index", trees=0)
    assert not (tmp_path / "index").exists()


def test_reader_keeps_old_index_after_swap(built, tmp_path):
    out, items, ids = built
    old = load_index(out)
    old_searcher = old.main_searcher(exact=False)
    before, _ = old_searcher.search(items[:20], 3)
    rng = np.random.default_rng(9)
    replacement = write_items(tmp_path / "new.parquet", random_unit(rng, 300, 8), fingerprint="model-b")
    build_index(replacement, out, trees=5)
    # The old reader's memory maps still hold the old forest and vectors.
    after, _ = old_searcher.search(items[:20], 3)
    np.testing.assert_array_equal(before, after)
    assert (before[:, 0] == np.arange(20)).all()
    np.testing.assert_allclose(old.main_vectors[:20], items[:20], atol=1e-6)
    fresh = load_index(out)
    assert fresh.count == 300 and fresh.model_fingerprint == "model-b"


def test_failed_build_leaves_old_index(built, tmp_path, monkeypatch):
    out, _, _ = built
    before = (out / "manifest.json").read_text()

    def broken(directory, *args, **kwargs):
        (directory / "items.ann").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_mod, "_write_forest", broken)
    rng = np.random.default_rng(1)
    replacement = write_items(tmp_path / "new.parquet", random_unit(rng, 50, 8))
    with pytest.raises(RuntimeError):
        build_index(replacement, out, trees=5)
    assert (out / "manifest.json").read_text() == before
    assert load_index(out).count == 500
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".index.tmp")]


def test_delta_add_supersede_and_fold(built, tmp_path):
    out, items, ids = built
    rng = np.random.default_rng(2)
    new_vectors = random_unit(rng, 4, 8)
    # Two brand-new items and one update of an existing item (ids[3]).
    new_ids = np.array([1, 2, ids[3], 3], dtype=np.int64)
    add_path = write_items(tmp_path / "new.parquet", new_vectors, ids=new_ids)
    result = add_to_index(add_path, out, today=dt.date(2026, 3, 1))
    assert result.added == 4 and result.delta == 4 and result.count == 500
    loaded = load_index(out)
    assert loaded.count == 504 and loaded.delta_count == 4
    assert loaded.superseded.tolist() == [3]
    # first_seen: today for new ids; none recorded for the updated one either (the old
    # index knew no day), so it is today too.
    delta_days = loaded.first_seen[500:]
    assert (delta_days == np.datetime64("2026-03-01")).all()
    # The forest file is shared with the previous version (a hard link), not rewritten.
    assert (out / "items.ann").stat().st_nlink >= 1
    # A second add replaces delta entries by id.
    again = write_items(tmp_path / "again.parquet", random_unit(rng, 1, 8), ids=np.array([2]))
    add_to_index(again, out, today=dt.date(2026, 3, 2))
    loaded = load_index(out)
    assert loaded.delta_count == 4
    row = loaded.item_ids.to_list().index(2)
    assert loaded.first_seen[row] == np.datetime64("2026-03-01")  # arrival day kept
    # A rebuild from the original embeddings folds the brand-new delta items in.
    rebuilt = build_index(tmp_path / "items.parquet", out, trees=5)
    assert rebuilt.folded == 3 and rebuilt.count == 503
    loaded = load_index(out)
    assert loaded.delta_count == 0
    assert set(loaded.item_ids.to_list()) == set(ids.tolist()) | {1, 2, 3}
    days = dict(zip(loaded.item_ids.to_list(), loaded.first_seen.tolist()))
    assert days[1] == dt.date(2026, 3, 1)


def test_discard_delta_on_rebuild(built, tmp_path):
    out, _, _ = built
    rng = np.random.default_rng(4)
    add_to_index(write_items(tmp_path / "new.parquet", random_unit(rng, 2, 8), ids=np.array([1, 2])), out)
    result = build_index(tmp_path / "items.parquet", out, trees=5, fold_delta=False)
    assert result.folded == 0 and load_index(out).count == 500


def test_delta_rejects_other_model_dim_and_id_type(built, tmp_path):
    out, _, _ = built
    rng = np.random.default_rng(4)
    with pytest.raises(IncompatibleModel):
        add_to_index(write_items(tmp_path / "a.parquet", random_unit(rng, 2, 8), fingerprint="model-z"), out)
    with pytest.raises(IncompatibleModel):
        add_to_index(write_items(tmp_path / "b.parquet", random_unit(rng, 2, 4)), out)
    with pytest.raises(WrongDtype):
        add_to_index(write_items(tmp_path / "c.parquet", random_unit(rng, 2, 8), ids=["x", "y"]), out)
    with pytest.raises(InputNotFound):
        add_to_index(tmp_path / "a.parquet", tmp_path / "nowhere")
    assert load_index(out).delta_count == 0


def test_load_rejects_non_index_directory(tmp_path):
    from coldrec.io import Manifest

    Manifest(command="prepare").write(tmp_path)
    with pytest.raises(IncompatibleModel):
        load_index(tmp_path)
    with pytest.raises(InputNotFound):
        load_index(tmp_path / "missing")


def test_cli_index_build_and_add(built, tmp_path, capsys):
    from coldrec.cli import main

    out, _, _ = built
    rng = np.random.default_rng(6)
    add_path = write_items(tmp_path / "new.parquet", random_unit(rng, 3, 8), ids=np.array([1, 2, 3]))
    with pytest.raises(SystemExit) as exit_:
        main(["index", "--add", str(add_path), "--out", str(out)])
    assert exit_.value.code == 0
    assert load_index(out).delta_count == 3
    with pytest.raises(SystemExit) as exit_:
        main(["index", "--embeddings", str(add_path), "--add", str(add_path), "--out", str(out)])
    assert exit_.value.code == 2
    assert "exactly one of --embeddings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--log-format", "json", "index", "--embeddings", str(tmp_path / "items.parquet"), "--out", str(tmp_path / "i2"), "--trees", "3"])
    assert exit_.value.code == 0
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["event"] == "index" and record["count"] == 500 and record["trees"] == 3


def test_build_refuses_to_replace_a_foreign_directory(tmp_path):
    rng = np.random.default_rng(0)
    items = write_items(tmp_path / "items.parquet", random_unit(rng, 20, 4))
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(UsageError):
        build_index(items, precious, trees=2)
    assert (precious / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_index(items, empty, trees=2).count == 20


def test_cli_defaults_match_the_library():
    import typer

    from coldrec import recall
    from coldrec.cli import app

    commands = typer.main.get_command(app).commands
    defaults = {
        (name, p.name): p.default for name in ("index", "recall") for p in commands[name].params
    }
    assert defaults[("index", "trees")] == index_mod.DEFAULT_TREES
    assert defaults[("recall", "k")] == recall.DEFAULT_K
    assert defaults[("recall", "fresh_days")] == recall.DEFAULT_FRESH_DAYS


def test_rebuild_dates_items_new_since_the_reference_index(tmp_path):
    """Items unknown to a reference index get today's first-seen day; known ones keep theirs."""
    import datetime as dt

    import numpy as np
    import polars as pl

    from coldrec.embed import write_embeddings
    from coldrec.index import build_index

    rng = np.random.default_rng(0)

    def embeddings(path, ids):
        vectors = rng.normal(size=(len(ids), 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        write_embeddings(path, pl.Series("item_id", ids), vectors, np.zeros(len(ids), bool), model_fingerprint="m")
        return path

    first = build_index(embeddings(tmp_path / "a.parquet", [1, 2, 3]), tmp_path / "old", trees=2)
    assert first.count == 3
    assert pl.read_parquet(tmp_path / "old" / "ids.parquet")["first_seen"].null_count() == 3  # first build: unknown
    today = dt.date(2026, 3, 1)
    build_index(embeddings(tmp_path / "b.parquet", [1, 2, 3, 4]), tmp_path / "new", trees=2,
                previous=tmp_path / "old", today=today)
    ids = pl.read_parquet(tmp_path / "new" / "ids.parquet").sort("item_id")
    assert ids["first_seen"].to_list() == [None, None, None, today]
