"""FeatureSpec: exact encodings, the cold slot, validation and the JSON roundtrip."""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np
import polars as pl
import pytest
import torch

from coldrec.config import FeaturesConfig
from coldrec.errors import ConfigError, MissingColumn, WrongDtype
from coldrec.features import (
    FeatureSpec,
    encode_content,
    encode_dataset,
    encode_for_serving,
    fit_spec,
    id_indices,
)

torch.set_num_threads(1)
T0 = dt.datetime(2026, 1, 1)


def _train() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["a", "a", "b", "c", "c", "c"],
            "item_id": [1, 2, 1, 3, 1, 2],
            "ts": [T0, T0, T0 + dt.timedelta(days=1), T0, T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=1)],
            "label": pl.Series([1, 0, 1, 0, 1, 1], dtype=pl.Int8),
            "weight": pl.Series([1.0, 1.0, 3.0, 1.0, 1.0, 1.0], dtype=pl.Float32),
        }
    )


def _users() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["a", "b", "c", "z"],
            "country": ["de", "de", "fr", "xx"],
            "interests": [["x", "y"], ["x"], None, ["x", "q"]],
            "age": [20.0, None, 40.0, 30.0],
        }
    )


def _items() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "category": ["books", "books", "music", "toys"],
            "title": ["Red Fox", "red hat", None, "blue fox"],
            "vec": pl.Series([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [5.0, 6.0]], dtype=pl.Array(pl.Float32, 2)),
        }
    )


def _config(**kw) -> FeaturesConfig:
    base = dict(vocab_min_count=2, roles={"items.title": "text"}, text_buckets=16)
    base.update(kw)
    return FeaturesConfig(**base)


def test_vocabulary_min_count_oov_and_null():
    spec = fit_spec(_train(), _users(), _items(), _config())
    country = spec.user.columns[0]
    assert (country.name, country.role) == ("country", "categorical")
    assert country.vocab == ["de"]  # 'fr' appears once (< min_count 2); 'xx' is not a train user
    tensors = encode_content(spec.user, _users().with_columns(pl.Series("country", ["de", None, "fr", "new"])), "users")
    assert tensors["col0"].tolist() == [2, 0, 1, 1]  # de -> 2, null -> 0, rare/unseen -> OOV 1


def test_multi_hot_bag_padding_and_oov():
    spec = fit_spec(_train(), _users(), _items(), _config())
    interests = spec.user.columns[1]
    assert interests.role == "multi_hot" and interests.vocab == ["x"] and interests.bag_size == 2
    bags = encode_content(spec.user, _users(), "users")["col1"]
    assert bags.tolist() == [[2, 1], [2, 0], [0, 0], [2, 1]]  # y, q -> OOV; null list -> all padding


def test_numeric_standardisation_and_missing_flag():
    spec = fit_spec(_train(), _users(), _items(), _config())
    age = spec.user.columns[2]
    assert age.role == "numeric"
    assert age.mean == pytest.approx(30.0) and age.std == pytest.approx(10.0)  # over a, c (b is null)
    numeric = encode_content(spec.user, _users(), "users")["num"]  # (n, 2): value, missing flag
    assert numeric[:, 0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0])
    assert numeric[:, 1].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_numeric_log1p_option():
    spec = fit_spec(_train(), _users(), _items(), _config(log1p_columns=["age"]))
    age = spec.user.columns[2]
    expected = np.log1p([20.0, 40.0])
    assert age.log1p and age.mean == pytest.approx(expected.mean())
    value = encode_content(spec.user, _users(), "users")["num"][0, 0].item()
    assert value == pytest.approx((np.log1p(20.0) - expected.mean()) / expected.std(), rel=1e-5)


def test_numeric_quantile_buckets_exact_boundaries_null_bucket_and_clamping(tmp_path):
    # Ten train users with ages 1..10 plus one with a null age; "zz" is not a train user, so
    # its age (1000) does not move the fitted boundaries.
    ids = [f"u{i}" for i in range(11)]
    users = pl.DataFrame({"user_id": ids + ["zz"], "age": [float(a) for a in range(1, 11)] + [None, 1000.0]})
    items = pl.DataFrame({"item_id": [1], "category": ["books"]})
    train = pl.DataFrame({"user_id": ids, "item_id": [1] * 11, "ts": [T0] * 11, "label": pl.Series([1] * 11, dtype=pl.Int8)})
    assert fit_spec(train, users, items, FeaturesConfig()).user.columns == fit_spec(train, users, items, FeaturesConfig(numeric_buckets=0)).user.columns
    spec = fit_spec(train, users, items, FeaturesConfig(numeric_buckets=4))
    roles = [(c.name, c.role) for c in spec.user.columns]
    assert roles == [("age", "numeric"), ("age", "numeric_bucket")]  # the numeric block is kept
    bucket = spec.user.columns[1]
    # Quartiles of 1..10 with linear interpolation: positions 2.25, 4.5, 6.75 -> 3.25, 5.5, 7.75.
    assert bucket.boundaries == pytest.approx([3.25, 5.5, 7.75])
    assert bucket.cardinality == 2 + 4  # PAD, null bucket, 4 buckets
    assert spec.user.input_keys() == ["col1", "num"]
    probe = users.head(0).vstack(pl.DataFrame({"user_id": ["p"] * 9, "age": [1.0, 3.25, 3.3, 5.5, 7.0, 7.75, 10.0, None, -50.0]}))
    index = encode_content(spec.user, probe, "users")["col1"]
    # 2.. = buckets (a value equal to a boundary goes up), null -> 1 (its own bucket),
    # unseen values beyond the fitted range clamp to the first / last bucket.
    assert index.tolist() == [2, 3, 3, 4, 4, 5, 5, 1, 2]
    assert encode_content(spec.user, users, "users")["col1"].tolist() == [2, 2, 2, 3, 3, 4, 4, 5, 5, 5, 1, 5]
    # Ties merge: a constant column keeps one boundary (below / at-or-above the constant).
    flat = fit_spec(train, users.with_columns(pl.lit(7.0).alias("age")), items, FeaturesConfig(numeric_buckets=10))
    assert flat.user.columns[1].boundaries == [7.0] and flat.user.columns[1].cardinality == 4
    # Saved in spec.json (no pickle) and encoded identically after loading.
    spec.save(tmp_path / "spec.json")
    again = FeatureSpec.load(tmp_path / "spec.json")
    assert again == spec
    assert torch.equal(encode_content(again.user, probe, "users")["col1"], index)
    with pytest.raises(ConfigError):
        FeaturesConfig(numeric_buckets=-1).validate()


def test_dense_vectors_and_hashed_text():
    spec = fit_spec(_train(), _users(), _items(), _config())
    roles = [(c.name, c.role) for c in spec.item.columns]
    assert roles == [("category", "categorical"), ("title", "text"), ("vec", "vector")]
    tensors = encode_content(spec.item, _items(), "items")
    assert tensors["col2"].tolist() == [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [5.0, 6.0]]

    def bucket(token: str) -> int:
        return zlib.crc32(token.encode()) % 16 + 2

    text = tensors["col1"].tolist()
    assert text[0] == [bucket("red"), 1]  # lower-cased tokens; "fox", in one title only, is OOV (1)
    assert text[1] == [bucket("red"), 1]
    assert text[2] == [0, 0]  # null title
    every = fit_spec(_train(), _users(), _items(), _config(vocab_min_count=1))  # every token frequent enough
    assert encode_content(every.item, _items(), "items")["col1"].tolist()[:2] == [[bucket("red"), bucket("fox")], [bucket("red"), bucket("hat")]]


def test_wrong_vector_length_and_missing_column_name_file_and_column():
    spec = fit_spec(_train(), _users(), _items(), _config())
    wrong = _items().with_columns(pl.Series("vec", [[1.0, 2.0, 3.0]] * 4, dtype=pl.Array(pl.Float32, 3)))
    with pytest.raises(WrongDtype) as error:
        encode_content(spec.item, wrong, "items.parquet")
    assert "items.parquet" in str(error.value) and "'vec'" in str(error.value)
    with pytest.raises(MissingColumn) as error:
        encode_content(spec.item, _items().drop("category"), "items.parquet")
    assert "'category'" in str(error.value)
    with pytest.raises(WrongDtype):
        encode_content(spec.item, _items().with_columns(pl.col("category").str.split(" ")), "items.parquet")


def test_id_min_count_and_cold_slot_never_raises():
    spec = fit_spec(_train(), _users(), _items(), _config(id_min_count=2))
    assert spec.user.ids == ["a", "c"]  # b has one sample
    assert spec.item.ids == [1, 2]
    assert id_indices(spec.user, pl.Series(["c", "b", "nobody", "a"])).tolist() == [2, 0, 0, 1]


def test_spec_json_roundtrip(tmp_path):
    spec = fit_spec(_train(), _users(), _items(), _config(log1p_columns=["age"]))
    spec.save(tmp_path / "spec.json")
    again = FeatureSpec.load(tmp_path / "spec.json")
    assert again == spec
    a = encode_content(spec.item, _items(), "items")
    b = encode_content(again.item, _items(), "items")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _stats() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["a", "c", "c"],
            "day": [dt.date(2026, 1, 1), dt.date(2026, 1, 1), dt.date(2026, 1, 2)],
            "clicks": pl.Series([0.0, 3.0, 7.0], dtype=pl.Float32),
        }
    )


def test_encode_dataset_indices_and_point_in_time_stats():
    train = _train()
    spec = fit_spec(train, _users(), _items(), _config(stats_log1p=False), user_stats=_stats())
    assert spec.user.stats_columns == ["clicks"]
    data = encode_dataset(spec, {"train": train}, _users(), _items(), user_stats=_stats())
    samples = data.splits["train"]
    users = data.users.ids.to_list()
    assert [users[r] for r in samples.user_row.tolist()] == train["user_id"].to_list()
    items = data.items.ids.to_list()
    assert [items[r] for r in samples.item_row.tolist()] == train["item_id"].to_list()
    # b on day 2 has no stats row -> 0; each other sample joins its own (id, day) row.
    stats = data.user_stats[samples.user_stats_row]  # (n, 1)
    mean, std = spec.user.stats_mean[0], spec.user.stats_std[0]
    raw = [0.0, 0.0, None, 3.0, 7.0, 7.0]
    expected = [0.0 if v is None else (v - mean) / std for v in raw]
    assert stats[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert samples.user_stats_row.tolist()[2] == 0
    assert samples.weight.tolist() == [1.0, 1.0, 3.0, 1.0, 1.0, 1.0]


def test_serving_inputs_known_cold_and_unknown():
    spec = fit_spec(_train(), _users(), _items(), _config(stats_log1p=False), user_stats=_stats())
    latest = _stats()  # has `day`: the latest row per id is used
    inputs, cold = encode_for_serving(spec.user, _users(), stats=latest)
    assert inputs["id"].tolist() == [1, 2, 3, 0]  # z is unknown: cold slot
    assert cold.tolist() == [False, False, False, True]
    mean, std = spec.user.stats_mean[0], spec.user.stats_std[0]
    assert inputs["stats"][:, 0].tolist() == pytest.approx([(0 - mean) / std, 0.0, (7 - mean) / std, 0.0], abs=1e-6)
    inputs, cold = encode_for_serving(spec.user, _users(), stats=latest, cold=True)
    assert inputs["id"].tolist() == [0, 0, 0, 0] and float(inputs["stats"].abs().sum()) == 0.0
    assert cold.all()
    assert torch.equal(inputs["col0"], encode_content(spec.user, _users(), "users")["col0"])  # content kept
