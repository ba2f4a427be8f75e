"""Column contracts: every problem of a table reported at once, with file, column and fix."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from coldrec import schema
from coldrec.errors import (
    BadValues,
    DuplicateIds,
    EmptyInput,
    MissingColumn,
    NullValues,
    SchemaError,
    WrongDtype,
)


def test_good_exposures_pass():
    frame = pl.DataFrame({"user_id": ["a"], "item_id": [1], "ts": [dt.datetime(2026, 1, 1)], "extra": [0.5]})
    schema.check_schema(frame.schema, schema.EXPOSURES, "e.parquet")
    assert schema.check_rows(frame.lazy(), schema.EXPOSURES, "e.parquet") == 1


def test_all_missing_columns_in_one_message():
    frame = pl.DataFrame({"uid": [1]})
    with pytest.raises(MissingColumn) as caught:
        schema.check_schema(frame.schema, schema.EXPOSURES, "logs/e.parquet")
    message = str(caught.value)
    for column in ("user_id", "item_id", "ts"):
        assert f"missing column '{column}'" in message
    assert message.startswith("logs/e.parquet")
    assert "found columns: uid" in message


def test_wrong_dtypes_name_expected_and_found():
    frame = pl.DataFrame({"user_id": [1.5], "item_id": [1], "ts": ["2026-01-01"]})
    with pytest.raises(WrongDtype) as caught:
        schema.check_schema(frame.schema, schema.EXPOSURES, "e.parquet")
    message = str(caught.value)
    assert "column 'user_id' should be integer or string, found Float64" in message
    assert "column 'ts' should be Datetime or integer epoch seconds, found String" in message


def test_missing_and_mistyped_together():
    frame = pl.DataFrame({"user_id": [1.5], "ts": [1]})
    with pytest.raises(SchemaError) as caught:
        schema.check_schema(frame.schema, schema.EXPOSURES, "e.parquet")
    assert "missing column 'item_id'" in str(caught.value)
    assert "column 'user_id'" in str(caught.value)


def test_null_ids_are_counted():
    frame = pl.DataFrame({"user_id": ["a", None, None], "item_id": [1, 2, None], "ts": [1, 2, 3]})
    with pytest.raises(NullValues) as caught:
        schema.check_rows(frame.lazy(), schema.EXPOSURES, "e.parquet")
    assert "column 'user_id' has 2 null value(s)" in str(caught.value)
    assert "column 'item_id' has 1 null value(s)" in str(caught.value)


def test_empty_table():
    frame = pl.DataFrame(schema={"user_id": pl.String, "item_id": pl.Int64, "ts": pl.Int64})
    with pytest.raises(EmptyInput, match="no rows"):
        schema.check_rows(frame.lazy(), schema.EXPOSURES, "e.parquet")


def test_millisecond_timestamps_are_detected():
    frame = pl.DataFrame({"user_id": ["a"], "item_id": [1], "ts": [1_767_225_600_000]})
    with pytest.raises(BadValues) as caught:
        schema.check_rows(frame.lazy(), schema.EXPOSURES, "e.parquet")
    assert "milliseconds" in str(caught.value)
    assert "--ts-unit ms" in str(caught.value)
    assert schema.check_rows(frame.lazy(), schema.EXPOSURES, "e.parquet", ts_unit="ms") == 1


def test_future_timestamps_are_refused():
    future = dt.datetime.now() + dt.timedelta(days=30)
    frame = pl.DataFrame({"user_id": ["a"], "item_id": [1], "ts": [future]})
    with pytest.raises(BadValues, match="future"):
        schema.check_rows(frame.lazy(), schema.EXPOSURES, "e.parquet")


def test_non_finite_weights_are_refused():
    frame = pl.DataFrame({"user_id": ["a", "b"], "item_id": [1, 2], "ts": [1, 2], "weight": [1.0, float("nan")]})
    with pytest.raises(BadValues, match="NaN/inf"):
        schema.check_rows(frame.lazy(), schema.CLICKS, "c.parquet")


def test_ts_to_datetime_from_seconds_ms_and_zoned():
    frame = pl.DataFrame({"s": [86_400], "ms": [86_400_000]}).with_columns(
        z=pl.datetime(1970, 1, 2, 1, time_zone="Europe/Berlin")
    )
    out = frame.select(
        schema.ts_to_datetime("s", frame.schema["s"]),
        schema.ts_to_datetime("ms", frame.schema["ms"], ts_unit="ms"),
        schema.ts_to_datetime("z", frame.schema["z"]),
    )
    expected = dt.datetime(1970, 1, 2)
    assert out.row(0) == (expected, expected, expected)
    assert out.schema["s"] == pl.Datetime("us")


def test_content_roles_by_dtype():
    frame = pl.DataFrame(
        {
            "item_id": [1, 2],
            "category": ["a", "b"],
            "tags": [["x"], ["y", "z"]],
            "price": [1.0, None],
            "vector": pl.Series([[0.1, 0.2], [0.3, 0.4]], dtype=pl.Array(pl.Float32, 2)),
        }
    )
    roles = schema.check_content_table(frame.lazy(), "item_id", "items.parquet")
    assert roles == {
        "category": schema.Role.CATEGORICAL,
        "tags": schema.Role.MULTI_HOT,
        "price": schema.Role.NUMERIC,
        "vector": schema.Role.VECTOR,
    }


def test_content_table_duplicate_and_null_ids():
    duplicated = pl.DataFrame({"item_id": [1, 1, 2], "category": ["a", "b", "c"]})
    with pytest.raises(DuplicateIds, match="1 duplicate id"):
        schema.check_content_table(duplicated.lazy(), "item_id", "items.parquet")
    nulls = pl.DataFrame({"item_id": [1, None], "category": ["a", "b"]})
    with pytest.raises(NullValues):
        schema.check_content_table(nulls.lazy(), "item_id", "items.parquet")


def test_content_table_unsupported_dtype():
    frame = pl.DataFrame({"user_id": [1], "signup": [dt.time(12, 0)]})  # a date is numeric (its year); a time of day is not
    with pytest.raises(WrongDtype, match="column 'signup' has unsupported type Time"):
        schema.check_content_table(frame.lazy(), "user_id", "users.parquet")


def test_id_types_must_match():
    with pytest.raises(WrongDtype, match="never re-typed"):
        schema.check_id_types_match(pl.Int64, pl.String, "user_id", "a.parquet", "b.parquet")
    schema.check_id_types_match(pl.Int32, pl.Int64, "user_id", "a.parquet", "b.parquet")


def test_non_positive_weights_are_refused():
    frame = pl.DataFrame({"user_id": ["a", "b"], "item_id": [1, 2], "ts": [1, 2], "weight": [1.0, -1.0]})
    with pytest.raises(BadValues, match="1 value\\(s\\) <= 0"):
        schema.check_rows(frame.lazy(), schema.CLICKS, "c.parquet")
