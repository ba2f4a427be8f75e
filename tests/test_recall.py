"""Recall: exact oracle vs Annoy, exclusions, shards, delta merge, fresh quota, CLI."""

from __future__ import annotations

import datetime as dt
import io as stdio
import json

import numpy as np
import polars as pl
import pytest

from coldrec.cli import main
from coldrec.embed import write_embeddings
from coldrec.errors import IncompatibleModel, UsageError
from coldrec.index import add_to_index, build_index
from coldrec.recall import parse_shard, run_recall, shard_of

DIM = 12
ITEMS = 1500
USERS = 300


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Items in 30 topic clusters; each user leans to one topic."""
    root = tmp_path_factory.mktemp("recall")
    rng = np.random.default_rng(0)
    topics = unit(rng.standard_normal((30, DIM)).astype(np.float32))
    item_topic = rng.integers(0, 30, ITEMS)
    items = unit(topics[item_topic] + 0.12 * rng.standard_normal((ITEMS, DIM)).astype(np.float32))
    item_ids = np.arange(ITEMS, dtype=np.int64) * 3 + 100
    first_seen = pl.Series(
        "first_seen", [dt.date(2026, 1, 1)] * (ITEMS - 20) + [dt.date(2026, 2, 27)] * 20, dtype=pl.Date
    )
    write_embeddings(
        root / "items.parquet", pl.Series("item_id", item_ids), items, np.zeros(ITEMS, dtype=bool),
        model_fingerprint="m1", first_seen=first_seen,
    )
    user_topic = rng.integers(0, 30, USERS)
    users = unit(topics[user_topic] + 0.08 * rng.standard_normal((USERS, DIM)).astype(np.float32))
    user_ids = [f"u{i:04d}" for i in range(USERS)]
    write_embeddings(
        root / "users.parquet", pl.Series("user_id", user_ids), users, np.zeros(USERS, dtype=bool),
        model_fingerprint="m1",
    )
    build_index(root / "items.parquet", root / "index", trees=20)
    return {
        "root": root, "items": items, "item_ids": item_ids, "users": users, "user_ids": user_ids,
        "item_topic": item_topic, "user_topic": user_topic,
    }


def recs(world, tmp_path, name="recs.parquet", **options) -> pl.DataFrame:
    out = tmp_path / name
    options.setdefault("index", world["root"] / "index")
    options.setdefault("queries", world["root"] / "users.parquet")
    options.setdefault("threads", 2)
    run_recall(out=out, **options)
    return pl.read_parquet(out)


def oracle(world, k):
    scores = world["users"] @ world["items"].T  # (users, items)
    return np.argsort(-scores, axis=1)[:, :k], scores


def test_exact_recall_is_the_bruteforce_topk(world, tmp_path):
    frame = recs(world, tmp_path, k=10, exact=True)
    assert frame.schema == pl.Schema(
        {"user_id": pl.String, "rank": pl.Int32, "item_id": pl.Int64, "score": pl.Float32}
    )
    assert len(frame) == USERS * 10
    top, scores = oracle(world, 10)
    first = frame.filter(pl.col("user_id") == "u0007").sort("rank")
    assert first["item_id"].to_list() == world["item_ids"][top[7]].tolist()
    np.testing.assert_allclose(first["score"].to_numpy(), scores[7, top[7]], atol=1e-5)
    assert first["rank"].to_list() == list(range(1, 11))
    # Planted structure: most recommended items share the user's topic.
    topic_of = dict(zip(world["item_ids"].tolist(), world["item_topic"].tolist()))
    user_topic = dict(zip(world["user_ids"], world["user_topic"].tolist()))
    hits = [topic_of[i] == user_topic[u] for u, i in zip(frame["user_id"], frame["item_id"])]
    assert np.mean(hits) > 0.9


def test_annoy_recall_close_to_exact(world, tmp_path):
    exact = recs(world, tmp_path, "e.parquet", k=10, exact=True)
    approx = recs(world, tmp_path, "a.parquet", k=10, exact=False)
    overlap = exact.join(approx, on=["user_id", "item_id"]).height / exact.height
    assert overlap >= 0.9


def write_samples(path, rows):
    pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.Int64, "label": pl.Int8}, orient="row").write_parquet(path)
    return path


@pytest.mark.parametrize("exact", [True, False])
def test_exclusion_removes_clicked_items_and_keeps_k(world, tmp_path, exact):
    top, _ = oracle(world, 10)
    clicked = world["item_ids"][top[5, :6]].tolist()  # the user's 6 best items
    shown = world["item_ids"][top[5, 6]].item()  # seen, not clicked: stays
    rows = [("u0005", item, 1) for item in clicked] + [("u0005", shown, 0), ("u0006", 999_999, 1)]
    samples = write_samples(tmp_path / "samples.parquet", rows)
    frame = recs(world, tmp_path, k=10, exact=exact, exclude=samples)
    mine = frame.filter(pl.col("user_id") == "u0005").sort("rank")
    assert len(mine) == 10
    assert not set(clicked) & set(mine["item_id"].to_list())
    assert shown in mine["item_id"].to_list()
    if exact:
        expected = [i for i in world["item_ids"][oracle(world, 20)[0][5]].tolist() if i not in clicked][:10]
        assert mine["item_id"].to_list() == expected
    # Other users are untouched.
    assert frame.filter(pl.col("user_id") == "u0006").height == 10


def test_exclusion_reads_a_prepare_directory(world, tmp_path):
    top, _ = oracle(world, 3)
    prep = tmp_path / "prep"
    prep.mkdir()
    best = world["item_ids"][top[1]].tolist()
    write_samples(prep / "train.parquet", [("u0001", best[0], 1)])
    write_samples(prep / "valid.parquet", [("u0001", best[1], 1)])
    write_samples(prep / "test_cold_users.parquet", [("u0001", best[2], 1)])  # not read
    frame = recs(world, tmp_path, k=5, exact=True, exclude=prep)
    got = frame.filter(pl.col("user_id") == "u0001")["item_id"].to_list()
    assert best[0] not in got and best[1] not in got and best[2] in got


def test_exclusion_id_type_mismatch_is_an_error(world, tmp_path):
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [100], "label": [1]}).write_parquet(bad)
    with pytest.raises(Exception) as error:
        recs(world, tmp_path, k=5, exclude=bad)
    assert "user_id" in str(error.value)
    assert not (tmp_path / "recs.parquet").exists()


@pytest.mark.parametrize("exact", [True, False])
def test_shards_are_disjoint_and_union_to_the_whole(world, tmp_path, exact):
    whole = recs(world, tmp_path, "whole.parquet", k=8, exact=exact)
    parts = [recs(world, tmp_path, f"s{i}.parquet", k=8, exact=exact, shard=f"{i}/3") for i in range(3)]
    users = [set(p["user_id"].to_list()) for p in parts]
    assert all(users) and not (users[0] & users[1]) and not (users[1] & users[2]) and not (users[0] & users[2])
    union = pl.concat(parts).sort("user_id", "rank")
    whole = whole.sort("user_id", "rank")
    assert union.select("user_id", "rank", "item_id").equals(whole.select("user_id", "rank", "item_id"))
    np.testing.assert_allclose(union["score"].to_numpy(), whole["score"].to_numpy(), atol=1e-5)


def test_shard_hash_is_stable():
    # Fixed values: the same id goes to the same shard on every machine and version.
    assert shard_of(pl.Series(["u0000", "u0001", "abc"]), 7).tolist() == shard_of(pl.Series(["u0000", "u0001", "abc"]), 7).tolist()
    ints = shard_of(pl.Series([0, 1, 2, 3, 10**12]), 4)
    assert ints.tolist() == [int(v) for v in ints] and set(ints.tolist()) <= {0, 1, 2, 3}
    spread = np.bincount(shard_of(pl.Series(np.arange(10_000)), 4), minlength=4)
    assert spread.min() > 2300
    assert parse_shard("2/5").index == 2
    for spec in ("5/5", "-1/3", "1/0", "a/b", "1", "1/2/3"):
        with pytest.raises(UsageError):
            parse_shard(spec)


@pytest.mark.parametrize("exact", [True, False])
def test_delta_items_are_recalled_and_merged(world, tmp_path, exact):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(world["root"] / "index", index)
    # A new item right on top of user 0's vector, and an update that moves item ids[0] there too.
    target = world["users"][0]
    new_vectors = unit(np.stack([target, target + 0.01]).astype(np.float32))
    new_ids = np.array([7, world["item_ids"][0]], dtype=np.int64)
    write_embeddings(
        tmp_path / "new.parquet", pl.Series("item_id", new_ids), new_vectors, np.zeros(2, dtype=bool),
        model_fingerprint="m1",
    )
    add_to_index(tmp_path / "new.parquet", index)
    frame = recs(world, tmp_path, k=5, exact=exact, index=index)
    mine = frame.filter(pl.col("user_id") == "u0000").sort("rank")
    assert mine["item_id"].to_list()[:2] == [7, int(world["item_ids"][0])]
    assert mine["score"][0] == pytest.approx(1.0, abs=1e-4)
    # The superseded main copy never shows up twice.
    assert frame.group_by("user_id").agg(pl.col("item_id").n_unique() == pl.len()).get_column("item_id").all()
    # Exact recall over main ∪ delta equals brute force over the merged catalogue.
    merged = world["items"].copy()
    merged[0] = new_vectors[1]
    merged = np.vstack([merged, new_vectors[:1]])
    merged_ids = np.concatenate([world["item_ids"], [7]])
    if exact:
        best = np.argsort(-(world["users"][42] @ merged.T))[:5]
        assert frame.filter(pl.col("user_id") == "u0042").sort("rank")["item_id"].to_list() == merged_ids[best].tolist()


def test_fresh_quota_reserves_slots(world, tmp_path):
    plain = recs(world, tmp_path, "plain.parquet", k=10, exact=True)
    fresh_ids = set(world["item_ids"][-20:].tolist())
    frame = recs(
        world, tmp_path, "fresh.parquet", k=10, exact=True, fresh_quota=0.3, fresh_days=7, as_of=dt.date(2026, 3, 1)
    )
    counts = frame.group_by("user_id").agg(pl.col("item_id").is_in(list(fresh_ids)).sum().alias("fresh"), pl.len())
    assert (counts["fresh"] >= 3).all() and (counts["len"] == 10).all()
    # Users who already had 3+ fresh items keep their list unchanged; ranks follow scores.
    for user, group in frame.group_by("user_id"):
        group = group.sort("rank")
        assert (np.diff(group["score"].to_numpy()) <= 1e-6).all()
    kept = plain.filter(pl.col("user_id") == "u0003")["item_id"].to_list()
    got = frame.filter(pl.col("user_id") == "u0003")["item_id"].to_list()
    assert len(set(kept) & set(got)) >= 7
    # No fresh item when the window misses them: the plain list.
    stale = recs(world, tmp_path, "stale.parquet", k=10, exact=True, fresh_quota=0.3, fresh_days=1, as_of=dt.date(2026, 4, 1))
    assert stale.sort("user_id", "rank")["item_id"].equals(plain.sort("user_id", "rank")["item_id"])


def test_fingerprint_mismatch_warns_or_refuses(world, tmp_path, capsys):
    other = tmp_path / "other.parquet"
    write_embeddings(
        other, pl.Series("user_id", ["x1", "x2"]), world["users"][:2], np.zeros(2, dtype=bool), model_fingerprint="m2"
    )
    frame = recs(world, tmp_path, k=3, queries=other)
    assert len(frame) == 6
    assert "model m2" in capsys.readouterr().err
    with pytest.raises(IncompatibleModel):
        recs(world, tmp_path, "strict.parquet", k=3, queries=other, strict=True)
    assert not (tmp_path / "strict.parquet").exists()


# --------------------------------------------------------------------------- CLI


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def base_args(world):
    return ["recall", "--index", str(world["root"] / "index"), "--queries", str(world["root"] / "users.parquet"), "--threads", "1"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k", "0"], "--k must be positive"),
        (["--shard", "3/3"], "out of range"),
        (["--shard", "x"], "not of the form i/n"),
        (["--user-id", "nobody"], "not in the query embeddings"),
        (["--fresh-quota", "1.5"], "--fresh-quota"),
        (["--format", "parquet", "--out", "-"], "cannot stream"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(world, tmp_path, capsys, extra, message):
    out = tmp_path / "recs.parquet"
    args = base_args(world) + extra
    if "--out" not in extra:
        args += ["--out", str(out)]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() and stdout == ""


def test_cli_dim_mismatch_exits_2(world, tmp_path, capsys):
    wrong = tmp_path / "wrong.parquet"
    rng = np.random.default_rng(0)
    write_embeddings(
        wrong, pl.Series("user_id", ["a"]), unit(rng.standard_normal((1, 5))), np.zeros(1, dtype=bool),
        model_fingerprint="m1",
    )
    args = ["recall", "--index", str(world["root"] / "index"), "--queries", str(wrong), "--out", str(tmp_path / "r.parquet")]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "dim 5" in stderr and not (tmp_path / "r.parquet").exists()


def test_cli_streams_jsonl_and_csv(world, capsys):
    code, stdout, _ = run_cli(base_args(world) + ["--k", "3", "--exact", "--out", "-"], capsys)
    assert code == 0
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == USERS * 3
    assert set(lines[0]) == {"user_id", "rank", "item_id", "score"} and lines[0]["rank"] == 1
    code, stdout, _ = run_cli(base_args(world) + ["--k", "2", "--format", "csv", "--out", "-", "--shard", "0/2"], capsys)
    assert code == 0
    frame = pl.read_csv(stdio.StringIO(stdout))
    assert frame.columns == ["user_id", "rank", "item_id", "score"]
    assert set(frame["rank"].to_list()) == {1, 2} and len(frame) % 2 == 0


def test_cli_one_user_to_stdout(world, capsys):
    code, stdout, _ = run_cli(base_args(world) + ["--k", "4", "--exact", "--user-id", "u0007"], capsys)
    assert code == 0
    rows = [json.loads(line) for line in stdout.splitlines()]
    top, _ = oracle(world, 4)
    assert [r["item_id"] for r in rows] == world["item_ids"][top[7]].tolist()
    assert {r["user_id"] for r in rows} == {"u0007"}


def test_cli_writes_parquet_with_summary(world, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    code, _, stderr = run_cli(base_args(world) + ["--k", "5", "--out", str(out)], capsys)
    assert code == 0 and "recall: 300 users" in stderr
    assert pl.read_parquet(out).height == USERS * 5
