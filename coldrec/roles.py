"""How a content column is read: its role, decided from its dtype, cardinality and shape.

One place decides, for `coldrec train` (features.py fits what it decides) and for
`coldrec inspect` (which shows it before any training):
- a role set in `[features.roles]` wins;
- a date or datetime is numeric: its fractional year;
- a string column whose values are nearly unique per row (>= 90% distinct, 20+ rows) is not
  a category: with 2+ tokens per value it is free text (a hashed token bag), otherwise an
  identifier, ignored. Each such decision comes with a warning naming the override;
- any other string column is categorical: its values seen `vocab_min_count`+ times get a row,
  the rest share the rare slot (a warning when that is 20%+ of the rows);
- lists of strings are multi-hot, numerics numeric (plus quantile buckets when
  `features.numeric_buckets` > 0), lists / arrays of floats vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from coldrec.config import FeaturesConfig
from coldrec.errors import WrongDtype
from coldrec.schema import Role, content_role, is_date

NEARLY_UNIQUE = 0.9  # distinct / non-null values at or above which a string column is per-row
MIN_ROWS = 20  # fewer non-null rows: too few to call a column per-row
TEXT_TOKENS = 2.0  # mean tokens per value at or above which a per-row string is free text
RARE_WARNING = 0.2  # share of rows in the rare slot at or above which a categorical warns
TOKEN_PATTERN = r"[\p{L}\p{N}]+"


@dataclass
class RoleDecision:
    """What one content column becomes, and why."""

    table: str  # "users" | "items"
    column: str
    dtype: str
    role: str  # categorical | multi_hot | numeric | vector | text | ignore
    reason: str
    rows: int
    distinct: int | None  # None: a vector
    null_share: float
    coverage: float | None = None  # categorical / multi-hot: share of non-null values with a vocabulary row
    warning: str | None = None  # set where coldrec decided beyond the dtype or much is rare

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_roles(table: pl.DataFrame, id_column: str, config: FeaturesConfig, path: str | Path) -> list[RoleDecision]:
    """A decision for every content column of `table` (unsupported dtypes raise WrongDtype)."""
    table_name = "users" if id_column == "user_id" else "items"
    return [decide(table[name], table_name, config, path) for name in table.columns if name != id_column]


def decide(column: pl.Series, table: str, config: FeaturesConfig, path: str | Path) -> RoleDecision:
    non_null = column.drop_nulls()
    distinct = _distinct(non_null)
    facts = dict(table=table, column=column.name, dtype=str(column.dtype), rows=len(column), distinct=distinct,
                 null_share=1.0 - len(non_null) / len(column) if len(column) else 0.0)
    override = qualified(config.roles, table, column.name)
    if override:
        if override != "ignore":
            check_role_dtype(override, column.dtype, table, column.name, path)
        return RoleDecision(role=override, reason="set in [features.roles]", **facts)
    if is_date(column.dtype):
        return RoleDecision(role="numeric", reason="a date: its fractional year", **facts)
    role = content_role(column.dtype)
    if role is None:
        raise WrongDtype(f"{table} table: unsupported type {column.dtype}", path=path, column=column.name,
                         hint=f"use string, list[string], numeric, date or fixed-size list[float], or set [features.roles] {column.name} = \"ignore\"")
    if role is Role.CATEGORICAL:
        return _string_role(non_null, config, facts)
    if role is Role.MULTI_HOT:
        values = non_null.explode().drop_nulls().cast(pl.String)
        return RoleDecision(role="multi_hot", reason=f"a list of strings: {distinct:,} distinct values",
                            coverage=_coverage(values, config.vocab_min_count), **facts)
    if role is Role.NUMERIC:
        buckets = f" and its quantile bucket ({config.numeric_buckets})" if config.numeric_buckets else ""
        return RoleDecision(role="numeric", reason=f"a number: its standardised value{buckets}", **facts)
    return RoleDecision(role="vector", reason="a list of floats: a vector", **facts)


def _string_role(values: pl.Series, config: FeaturesConfig, facts: dict[str, Any]) -> RoleDecision:
    name, distinct = facts["column"], facts["distinct"]
    override = f"set [features.roles] {name} = \"categorical\" (or \"text\", \"ignore\") to override"
    if len(values) >= MIN_ROWS and distinct >= NEARLY_UNIQUE * len(values):
        tokens = float(tokens_of(values).list.len().mean() or 0.0)
        unique = f"{distinct:,} distinct values in {len(values):,} rows, {tokens:.1f} tokens each"
        if tokens >= TEXT_TOKENS:
            return RoleDecision(role="text", reason=f"{unique}: free text, read as a hashed token bag",
                                warning=f"column '{name}' is nearly unique per row and has several words per value ({unique}): read as text; {override}", **facts)
        return RoleDecision(role="ignore", reason=f"{unique}: an identifier, ignored",
                            warning=f"column '{name}' is nearly unique per row ({unique}): an identifier, ignored; {override}", **facts)
    coverage = _coverage(values.cast(pl.String), config.vocab_min_count)
    reason = f"a string: {distinct:,} distinct values"
    decision = RoleDecision(role="categorical", reason=reason, coverage=coverage, **facts)
    if coverage is not None and 1.0 - coverage >= RARE_WARNING:
        rare = round((1.0 - coverage) * len(values))
        decision.reason = f"{reason}, {rare:,} rows ({1.0 - coverage:.0%}) in the rare slot (values seen < {config.vocab_min_count} times)"
        decision.warning = f"column '{name}': {decision.reason}; lower features.vocab_min_count or coarsen the column"
    return decision


def check_role_dtype(role: str, dtype: pl.DataType, table: str, column: str, path: str | Path) -> None:
    """Raise WrongDtype when a column of `dtype` cannot be read with `role`."""
    ok = {
        "categorical": dtype == pl.String or dtype.is_integer() or dtype == pl.Boolean or isinstance(dtype, (pl.Categorical, pl.Enum)),
        "text": dtype == pl.String or isinstance(dtype, pl.Categorical),
        "multi_hot": isinstance(dtype, pl.List) and content_role(dtype) is Role.MULTI_HOT,
        "numeric": content_role(dtype) is Role.NUMERIC,
        "numeric_bucket": content_role(dtype) is Role.NUMERIC,
        "vector": content_role(dtype) is Role.VECTOR,
    }[role]
    if not ok:
        raise WrongDtype(f"{table} table: role '{role}' does not fit type {dtype}", path=path, column=column, hint="change the role in [features.roles] or cast the column")


def tokens_of(column: pl.Series) -> pl.Series:
    """Lower-cased word / number tokens of each value (what a text column is hashed from)."""
    return column.cast(pl.String).str.to_lowercase().str.extract_all(TOKEN_PATTERN)


def _distinct(values: pl.Series) -> int | None:
    """Distinct values (a list of strings: distinct elements; a vector: not counted, None)."""
    if isinstance(values.dtype, pl.List) and content_role(values.dtype) is Role.MULTI_HOT:
        return values.explode().drop_nulls().n_unique()
    return None if values.dtype.is_nested() else values.n_unique()


def _coverage(values: pl.Series, min_count: int) -> float | None:
    """Share of the values whose value occurs `min_count`+ times (has a vocabulary row)."""
    if not len(values):
        return None
    counts = values.value_counts(name="n")
    return float(counts.filter(pl.col("n") >= min_count)["n"].sum()) / len(values)


def qualified(config_map: dict[str, str] | list[str], table: str, column: str) -> Any:
    """A column looked up in a config map or list by 'table.column' first, then by bare name."""
    if isinstance(config_map, dict):
        return config_map.get(f"{table}.{column}", config_map.get(column))
    return f"{table}.{column}" in config_map or column in config_map
