"""The serving row encoder (coldrec/row_inputs.py) gives exactly the table encoder's inputs."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from coldrec.config import FeaturesConfig
from coldrec.features import encode_for_serving, fit_spec
from coldrec.row_inputs import BadRow, RowEncoder

WORDS = ["red", "river", "night", "story", "Último", "king", "city_x", "dream", "blue", "home"]


def _users(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "user_id": [f"u{i}" for i in range(n)],
        "group": [None if i % 11 == 0 else f"g{rng.integers(0, 6)}" for i in range(n)],
        "flag": [bool(i % 2) for i in range(n)],
        "interests": [None if i % 13 == 0 else [f"t{t}" for t in rng.integers(0, 9, size=rng.integers(0, 6))] for i in range(n)],
        "age": [None if i % 7 == 0 else float(rng.integers(15, 80)) for i in range(n)],
        "signup": [None if i % 9 == 0 else dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3000))) for i in range(n)],
        "bio": [None if i % 5 == 0 else " ".join(rng.choice(WORDS, size=rng.integers(1, 5))) + f" #{i}" for i in range(n)],
        "emb": pl.Series([[float(x) for x in rng.standard_normal(3)] for _ in range(n)], dtype=pl.Array(pl.Float32, 3)),
    })


def test_rows_encode_exactly_as_the_table_encoder():
    users = _users(120, 0)
    train = pl.DataFrame({"user_id": users["user_id"][:100], "item_id": [1] * 100, "ts": [dt.datetime(2026, 1, 1)] * 100})
    items = pl.DataFrame({"item_id": [1], "kind": ["x"]})
    config = FeaturesConfig(numeric_buckets=5, max_bag_size=4, text_buckets=64, roles={"bio": "text"}, log1p_columns=["age"])
    spec = fit_spec(train, users, items, config).user
    assert {c.role for c in spec.columns} == {"categorical", "multi_hot", "numeric", "numeric_bucket", "text", "vector"}
    fresh = _users(60, 1)  # unseen values, nulls, bags longer than max_bag_size
    want, _ = encode_for_serving(spec, fresh, cold=True)
    rows = [{k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in row.items()} for row in fresh.drop("user_id").to_dicts()]
    got = RowEncoder(spec).encode(rows)
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.allclose(got[key].double(), want[key].double(), atol=1e-6), key


@pytest.mark.parametrize(("row", "fragment"), [
    ({"age": "old"}, "'age' takes a number"),
    ({"signup": "yesterday"}, "'signup' takes a date"),
    ({"interests": "music"}, "'interests' takes a list of strings"),
    ({"emb": [1.0, 2.0]}, "'emb' takes a list of 3 numbers"),
    ({"bio": 7}, "'bio' takes a string"),
])
def test_a_value_of_the_wrong_type_names_its_column(row, fragment):
    users = _users(40, 0)
    train = pl.DataFrame({"user_id": users["user_id"], "item_id": [1] * 40, "ts": [dt.datetime(2026, 1, 1)] * 40})
    spec = fit_spec(train, users, pl.DataFrame({"item_id": [1], "kind": ["x"]}), FeaturesConfig(roles={"bio": "text"})).user
    with pytest.raises(BadRow, match=fragment):
        RowEncoder(spec).encode([row])
