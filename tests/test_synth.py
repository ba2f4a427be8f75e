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


def _one_hot_attributes(world) -> tuple[np.ndarray, np.ndarray]:
    """Every user and item attribute value as a 0/1 column (price as terciles)."""
    from coldrec import synth

    users, items = world.users, world.items

    def onehot(values, names) -> np.ndarray:
        return (np.asarray(values)[:, None] == np.array(names)[None, :]).astype(float)

    def multihot(lists, names) -> np.ndarray:
        return np.array([[name in row for name in names] for row in lists], dtype=float)

    price = items["price"].to_numpy()
    tier = np.searchsorted(np.quantile(price, [1 / 3, 2 / 3]), price)
    user_x = np.hstack([
        onehot(users["age_group"], synth.AGE_GROUPS),
        onehot(users["country"], synth.COUNTRIES),
        multihot(users["interests"].to_list(), synth.INTERESTS),
    ])
    item_x = np.hstack([
        onehot(items["category"], synth.CATEGORIES),
        multihot(items["tags"].to_list(), synth.TAGS),
        np.eye(synth.PRICE_TIERS)[tier],
    ])
    return user_x, item_x


def _pairwise_fit_r2(config: SynthConfig) -> float:
    """Held-out R² of the planted affinity fitted by least squares on every (user attribute
    value x item attribute value) product: LightFM's model class without identities."""
    from coldrec.synth import build_world

    world = build_world(config)
    user_x, item_x = _one_hot_attributes(world)
    rng = np.random.default_rng(0)
    users = rng.integers(0, len(user_x), 16000)
    items = rng.integers(0, len(item_x), 16000)
    affinity = np.einsum("nk,nk->n", world.user_taste[users], world.item_topic[items])
    x = np.einsum("na,nb->nab", user_x[users], item_x[items]).reshape(len(users), -1)
    x = np.hstack([x, user_x[users], item_x[items], np.ones((len(users), 1))])
    fit, held = slice(0, 12000), slice(12000, None)
    coef = np.linalg.lstsq(x[fit], affinity[fit], rcond=None)[0]
    residual = affinity[held] - x[held] @ coef
    return 1.0 - residual.var() / affinity[held].var()


def test_interactions_hide_the_signal_from_per_attribute_effects():
    """Content explains the linear world's affinity through sums of per-attribute effects,
    and nothing of the crossed world's, even with no latent part at all."""
    base = dict(users=2500, items=1200, days=2, exposures_per_day=10, latent_strength=0.0, seed=1)
    assert _pairwise_fit_r2(SynthConfig(**base)) > 0.7
    assert _pairwise_fit_r2(SynthConfig(**base, interactions=True)) < 0.15


def test_interactions_are_still_explained_by_content_cells():
    """In the crossed world, users of one (age group, country) cell share a taste."""
    from coldrec.synth import build_world

    world = build_world(SynthConfig(users=2000, items=500, days=2, exposures_per_day=10, latent_strength=0.0, interactions=True, seed=2))
    cell = (world.users["age_group"] + world.users["country"]).to_numpy()
    taste = world.user_taste / np.linalg.norm(world.user_taste, axis=1, keepdims=True)
    similarity = taste @ taste.T
    same = cell[:, None] == cell[None, :]
    np.fill_diagonal(same, False)
    assert similarity[same].mean() > similarity[~same].mean() + 0.3


@pytest.mark.parametrize("interactions", [False, True])
def test_click_rate_is_realised_in_the_labels(tmp_path, interactions):
    from coldrec.prepare import PrepareConfig, run_prepare

    config = SynthConfig(users=800, items=400, days=8, exposures_per_day=3000, click_rate=0.02, interactions=interactions, seed=4)
    run_synth(config, tmp_path / "world")
    run_prepare(tmp_path / "world" / "exposures", tmp_path / "world" / "clicks", tmp_path / "prep", PrepareConfig(seed=0))
    labels = pl.concat([pl.read_parquet(p) for p in (tmp_path / "prep").glob("*.parquet")])["label"]
    assert labels.mean() == pytest.approx(0.02, rel=0.2)


def test_default_world_is_unchanged_by_the_new_options():
    """Each option changes only its own part of the world; the content tables stay draw for draw."""
    from coldrec.synth import build_world

    config = SynthConfig(users=100, items=80, days=3, exposures_per_day=50, seed=9)
    plain = build_world(config)
    crossed = build_world(SynthConfig(**{**config.__dict__, "interactions": True}))
    assert plain.users.equals(crossed.users) and plain.items.equals(crossed.items)
    assert not np.allclose(plain.user_taste, crossed.user_taste)
    rare = build_world(SynthConfig(**{**config.__dict__, "click_rate": 0.02}))
    assert np.array_equal(rare.user_taste, plain.user_taste) and rare.alpha == plain.alpha
    assert rare.beta < plain.beta  # fewer clicks: only the offset moves


@pytest.mark.parametrize(("field", "value"), [("click_rate", 0.9), ("click_rate", 0.0), ("latent_strength", -1.0)])
def test_bad_world_options_are_usage_errors(tmp_path, field, value):
    from coldrec.errors import UsageError

    with pytest.raises(UsageError, match=field.replace("_", "-")):
        run_synth(SynthConfig(**{field: value}), tmp_path / "w")
