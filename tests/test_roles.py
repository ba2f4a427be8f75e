"""How content columns are read (coldrec/roles.py) and `coldrec inspect`, which shows it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from coldrec.config import FeaturesConfig
from coldrec.features import encode_content, fit_spec, numeric_values
from coldrec.roles import decide, decide_roles

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
WORDS = ["red", "river", "night", "story", "last", "king", "city", "dream", "blue", "home"]


def _titles(n: int) -> pl.Series:
    return pl.Series("title", [f"{WORDS[i % 10]} {WORDS[i // 10 % 10]} ({1950 + i})" for i in range(n)])


def test_a_nearly_unique_string_of_several_words_is_text_with_a_warning():
    decision = decide(_titles(60), "items", FeaturesConfig(), "items.parquet")
    assert decision.role == "text" and decision.distinct == 60
    assert "column 'title'" in decision.warning and "read as text" in decision.warning
    assert '[features.roles] title = "categorical"' in decision.warning  # how to override it


def test_a_nearly_unique_single_token_string_is_an_identifier_and_ignored():
    codes = pl.Series("zip_code", [f"{10000 + 7 * i}" for i in range(50)] + [None] * 3)
    decision = decide(codes, "users", FeaturesConfig(), "users.parquet")
    assert decision.role == "ignore" and "identifier" in decision.warning
    assert decision.null_share == pytest.approx(3 / 53)


def test_a_role_in_the_config_wins_without_a_warning():
    decision = decide(_titles(60), "items", FeaturesConfig(roles={"items.title": "categorical"}), "items.parquet")
    assert (decision.role, decision.reason, decision.warning) == ("categorical", "set in [features.roles]", None)


def test_a_repeating_string_is_categorical_and_a_large_rare_share_warns():
    common = decide(pl.Series("genre", ["a", "b", "c"] * 20), "items", FeaturesConfig(), "items.parquet")
    assert (common.role, common.coverage, common.warning) == ("categorical", 1.0, None)
    zips = pl.Series("zip", ["10001"] * 20 + [f"2{i:04d}" for i in range(30)])  # 31 distinct in 50: not per-row
    decision = decide(zips, "users", FeaturesConfig(), "users.parquet")
    assert decision.role == "categorical" and decision.coverage == pytest.approx(0.4)
    assert "30 rows (60%) in the rare slot" in decision.warning


def test_a_date_column_is_its_fractional_year():
    days = pl.Series("released", [dt.date(1990, 1, 1), dt.date(2000, 7, 2), None])
    assert decide(days, "items", FeaturesConfig(), "items.parquet").role == "numeric"
    years = numeric_values(days).to_list()
    assert years[0] == 1990.0 and years[1] == pytest.approx(2000.5, abs=0.01) and years[2] is None
    stamps = pl.Series("signup", [dt.datetime(2020, 1, 1, 12), dt.datetime(2021, 1, 1)])
    assert numeric_values(stamps).to_list() == [2020.0, 2021.0]


def test_train_features_read_text_dates_and_skip_identifiers():
    n = 40
    items = pl.DataFrame({"item_id": list(range(n)), "title": _titles(n), "sku": [f"SKU{i:05d}" for i in range(n)],
                          "released": [dt.date(1960 + i, 1, 1) for i in range(n)]})
    users = pl.DataFrame({"user_id": ["u"], "age": [30]})
    train = pl.DataFrame({"user_id": ["u"] * n, "item_id": list(range(n)), "ts": [dt.datetime(2026, 1, 1)] * n})
    spec = fit_spec(train, users, items, FeaturesConfig())
    assert [(c.name, c.role) for c in spec.item.columns] == [("title", "text"), ("released", "numeric")]
    assert {r["column"]: r["role"] for r in spec.item.roles} == {"title": "text", "sku": "ignore", "released": "numeric"}
    values = encode_content(spec.item, items, "items.parquet")["num"][:, 0].numpy()
    assert np.all(np.diff(values) > 0) and abs(values.mean()) < 1e-5  # standardised years, in order


def test_inspect_on_the_sample_data(run_cli):
    code, stdout, stderr = run_cli("inspect", "--users", SAMPLE / "users.parquet", "--items", SAMPLE / "items.parquet", "--json")
    assert code == 0, stderr
    columns = {(c["table"], c["column"]): c for c in json.loads(stdout)["columns"]}
    assert {k: c["role"] for k, c in columns.items()} == {
        ("users", "age_group"): "categorical", ("users", "country"): "categorical", ("users", "interests"): "multi_hot",
        ("users", "age"): "numeric", ("items", "category"): "categorical", ("items", "tags"): "multi_hot",
        ("items", "price"): "numeric", ("items", "content_vector"): "vector"}
    users = pl.read_parquet(SAMPLE / "users.parquet")
    assert columns[("users", "age")]["null_share"] == pytest.approx(users["age"].null_count() / users.height)
    assert columns[("users", "country")]["distinct"] == users["country"].n_unique()
    code, markdown, _ = run_cli("inspect", "--users", SAMPLE / "users.parquet", "--items", SAMPLE / "items.parquet")
    assert "| users | interests | List(String) | multi_hot |" in markdown


def test_inspect_counts_train_rows_with_content(run_cli, tmp_path):
    prep = tmp_path / "prep"
    prep.mkdir()
    users = pl.DataFrame({"user_id": ["a", "b"], "country": ["x", "y"]})
    items = pl.DataFrame({"item_id": [1, 2, 3], "category": ["c", "c", "d"]})
    train = pl.DataFrame({"user_id": ["a", "a", "b", "zz"], "item_id": [1, 2, 9, 9], "ts": [dt.datetime(2026, 1, 1)] * 4,
                          "label": pl.Series([1, 0, 1, 0], dtype=pl.Int8), "weight": pl.Series([1.0] * 4, dtype=pl.Float32)})
    for name, frame in (("users", users), ("items", items)):
        frame.write_parquet(tmp_path / f"{name}.parquet")
    train.write_parquet(prep / "train.parquet")
    code, stdout, stderr = run_cli("inspect", "--users", tmp_path / "users.parquet", "--items", tmp_path / "items.parquet", "--samples", prep, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["train_rows_with_content"] == {"user": {"rows": 4, "with_content": 3, "share": 0.75},
                                                             "item": {"rows": 4, "with_content": 2, "share": 0.5}}


def test_ids_without_a_content_row_warn_above_a_tenth(capsys):
    from coldrec.features import warn_missing_content

    samples = pl.DataFrame({"user_id": ["a", "b", "c", "zz", "zz", "zz"]})
    content = pl.DataFrame({"user_id": ["a", "b", "c"]})
    warn_missing_content(samples, content, "user_id", "prep/train.parquet", "users.parquet")
    err = capsys.readouterr().err
    assert "users.parquet: 3 of 6 rows of prep/train.parquet (50%) have a user_id with no row in this table" in err
    warn_missing_content(samples.head(3), content, "user_id", "prep/train.parquet", "users.parquet")
    assert capsys.readouterr().err == ""
