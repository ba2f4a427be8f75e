"""Column contracts of every input and output, and the checks that enforce them.

A check reports every problem of a table in one message (file, column, expected vs found,
fix) rather than stopping at the first. `docs/data.md` documents the same contracts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import polars as pl

from coldrec.errors import (
    BadValues,
    DuplicateIds,
    EmptyInput,
    MissingColumn,
    NullValues,
    SchemaError,
    WrongDtype,
)

# Integer timestamps are epoch seconds. 1e11 s is the year 5138, so anything larger is
# almost surely milliseconds (1e11 ms is 1973): we refuse to guess silently.
MS_THRESHOLD = 100_000_000_000
FUTURE_TOLERANCE = dt.timedelta(days=1)


class Kind(Enum):
    ID = "integer or string"
    TIMESTAMP = "Datetime or integer epoch seconds"
    DATETIME = "Datetime"
    DATE = "Date"
    INTEGER = "integer"
    NUMERIC = "integer or float"
    LABEL = "integer or boolean (0/1)"
    BOOL = "boolean"
    STRING = "string"
    VECTOR = "fixed-size list of float"


def _is_integer(dtype: pl.DataType) -> bool:
    return dtype.is_integer()


def _is_string(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Categorical, pl.Enum))


def is_date(dtype: pl.DataType) -> bool:
    """A Date or Datetime content column: read as its fractional year."""
    return dtype == pl.Date or isinstance(dtype, pl.Datetime)


def _is_float_vector(dtype: pl.DataType) -> bool:
    return isinstance(dtype, (pl.Array, pl.List)) and dtype.inner.is_float()


def kind_accepts(kind: Kind, dtype: pl.DataType) -> bool:
    if kind is Kind.ID:
        return _is_integer(dtype) or dtype == pl.String
    if kind is Kind.TIMESTAMP:
        return isinstance(dtype, pl.Datetime) or _is_integer(dtype)
    if kind is Kind.DATETIME:
        return isinstance(dtype, pl.Datetime)
    if kind is Kind.DATE:
        return dtype == pl.Date
    if kind is Kind.INTEGER:
        return _is_integer(dtype)
    if kind is Kind.NUMERIC:
        return dtype.is_numeric()
    if kind is Kind.LABEL:
        return _is_integer(dtype) or dtype == pl.Boolean
    if kind is Kind.BOOL:
        return dtype == pl.Boolean
    if kind is Kind.STRING:
        return _is_string(dtype)
    if kind is Kind.VECTOR:
        return _is_float_vector(dtype)
    raise AssertionError(kind)


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = True
    nullable: bool = False
    description: str = ""


@dataclass(frozen=True)
class TableContract:
    """The columns a table must have. Extra columns are allowed unless `closed`."""

    name: str
    columns: tuple[Column, ...]
    closed: bool = False
    description: str = ""

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


EXPOSURES = TableContract(
    "exposures",
    (
        Column("user_id", Kind.ID, description="who saw the item"),
        Column("item_id", Kind.ID, description="what was shown"),
        Column("ts", Kind.TIMESTAMP, description="when it was shown"),
    ),
    description="one row per time an item was shown to a user",
)

CLICKS = TableContract(
    "clicks",
    (
        Column("user_id", Kind.ID),
        Column("item_id", Kind.ID),
        Column("ts", Kind.TIMESTAMP),
        Column("weight", Kind.NUMERIC, required=False, description="e.g. purchase > click"),
    ),
    description="one row per click; a click labels the exposure it follows",
)


def content_contract(id_column: str) -> TableContract:
    return TableContract(
        "users" if id_column == "user_id" else "items",
        (Column(id_column, Kind.ID, description="one row per id"),),
        description="content attributes known at sign-up or launch; roles follow dtype",
    )


USERS = content_contract("user_id")
ITEMS = content_contract("item_id")

SAMPLES = TableContract(
    "samples",
    (
        Column("user_id", Kind.ID),
        Column("item_id", Kind.ID),
        Column("ts", Kind.DATETIME, description="exposure time (UTC, microseconds)"),
        Column("label", Kind.LABEL, description="1 = clicked within the attribution window"),
        Column("weight", Kind.NUMERIC, required=False, description="click weight, 1 if none"),
    ),
    description="labelled exposures written by `coldrec prepare`",
)

EMBEDDINGS_COLUMNS = (
    Column("embedding", Kind.VECTOR, description="L2-normalised float32 vector"),
    Column("cold", Kind.BOOL, description="true when the preference block was empty"),
)

RECS = TableContract(
    "recs",
    (
        Column("user_id", Kind.ID),
        Column("rank", Kind.INTEGER, description="1 = best"),
        Column("item_id", Kind.ID),
        Column("score", Kind.NUMERIC, description="cosine similarity"),
    ),
    description="top-k recommendations written by `coldrec recall`",
)


def _dtype_name(dtype: pl.DataType) -> str:
    return str(dtype)


def check_schema(schema: pl.Schema, contract: TableContract, path: str | Path) -> None:
    """Raise one SchemaError listing every missing or mistyped column of `schema`."""
    missing: list[str] = []
    mistyped: list[str] = []
    for column in contract.columns:
        if column.name not in schema:
            if column.required:
                missing.append(column.name)
            continue
        dtype = schema[column.name]
        if not kind_accepts(column.kind, dtype):
            mistyped.append(
                f"column '{column.name}' should be {column.kind.value}, found {_dtype_name(dtype)}"
            )
    if not missing and not mistyped:
        return
    problems = [f"missing column '{name}'" for name in missing] + mistyped
    found = ", ".join(schema.names()) or "no columns"
    if missing:
        hint = f"found columns: {found}; rename or add the missing ones"
    else:
        hint = "cast the column to the expected type before writing the file"
    error_class = MissingColumn if missing and not mistyped else WrongDtype if mistyped and not missing else SchemaError
    raise error_class(f"{contract.name} table: " + "; ".join(problems), path=path, hint=hint)


def check_rows(frame: pl.LazyFrame, contract: TableContract, path: str | Path, *, ts_unit: str = "s") -> int:
    """Check values in one pass: nulls in non-nullable columns, timestamps. Returns row count.

    Raises EmptyInput for a table with no rows, NullValues/BadValues listing every problem.
    """
    schema = frame.collect_schema()
    exprs: list[pl.Expr] = [pl.len().alias("__rows")]
    for column in contract.columns:
        if column.name in schema and not column.nullable:
            exprs.append(pl.col(column.name).null_count().alias(f"null:{column.name}"))
    ts_column = "ts" if "ts" in schema and contract.columns and any(c.name == "ts" for c in contract.columns) else None
    if ts_column:
        exprs.append(pl.col(ts_column).max().alias("ts:max"))
    for column in contract.columns:
        if column.name in schema and column.kind is Kind.NUMERIC and schema[column.name].is_float():
            exprs.append((~pl.col(column.name).is_finite()).sum().alias(f"nonfinite:{column.name}"))
    if "weight" in schema and any(c.name == "weight" for c in contract.columns) and schema["weight"].is_numeric():
        # A zero or negative weight would turn a click into a push away from the item.
        exprs.append((pl.col("weight") <= 0).sum().alias("nonpositive:weight"))
    stats = frame.select(exprs).collect().row(0, named=True)
    rows = int(stats["__rows"])
    if rows == 0:
        raise EmptyInput(f"{contract.name} table has no rows", path=path, hint="check the file or the --start/--end range")
    nulls = [
        f"column '{key.split(':', 1)[1]}' has {value} null value(s)"
        for key, value in stats.items()
        if key.startswith("null:") and value
    ]
    if nulls:
        raise NullValues(
            f"{contract.name} table: " + "; ".join(nulls),
            path=path,
            hint="drop or fill the rows with null ids/timestamps before running coldrec",
        )
    bad: list[str] = []
    for key, value in stats.items():
        if key.startswith("nonfinite:") and value:
            bad.append(f"column '{key.split(':', 1)[1]}' has {value} NaN/inf value(s)")
        if key.startswith("nonpositive:") and value:
            bad.append(f"column '{key.split(':', 1)[1]}' has {value} value(s) <= 0 (weights must be positive)")
    if ts_column and stats.get("ts:max") is not None:
        bad.extend(_timestamp_problems(stats["ts:max"], schema[ts_column], ts_unit))
    if bad:
        raise BadValues(f"{contract.name} table: " + "; ".join(bad), path=path, hint=_ts_hint(bad))
    return rows


def _ts_hint(problems: list[str]) -> str:
    if any("milliseconds" in p for p in problems):
        return "divide ts by 1000, or pass --ts-unit ms"
    if any("future" in p for p in problems):
        return "check the clock of the writer; timestamps must be UTC"
    return "fix or drop those rows"


def _timestamp_problems(ts_max: object, dtype: pl.DataType, ts_unit: str) -> list[str]:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    if _is_integer(dtype):
        value = int(ts_max)  # type: ignore[call-overload]
        if ts_unit == "s" and value > MS_THRESHOLD:
            return [f"column 'ts' looks like epoch milliseconds (max {value}), expected seconds"]
        seconds = value / 1000 if ts_unit == "ms" else value
        latest = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
    else:
        latest = ts_max  # type: ignore[assignment]
        if isinstance(latest, dt.datetime) and latest.tzinfo is not None:
            latest = latest.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(latest, dt.datetime) and latest > now + FUTURE_TOLERANCE:
        return [f"column 'ts' has timestamps in the future (latest {latest.isoformat()})"]
    return []


def ts_to_datetime(column: str, dtype: pl.DataType, ts_unit: str = "s") -> pl.Expr:
    """An expression giving `column` as naive UTC Datetime('us') whatever its input type."""
    expr = pl.col(column)
    if _is_integer(dtype):
        return pl.from_epoch(expr, time_unit=ts_unit).cast(pl.Datetime("us")).alias(column)
    assert isinstance(dtype, pl.Datetime)
    if dtype.time_zone is not None:
        expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return expr.cast(pl.Datetime("us")).alias(column)


# --------------------------------------------------------------------------- content tables


class Role(Enum):
    CATEGORICAL = "categorical"
    MULTI_HOT = "multi_hot"
    NUMERIC = "numeric"
    VECTOR = "vector"
    TEXT = "text"


def content_role(dtype: pl.DataType) -> Role | None:
    """The default role of a content column by dtype (None: unsupported)."""
    if _is_string(dtype):
        return Role.CATEGORICAL
    if isinstance(dtype, pl.List) and _is_string(dtype.inner):
        return Role.MULTI_HOT
    if dtype.is_numeric() or dtype == pl.Boolean or is_date(dtype):
        return Role.NUMERIC  # a date: its fractional year
    if _is_float_vector(dtype):
        return Role.VECTOR
    return None


def check_content_table(frame: pl.LazyFrame, id_column: str, path: str | Path) -> dict[str, Role]:
    """Check a users/items table: id column, one row per id, supported dtypes.

    Returns the default role of every content column.
    """
    schema = frame.collect_schema()
    contract = content_contract(id_column)
    check_schema(schema, contract, path)
    roles: dict[str, Role] = {}
    unsupported: list[str] = []
    for name, dtype in schema.items():
        if name == id_column:
            continue
        role = content_role(dtype)
        if role is None:
            unsupported.append(f"column '{name}' has unsupported type {dtype}")
        else:
            roles[name] = role
    if unsupported:
        raise WrongDtype(
            f"{contract.name} table: " + "; ".join(unsupported),
            path=path,
            hint="content columns must be string, list[string], numeric, date or fixed-size list[float]",
        )
    stats = frame.select(
        pl.len().alias("rows"),
        pl.col(id_column).null_count().alias("nulls"),
        pl.col(id_column).n_unique().alias("unique"),
    ).collect().row(0, named=True)
    if stats["rows"] == 0:
        raise EmptyInput(f"{contract.name} table has no rows", path=path, hint="check the file")
    if stats["nulls"]:
        raise NullValues(
            f"{contract.name} table: column '{id_column}' has {stats['nulls']} null value(s)",
            path=path,
            hint="drop rows with null ids",
        )
    non_null = stats["rows"] - stats["nulls"]
    if stats["unique"] != non_null:
        raise DuplicateIds(
            f"{contract.name} table: column '{id_column}' has {non_null - stats['unique']} duplicate id(s)",
            path=path,
            hint="keep one row per id (e.g. the latest attributes)",
        )
    _check_content_finite(frame, schema, path, contract.name)
    return roles


def _check_content_finite(frame: pl.LazyFrame, schema: pl.Schema, path: str | Path, table: str) -> None:
    """NaN/inf in a float content column (or vector) is bad data, not a missing value (null is)."""
    checks = []
    for name, dtype in schema.items():
        if dtype.is_float():
            values = pl.col(name)
        elif _is_float_vector(dtype):
            values = pl.col(name).arr.explode() if isinstance(dtype, pl.Array) else pl.col(name).list.explode()
        else:
            continue
        checks.append((~values.is_finite()).sum().alias(name))
    if not checks:
        return
    counts = frame.select(checks).collect().row(0, named=True)
    bad = {name: count for name, count in counts.items() if count}
    if bad:
        problems = "; ".join(f"column '{name}' has {count} NaN/inf value(s)" for name, count in bad.items())
        raise BadValues(
            f"{table} table: {problems}",
            path=path,
            hint="replace them with null (missing values are allowed) or fix the writer",
        )


def check_id_types_match(left: pl.DataType, right: pl.DataType, column: str, left_path: str | Path, right_path: str | Path) -> None:
    """Ids are kept as given: joining integer ids to string ids is an error, not a cast."""
    if _is_integer(left) != _is_integer(right):
        raise WrongDtype(
            f"column '{column}' is {left} here but {right} in {right_path}",
            path=left_path,
            hint="use the same id type in every file (ids are never re-typed silently)",
        )
