"""Exposure and click logs -> labelled samples, split by time and by cold holdouts.

Label semantics (the same text is in docs/data.md, "Samples (prepare output)"). W is the
attribution window (`--attribution-window`, default 30m); "pair" is (user_id, item_id).

1. Exact duplicate exposures (same pair, same ts) are one exposure.
2. Repeated exposures of a pair collapse greedily, in time order: the earliest exposure
   opens a sample; every later exposure of the pair at most W after that first one joins it;
   the first exposure more than W after it opens the next sample, and so on. A sample's `ts`
   is its first exposure. (10:00, 10:10, 10:25, 10:40 with W = 30m -> samples at 10:00 and
   10:40.)
3. A click is attributed to the latest exposure of its pair at or before the click, provided
   that exposure is at most W before it (both ends inclusive: a click at the exposure's ts
   and one exactly W later both count). One click therefore labels at most one exposure,
   and a sample is positive (label 1) when any of its exposures got a click. Because every
   exposure of a sample keeps its own window, a sample's clicks may arrive up to W after its
   last exposure: shown at 10:00 and 10:10, clicked at 10:12 -> one positive sample at 10:00;
   shown at 10:00 and 10:20, clicked at 10:45 -> one positive sample at 10:00.
4. `weight` is the largest weight among a positive sample's clicks (clicks without a
   `weight` column weigh 1.0); negatives have weight 1.0.
5. A click with no such exposure is an orphan. Orphans are counted and dropped, or with
   `orphan_clicks="keep"` each becomes a positive sample at the click's ts with its weight.

The plan sorts exposures and clicks together once by pair then time and derives everything
with shifts, forward fills and cumulative sums over that order; no per-row Python. Only the
rare pairs whose repeats span more than W need the greedy rule of (2) resolved, which is a
vectorised pointer-doubling pass in numpy (`greedy_anchors`).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from coldrec import io, log, schema
from coldrec.errors import EmptyInput, LogsMismatch, UsageError
from coldrec.options import PrepareOptions

ORPHAN_MODES = ("drop", "keep")
TS_UNITS = ("s", "ms")
OUTPUT_COLUMNS = ("user_id", "item_id", "ts", "label", "weight")
DAY = dt.timedelta(days=1)

# What a row of the labelled frame is, before the splits keep some of them.
ROLE_SAMPLE = 0  # an exposure sample (the earliest exposure of a collapsed group)
ROLE_ORPHAN = 1  # a click with no exposure in its window
ROLE_LATE = 2  # an unmatched click after --end, read only to label the last day's exposures

SPLITS_TIME = ("train", "valid")
SPLITS_HOLDOUT = ("test_warm", "test_cold_user", "test_cold_item", "test_cold_both")

_WINDOW_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# --------------------------------------------------------------------------- options


def parse_window(text: str) -> dt.timedelta:
    """'45s', '30m', '2h', '1d' or a sum such as '1h30m' -> timedelta (UsageError otherwise)."""
    compact = text.strip().lower().replace(" ", "")
    parts = _WINDOW_PART.findall(compact)
    if not compact or "".join(f"{number}{unit}" for number, unit in parts) != compact:
        raise UsageError(
            f"--attribution-window: cannot parse '{text}'",
            hint="use a number and a unit s, m, h or d, e.g. 45s, 30m, 2h, 1d",
        )
    seconds = sum(float(number) * _WINDOW_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise UsageError(f"--attribution-window: '{text}' is not positive", hint="use e.g. 30m")
    return dt.timedelta(seconds=seconds)


def parse_day(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option}: '{text}' is not a date", hint="use YYYY-MM-DD, e.g. 2026-01-31") from None


def _format_window(window: dt.timedelta) -> str:
    seconds = window.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `coldrec prepare` needs besides the paths; `validate` checks it up front."""

    attribution_window: dt.timedelta = parse_window(PrepareOptions.attribution_window)
    orphan_clicks: str = PrepareOptions.orphan_clicks
    ts_unit: str = PrepareOptions.ts_unit
    start: dt.date | None = None  # first day read (inclusive)
    end: dt.date | None = None  # last day read (inclusive)
    valid_fraction: float = PrepareOptions.valid_fraction
    holdout_items: float = PrepareOptions.holdout_items
    holdout_users: float = PrepareOptions.holdout_users
    seed: int = PrepareOptions.seed
    min_click_match: float = PrepareOptions.min_click_match

    @classmethod
    def from_options(
        cls,
        *,
        attribution_window: str = PrepareOptions.attribution_window,
        start: str | None = None,
        end: str | None = None,
        **options: Any,
    ) -> PrepareConfig:
        """Build from command-line strings (window like '30m', days like '2026-01-31')."""
        config = cls(
            attribution_window=parse_window(attribution_window),
            start=parse_day(start, "--start"),
            end=parse_day(end, "--end"),
            **options,
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.attribution_window <= dt.timedelta(0):
            raise UsageError("--attribution-window must be positive", hint="use e.g. 30m")
        if self.orphan_clicks not in ORPHAN_MODES:
            raise UsageError(f"--orphan-clicks: '{self.orphan_clicks}' is not one of drop, keep", hint="pick drop or keep")
        if self.ts_unit not in TS_UNITS:
            raise UsageError(f"--ts-unit: '{self.ts_unit}' is not one of s, ms", hint="pick s or ms")
        if not 0.0 < self.valid_fraction < 1.0:
            raise UsageError(
                f"--valid-fraction must lie strictly between 0 and 1, got {self.valid_fraction}",
                hint="use e.g. --valid-fraction 0.1 (the last 10% of the time range)",
            )
        for option, value in (("--holdout-items", self.holdout_items), ("--holdout-users", self.holdout_users)):
            if not 0.0 <= value < 1.0:
                raise UsageError(f"{option} must lie in [0, 1), got {value}", hint=f"use e.g. {option} 0.1, or 0 for none")
        if not 0.0 <= self.min_click_match <= 1.0:
            raise UsageError(f"--min-click-match must lie in [0, 1], got {self.min_click_match}", hint="use e.g. 0.5, or 0 to accept any match rate")
        if self.start and self.end and self.start > self.end:
            raise UsageError(
                f"--start {self.start} is after --end {self.end}", hint="swap them; both days are inclusive"
            )

    @property
    def holdouts(self) -> bool:
        return self.holdout_items > 0 or self.holdout_users > 0

    @property
    def range_start(self) -> dt.datetime | None:
        return dt.datetime.combine(self.start, dt.time()) if self.start else None

    @property
    def range_end(self) -> dt.datetime | None:
        """The first instant after --end (exclusive bound for exposures)."""
        return dt.datetime.combine(self.end, dt.time()) + DAY if self.end else None

    @property
    def click_days_after_end(self) -> int:
        # A click may follow its exposure by up to the window, so it may sit in a later day.
        return max(1, math.ceil(self.attribution_window / DAY))

    def parameters(self) -> dict[str, Any]:
        values = asdict(self)
        values["attribution_window"] = _format_window(self.attribution_window)
        values["start"] = self.start.isoformat() if self.start else None
        values["end"] = self.end.isoformat() if self.end else None
        return values


# --------------------------------------------------------------------------- reading


def day_partition_filter(first: dt.date | None, last: dt.date | None) -> io.PartitionFilter | None:
    """Keep hive partitions `day=YYYY-MM-DD` (or `date=`) within [first, last]; others too."""
    if first is None and last is None:
        return None

    def keep(values: dict[str, str]) -> bool:
        for key in ("day", "date"):
            if key in values:
                try:
                    day = dt.date.fromisoformat(values[key])
                except ValueError:
                    return True  # not a date partition: the ts filter decides
                return (first is None or day >= first) and (last is None or day <= last)
        return True

    return keep


def read_log(path: str | Path, contract: schema.TableContract, config: PrepareConfig, last_day: dt.date | None) -> pl.LazyFrame:
    """Scan one log (only the partitions of the date range) and check its columns and values."""
    frame = io.scan_parquet(path, day_partition_filter(config.start, last_day))
    found = frame.collect_schema()
    schema.check_schema(found, contract, path)
    columns = [c.name for c in contract.columns if c.name in found]
    frame = frame.select(columns)
    schema.check_rows(frame, contract, path, ts_unit=config.ts_unit)
    return frame


# --------------------------------------------------------------------------- expressions

IS_CLICK = pl.col("is_click")
IS_EXPOSURE = ~pl.col("is_click")


def in_range(start: dt.datetime | None, end: dt.datetime | None, *, end_inclusive: bool = False) -> pl.Expr:
    """ts in [start, end) (or [start, end]); a missing bound is open."""
    condition = pl.lit(True)
    if start is not None:
        condition = condition & (pl.col("ts") >= start)
    if end is not None:
        condition = condition & ((pl.col("ts") <= end) if end_inclusive else (pl.col("ts") < end))
    return condition


def pair_changed() -> pl.Expr:
    """True on the first row of every (user_id, item_id) run of a pair-sorted frame."""
    return (
        (pl.col("user_id") != pl.col("user_id").shift(1)) | (pl.col("item_id") != pl.col("item_id").shift(1))
    ).fill_null(True)


def last_exposure(column: str) -> pl.Expr:
    """`column` of the latest exposure row at or before this row (any pair)."""
    return pl.when(IS_EXPOSURE).then(pl.col(column)).forward_fill()


# --------------------------------------------------------------------------- steps


def exposure_events(exposures: pl.LazyFrame, ts_unit: str = "s") -> pl.LazyFrame:
    """(user_id, item_id, ts[us], is_click=False, weight=null) from a raw exposure log."""
    ts_dtype = exposures.collect_schema()["ts"]
    return exposures.select(
        "user_id",
        "item_id",
        schema.ts_to_datetime("ts", ts_dtype, ts_unit),
        pl.lit(False).alias("is_click"),
        pl.lit(None, dtype=pl.Float32).alias("weight"),
    )


def click_events(clicks: pl.LazyFrame, ts_unit: str = "s") -> pl.LazyFrame:
    """(user_id, item_id, ts[us], is_click=True, weight) from a raw click log (weight 1.0 if absent)."""
    found = clicks.collect_schema()
    weight = pl.col("weight").cast(pl.Float32) if "weight" in found else pl.lit(1.0, dtype=pl.Float32)
    return clicks.select(
        "user_id",
        "item_id",
        schema.ts_to_datetime("ts", found["ts"], ts_unit),
        pl.lit(True).alias("is_click"),
        weight.alias("weight"),
    )


def sort_by_pair(events: pl.LazyFrame) -> pl.LazyFrame:
    """Sort by pair, then ts, exposures before clicks at the same ts (the window starts at ts).

    The pair hash leads the key so most comparisons are one integer; the id columns after
    it break hash ties, so two pairs are never merged by a collision.
    """
    return (
        events.with_columns(pl.struct("user_id", "item_id").hash().alias("_pair_hash"))
        .sort("_pair_hash", "user_id", "item_id", "ts", "is_click")
        .drop("_pair_hash")
    )


def attribute_clicks(events: pl.LazyFrame, window: dt.timedelta) -> pl.LazyFrame:
    """Number pairs and mark clicks that fall within `window` after their pair's latest exposure."""
    return events.with_columns(pair_changed().cum_sum().alias("_pair")).with_columns(
        last_exposure("_pair").alias("_last_pair"), last_exposure("ts").alias("_last_ts")
    ).with_columns(
        (
            IS_CLICK
            & (pl.col("_last_pair") == pl.col("_pair"))
            & (pl.col("ts") - pl.col("_last_ts") <= window)
        ).fill_null(False).alias("_matched")
    )


def collapse_exposures(events: pl.LazyFrame, window: dt.timedelta) -> pl.LazyFrame:
    """Mark `_anchor`: the exposure rows that open a sample (rule 2 of the module docstring).

    A repeat within `window` of the previous exposure of its pair never opens a sample, so
    runs of such repeats ("sessions") open at their first row. A session spanning more than
    `window` needs the greedy rule inside it: `greedy_anchors` resolves those few.
    """
    previous_pair = pl.col("_last_pair").shift(1)  # of the latest exposure before this row
    previous_ts = pl.col("_last_ts").shift(1)
    repeat = (previous_pair == pl.col("_pair")).fill_null(False)
    gap = pl.col("ts") - previous_ts
    events = events.with_columns((IS_EXPOSURE & ~(repeat & (gap <= window))).alias("_session_start"))
    session_ts = pl.when(pl.col("_session_start")).then(pl.col("ts")).forward_fill()
    events = events.with_columns(
        pl.col("_session_start").cum_sum().alias("_session"),
        (IS_EXPOSURE & (pl.col("ts") - session_ts > window)).alias("_overflow"),
    )
    greedy = pl.struct(
        session=pl.col("_session"),
        ts=pl.col("ts").dt.epoch("us"),
        exposure=IS_EXPOSURE,
        overflow=pl.col("_overflow"),
    ).map_batches(
        lambda batch: greedy_anchors(batch, _micros(window)), return_dtype=pl.Boolean, is_elementwise=False
    )
    return events.with_columns((pl.col("_session_start") | greedy).alias("_anchor"))


def to_samples(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per sample and per unmatched click, with the counts the manifest reports.

    Columns: user_id, item_id, ts, label (Int8), weight (Float32), role (ROLE_*),
    exposures (exposure rows collapsed into the sample, duplicates included), clicks
    (clicks attributed to it). Rows keep the pair order of the input, so the output order
    is deterministic.
    """
    events = events.select(
        "user_id", "item_id", "ts", "is_click", "weight", "_matched", "_anchor",
        IS_EXPOSURE.cast(pl.UInt32).cum_sum(reverse=True).alias("_exposures_from_here"),
    )
    # An anchor and the clicks attributed to its sample are consecutive rows, so numbering
    # anchors gives sorted sample ids and the aggregation is a linear pass over runs.
    samples = (
        events.filter(pl.col("_anchor") | pl.col("_matched"))
        .with_columns(pl.col("_anchor").cum_sum().alias("_sample").set_sorted())
        .group_by("_sample", maintain_order=True)
        .agg(
            pl.col("user_id", "item_id", "ts", "_exposures_from_here").first(),
            pl.col("_matched").any().cast(pl.Int8).alias("label"),
            pl.col("weight").filter(pl.col("_matched")).max().fill_null(1.0).alias("weight"),
            pl.col("_matched").sum().cast(pl.UInt32).alias("clicks"),
        )
        .select(
            "user_id",
            "item_id",
            "ts",
            "label",
            "weight",
            pl.lit(ROLE_SAMPLE, dtype=pl.UInt8).alias("role"),
            (pl.col("_exposures_from_here") - pl.col("_exposures_from_here").shift(-1).fill_null(0)).alias("exposures"),
            "clicks",
        )
    )
    orphans = events.filter(IS_CLICK & ~pl.col("_matched")).select(
        "user_id",
        "item_id",
        "ts",
        pl.lit(1, dtype=pl.Int8).alias("label"),
        pl.col("weight"),
        pl.lit(ROLE_ORPHAN, dtype=pl.UInt8).alias("role"),
        pl.lit(0, dtype=pl.UInt32).alias("exposures"),
        pl.lit(1, dtype=pl.UInt32).alias("clicks"),
    )
    return pl.concat([samples, orphans])


def label_events(exposures: pl.LazyFrame, clicks: pl.LazyFrame, window: dt.timedelta) -> pl.LazyFrame:
    """Exposure and click events (see `exposure_events`/`click_events`) -> `to_samples` rows."""
    return (
        pl.concat([exposures, clicks])
        .pipe(sort_by_pair)
        .pipe(attribute_clicks, window)
        .pipe(collapse_exposures, window)
        .pipe(to_samples)
    )


def _micros(delta: dt.timedelta) -> int:
    return delta // dt.timedelta(microseconds=1)


def greedy_anchors(batch: pl.Series, window_us: int) -> pl.Series:
    """Which exposure rows open a sample inside sessions spanning more than the window.

    `batch` is a struct of equal-length fields over the pair-sorted frame: session (session
    number, non-decreasing), ts (epoch us), exposure (an exposure row), overflow (an
    exposure more than the window after its session's first). Within a long session the
    anchors are a chain: first row, then next(first), next(next(first)), ... where next(i)
    is the first row later than ts_i + window (so never the second copy of a duplicate).
    Chains of consecutive sessions join (next of a session's last anchor is the next
    session's first row), so the anchors are the one path from row 0, marked by pointer
    doubling in O(n log n) with vectorised numpy.
    """
    length = len(batch)
    anchors = np.zeros(length, dtype=bool)
    overflow = batch.struct.field("overflow").to_numpy()
    if length == 0 or not overflow.any():
        return pl.Series(anchors)
    session = batch.struct.field("session").to_numpy()
    rows = np.flatnonzero(batch.struct.field("exposure").to_numpy() & np.isin(session, session[overflow]))
    ts = batch.struct.field("ts").to_numpy()[rows]
    # One sortable integer key per (session, ts): dense ranks keep it far from overflow.
    session_code = np.unique(session[rows], return_inverse=True)[1].astype(np.int64)
    values = np.unique(np.concatenate([ts, ts + window_us]))
    stride = len(values) + 1
    key = session_code * stride + np.searchsorted(values, ts)
    query = session_code * stride + np.searchsorted(values, ts + window_us)
    count = len(rows)
    jump = np.append(np.searchsorted(key, query, side="right"), count)  # next(i); count = end
    marked = np.zeros(count + 1, dtype=bool)
    marked[0] = True
    # After step k, marked holds next^t(0) for every t < 2^k.
    while True:
        marked[jump[marked]] = True
        if (jump[:-1] == count).all():
            break
        jump = jump[jump]
    anchors[rows] = marked[:count]
    return pl.Series(anchors)


# --------------------------------------------------------------------------- splits

SPLIT = pl.Enum(list(SPLITS_TIME + SPLITS_HOLDOUT))


def time_cuts(first: dt.datetime, last: dt.datetime, valid_fraction: float, holdouts: bool) -> tuple[dt.datetime, dt.datetime | None]:
    """The validation cut (the last `valid_fraction` of [first, last] lies after it) and,
    with holdouts, the warm-test cut halfway between the validation cut and `last`."""
    time_cut = first + dt.timedelta(microseconds=round(_micros(last - first) * (1.0 - valid_fraction)))
    warm_cut = time_cut + dt.timedelta(microseconds=_micros(last - time_cut) // 2) if holdouts else None
    return time_cut, warm_cut


def choose_holdout(ids: pl.Series, fraction: float, seed: int) -> pl.Series:
    """A seeded random `fraction` of the distinct `ids` (at least one when fraction > 0), sorted."""
    if fraction <= 0:
        return ids.clear()
    distinct = ids.unique().sort()
    count = min(len(distinct), max(1, round(fraction * len(distinct))))
    chosen = np.random.default_rng(seed).choice(len(distinct), size=count, replace=False)
    return distinct.gather(np.sort(chosen))


def assign_splits(
    samples: pl.LazyFrame,
    time_cut: dt.datetime,
    warm_cut: dt.datetime | None,
    held_users: pl.Series,
    held_items: pl.Series,
) -> pl.LazyFrame:
    """Add `split` (SPLIT enum). A held-out user or item sends the row to test_cold_user /
    test_cold_item / test_cold_both whatever its time; other rows before `time_cut` are
    train; after it valid, or, with holdouts, valid before `warm_cut` and test_warm from it."""
    cold_user = pl.col("user_id").is_in(held_users.implode())
    cold_item = pl.col("item_id").is_in(held_items.implode())
    after_cut = pl.lit("valid")
    if warm_cut is not None:
        after_cut = pl.when(pl.col("ts") < warm_cut).then(pl.lit("valid")).otherwise(pl.lit("test_warm"))
    split = (
        pl.when(cold_user & cold_item).then(pl.lit("test_cold_both"))
        .when(cold_user).then(pl.lit("test_cold_user"))
        .when(cold_item).then(pl.lit("test_cold_item"))
        .when(pl.col("ts") < time_cut).then(pl.lit("train"))
        .otherwise(after_cut)
    )
    return samples.with_columns(split.cast(SPLIT).alias("split"))


def split_names(config: PrepareConfig) -> list[str]:
    """The files written: train and valid, plus the test splits the holdouts ask for."""
    names = list(SPLITS_TIME)
    if config.holdouts:
        names.append("test_warm")
    if config.holdout_users > 0:
        names.append("test_cold_user")
    if config.holdout_items > 0:
        names.append("test_cold_item")
    if config.holdout_users > 0 and config.holdout_items > 0:
        names.append("test_cold_both")
    return names


# --------------------------------------------------------------------------- the stage


@dataclass
class SplitCounts:
    rows: int
    positives: int

    @property
    def negatives(self) -> int:
        return self.rows - self.positives


@dataclass
class Splits:
    """Samples sorted by ts with their `split`, and how they were cut."""

    samples: pl.DataFrame
    time_cut: dt.datetime
    warm_cut: dt.datetime | None
    held_users: pl.Series
    held_items: pl.Series

    def counts(self, names: list[str]) -> dict[str, SplitCounts]:
        table = self.samples.group_by("split").agg(
            pl.len().alias("rows"), pl.col("label").cast(pl.Int64).sum().alias("positives")
        )
        found = {row["split"]: SplitCounts(row["rows"], row["positives"]) for row in table.iter_rows(named=True)}
        return {name: found.get(name, SplitCounts(0, 0)) for name in names}


def split_samples(samples: pl.DataFrame, config: PrepareConfig) -> Splits:
    """Cut the time range, draw the held-out ids and assign every sample its split."""
    first, last = samples["ts"].min(), samples["ts"].max()
    if first == last:
        raise EmptyInput(
            f"every sample has the same time ({first}); nothing to split by time",
            hint="give logs that span some time, or widen --start/--end",
        )
    time_cut, warm_cut = time_cuts(first, last, config.valid_fraction, config.holdouts)
    user_seed, item_seed = np.random.SeedSequence(config.seed).generate_state(2)
    held_users = choose_holdout(samples["user_id"], config.holdout_users, int(user_seed))
    held_items = choose_holdout(samples["item_id"], config.holdout_items, int(item_seed))
    assigned = (
        samples.lazy()
        .sort("ts", maintain_order=True)  # stable over the deterministic label order: same input, same files
        .pipe(assign_splits, time_cut, warm_cut, held_users, held_items)
        .collect(engine="in-memory")
    )
    return Splits(assigned, time_cut, warm_cut, held_users, held_items)


@dataclass
class LabelCounts:
    """What the labelling did, from the `role`/`exposures`/`clicks` columns of `to_samples`."""

    exposures_read: int
    samples_from_exposures: int
    clicks_matched: int
    orphan_clicks: int
    clicks_after_end: int

    @classmethod
    def of(cls, labelled: pl.DataFrame) -> LabelCounts:
        table = labelled.group_by("role").agg(
            pl.len().alias("rows"), pl.col("exposures").sum().alias("exposures"), pl.col("clicks").sum().alias("clicks")
        )
        by_role = {row["role"]: row for row in table.iter_rows(named=True)}
        empty = {"rows": 0, "exposures": 0, "clicks": 0}
        sample, orphan, late = (by_role.get(role, empty) for role in (ROLE_SAMPLE, ROLE_ORPHAN, ROLE_LATE))
        return cls(
            exposures_read=int(sample["exposures"]),
            samples_from_exposures=int(sample["rows"]),
            clicks_matched=int(sample["clicks"]),
            orphan_clicks=int(orphan["rows"]),
            clicks_after_end=int(late["rows"]),
        )

    @property
    def duplicates_collapsed(self) -> int:
        return self.exposures_read - self.samples_from_exposures

    @property
    def clicks_in_range(self) -> int:
        """Clicks within the read range (matched or orphan; not those read after --end)."""
        return self.clicks_matched + self.orphan_clicks

    @property
    def click_match_rate(self) -> float:
        """Matched clicks / the clicks within range (1.0 without any)."""
        return self.clicks_matched / self.clicks_in_range if self.clicks_in_range else 1.0

    @property
    def clicks_read(self) -> int:
        return self.clicks_matched + self.orphan_clicks + self.clicks_after_end


@dataclass
class PrepareResult:
    out: Path
    counts: LabelCounts
    orphan_clicks_kept: int
    time_cut: dt.datetime
    warm_cut: dt.datetime | None
    splits: dict[str, SplitCounts]
    held_out_users: int = 0
    held_out_items: int = 0
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        return sum(split.rows for split in self.splits.values())

    def summary(self) -> str:
        counts = self.counts
        orphans = "kept" if self.orphan_clicks_kept else "dropped"
        splits = ", ".join(
            f"{name} {split.rows:,} ({split.positives:,}+/{split.negatives:,}-)" for name, split in self.splits.items()
        )
        return (
            f"prepare: {counts.exposures_read:,} exposures -> {self.samples:,} samples "
            f"({counts.duplicates_collapsed:,} duplicates collapsed); {counts.clicks_read:,} clicks: "
            f"{counts.clicks_matched:,} matched ({counts.click_match_rate:.1%}), {counts.orphan_clicks:,} orphan ({orphans}); {splits}; "
            f"cut {self.time_cut.isoformat()} -> {self.out} ({self.seconds:.1f}s)"
        )

    def fields(self) -> dict[str, Any]:
        counts = self.counts
        fields: dict[str, Any] = {
            "out": str(self.out),
            "exposures_read": counts.exposures_read,
            "duplicates_collapsed": counts.duplicates_collapsed,
            "clicks_read": counts.clicks_read,
            "clicks_matched": counts.clicks_matched,
            "click_match_rate": round(counts.click_match_rate, 6),
            "orphan_clicks": counts.orphan_clicks,
            "orphan_clicks_kept": self.orphan_clicks_kept,
            "clicks_after_end": counts.clicks_after_end,
            "samples": self.samples,
            "time_cut": self.time_cut.isoformat(),
            "warm_cut": self.warm_cut.isoformat() if self.warm_cut else None,
            "held_out_users": self.held_out_users,
            "held_out_items": self.held_out_items,
            "seconds": round(self.seconds, 3),
        }
        for name, split in self.splits.items():
            fields[f"{name}_positives"] = split.positives
            fields[f"{name}_negatives"] = split.negatives
        return fields


def check_click_match(labelled: pl.DataFrame, counts: LabelCounts, exposures: Path, clicks: Path, config: PrepareConfig) -> None:
    """Fail when fewer than --min-click-match of the clicks in range match an exposure: the
    logs do not line up (ids typed or hashed differently, time zones, a short window)."""
    rate = counts.click_match_rate
    if rate >= config.min_click_match:
        return
    spans = labelled.group_by(pl.col("role") == ROLE_SAMPLE).agg(pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
    span = {row["role"]: f"{row['first']} .. {row['last']}" for row in spans.iter_rows(named=True)}
    raise LogsMismatch(
        f"only {counts.clicks_matched:,} of {counts.clicks_in_range:,} clicks ({rate:.1%}) matched one of the {counts.exposures_read:,} exposures "
        f"of {exposures} within {_format_window(config.attribution_window)} (clicks {span.get(False, '-')}, "
        f"exposures {span.get(True, '-')}); --min-click-match is {config.min_click_match:g}",
        path=clicks,
        hint="check that both logs use the same user_id/item_id values (types, hashing), the same time zone and "
        "--ts-unit, and an --attribution-window that covers the delay to a click; --min-click-match 0 accepts any rate",
    )


def label_logs(exposures: Path | None, clicks: Path, config: PrepareConfig) -> pl.DataFrame:
    """Read, check and label both logs within the configured range (`to_samples` rows, with
    unmatched clicks after --end marked ROLE_LATE). Raises before any output exists.

    Without `exposures` (a click-only log) every click is an orphan: the caller keeps them."""
    last_click_day = config.end + dt.timedelta(days=config.click_days_after_end) if config.end else None
    raw_clicks = read_log(clicks, schema.CLICKS, config, last_click_day)
    if exposures is None:
        raw_exposures = raw_clicks.select("user_id", "item_id", "ts").head(0)
        exposures = clicks
    else:
        raw_exposures = read_log(exposures, schema.EXPOSURES, config, config.end)
    exposure_schema, click_schema = raw_exposures.collect_schema(), raw_clicks.collect_schema()
    for column in ("user_id", "item_id"):
        schema.check_id_types_match(exposure_schema[column], click_schema[column], column, exposures, clicks)
        if click_schema[column] != exposure_schema[column]:
            # Integers of another width: the outputs keep the exposures' id type (strict cast).
            raw_clicks = raw_clicks.with_columns(pl.col(column).cast(exposure_schema[column]))

    window = config.attribution_window
    click_end = config.range_end + window if config.range_end else None
    exposure_frame = exposure_events(raw_exposures, config.ts_unit).filter(in_range(config.range_start, config.range_end))
    click_frame = click_events(raw_clicks, config.ts_unit).filter(
        in_range(config.range_start, click_end, end_inclusive=True)
    )
    # The in-memory engine: this plan is one big sort and scans over it, which polars 2.1's
    # streaming engine runs with about 1.5x the memory and 2x the CPU.
    labelled = label_events(exposure_frame, click_frame, window).collect(engine="in-memory")
    if config.range_end is not None:
        late = (pl.col("role") == ROLE_ORPHAN) & (pl.col("ts") >= config.range_end)
        labelled = labelled.with_columns(
            pl.when(late).then(pl.lit(ROLE_LATE, dtype=pl.UInt8)).otherwise(pl.col("role")).alias("role")
        )
    return labelled


def run_prepare(
    exposures: str | Path | None,
    clicks: str | Path,
    out: str | Path,
    config: PrepareConfig | None = None,
) -> PrepareResult:
    """Label `exposures` with `clicks` and write the splits to the directory `out`.

    Writes train.parquet, valid.parquet (+ test_*.parquet with holdouts), each with columns
    user_id, item_id, ts (Datetime us, naive UTC), label (Int8), weight (Float32), sorted by
    ts; and manifest.json with the counts, the cuts and the held-out ids. Bad input raises a
    ColdrecError before anything is written; a locked `out` raises OutputLocked.

    `exposures` None: a click-only log. Every click becomes a positive sample at its ts (the
    splits and holdouts as usual); there are no negatives, so `coldrec train` trains the
    in-batch softmax alone.
    """
    config = config or PrepareConfig()
    config.validate()
    started = time.perf_counter()
    exposures, clicks, out = (Path(exposures) if exposures is not None else None), Path(clicks), Path(out)
    if exposures is None:
        config = dataclasses.replace(config, orphan_clicks="keep")  # every click is a sample
        log.info("prepare: no exposure log: every click becomes a positive sample (no negatives)")
    with io.output_lock(out, "coldrec prepare"), log.progress("prepare", total=2 + len(split_names(config))) as bar:
        labelled = label_logs(exposures, clicks, config)
        bar.advance(1, status="labelled")
        counts = LabelCounts.of(labelled)
        _check_labelled(labelled, counts, exposures, clicks, config)
        keep_roles = [ROLE_SAMPLE, ROLE_ORPHAN] if config.orphan_clicks == "keep" else [ROLE_SAMPLE]
        samples = labelled.filter(pl.col("role").is_in(keep_roles)).select(OUTPUT_COLUMNS)
        del labelled  # one copy of the samples in memory at a time
        splits = split_samples(samples, config)
        del samples
        bar.advance(1, status="split")
        split_counts = splits.counts(split_names(config))
        _check_train_positives(split_counts["train"], clicks)
        result = PrepareResult(
            out=out,
            counts=counts,
            orphan_clicks_kept=counts.orphan_clicks if config.orphan_clicks == "keep" else 0,
            time_cut=splits.time_cut,
            warm_cut=splits.warm_cut,
            splits=split_counts,
            held_out_users=len(splits.held_users),
            held_out_items=len(splits.held_items),
        )
        _write_outputs(out, splits, result, config, exposures, clicks, started, bar)
    return result


def _check_labelled(labelled: pl.DataFrame, counts: LabelCounts, exposures: Path | None, clicks: Path, config: PrepareConfig) -> None:
    """Refuse a range with nothing in it, and logs that do not line up."""
    if exposures is None and counts.orphan_clicks == 0:
        raise EmptyInput(
            f"no clicks between {config.start or 'the start'} and {config.end or 'the end'}",
            path=clicks,
            hint="check --start/--end against the days the click log covers",
        )
    if exposures is not None and counts.exposures_read == 0:
        raise EmptyInput(
            f"no exposures between {config.start or 'the start'} and {config.end or 'the end'}",
            path=exposures,
            hint="check --start/--end against the days the logs cover",
        )
    if exposures is not None:
        check_click_match(labelled, counts, exposures, clicks, config)


def _check_train_positives(train: SplitCounts, clicks: Path) -> None:
    """A train split without a positive is always an error: a cron job would train on nothing."""
    if train.positives == 0:
        raise EmptyInput(
            f"the train split has no positive samples ({train.rows:,} rows, 0 clicks)", path=clicks,
            hint="check that the click log covers the days before the validation cut and matches the exposures' ids",
        )


def _write_outputs(out: Path, splits: Splits, result: PrepareResult, config: PrepareConfig, exposures: Path | None, clicks: Path,
                   started: float, bar: log.ProgressHandle) -> None:
    """Every split's Parquet file and the manifest, into `out` atomically."""
    with io.atomic_dir(out) as temp:
        for name in result.splits:
            # Streamed from the sorted frame, so no split is copied whole in memory; zstd
            # level 1 takes a third less CPU than the default level for ~6% larger files.
            splits.samples.lazy().filter(pl.col("split") == name).drop("split").sink_parquet(
                temp / f"{name}.parquet", compression="zstd", compression_level=1
            )
            bar.advance(1, status=f"{name} written")
        result.seconds = time.perf_counter() - started
        io.Manifest(
            command="prepare",
            parameters=config.parameters(),
            inputs=io.input_fingerprints(**({"exposures": exposures} if exposures is not None else {}), clicks=clicks),
            row_counts={name: split.rows for name, split in result.splits.items()},
            extra={
                **result.fields(),
                "label_semantics": "docs/data.md#samples-prepare-output",
                "held_out_user_ids": splits.held_users.to_list(),
                "held_out_item_ids": splits.held_items.to_list(),
            },
            wall_time_s=round(result.seconds, 3),
        ).write(temp)
