"""Samples -> point-in-time preference statistics per (user, day) and (item, day).

The "preference" half of a DropoutNet input besides the id embedding: how often an entity
was shown and clicked, and what it likes (a user's mix of item categories, an item's mix
of audiences). Every row is point-in-time: the row for (entity, day d) is computed only
from samples with ts before 00:00 UTC of day d, and an entity's first active day has no
row — it is cold then, exactly as it is at serving time.

History is train.parquet + valid.parquet of a `coldrec prepare` output. The test files are
never read: test_cold_* so held-out entities stay cold, and test_warm so the serving
(`*_latest`) statistics used to evaluate on test_warm hold none of its clicks.

The plan reads top to bottom: the samples are aggregated once per (entity, day) (streaming
group-bys sunk to scratch Parquet), then running sums over the (entity, day) rows sorted by
entity and day give the stats: a running sum minus its value at the entity's first row for
all-history stats, minus its value found by binary search at day d - w for the windows
[d - w, d) (see `entity_stats`; no per-entity groups, no per-row Python). The entities are
processed in hash partitions to bound memory. One extra row per entity at the serving day
(the day after the last sample) gives the `*_latest` tables from the very same expressions,
so training and serving features cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from coldrec import log
from coldrec.errors import BadValues, EmptyInput, InputNotFound, MissingColumn, UsageError, WrongDtype
from coldrec.features import warn_missing_content
from coldrec.io import (
    Manifest,
    atomic_dir,
    fingerprint,
    output_lock,
    scan_parquet,
)
from coldrec.options import StatsOptions
from coldrec.result import StageResult
from coldrec.schema import (
    SAMPLES,
    Role,
    check_content_table,
    check_id_types_match,
    check_rows,
    check_schema,
    content_role,
    ts_to_datetime,
)

HISTORY_FILES = ("train.parquet", "valid.parquet")
REQUIRED_HISTORY_FILE = "train.parquet"
DEFAULT_WINDOWS = tuple(int(days) for days in StatsOptions.windows.split(","))
MAX_WINDOW_DAYS = 36_500
# Beta prior worth this many exposures at the global CTR: an entity with 10 exposures and
# no click gets half-way between 0 and the global CTR.
DEFAULT_PRIOR_STRENGTH = StatsOptions.prior_strength
# Default category columns keep the most frequent values of each String column (counted
# over the content table's rows); every other value, null, or id missing from the content
# table counts as OTHER_VALUE. This bounds the width: at most (N + 1) columns per column.
DEFAULT_MAX_CATEGORY_VALUES = StatsOptions.max_category_values
# Daily (entity, day) rows computed at once: bounds memory (about 0.5 GB per million rows
# with ~40 stat columns) whatever the history size.
DEFAULT_ROWS_PER_PARTITION = 1_000_000
OTHER_VALUE = "__other__"

USER_STATS_FILE = "user_stats.parquet"
ITEM_STATS_FILE = "item_stats.parquet"
USER_LATEST_FILE = "user_stats_latest.parquet"
ITEM_LATEST_FILE = "item_stats_latest.parquet"

_SERVING = "__serving"
_PREV_DAY = "__prev_day"
_FIRST_DAY = "__first_day"
_PRIOR = "__ctr_prior"
_NEW_OTHERS = "__new_others"
# Sort key of (entity, day) rows: entity_rank * stride + days since 1970 + offset; the
# offset keeps day - window positive for any date after year 1970 - 2870.
_KEY_DAY_OFFSET = 1 << 20
_KEY_ENTITY_STRIDE = 1 << 21


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Side:
    """One entity type: its id column, the other entity's id column, and stat names."""

    id_column: str
    other_id: str
    distinct_column: str  # distinct other entities seen before d
    first_column: str  # days since the first active day
    category_source: str  # which content table the category columns come from


USER_SIDE = Side("user_id", "item_id", "distinct_items", "days_since_first", "items")
ITEM_SIDE = Side("item_id", "user_id", "distinct_users", "age_days", "users")


@dataclass(frozen=True)
class CategorySpec:
    """A String column of a content table and the values that get their own share column."""

    column: str
    values: tuple[str, ...]

    def buckets(self) -> tuple[str, ...]:
        return (*self.values, OTHER_VALUE)


def share_column(column: str, value: str) -> str:
    return f"clickshare_{column}={value}"


def parse_windows(windows: str | Sequence[int]) -> tuple[int, ...]:
    """'1,7,30' or (1, 7, 30) -> (1, 7, 30), sorted; UsageError for anything else."""
    hint = "pass whole numbers of days, e.g. --windows 1,7,30"
    if isinstance(windows, str):
        parts = [part.strip() for part in windows.split(",")]
        if not windows.strip() or any(not part for part in parts):
            raise UsageError(f"--windows '{windows}' has an empty entry", hint=hint)
        values: list[int] = []
        for part in parts:
            try:
                values.append(int(part))
            except ValueError:
                raise UsageError(f"--windows: '{part}' is not a whole number of days", hint=hint) from None
    else:
        values = list(windows)
        if not values:
            raise UsageError("--windows is empty", hint=hint)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise UsageError(f"--windows {values!r} holds a value that is not a whole number", hint=hint)
    for value in values:
        if not 1 <= value <= MAX_WINDOW_DAYS:
            raise UsageError(f"--windows: {value} is out of range 1..{MAX_WINDOW_DAYS}", hint=hint)
    if len(set(values)) != len(values):
        raise UsageError(f"--windows {values} repeats a window", hint="list each window once")
    return tuple(sorted(values))


def parse_column_list(columns: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """'a,b' -> ('a', 'b'); '' -> () (no category columns); None -> None (the default)."""
    if columns is None:
        return None
    if isinstance(columns, str):
        columns = [part.strip() for part in columns.split(",")]
    return tuple(column for column in columns if column)


# --------------------------------------------------------------------------- column definitions


def stat_columns(side: Side, windows: Sequence[int], specs: Sequence[CategorySpec]) -> dict[str, str]:
    """The stat columns of one side, in output order, with their definitions."""
    noun = "user" if side is USER_SIDE else "item"
    before = "samples with ts before 00:00 UTC of `day`"
    ctr_def = (
        "smoothed CTR (clicks + a*p) / (exposures + a) over {span}; p = global CTR of all "
        "samples before `day`, a = prior_strength (manifest extra)"
    )
    columns: dict[str, str] = {}
    for window in windows:
        span = f"the {window} day(s) before `day` ([day-{window}, day))"
        columns[f"exposures_{window}d"] = f"samples (exposures) of the {noun} in {span}; raw count"
        columns[f"clicks_{window}d"] = f"positive samples (label = 1) of the {noun} in {span}; raw count"
        columns[f"ctr_{window}d"] = ctr_def.format(span=span)
    columns["exposures_all"] = f"samples of the {noun}, all {before}; raw count"
    columns["clicks_all"] = f"positive samples of the {noun}, all {before}; raw count"
    columns["ctr_all"] = ctr_def.format(span=f"all {before}")
    other = "items" if side is USER_SIDE else "users"
    columns[side.distinct_column] = f"distinct {other} in all {before}"
    columns[side.first_column] = f"days from the {noun}'s first active day to `day` (>= 1)"
    columns["days_since_last"] = f"days from the {noun}'s last active day before `day` to `day` (>= 1)"
    for spec in specs:
        for value in spec.buckets():
            which = (
                f"{spec.column} = '{value}'"
                if value != OTHER_VALUE
                else f"{spec.column} outside the listed values (also null or unknown id)"
            )
            columns[share_column(spec.column, value)] = (
                f"share of the {noun}'s clicks (all {before}) on {other} with {which}; 0 without clicks"
            )
    return columns


# --------------------------------------------------------------------------- pure lazy steps


def normalise_samples(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Samples -> (user_id, item_id, day: Date UTC, label: UInt8) — all the stats need."""
    schema = frame.collect_schema()
    return frame.select(
        pl.col("user_id"),
        pl.col("item_id"),
        ts_to_datetime("ts", schema["ts"]).dt.date().alias("day"),
        pl.col("label").cast(pl.UInt8),
    )


def serving_day(history: pl.LazyFrame) -> pl.LazyFrame:
    """One row: the day after the last sample (the `as_of` of the latest tables)."""
    return history.select(pl.col("day").max().dt.offset_by("1d").alias("day"))


def _excluding_today(column: str) -> pl.Expr:
    # Running sum over earlier rows only (the frame is sorted by day).
    return pl.col(column).cum_sum() - pl.col(column)


def ctr_prior_by_day(history: pl.LazyFrame) -> pl.LazyFrame:
    """(day, __ctr_prior, __before_exposures): global CTR and sample count before each day
    (the serving day included)."""
    daily = history.group_by("day").agg(
        pl.len().cast(pl.Int64).alias("exposures"), pl.col("label").sum().cast(pl.Int64).alias("clicks")
    )
    serving = serving_day(history).with_columns(
        pl.lit(0, pl.Int64).alias("exposures"), pl.lit(0, pl.Int64).alias("clicks")
    )
    return (
        pl.concat([daily, serving])
        .sort("day")
        .with_columns(_excluding_today("exposures").alias("before_exposures"), _excluding_today("clicks").alias("before_clicks"))
        .select(
            "day",
            pl.when(pl.col("before_exposures") > 0)
            .then(pl.col("before_clicks") / pl.col("before_exposures"))
            .otherwise(0.0)
            .alias(_PRIOR),
            pl.col("before_exposures").alias("__before_exposures"),
        )
    )


def _category_alias(index: int) -> str:
    return f"__category_{index}"


def category_frame(content: pl.LazyFrame, id_column: str, specs: Sequence[CategorySpec]) -> pl.LazyFrame:
    """(id, __category_0, ...) as String; aliases avoid clashes with sample columns."""
    return content.select(
        pl.col(id_column),
        *[pl.col(spec.column).cast(pl.String).alias(_category_alias(i)) for i, spec in enumerate(specs)],
    )


def first_meetings(history: pl.LazyFrame) -> pl.LazyFrame:
    """(user_id, item_id, day): the day each pair first occurs (feeds the distinct counts)."""
    return history.group_by("user_id", "item_id").agg(pl.col("day").min())


def daily_counts(
    history: pl.LazyFrame,
    side: Side,
    specs: Sequence[CategorySpec] = (),
    categories: pl.LazyFrame | None = None,
    meetings: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """One row per (entity, active day): exposures, clicks, clicks per category bucket,
    and the number of other entities met for the first time that day.

    `categories`: (other id, __category_0, ...) from `category_frame`; `meetings`: the
    output of `first_meetings` when the caller shares it between both sides.
    """
    entity = side.id_column
    daily = history.group_by(entity, "day").agg(
        pl.len().cast(pl.UInt32).alias("exposures"),
        pl.col("label").sum().cast(pl.UInt32).alias("clicks"),
    )
    if specs:
        assert categories is not None
        # Shares only count clicks, so only the positive samples meet the category join.
        aggregations = []
        for index, spec in enumerate(specs):
            category = pl.col(_category_alias(index))
            for value in spec.values:
                aggregations.append((category == value).fill_null(False).sum().cast(pl.UInt32).alias(share_column(spec.column, value)))
            aggregations.append(
                (~category.is_in(spec.values).fill_null(False)).sum().cast(pl.UInt32).alias(share_column(spec.column, OTHER_VALUE))
            )
        category_clicks = (
            history.filter(pl.col("label") == 1)
            .select(entity, side.other_id, "day")
            .join(categories, on=side.other_id, how="left")
            .group_by(entity, "day")
            .agg(aggregations)
        )
        share_names = [share_column(spec.column, value) for spec in specs for value in spec.buckets()]
        daily = daily.join(category_clicks, on=[entity, "day"], how="left").with_columns(
            pl.col(share_names).fill_null(0)
        )
    if meetings is None:
        meetings = first_meetings(history)
    # Each (entity, other) pair counts once, on the day it first occurs.
    new_others = meetings.group_by(entity, "day").agg(pl.len().cast(pl.UInt32).alias(_NEW_OTHERS))
    return daily.join(new_others, on=[entity, "day"], how="left").with_columns(pl.col(_NEW_OTHERS).fill_null(0))


def entity_stats(
    daily: pl.LazyFrame,
    side: Side,
    windows: Sequence[int],
    specs: Sequence[CategorySpec],
    prior: pl.LazyFrame,
    prior_strength: float,
    count_dtype: pl.DataType = pl.UInt32,
    as_of: dt.date | None = None,
) -> pl.LazyFrame:
    """Daily counts -> (id, day, __serving, stat columns...) point-in-time rows.

    Rows: every active day of an entity except its first, plus one serving row per entity
    at the serving day `as_of` (default: the day after the last day in `daily`; pass it
    when `daily` holds only some entities). Stat columns are Float32 without nulls.

    No per-entity groups: with rows sorted by (entity, day), a running sum G over ALL rows
    (G = sum of the rows above) gives an entity's history before day d as G(row) - G(its
    first row), and its window [d - w, d) as G(row) - G(first row with key >= key - w),
    found by a binary search on key = entity_rank * 2^21 + day (globally sorted). When no
    row of the entity lies in the window, the search lands on the entity's first row or
    later, never on another entity's rows. `count_dtype` must hold the total sample count.
    """
    entity = side.id_column
    share_counts = [share_column(spec.column, value) for spec in specs for value in spec.buckets()]
    counts = ["exposures", "clicks", _NEW_OTHERS, *share_counts]
    rows = _rows_with_serving(daily, entity, counts, count_dtype, as_of)
    frame = _running_sums(rows, prior, entity, counts, windows)
    stats = _stat_expressions(side, windows, share_counts, prior_strength)
    expected = list(stat_columns(side, windows, specs))
    assert list(stats) == expected, (list(stats), expected)
    return frame.select(
        entity,
        "day",
        _SERVING,
        *[expr.cast(pl.Float32).fill_null(0.0).alias(name) for name, expr in stats.items()],
    )


def _rows_with_serving(
    daily: pl.LazyFrame, entity: str, counts: Sequence[str], count_dtype: pl.DataType, as_of: dt.date | None
) -> pl.LazyFrame:
    """The observed (entity, day) rows plus one all-zero serving row per entity at `as_of`
    (default: the day after the last day in `daily`); `__serving` tells them apart."""
    serving_rows = (
        daily.select(entity)
        .unique()
        .join(
            daily.select(pl.col("day").max().dt.offset_by("1d"))
            if as_of is None
            else pl.LazyFrame({"day": [as_of]}, schema={"day": pl.Date}),
            how="cross",
        )
        .with_columns([pl.lit(0, count_dtype).alias(column) for column in counts])
        .with_columns(pl.lit(True).alias(_SERVING))
    )
    observed = daily.select(entity, "day", pl.col(counts).cast(count_dtype)).with_columns(pl.lit(False).alias(_SERVING))
    return pl.concat([observed, serving_rows])


def _above(column: str) -> pl.Expr:
    """The running sum of `column` over all rows above (see `_running_sums`)."""
    return pl.col(f"__above_{column}")


def _running_sums(
    rows: pl.LazyFrame, prior: pl.LazyFrame, entity: str, counts: Sequence[str], windows: Sequence[int]
) -> pl.LazyFrame:
    """Rows sorted by (entity, day) with the CTR prior, __first_day, __prev_day, and per
    count `__before_{count}` (all history before the day) and `__window{w}_{count}` for
    exposures and clicks; each entity's first active day is dropped (it is cold)."""
    is_first = pl.col("__is_first")
    key = pl.col("__key")
    return (
        rows.join(prior, on="day", how="left")
        .sort(entity, "day")
        .with_columns((pl.col(entity) != pl.col(entity).shift(1)).fill_null(True).alias("__is_first"))
        .with_columns(
            (
                is_first.cum_sum().cast(pl.Int64) * _KEY_ENTITY_STRIDE
                + pl.col("day").cast(pl.Int32).cast(pl.Int64)
                + _KEY_DAY_OFFSET
            ).alias("__key"),
            pl.when(is_first).then(pl.col("day")).forward_fill().alias(_FIRST_DAY),
            pl.when(~is_first).then(pl.col("day").shift(1)).alias(_PREV_DAY),
            *[_excluding_today(column).alias(f"__above_{column}") for column in counts],
        )
        .with_columns(
            *[
                (_above(column) - pl.when(is_first).then(_above(column)).forward_fill()).alias(f"__before_{column}")
                for column in counts
            ],
            *[
                (_above(column) - _above(column).gather(key.search_sorted(key - window - 1, side="right"))).alias(
                    f"__window{window}_{column}"
                )
                for window in windows
                for column in ("exposures", "clicks")
            ],
        )
        .filter(pl.col(_PREV_DAY).is_not_null())  # the first active day is cold: no row
    )


def _stat_expressions(
    side: Side, windows: Sequence[int], share_counts: Sequence[str], prior_strength: float
) -> dict[str, pl.Expr]:
    """Stat name -> expression over the `_running_sums` columns, in `stat_columns` order."""
    strength = float(prior_strength)
    prior_ctr = pl.col(_PRIOR).fill_null(0.0)

    def smoothed(clicks: str, exposures: str) -> pl.Expr:
        return (pl.col(clicks) + strength * prior_ctr) / (pl.col(exposures) + strength)

    stats: dict[str, pl.Expr] = {}
    for window in windows:
        stats[f"exposures_{window}d"] = pl.col(f"__window{window}_exposures")
        stats[f"clicks_{window}d"] = pl.col(f"__window{window}_clicks")
        stats[f"ctr_{window}d"] = smoothed(f"__window{window}_clicks", f"__window{window}_exposures")
    stats["exposures_all"] = pl.col("__before_exposures")
    stats["clicks_all"] = pl.col("__before_clicks")
    stats["ctr_all"] = smoothed("__before_clicks", "__before_exposures")
    stats[side.distinct_column] = pl.col(f"__before_{_NEW_OTHERS}")
    stats[side.first_column] = (pl.col("day") - pl.col(_FIRST_DAY)).dt.total_days()
    stats["days_since_last"] = (pl.col("day") - pl.col(_PREV_DAY)).dt.total_days()
    before_clicks = pl.col("__before_clicks")
    for column in share_counts:
        stats[column] = pl.when(before_clicks > 0).then(pl.col(f"__before_{column}") / before_clicks).otherwise(0.0)
    return stats


@dataclass
class StatsTables:
    """The four output tables, in memory, and the serving-day facts."""

    user_stats: pl.DataFrame  # user_id, day, stats...
    item_stats: pl.DataFrame  # item_id, day, stats...
    user_latest: pl.DataFrame  # user_id, as_of, stats...
    item_latest: pl.DataFrame  # item_id, as_of, stats...
    first_day: dt.date
    as_of: dt.date
    ctr_prior: float  # global CTR of the whole history (the prior of the latest tables)


def _split_serving(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    training = frame.filter(~pl.col(_SERVING)).drop(_SERVING)
    latest = frame.filter(pl.col(_SERVING)).drop(_SERVING).rename({"day": "as_of"})
    return training, latest


@dataclass(frozen=True)
class PriorFacts:
    """Global facts of a history: the per-day CTR prior and the serving day."""

    prior: pl.DataFrame  # (day, __ctr_prior), serving day included
    first_day: dt.date
    as_of: dt.date  # the day after the last sample
    ctr_prior: float  # global CTR of the whole history (the prior of the latest tables)
    count_dtype: pl.DataType  # holds any running count of the history


def prior_facts(history: pl.LazyFrame) -> PriorFacts:
    table = ctr_prior_by_day(history).collect(engine="streaming")
    if table.height < 2:
        raise EmptyInput("samples have no rows", hint="check the --samples directory")
    total_samples = int(table["__before_exposures"][-1])
    return PriorFacts(
        prior=table.select("day", _PRIOR),
        first_day=table["day"].min(),  # type: ignore[arg-type]
        as_of=table["day"].max(),  # type: ignore[arg-type]
        ctr_prior=float(table[_PRIOR][-1]),
        # Running sums over all rows reach the total sample count: UInt32 while it fits.
        count_dtype=pl.UInt32 if total_samples < 2**32 else pl.UInt64,
    )


def iter_side_stats(
    daily: pl.LazyFrame,
    side: Side,
    windows: Sequence[int],
    specs: Sequence[CategorySpec],
    facts: PriorFacts,
    prior_strength: float,
    partitions: int = 1,
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """(stats, latest) DataFrames for one side, one pair per hash partition of the ids.

    Partitioning bounds memory: every entity's rows land in one partition, and each
    partition is computed and handed over before the next is read.
    """
    entity = side.id_column
    for part in range(partitions):
        subset = daily if partitions == 1 else daily.filter(pl.col(entity).hash(seed=0) % partitions == part)
        frame = entity_stats(
            subset, side, windows, specs, facts.prior.lazy(), prior_strength, facts.count_dtype, facts.as_of
        ).collect(engine="streaming")
        yield _split_serving(frame)


def _side_daily(
    history: pl.LazyFrame,
    side: Side,
    specs: Sequence[CategorySpec],
    content: pl.LazyFrame | None,
    meetings: pl.LazyFrame,
) -> pl.LazyFrame:
    if specs and content is None:
        raise ValueError(f"category columns for {side.id_column} need the {side.category_source} table")
    categories = category_frame(content, side.other_id, specs) if specs and content is not None else None
    return daily_counts(history, side, specs, categories, meetings)


def compute_stats(
    history: pl.LazyFrame,
    users: pl.LazyFrame | None,
    items: pl.LazyFrame | None,
    *,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    user_specs: Sequence[CategorySpec] = (),
    item_specs: Sequence[CategorySpec] = (),
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
    partitions: int = 1,
) -> StatsTables:
    """Normalised history (see `normalise_samples`) -> the four stats tables, in memory.

    `user_specs` name columns of `items` (a user's category mix); `item_specs` name
    columns of `users` (an item's audience mix). For large histories `write_stats` streams
    the same computation to files instead.
    """
    facts = prior_facts(history)
    meetings = first_meetings(history).collect(engine="streaming").lazy()
    tables = []
    for side, specs, content in ((USER_SIDE, user_specs, items), (ITEM_SIDE, item_specs, users)):
        daily = _side_daily(history, side, specs, content, meetings).collect(engine="streaming").lazy()
        parts = list(iter_side_stats(daily, side, windows, specs, facts, prior_strength, partitions))
        tables.append(
            (
                pl.concat([stats for stats, _ in parts]).sort(side.id_column, "day"),
                pl.concat([latest for _, latest in parts]).sort(side.id_column),
            )
        )
    (user_stats, user_latest), (item_stats, item_latest) = tables
    return StatsTables(
        user_stats, item_stats, user_latest, item_latest, facts.first_day, facts.as_of, facts.ctr_prior
    )


@dataclass
class WrittenStats:
    """What `write_stats` wrote: row counts per file and the serving-day facts."""

    row_counts: dict[str, int]
    partitions: dict[str, int]
    first_day: dt.date
    as_of: dt.date
    ctr_prior: float


def write_stats(
    history: pl.LazyFrame,
    users: pl.LazyFrame | None,
    items: pl.LazyFrame | None,
    directory: Path,
    *,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    user_specs: Sequence[CategorySpec] = (),
    item_specs: Sequence[CategorySpec] = (),
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
    rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION,
) -> WrittenStats:
    """Stream the four stats tables into `directory` with bounded memory.

    The pair first-meetings and each side's daily counts are sunk to scratch Parquet files
    (streaming group-bys); each side is then computed in hash partitions of about
    `rows_per_partition` daily rows, appended to the output files partition by partition.
    Rows are sorted by (id, day) within each partition.
    """
    with log.progress("stats", total=5) as bar:  # first meetings; per side: daily counts, windows
        facts = prior_facts(history)
        log.debug("stats: prior computed")
        scratch = directory / "_scratch"
        scratch.mkdir()
        meetings_path = scratch / "first_meetings.parquet"
        first_meetings(history).sink_parquet(meetings_path, engine="streaming")
        bar.advance(1, status="first meetings")
        row_counts: dict[str, int] = {}
        partitions: dict[str, int] = {}
        for side, specs, content, stats_name, latest_name in (
            (USER_SIDE, user_specs, items, USER_STATS_FILE, USER_LATEST_FILE),
            (ITEM_SIDE, item_specs, users, ITEM_STATS_FILE, ITEM_LATEST_FILE),
        ):
            log.debug(f"stats: {side.id_column} daily counts")
            daily_path = scratch / f"daily_{side.id_column}.parquet"
            _side_daily(history, side, specs, content, pl.scan_parquet(meetings_path)).sink_parquet(
                daily_path, engine="streaming"
            )
            bar.advance(1, status=f"{side.id_column} daily counts")
            daily_rows = pl.scan_parquet(daily_path).select(pl.len()).collect().item()
            count = max(1, math.ceil(daily_rows / rows_per_partition))
            partitions[side.id_column] = count
            log.debug(f"stats: {daily_rows:,} {side.id_column} daily rows in {count} partition(s)")
            parts = iter_side_stats(pl.scan_parquet(daily_path), side, windows, specs, facts, prior_strength, count)
            _append_partitions(parts, directory, (stats_name, latest_name), row_counts,
                               lambda: bar.advance(1 / count, status=f"{side.id_column} windows"))
    shutil.rmtree(scratch)
    return WrittenStats(row_counts, partitions, facts.first_day, facts.as_of, facts.ctr_prior)


def _append_partitions(parts: Iterable[tuple[pl.DataFrame, pl.DataFrame]], directory: Path, names: tuple[str, str],
                       row_counts: dict[str, int], done: Callable[[], None]) -> None:
    """Append each partition's (stats, latest) frames to the two files `names` (one Parquet
    writer each), counting their rows; `done()` after every partition."""
    import pyarrow.parquet as pq

    writers: dict[str, Any] = {}
    row_counts.update(dict.fromkeys(names, 0))
    try:
        for frames in parts:
            for name, frame in zip(names, frames):
                table = frame.to_arrow()
                if name not in writers:
                    writers[name] = pq.ParquetWriter(directory / name, table.schema, compression="zstd")
                writers[name].write_table(table)
                row_counts[name] += frame.height
            done()
    finally:
        for writer in writers.values():
            writer.close()


# --------------------------------------------------------------------------- inputs


@dataclass
class StatsInputs:
    """Checked inputs: the history scan and the category columns of both content tables."""

    history: pl.LazyFrame
    history_files: list[Path]
    samples_read: int
    users: pl.LazyFrame
    items: pl.LazyFrame
    user_specs: list[CategorySpec]  # from the items table: a user's category mix
    item_specs: list[CategorySpec]  # from the users table: an item's audience mix


def _history_files(samples_dir: Path) -> list[Path]:
    if not samples_dir.exists():
        raise InputNotFound("no such directory", path=samples_dir, hint="point --samples at the output of coldrec prepare")
    if not samples_dir.is_dir():
        raise InputNotFound(
            "--samples must be a directory", path=samples_dir, hint="point --samples at the output of coldrec prepare"
        )
    if not (samples_dir / REQUIRED_HISTORY_FILE).exists():
        raise InputNotFound(
            f"samples directory has no {REQUIRED_HISTORY_FILE}",
            path=samples_dir,
            hint="point --samples at the output of coldrec prepare",
        )
    return [samples_dir / name for name in HISTORY_FILES if (samples_dir / name).exists()]


def _check_samples(path: Path) -> tuple[pl.LazyFrame, int]:
    frame = scan_parquet(path)
    schema = frame.collect_schema()
    check_schema(schema, SAMPLES, path)
    try:
        rows = check_rows(frame, SAMPLES, path)
    except EmptyInput:
        if path.name == REQUIRED_HISTORY_FILE:
            raise
        return frame, 0
    bad_labels = frame.select((~pl.col("label").cast(pl.Int64).is_in([0, 1])).sum()).collect().item()
    if bad_labels:
        raise BadValues(
            f"samples table: column 'label' has {bad_labels} value(s) other than 0/1",
            path=path,
            column=None,
            hint="labels must be 0 or 1; rerun coldrec prepare",
        )
    return frame, rows


def _resolve_specs(
    content: pl.LazyFrame,
    id_column: str,
    requested: Sequence[str] | None,
    max_values: int,
    path: Path,
    option: str,
) -> list[CategorySpec]:
    schema = content.collect_schema()
    if requested is None:
        columns = [
            name for name, dtype in schema.items() if name != id_column and content_role(dtype) is Role.CATEGORICAL
        ]
    else:
        columns = list(dict.fromkeys(requested))
        missing = [column for column in columns if column not in schema or column == id_column]
        if missing:
            strings = [n for n, d in schema.items() if n != id_column and content_role(d) is Role.CATEGORICAL]
            raise MissingColumn(
                f"{option}: no category column {', '.join(repr(m) for m in missing)}",
                path=path,
                hint=f"String columns available: {', '.join(strings) or 'none'}; fix {option}",
            )
        mistyped = [f"'{c}' is {schema[c]}" for c in columns if content_role(schema[c]) is not Role.CATEGORICAL]
        if mistyped:
            raise WrongDtype(
                f"{option}: category columns must be String, but {', '.join(mistyped)}",
                path=path,
                hint=f"name String columns only in {option}",
            )
    if not columns:
        return []
    queries = [
        content.select(pl.col(column).cast(pl.String).alias("value"))
        .filter(pl.col("value").is_not_null() & (pl.col("value") != OTHER_VALUE))
        .group_by("value")
        .agg(pl.len().alias("support"))
        .sort(["support", "value"], descending=[True, False])
        .head(max_values)
        for column in columns
    ]
    tops = pl.collect_all(queries)
    return [CategorySpec(column, tuple(top["value"].to_list())) for column, top in zip(columns, tops)]


def load_inputs(
    samples_dir: Path,
    users_path: Path,
    items_path: Path,
    user_category_columns: Sequence[str] | None,
    item_category_columns: Sequence[str] | None,
    max_category_values: int,
) -> StatsInputs:
    """Check every input before any work: schemas, nulls, labels, id types, category columns."""
    files = _history_files(samples_dir)
    frames: list[pl.LazyFrame] = []
    samples_read = 0
    first_schema: pl.Schema | None = None
    for path in files:
        frame, rows = _check_samples(path)
        schema = frame.collect_schema()
        if first_schema is None:
            first_schema = schema
        else:
            for column in ("user_id", "item_id"):
                check_id_types_match(schema[column], first_schema[column], column, path, files[0])
        samples_read += rows
        if rows:
            frames.append(normalise_samples(frame))
    assert first_schema is not None
    history = pl.concat(frames, how="vertical_relaxed")

    users = scan_parquet(users_path)
    items = scan_parquet(items_path)
    check_content_table(users, "user_id", users_path)
    check_content_table(items, "item_id", items_path)
    id_dtypes = history.collect_schema()
    for content, column, path in ((users, "user_id", users_path), (items, "item_id", items_path)):
        check_id_types_match(first_schema[column], content.collect_schema()[column], column, files[0], path)
    # Integer widths may differ between files (Int32 vs Int64): align content ids to samples.
    users = users.with_columns(pl.col("user_id").cast(id_dtypes["user_id"]))
    items = items.with_columns(pl.col("item_id").cast(id_dtypes["item_id"]))
    for content, column, path in ((users, "user_id", users_path), (items, "item_id", items_path)):
        warn_missing_content(history, content, column, samples_dir, path)

    # A user's mix is over ITEM category columns; an item's audience over USER columns.
    user_specs = _resolve_specs(
        items, "item_id", item_category_columns, max_category_values, items_path, "--item-category-columns"
    )
    item_specs = _resolve_specs(
        users, "user_id", user_category_columns, max_category_values, users_path, "--user-category-columns"
    )
    return StatsInputs(history, files, samples_read, users, items, user_specs, item_specs)


# --------------------------------------------------------------------------- run


@dataclass
class StatsResult(StageResult):
    RENAMED = {"out_dir": "out"}

    out_dir: Path
    samples_read: int
    user_rows: int
    item_rows: int
    users_latest: int
    items_latest: int
    user_stat_columns: int
    item_stat_columns: int
    as_of: dt.date
    ctr_prior: float
    wall_time_s: float

    def summary(self) -> str:
        return (
            f"stats: {self.samples_read:,} samples -> {self.user_rows:,} user-day rows "
            f"({self.user_stat_columns} stats), {self.item_rows:,} item-day rows ({self.item_stat_columns} stats); "
            f"latest as of {self.as_of.isoformat()} for {self.users_latest:,} users, {self.items_latest:,} items; "
            f"CTR prior {self.ctr_prior:.4f}; {self.wall_time_s:.1f}s -> {self.out_dir}"
        )


def _missing_from_content(latest_path: Path, content: pl.LazyFrame, id_column: str) -> int:
    """Ids of the history (one latest row each) that the content table lacks."""
    return (
        pl.scan_parquet(latest_path)
        .select(id_column)
        .join(content.select(id_column), on=id_column, how="anti")
        .select(pl.len())
        .collect(engine="streaming")
        .item()
    )


def run_stats(
    samples_dir: str | Path,
    users_path: str | Path,
    items_path: str | Path,
    out_dir: str | Path,
    windows: str | Sequence[int] = DEFAULT_WINDOWS,
    user_category_columns: str | Sequence[str] | None = None,
    item_category_columns: str | Sequence[str] | None = None,
    *,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
    max_category_values: int = DEFAULT_MAX_CATEGORY_VALUES,
    rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION,
) -> StatsResult:
    """Write user/item point-in-time stats (+ latest tables and manifest) into `out_dir`.

    `user_category_columns`: String columns of the users table whose value mix describes
    an item's audience (None: every String column; '' or (): none). `item_category_columns`:
    String columns of the items table for a user's category mix. Each keeps its
    `max_category_values` most frequent values; the rest count as '__other__'.
    """
    started = time.perf_counter()
    samples_dir, users_path, items_path, out_dir = map(Path, (samples_dir, users_path, items_path, out_dir))
    windows = parse_windows(windows)
    _check_run_options(samples_dir, out_dir, prior_strength, max_category_values, rows_per_partition)
    inputs = load_inputs(
        samples_dir,
        users_path,
        items_path,
        parse_column_list(user_category_columns),
        parse_column_list(item_category_columns),
        max_category_values,
    )

    user_columns = stat_columns(USER_SIDE, windows, inputs.user_specs)
    item_columns = stat_columns(ITEM_SIDE, windows, inputs.item_specs)
    with output_lock(out_dir, "coldrec stats"), atomic_dir(out_dir) as temp:
        written = write_stats(
            inputs.history,
            inputs.users,
            inputs.items,
            temp,
            windows=windows,
            user_specs=inputs.user_specs,
            item_specs=inputs.item_specs,
            prior_strength=prior_strength,
            rows_per_partition=rows_per_partition,
        )
        unknown = _ids_not_in_content(temp, inputs, written, users_path, items_path)
        wall = time.perf_counter() - started
        _stats_manifest(
            inputs,
            written,
            unknown,
            windows=windows,
            prior_strength=prior_strength,
            max_category_values=max_category_values,
            users_path=users_path,
            items_path=items_path,
            user_columns=user_columns,
            item_columns=item_columns,
            wall=wall,
        ).write(temp)
    return StatsResult(
        out_dir=out_dir,
        samples_read=inputs.samples_read,
        user_rows=written.row_counts[USER_STATS_FILE],
        item_rows=written.row_counts[ITEM_STATS_FILE],
        users_latest=written.row_counts[USER_LATEST_FILE],
        items_latest=written.row_counts[ITEM_LATEST_FILE],
        user_stat_columns=len(user_columns),
        item_stat_columns=len(item_columns),
        as_of=written.as_of,
        ctr_prior=written.ctr_prior,
        wall_time_s=time.perf_counter() - started,
    )


def _check_run_options(
    samples_dir: Path, out_dir: Path, prior_strength: float, max_category_values: int, rows_per_partition: int
) -> None:
    if not (math.isfinite(prior_strength) and prior_strength > 0):
        raise UsageError(f"prior strength {prior_strength} must be a positive number", hint="pass e.g. 10")
    if max_category_values < 1:
        raise UsageError(f"max category values {max_category_values} must be >= 1", hint="pass e.g. 20")
    if rows_per_partition < 1:
        raise UsageError(f"rows per partition {rows_per_partition} must be >= 1", hint="pass e.g. 1000000")
    if out_dir.resolve() == samples_dir.resolve():
        raise UsageError("--out is the --samples directory", path=out_dir, hint="write the stats to another directory")


def _ids_not_in_content(
    directory: Path, inputs: StatsInputs, written: WrittenStats, users_path: Path, items_path: Path
) -> dict[str, int]:
    """How many user / item ids of the samples each content table lacks (warned about)."""
    unknown = {
        "users_not_in_content": _missing_from_content(directory / USER_LATEST_FILE, inputs.users, "user_id"),
        "items_not_in_content": _missing_from_content(directory / ITEM_LATEST_FILE, inputs.items, "item_id"),
    }
    for noun, latest_file, path in (("user", USER_LATEST_FILE, users_path), ("item", ITEM_LATEST_FILE, items_path)):
        missing = unknown[f"{noun}s_not_in_content"]
        if missing:
            log.warning(
                f"{missing:,} of {written.row_counts[latest_file]:,} {noun} ids in the samples are not in "
                f"{path}; their category clicks count as '{OTHER_VALUE}'"
            )
    return unknown


def _stats_manifest(
    inputs: StatsInputs,
    written: WrittenStats,
    unknown: dict[str, int],
    *,
    windows: Sequence[int],
    prior_strength: float,
    max_category_values: int,
    users_path: Path,
    items_path: Path,
    user_columns: dict[str, str],
    item_columns: dict[str, str],
    wall: float,
) -> Manifest:
    """The stats manifest: options, input fingerprints, row counts and `_manifest_extra`."""
    return Manifest(
        command="stats",
        parameters={
            "windows": list(windows),
            "prior_strength": prior_strength,
            "max_category_values": max_category_values,
            "user_category_columns": [spec.column for spec in inputs.item_specs],
            "item_category_columns": [spec.column for spec in inputs.user_specs],
        },
        inputs={
            **{f"samples/{path.name}": fingerprint(path) for path in inputs.history_files},
            "users": fingerprint(users_path),
            "items": fingerprint(items_path),
        },
        row_counts={"samples_read": inputs.samples_read, **written.row_counts, **unknown},
        extra=_manifest_extra(inputs, written, prior_strength, user_columns, item_columns),
        wall_time_s=round(wall, 3),
    )


def _manifest_extra(
    inputs: StatsInputs,
    written: WrittenStats,
    prior_strength: float,
    user_columns: dict[str, str],
    item_columns: dict[str, str],
) -> dict[str, Any]:
    """The manifest's `extra`: serving-day facts, column definitions, category values, keys."""
    return {
        "history_files": [path.name for path in inputs.history_files],
        "first_day": written.first_day.isoformat(),
        "as_of": written.as_of.isoformat(),
        "ctr_prior": written.ctr_prior,
        "ctr_prior_definition": (
            "global CTR (positives / samples) of the whole history, used by the latest "
            "tables; a row for day d uses the global CTR of the samples before d"
        ),
        "prior_strength": prior_strength,
        "user_columns": user_columns,
        "item_columns": item_columns,
        "user_category_values": {spec.column: list(spec.values) for spec in inputs.user_specs},
        "item_category_values": {spec.column: list(spec.values) for spec in inputs.item_specs},
        "partitions": written.partitions,
        "keys": {
            USER_STATS_FILE: ["user_id", "day"],
            ITEM_STATS_FILE: ["item_id", "day"],
            USER_LATEST_FILE: ["user_id", "as_of"],
            ITEM_LATEST_FILE: ["item_id", "as_of"],
        },
    }
