"""Embeddings files (write/read contract) and `coldrec embed` with a small model."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from coldrec.cli import main
from coldrec.embed import (
    embed_entities,
    read_embeddings,
    read_fingerprint,
    run_embed,
    write_embeddings,
)
from coldrec.errors import BadValues, DuplicateIds, InputNotFound, MissingColumn, UsageError, WrongDtype


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --------------------------------------------------------------------------- the file contract


@pytest.mark.parametrize("ids", [pl.Series("item_id", [5, 9, 2], dtype=pl.Int64), pl.Series("user_id", ["a", "b", "c"])])
def test_roundtrip_keeps_ids_vectors_and_fingerprint(tmp_path, ids):
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((3, 6)))
    path = write_embeddings(tmp_path / "e.parquet", ids, vectors, np.array([True, False, True]), model_fingerprint="abc123")
    schema = pq.read_schema(path)
    assert schema.metadata[b"coldrec.model_fingerprint"] == b"abc123"
    assert schema.metadata[b"coldrec.dim"] == b"6"
    frame = pl.read_parquet(path)
    assert frame.schema[ids.name] == ids.dtype
    assert frame.schema["embedding"] == pl.Array(pl.Float32, 6)
    assert frame.schema["cold"] == pl.Boolean
    back = read_embeddings(path)
    assert back.id_column == ids.name and back.ids.to_list() == ids.to_list()
    np.testing.assert_allclose(back.vectors, vectors, atol=1e-6)
    assert back.cold.tolist() == [True, False, True]
    assert back.model_fingerprint == "abc123" and read_fingerprint(path) == "abc123"
    assert back.dim == 6 and len(back) == 3


def test_write_normalises_and_reader_renormalises(tmp_path, capsys):
    path = write_embeddings(
        tmp_path / "e.parquet", pl.Series("item_id", [1, 2]), np.array([[3.0, 4.0], [0.0, 2.0]]),
        np.zeros(2, dtype=bool), model_fingerprint=None,
    )
    np.testing.assert_allclose(read_embeddings(path).vectors, [[0.6, 0.8], [0.0, 1.0]], atol=1e-6)
    # A foreign file with raw vectors (List(Float64)) is accepted and renormalised, with a warning.
    raw = tmp_path / "raw.parquet"
    pl.DataFrame({"user_id": ["x", "y"], "embedding": [[3.0, 4.0], [1.0, 0.0]]}).write_parquet(raw)
    back = read_embeddings(raw)
    np.testing.assert_allclose(back.vectors, [[0.6, 0.8], [1.0, 0.0]], atol=1e-6)
    assert back.cold.tolist() == [False, False] and back.model_fingerprint is None
    assert "renormalised" in capsys.readouterr().err


@pytest.mark.parametrize(
    "frame, error, text",
    [
        (pl.DataFrame({"item_id": [1, 2], "embedding": [[1.0, float("nan")], [1.0, 0.0]]}), BadValues, "NaN"),
        (pl.DataFrame({"item_id": [1, 2], "embedding": [[0.0, 0.0], [1.0, 0.0]]}), BadValues, "zero vector"),
        (pl.DataFrame({"item_id": [1, 2], "embedding": [[1.0], [1.0, 0.0]]}), BadValues, "different lengths"),
        (pl.DataFrame({"item_id": [1, 1], "embedding": [[1.0, 0.0], [0.0, 1.0]]}), DuplicateIds, "duplicate"),
        (pl.DataFrame({"id": [1], "embedding": [[1.0, 0.0]]}), MissingColumn, "user_id or item_id"),
        (pl.DataFrame({"item_id": [1], "vec": [[1.0, 0.0]]}), MissingColumn, "embedding"),
        (pl.DataFrame({"item_id": [1], "embedding": ["a"]}), WrongDtype, "fixed-size list"),
        (pl.DataFrame({"item_id": [1.5], "embedding": [[1.0]]}), WrongDtype, "integer or string"),
    ],
)
def test_read_rejects_bad_files(tmp_path, frame, error, text):
    path = tmp_path / "bad.parquet"
    frame.write_parquet(path)
    with pytest.raises(error) as raised:
        read_embeddings(path)
    assert text in str(raised.value) and str(path) in str(raised.value)


# --------------------------------------------------------------------------- embedding with a model


@pytest.fixture(scope="module")
def model_world(tmp_path_factory):
    """A small (untrained, seeded) model over users (country, age) and items (category, tags, vector)."""
    import torch

    from coldrec.config import TrainConfig
    from coldrec.features import fit_spec
    from coldrec.model import build_model, model_state, write_model_files

    root = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(0)
    users = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(60)],
            "country": rng.choice(["fr", "de", "us"], 60).tolist(),
            "age": rng.uniform(18, 70, 60),
        }
    )
    items = pl.DataFrame(
        {
            "item_id": np.arange(40, dtype=np.int64),
            "category": rng.choice(["a", "b", "c"], 40).tolist(),
            "tags": [[str(t) for t in rng.choice(["x", "y", "z"], 2)] for _ in range(40)],
            "content_vector": pl.Series(rng.standard_normal((40, 4)).astype(np.float32)),
        }
    )
    train = pl.DataFrame(
        {
            "user_id": [f"u{i % 50}" for i in range(500)],  # u50..u59 never trained: unknown ids
            "item_id": rng.integers(0, 30, 500),
            "ts": [dt.datetime(2026, 1, 1) + dt.timedelta(hours=i) for i in range(500)],
            "label": rng.integers(0, 2, 500),
        }
    )
    config = TrainConfig()
    spec = fit_spec(train, users, items, config.features)
    torch.manual_seed(0)
    model = build_model(spec, config.model)
    model_dir = root / "model"
    model_dir.mkdir()
    write_model_files(model_dir, spec=spec, config=config, state=model_state(model, None), normalize=True, metrics={}, train_log=[])
    users.write_parquet(root / "users.parquet")
    items.write_parquet(root / "items.parquet")
    return {"root": root, "model": model_dir, "users": users, "items": items}


def test_embed_users_known_and_unknown(model_world, tmp_path):
    out = tmp_path / "user_emb.parquet"
    result = run_embed(model=model_world["model"], users=model_world["root"] / "users.parquet", out=out)
    assert result.rows == 60 and result.side == "user"
    emb = read_embeddings(out)
    assert emb.id_column == "user_id" and emb.ids.to_list() == model_world["users"]["user_id"].to_list()
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    # Ids seen in training use their id embedding; the ten never seen are cold.
    assert emb.cold.tolist() == [False] * 50 + [True] * 10
    assert result.cold_rows == 10
    spec = json.loads((model_world["model"] / "spec.json").read_text())
    assert emb.model_fingerprint == spec["weights_sha256"]


def test_cold_embedding_is_content_only(model_world, tmp_path):
    users = model_world["users"]
    warm = embed_entities(model_world["model"], users=model_world["root"] / "users.parquet")
    cold = embed_entities(model_world["model"], users=model_world["root"] / "users.parquet", cold=True)
    assert cold.cold.all()
    # A known user embedded with --cold equals a stranger with the same content.
    stranger = users.head(1).with_columns(pl.lit("brand-new").alias("user_id"))
    stranger.write_parquet(tmp_path / "stranger.parquet")
    alone = embed_entities(model_world["model"], users=tmp_path / "stranger.parquet")
    assert alone.cold.tolist() == [True]
    np.testing.assert_allclose(alone.vectors[0], cold.vectors[0], atol=1e-5)
    # ...and differs from the same user's warm (id-embedding) vector.
    assert float(warm.vectors[0] @ cold.vectors[0]) < 0.9999


def test_embed_is_chunk_invariant_and_tolerates_unseen_categories(model_world, tmp_path):
    items = model_world["items"].with_columns(
        pl.when(pl.col("item_id") < 5).then(pl.lit("never-seen")).otherwise(pl.col("category")).alias("category")
    )
    items.write_parquet(tmp_path / "items.parquet")
    whole = run_embed(model=model_world["model"], items=tmp_path / "items.parquet", out=tmp_path / "a.parquet")
    chunked = run_embed(model=model_world["model"], items=tmp_path / "items.parquet", out=tmp_path / "b.parquet", chunk_rows=7, batch_size=3)
    assert whole.rows == chunked.rows == 40
    a, b = read_embeddings(tmp_path / "a.parquet"), read_embeddings(tmp_path / "b.parquet")
    assert a.ids.to_list() == b.ids.to_list() == list(range(40))
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    assert a.ids.dtype == pl.Int64


@pytest.mark.parametrize(
    "change, text",
    [
        (lambda f: f.drop("category"), "category"),
        (lambda f: f.with_columns(pl.lit(1.5).alias("category")), "category"),
        (lambda f: f.with_columns(pl.lit("x").alias("tags")), "tags"),
        (lambda f: f.with_columns(pl.Series("content_vector", np.zeros((40, 3), dtype=np.float32))), "content_vector"),
    ],
)
def test_cli_content_violating_the_spec_exits_2(model_world, tmp_path, capsys, change, text):
    bad = tmp_path / "items.parquet"
    change(model_world["items"]).write_parquet(bad)
    out = tmp_path / "emb.parquet"
    with pytest.raises(SystemExit) as exit_:
        main(["embed", "--model", str(model_world["model"]), "--items", str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert text in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_embed_usage_errors(model_world, tmp_path):
    root = model_world["root"]
    with pytest.raises(UsageError):
        run_embed(model=model_world["model"], users=root / "users.parquet", items=root / "items.parquet", out=tmp_path / "x.parquet")
    with pytest.raises(InputNotFound):
        run_embed(model=model_world["model"], users=root / "users.parquet", stats=tmp_path, out=tmp_path / "x.parquet")
    with pytest.raises(InputNotFound):
        run_embed(model=tmp_path / "no-model", users=root / "users.parquet", out=tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_embed_index_recall_end_to_end(model_world, tmp_path, capsys):
    model, root = str(model_world["model"]), model_world["root"]

    def run(args):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        captured = capsys.readouterr()
        assert exit_.value.code == 0, captured.err
        return captured

    run(["embed", "--model", model, "--items", str(root / "items.parquet"), "--out", str(tmp_path / "item_emb.parquet")])
    run(["embed", "--model", model, "--users", str(root / "users.parquet"), "--out", str(tmp_path / "user_emb.parquet")])
    run(["index", "--embeddings", str(tmp_path / "item_emb.parquet"), "--out", str(tmp_path / "index"), "--trees", "5"])
    via_file = tmp_path / "a.parquet"
    run(["recall", "--index", str(tmp_path / "index"), "--queries", str(tmp_path / "user_emb.parquet"), "--k", "5", "--strict", "--out", str(via_file)])
    via_model = tmp_path / "b.parquet"
    run(["recall", "--index", str(tmp_path / "index"), "--model", model, "--users", str(root / "users.parquet"), "--k", "5", "--strict", "--out", str(via_model)])
    a, b = pl.read_parquet(via_file), pl.read_parquet(via_model)
    assert len(a) == 60 * 5
    assert a.select("user_id", "rank", "item_id").equals(b.select("user_id", "rank", "item_id"))
