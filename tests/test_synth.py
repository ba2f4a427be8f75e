"""The synthetic world has the structure the rest of the suite relies on."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from coldrec import io, schema
from coldrec.synth import SynthConfig, load_truth, run_synth, true_affinity


def test_outputs_follow_the_input_contracts(small_world):
    exposures = io.scan_parquet(small_world / "exposures")
    clicks = io.scan_parquet(small_world / "clicks")
    schema.check_schema(exposures.collect_schema(), schema.EXPOSURES, "exposures")
    schema.check_schema(clicks.collect_schema(), schema.CLICKS, "clicks")
    schema.check_rows(exposures, schema.EXPOSURES, "exposures")
    schema.check_rows(clicks, schema.CLICKS, "clicks")
    users = io.scan_parquet(small_world / "users.parquet")
    items = io.scan_parquet(small_world / "items.parquet")
    assert set(schema.check_content_table(users, "user_id", "users").values()) == {
        schema.Role.CATEGORICAL, schema.Role.MULTI_HOT, schema.Role.NUMERIC,
    }
    assert schema.Role.VECTOR in schema.check_content_table(items, "item_id", "items").values()
    assert sorted(p.name for p in (small_world / "exposures").iterdir())[0] == "day=2026-01-01"
    assert io.read_manifest(small_world)["row_counts"]["exposures"] == exposures.collect().height


def _clicked_exposures(world) -> pl.DataFrame:
    exposures = pl.read_parquet(world / "exposures").drop("day")
    clicks = pl.read_parquet(world / "clicks").drop("day").select("user_id", "item_id", click_ts="ts")
    return (
        exposures.join(clicks, on=["user_id", "item_id"], how="left")
        .with_columns(
            clicked=(pl.col("click_ts") >= pl.col("ts"))
            & (pl.col("click_ts") <= pl.col("ts") + pl.duration(minutes=30))
        )
        .group_by("user_id", "item_id", "ts")
        .agg(pl.col("clicked").any().fill_null(False))
    )


def test_click_rate_rises_with_true_affinity(small_world):
    labelled = _clicked_exposures(small_world).sample(20000, seed=0)
    users, items, _ = load_truth(small_world / "truth")
    taste = labelled.join(users, on="user_id")["taste"].to_numpy()
    topic = labelled.join(items, on="item_id")["topic"].to_numpy()
    labelled = labelled.join(users, on="user_id").join(items, on="item_id")
    affinity = np.einsum("nk,nk->n", labelled["taste"].to_numpy(), labelled["topic"].to_numpy())
    clicked = labelled["clicked"].to_numpy()
    assert taste.shape[0] == topic.shape[0]
    quintiles = np.quantile(affinity, [0.2, 0.4, 0.6, 0.8])
    bins = np.digitize(affinity, quintiles)
    rates = [clicked[bins == b].mean() for b in range(5)]
    assert all(a < b for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] > 3 * rates[0]


def test_content_explains_part_of_affinity(small_world):
    """Items of the same category have more similar true topics than random pairs."""
    _, items, _ = load_truth(small_world / "truth")
    content = pl.read_parquet(small_world / "items.parquet")
    joined = items.join(content, on="item_id")
    topic = joined["topic"].to_numpy()
    topic = topic / np.linalg.norm(topic, axis=1, keepdims=True)
    category = joined["category"].to_numpy()
    similarity = topic @ topic.T
    same = category[:, None] == category[None, :]
    np.fill_diagonal(same, False)
    off_diagonal = ~np.eye(len(category), dtype=bool)
    assert similarity[same].mean() > similarity[off_diagonal & ~same].mean() + 0.3


def test_new_entities_arrive_on_later_days(small_world):
    exposures = pl.read_parquet(small_world / "exposures").drop("day")
    first_seen = exposures.group_by("item_id").agg(pl.col("ts").min().dt.date().alias("first"))
    days = first_seen["first"].n_unique()
    assert days >= 8, "items first appear on most days"
    first_users = exposures.group_by("user_id").agg(pl.col("ts").min().dt.date().alias("first"))
    last_day = exposures["ts"].max().date()
    assert first_users.filter(pl.col("first") == last_day).height > 0
    users, items, _ = load_truth(small_world / "truth")
    assert users["first_day"].max() > users["first_day"].min()


def test_exposures_skew_towards_popular_items(small_world):
    counts = pl.read_parquet(small_world / "exposures")["item_id"].value_counts()["count"].sort(descending=True)
    top_decile = counts.head(len(counts) // 10).sum()
    assert top_decile / counts.sum() > 0.25


def test_true_affinity_matrix(small_world):
    users, items, _ = load_truth(small_world / "truth")
    user_ids = users["user_id"].head(3).to_list()
    item_ids = items["item_id"].tail(4).to_list()
    matrix = true_affinity(small_world / "truth", user_ids, item_ids)
    assert matrix.shape == (3, 4)
    expected = float(np.dot(users["taste"][1].to_numpy(), items["topic"][-1].to_numpy()))
    assert matrix[1, 3] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(KeyError):
        true_affinity(small_world / "truth", ["nobody"], item_ids)


def test_same_seed_same_logs(tmp_path):
    config = SynthConfig(users=50, items=30, days=3, exposures_per_day=200, seed=11)
    run_synth(config, tmp_path / "a")
    run_synth(config, tmp_path / "b")
    a = pl.read_parquet(tmp_path / "a" / "exposures")
    b = pl.read_parquet(tmp_path / "b" / "exposures")
    assert a.equals(b)
    c = pl.read_parquet(tmp_path / "a" / "clicks")
    assert c.equals(pl.read_parquet(tmp_path / "b" / "clicks"))
