"""Ranking metrics of recommendations against held-out positives, overall and by bucket.

`run_evaluate` reads `recs.parquet` (user_id, rank, item_id, score — written by `coldrec
recall`) and a truth table of labelled samples (user_id, item_id, label; positives are
label 1), and optionally the training samples for the popularity / activity breakdowns.
Everything is computed with polars joins and group-bys, never per row in Python.

Definitions (docs/metrics.md has the full text):
- evaluated users: users with at least one positive in the truth; a user without recs
  scores 0 everywhere. Users with recs but no positive are not evaluated.
- position: the order of `rank` within a user (1 = best); gaps in `rank` are closed.
  `score` is never read, so ties in score are decided by `rank`.
- Recall@K = hits in the top K / |positives| (not min(K, |positives|)).
- NDCG@K: binary relevance, DCG = sum over hits at position p <= K of 1/log2(p+1),
  ideal DCG over min(K, |positives|) hits.
- HitRate@K = 1 if at least one hit in the top K.  MRR = 1 / position of the first hit
  anywhere in the list, 0 if none.
- Coverage@K = distinct catalogue items recommended in any top K / catalogue size, the
  catalogue being the distinct items of train and truth (all rows, any label).
- Cold share@K = share of top-K slots holding an item that never appears in train.
- Item buckets (by train positive count): head / mid / tail hold equal thirds of the train
  positives (items sorted by count, ties in the same bucket); new = not in train.
- User buckets (by train positive count): new (0), light / medium / heavy split at the
  1/3 and 2/3 quantiles over train users with at least one positive.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from coldrec import log
from coldrec.charts import CSS, html_table, svg_bar_chart, svg_line_chart
from coldrec.errors import BadValues, DuplicateIds, EmptyInput, InputNotFound, NullValues, UsageError
from coldrec.io import atomic_file, check_output_file, output_lock, scan_parquet, write_json_atomic
from coldrec.schema import RECS, Column, Kind, TableContract, check_id_types_match, check_schema

DEFAULT_KS: tuple[int, ...] = (20, 100)
MAX_K = 100_000
CURVE_MAX_K = 1000  # the recall@k curve stops here (or at the longest list)
POPULARITY_CUTS = (1 / 3, 2 / 3)  # cumulative share of train positives: head | mid | tail
ACTIVITY_QUANTILES = (1 / 3, 2 / 3)  # train positives per user: light | medium | heavy
ITEM_BUCKETS = ("head", "mid", "tail", "new")
USER_BUCKETS = ("new", "light", "medium", "heavy")

LABELLED = TableContract(
    "samples",
    (
        Column("user_id", Kind.ID),
        Column("item_id", Kind.ID),
        Column("label", Kind.LABEL, description="1 = positive"),
    ),
    description="labelled samples (truth or train) as written by `coldrec prepare`",
)


# --------------------------------------------------------------------------- options


def parse_ks(ks: str | Sequence[int]) -> tuple[int, ...]:
    """'20,100' or [20, 100] -> (20, 100), sorted and deduplicated; UsageError if bad."""
    if isinstance(ks, str):
        parts = [part.strip() for part in ks.split(",")]
        values: list[int] = []
        for part in parts:
            try:
                values.append(int(part))
            except ValueError:
                raise UsageError(
                    f"--k: cannot read '{part}' as an integer (got '{ks}')",
                    hint="pass positive integers separated by commas, e.g. --k 20,100",
                ) from None
    else:
        values = [int(value) for value in ks]
    if not values:
        raise UsageError("--k: no cut-off given", hint="pass e.g. --k 20,100")
    bad = [value for value in values if value <= 0 or value > MAX_K]
    if bad:
        raise UsageError(
            f"--k: cut-offs must be between 1 and {MAX_K}, got {bad[0]}",
            hint="pass positive integers separated by commas, e.g. --k 20,100",
        )
    return tuple(sorted(set(values)))


# --------------------------------------------------------------------------- inputs


def _normalise_ids(frame: pl.LazyFrame, schema: pl.Schema, columns: Sequence[str]) -> pl.LazyFrame:
    """Integer ids -> Int64, string-like ids -> String, so joins never fail on width."""
    casts = []
    for name in columns:
        dtype = schema[name]
        casts.append(pl.col(name).cast(pl.Int64 if dtype.is_integer() else pl.String))
    return frame.with_columns(casts)


def _resolve_train(path: str | Path) -> Path:
    """A samples file, or a `coldrec prepare` output directory (its train.parquet)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "train.parquet"
        if not candidate.exists():
            raise InputNotFound(
                "directory has no train.parquet",
                path=path,
                hint="pass the train samples file, or a `coldrec prepare` output directory",
            )
        return candidate
    return path


def _check_truth_path(path: str | Path) -> None:
    path = Path(path)
    if path.is_dir() and (path / "train.parquet").exists():
        raise UsageError(
            "--truth is a `coldrec prepare` output directory (it would mix train and test)",
            path=path,
            hint="pass one of its test files, e.g. --truth DIR/test_warm.parquet",
        )


@dataclass
class Recs:
    """Checked recommendations. rows: user_id, item_id, position (Int32, 1 = best), grouped
    by user in rank order; users: user_id, one row per user with recs."""

    rows: pl.DataFrame
    users: pl.DataFrame


def _list_order(frame: pl.DataFrame) -> tuple[bool, bool]:
    """(grouped, contiguous) in one linear pass, no hashing of the big table.

    grouped: each user's rows are contiguous with strictly increasing rank.
    contiguous: moreover every list's ranks are exactly 1, 2, 3, ... (rank is the position).
    """
    user, rank = pl.col("user_id"), pl.col("rank")
    start = _run_start()
    flags = frame.select(
        ((user != user.shift()) | (rank > rank.shift())).slice(1).all().alias("within"),
        pl.when(start).then(rank == 1).otherwise(rank == rank.shift() + 1).all().alias("contiguous"),
    ).row(0, named=True)
    within = bool(flags["within"]) if flags["within"] is not None else True
    grouped = within and bool(frame.filter(start).select(user.is_unique().all()).item())
    return grouped, grouped and bool(flags["contiguous"])


def _run_start() -> pl.Expr:
    return (pl.col("user_id") != pl.col("user_id").shift()).fill_null(True)


def load_recs(path: str | Path) -> Recs:
    """Read and check recs; raises on missing columns, nulls, rank < 1 or a (user, rank) twice.

    Recall writes each user's list contiguously in rank order; checking that is one linear
    pass. Any other order is sorted first (slower, same result).
    """
    frame = scan_parquet(path)
    schema = frame.collect_schema()
    check_schema(schema, RECS, path)
    recs = (
        _normalise_ids(frame.select("user_id", "item_id", "rank"), schema, ["user_id", "item_id"])
        .with_columns(pl.col("rank").cast(pl.Int64))
        .collect()
    )
    nulls = recs.null_count().row(0, named=True)
    null_problems = [f"column '{name}' has {count} null value(s)" for name, count in nulls.items() if count]
    if null_problems:
        raise NullValues("recs table: " + "; ".join(null_problems), path=path, hint="drop those rows")
    if recs.height == 0:
        log.warning(f"{path}: recs table has no rows; every evaluated user scores 0")
        empty = recs.select("user_id", "item_id", pl.col("rank").cast(pl.Int32).alias("position"))
        return Recs(empty, empty.select("user_id"))
    min_rank = int(recs["rank"].min())  # type: ignore[arg-type]
    if min_rank < 1:
        raise BadValues(
            f"recs table: column 'rank' has values below 1 (min {min_rank})",
            path=path,
            column="rank",
            hint="ranks start at 1 for the best item; add 1 to 0-based ranks",
        )
    grouped, contiguous = _list_order(recs)
    if not grouped:
        recs = recs.sort("user_id", "rank")
        user, rank = pl.col("user_id"), pl.col("rank")
        twice = recs.select(((user == user.shift()) & (rank == rank.shift())).sum()).item()
        if twice:
            raise DuplicateIds(
                f"recs table: {twice} row(s) repeat a (user_id, rank) pair",
                path=path,
                column="rank",
                hint="give each of a user's recommendations its own rank (1 = best)",
            )
    if contiguous:
        position = pl.col("rank")
    else:
        # position = order within the user's list, so gaps in rank (filtered recs) close up.
        index = pl.int_range(pl.len(), dtype=pl.Int64)
        position = index - pl.when(_run_start()).then(index).forward_fill() + 1
    rows = recs.select("user_id", "item_id", position.cast(pl.Int32).alias("position"))
    return Recs(rows, rows.filter(pl.col("position") == 1).select("user_id"))


def _hits(recs: Recs, positives: pl.DataFrame, path: str | Path | None = None) -> pl.DataFrame:
    """user_id, item_id, position of every recommended positive.

    A 64-bit hash of (user, item) prefilters the big table (one column instead of a
    two-column join); the exact join on the survivors removes any hash collision.
    """
    key = pl.struct("user_id", "item_id").hash()
    wanted = positives.select(key.alias("key"))["key"].implode()
    candidates = recs.rows.filter(key.is_in(wanted))
    hits = candidates.join(positives, on=["user_id", "item_id"], how="inner")
    twice = hits.height - hits.select(pl.struct("user_id", "item_id").n_unique()).item() if hits.height else 0
    if twice:
        raise DuplicateIds(
            f"recs table: {twice} positive item(s) are recommended twice to the same user",
            path=path,
            column="item_id",
            hint="keep one row per (user_id, item_id), the one with the best rank",
        )
    return hits


def load_samples(path: str | Path, role: str) -> pl.LazyFrame:
    """user_id, item_id, label (Int8 0/1) of a samples file; other columns are ignored."""
    frame = scan_parquet(path)
    schema = frame.collect_schema()
    check_schema(schema, LABELLED, path)
    frame = _normalise_ids(frame.select("user_id", "item_id", "label"), schema, ["user_id", "item_id"])
    stats = frame.select(
        pl.len().alias("rows"),
        pl.col("user_id").null_count().alias("user_id"),
        pl.col("item_id").null_count().alias("item_id"),
        pl.col("label").null_count().alias("label"),
        pl.col("label").cast(pl.Int64).min().alias("min_label"),
        pl.col("label").cast(pl.Int64).max().alias("max_label"),
    ).collect().row(0, named=True)
    if stats["rows"] == 0:
        raise EmptyInput(f"{role} table has no rows", path=path, hint="check the file")
    nulls = [f"column '{name}' has {stats[name]} null value(s)" for name in ("user_id", "item_id", "label") if stats[name]]
    if nulls:
        raise NullValues(f"{role} table: " + "; ".join(nulls), path=path, hint="drop those rows")
    if stats["min_label"] < 0 or stats["max_label"] > 1:
        raise BadValues(
            f"{role} table: label must be 0 or 1, found values in [{stats['min_label']}, {stats['max_label']}]",
            path=path,
            column="label",
            hint="use 1 for positives and 0 for negatives",
        )
    return frame.with_columns(pl.col("label").cast(pl.Int8))


def _positives(samples: pl.LazyFrame) -> pl.LazyFrame:
    # A (user, item) clicked twice in the truth is one positive.
    return samples.filter(pl.col("label") == 1).select("user_id", "item_id").unique()


# --------------------------------------------------------------------------- buckets


def item_popularity_buckets(train: pl.LazyFrame, cuts: tuple[float, float] = POPULARITY_CUTS) -> pl.DataFrame:
    """item_id, train_positives, bucket ('head' | 'mid' | 'tail') for every item in train.

    Items are sorted by train positive count (rows with label 1). An item's bucket follows
    the share of all train positives held by strictly more popular items: below cuts[0] is
    head, below cuts[1] mid, the rest tail — so head is the smallest set of top items making
    a third of the positives, and items with equal counts always share a bucket. Items seen
    in train without a positive are tail.
    """
    counts = train.group_by("item_id").agg(pl.col("label").cast(pl.Int64).sum().alias("train_positives")).collect()
    total = int(counts["train_positives"].sum())
    mass = (
        counts.group_by("train_positives")
        .agg((pl.col("train_positives").sum()).alias("mass"))
        .sort("train_positives", descending=True)
        .with_columns((pl.col("mass").cum_sum() - pl.col("mass")).alias("before"))
    )
    share = pl.col("before") / total if total else pl.lit(1.0)
    mass = mass.with_columns(
        pl.when(share < cuts[0])
        .then(pl.lit("head"))
        .when(share < cuts[1])
        .then(pl.lit("mid"))
        .otherwise(pl.lit("tail"))
        .alias("bucket")
    )
    return counts.join(mass.select("train_positives", "bucket"), on="train_positives", how="left")


@dataclass(frozen=True)
class ActivityEdges:
    """Train positive counts: light <= light_max < medium <= medium_max < heavy."""

    light_max: int
    medium_max: int
    max: int


def user_activity_buckets(
    train: pl.LazyFrame, quantiles: tuple[float, float] = ACTIVITY_QUANTILES
) -> tuple[pl.DataFrame, ActivityEdges | None]:
    """user_id, train_positives, bucket ('light' | 'medium' | 'heavy') for users with a train
    positive, and the edges (quantiles with the 'lower' rule over those users' counts)."""
    counts = (
        train.filter(pl.col("label") == 1)
        .group_by("user_id")
        .agg(pl.len().cast(pl.Int64).alias("train_positives"))
        .collect()
    )
    if counts.height == 0:
        return counts.with_columns(pl.lit("light").alias("bucket")), None
    column = counts["train_positives"]
    edges = ActivityEdges(
        light_max=int(column.quantile(quantiles[0], interpolation="lower")),  # type: ignore[arg-type]
        medium_max=int(column.quantile(quantiles[1], interpolation="lower")),  # type: ignore[arg-type]
        max=int(column.max()),  # type: ignore[arg-type]
    )
    bucket = (
        pl.when(pl.col("train_positives") <= edges.light_max)
        .then(pl.lit("light"))
        .when(pl.col("train_positives") <= edges.medium_max)
        .then(pl.lit("medium"))
        .otherwise(pl.lit("heavy"))
    )
    return counts.with_columns(bucket.alias("bucket")), edges


# --------------------------------------------------------------------------- metrics


def _idcg(k: int) -> list[float]:
    """Ideal DCG with m relevant items, for m = 1..k."""
    return np.cumsum(1.0 / np.log2(np.arange(2, k + 2))).tolist()


def per_user_metrics(
    hits: pl.DataFrame, positives: pl.DataFrame, rec_users: pl.DataFrame, ks: Sequence[int]
) -> pl.DataFrame:
    """One row per user with a positive: n_pos, has_recs, recall@K, ndcg@K, hit_rate@K, mrr.

    hits: user_id, item_id, position of recommended positives; positives: unique
    (user_id, item_id) pairs; rec_users: user_id of every user with recs.
    """
    gain = 1.0 / (pl.col("position").cast(pl.Float64) + 1.0).log(2)
    user_hits = hits.group_by("user_id").agg(
        pl.col("position").min().alias("first_hit"),
        *[(pl.col("position") <= k).sum().cast(pl.Int64).alias(f"hits@{k}") for k in ks],
        *[gain.filter(pl.col("position") <= k).sum().alias(f"dcg@{k}") for k in ks],
    )
    users = (
        positives.group_by("user_id")
        .agg(pl.len().cast(pl.Int64).alias("n_pos"))
        .join(user_hits, on="user_id", how="left")
        .join(rec_users.with_columns(pl.lit(True).alias("has_recs")), on="user_id", how="left")
    )
    columns: list[pl.Expr] = [pl.col("has_recs").fill_null(False)]
    for k in ks:
        hits_k = pl.col(f"hits@{k}").fill_null(0)
        ideal = pl.min_horizontal(pl.lit(k, pl.Int64), pl.col("n_pos")).replace_strict(
            list(range(1, k + 1)), _idcg(k), return_dtype=pl.Float64
        )
        columns += [
            (hits_k / pl.col("n_pos")).alias(f"recall@{k}"),
            (pl.col(f"dcg@{k}").fill_null(0.0) / ideal).alias(f"ndcg@{k}"),
            (hits_k > 0).cast(pl.Float64).alias(f"hit_rate@{k}"),
        ]
    columns.append((1.0 / pl.col("first_hit").cast(pl.Float64)).fill_null(0.0).alias("mrr"))
    return users.with_columns(columns)


def _metric_names(ks: Sequence[int]) -> list[str]:
    names = [f"{metric}@{k}" for metric in ("recall", "ndcg", "hit_rate") for k in ks]
    return names + ["mrr"]


def recall_curve(hits: pl.DataFrame, users: pl.DataFrame, max_k: int) -> tuple[list[int], list[float]]:
    """Mean Recall@k over evaluated users for k = 1..max_k (one pass, cumulative).

    hits: user_id, position; users: user_id, n_pos of every evaluated user.
    """
    if users.height == 0 or max_k == 0:
        return [], []
    contributions = (
        hits.filter(pl.col("position") <= max_k)
        .join(users.select("user_id", "n_pos"), on="user_id")
        .group_by("position")
        .agg((1.0 / pl.col("n_pos")).sum().alias("mass"))
    )
    mass = np.zeros(max_k, dtype=np.float64)
    if contributions.height:
        mass[contributions["position"].to_numpy() - 1] = contributions["mass"].to_numpy()
    curve = np.cumsum(mass) / users.height
    return list(range(1, max_k + 1)), [float(v) for v in curve]


def _mean_row(frame: pl.DataFrame, names: Sequence[str]) -> dict[str, float | None]:
    if frame.height == 0:
        return {name: None for name in names}
    row = frame.select([pl.col(name).mean() for name in names]).row(0, named=True)
    return {name: float(value) if value is not None else None for name, value in row.items()}


# --------------------------------------------------------------------------- result


@dataclass
class EvaluateResult:
    """Metrics of one recs file against one truth file (see the module docstring)."""

    recs_path: str
    truth_path: str
    train_path: str | None
    ks: tuple[int, ...]
    users_evaluated: int
    users_without_recs: int
    rec_users_without_positives: int
    positives: int
    catalogue_items: int
    overall: dict[str, float | None]
    item_buckets: list[dict[str, Any]] | None = None
    user_buckets: list[dict[str, Any]] | None = None
    activity_edges: dict[str, int] | None = None
    curve_k: list[int] = field(default_factory=list)
    curve_recall: list[float] = field(default_factory=list)
    report_path: str | None = None
    out_path: str | None = None

    def summary(self) -> str:
        k = self.ks[0]
        parts = [
            f"evaluated {self.users_evaluated:,} users ({self.users_without_recs:,} without recs)",
            f"recall@{k} {_fmt(self.overall.get(f'recall@{k}'))}",
            f"ndcg@{k} {_fmt(self.overall.get(f'ndcg@{k}'))}",
            f"mrr {_fmt(self.overall.get('mrr'))}",
        ]
        text = ", ".join(parts)
        written = [p for p in (self.report_path, self.out_path) if p]
        if written:
            text += " -> " + ", ".join(written)
        return text

    def fields(self) -> dict[str, Any]:
        return {
            "users_evaluated": self.users_evaluated,
            "users_without_recs": self.users_without_recs,
            "positives": self.positives,
            **{name: value for name, value in self.overall.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "recs": self.recs_path,
            "truth": self.truth_path,
            "train": self.train_path,
            "ks": list(self.ks),
            "users": {
                "evaluated": self.users_evaluated,
                "without_recs": self.users_without_recs,
                "recs_without_positives": self.rec_users_without_positives,
            },
            "positives": self.positives,
            "catalogue_items": self.catalogue_items,
            "overall": self.overall,
            "item_buckets": self.item_buckets,
            "user_buckets": self.user_buckets,
            "activity_edges": self.activity_edges,
            "recall_curve": {"k": self.curve_k, "recall": self.curve_recall},
        }

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), indent=2)

    def to_markdown(self) -> str:
        return render_markdown(self)

    def to_html(self) -> str:
        return render_html(self)


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# --------------------------------------------------------------------------- run


def _item_slots(recs: Recs, ks: Sequence[int]) -> pl.DataFrame:
    """item_id, slots@K: how many top-K slots hold each recommended item."""
    slots: pl.DataFrame | None = None
    for k in ks:
        counts = (
            recs.rows.lazy()
            .select(pl.col("item_id").filter(pl.col("position") <= k))
            .group_by("item_id")
            .agg(pl.len().alias(f"slots@{k}"))
            .collect(engine="streaming")
        )
        slots = counts if slots is None else slots.join(counts, on="item_id", how="full", coalesce=True)
    assert slots is not None
    return slots.with_columns([pl.col(f"slots@{k}").fill_null(0) for k in ks])


def evaluate_frames(
    recs: Recs,
    truth: pl.LazyFrame,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    train: pl.LazyFrame | None = None,
    recs_path: str | Path | None = None,
) -> dict[str, Any]:
    """The metrics as plain data, from checked inputs (see `load_recs`, `load_samples`)."""
    ks = tuple(ks)
    positives = _positives(truth).collect()
    hits = _hits(recs, positives, recs_path)
    users = per_user_metrics(hits, positives, recs.users, ks)
    names = _metric_names(ks)
    overall = _mean_row(users, names)
    n_users = users.height

    truth_items = truth.select("item_id").unique().collect()
    train_items = train.select("item_id").unique().collect() if train is not None else None
    catalogue = truth_items if train_items is None else pl.concat([truth_items, train_items]).unique()
    item_slots = _item_slots(recs, ks)
    in_catalogue = item_slots.join(catalogue, on="item_id", how="semi")
    for k in ks:
        covered = int((in_catalogue[f"slots@{k}"] > 0).sum())
        overall[f"coverage@{k}"] = covered / catalogue.height if catalogue.height else None
    for k in ks:
        overall[f"cold_share@{k}"] = None
    if train_items is not None:
        cold = item_slots.join(train_items, on="item_id", how="anti")
        for k in ks:
            slots = int(item_slots[f"slots@{k}"].sum())
            overall[f"cold_share@{k}"] = int(cold[f"slots@{k}"].sum()) / slots if slots else None

    longest = int(recs.rows["position"].max()) if recs.rows.height else 0  # type: ignore[arg-type]
    curve_k, curve_recall = recall_curve(hits, users, min(max(longest, ks[-1]), CURVE_MAX_K))

    result: dict[str, Any] = {
        "ks": ks,
        "users_evaluated": n_users,
        "users_without_recs": int((~users["has_recs"]).sum()) if n_users else 0,
        "rec_users_without_positives": recs.users.join(users.select("user_id"), on="user_id", how="anti").height,
        "positives": positives.height,
        "catalogue_items": catalogue.height,
        "overall": overall,
        "curve_k": curve_k,
        "curve_recall": curve_recall,
    }
    if train is not None:
        result["item_buckets"] = _item_bucket_rows(hits, positives, item_slots, train, ks)
        user_rows, edges = _user_bucket_rows(users, train, ks)
        result["user_buckets"] = user_rows
        result["activity_edges"] = None if edges is None else {
            "light_max": edges.light_max,
            "medium_max": edges.medium_max,
            "max": edges.max,
        }
    return result


def _item_bucket_rows(
    hits: pl.DataFrame, positives: pl.DataFrame, item_slots: pl.DataFrame, train: pl.LazyFrame, ks: Sequence[int]
) -> list[dict[str, Any]]:
    buckets = item_popularity_buckets(train)
    bucket_of = buckets.select("item_id", "bucket")
    total_train = int(buckets["train_positives"].sum())

    def with_bucket(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.join(bucket_of, on="item_id", how="left").with_columns(pl.col("bucket").fill_null("new"))

    per_pair = (
        with_bucket(positives)
        .group_by("user_id", "bucket")
        .agg(pl.len().alias("n_pos"))
        .join(
            with_bucket(hits)
            .group_by("user_id", "bucket")
            .agg([(pl.col("position") <= k).sum().alias(f"hits@{k}") for k in ks]),
            on=["user_id", "bucket"],
            how="left",
        )
        .with_columns([(pl.col(f"hits@{k}").fill_null(0) / pl.col("n_pos")).alias(f"recall@{k}") for k in ks])
    )
    by_bucket = per_pair.group_by("bucket").agg(
        pl.len().alias("users"),
        pl.col("n_pos").sum().alias("positives"),
        *[pl.col(f"recall@{k}").mean() for k in ks],
    )
    slots = with_bucket(item_slots).group_by("bucket").agg([pl.col(f"slots@{k}").sum() for k in ks])
    slot_totals = {k: int(item_slots[f"slots@{k}"].sum()) for k in ks}
    train_stats = buckets.group_by("bucket").agg(pl.len().alias("items"), pl.col("train_positives").sum().alias("mass"))
    stats = {row["bucket"]: row for row in by_bucket.iter_rows(named=True)}
    slot_rows = {row["bucket"]: row for row in slots.iter_rows(named=True)}
    train_rows = {row["bucket"]: row for row in train_stats.iter_rows(named=True)}
    rows = []
    for name in ITEM_BUCKETS:  # four rows: plain Python is fine here
        stat = stats.get(name, {})
        train_row = train_rows.get(name)
        row: dict[str, Any] = {
            "bucket": name,
            "train_items": int(train_row["items"]) if train_row else 0,
            "train_positive_share": (int(train_row["mass"]) / total_train if train_row and total_train else 0.0),
            "positives": int(stat.get("positives") or 0),
            "users": int(stat.get("users") or 0),
        }
        for k in ks:
            value = stat.get(f"recall@{k}")
            row[f"recall@{k}"] = float(value) if value is not None else None
        for k in ks:
            slot = slot_rows.get(name, {}).get(f"slots@{k}", 0)
            row[f"rec_share@{k}"] = slot / slot_totals[k] if slot_totals[k] else None
        rows.append(row)
    return rows


def _user_bucket_rows(
    users: pl.DataFrame, train: pl.LazyFrame, ks: Sequence[int]
) -> tuple[list[dict[str, Any]], ActivityEdges | None]:
    activity, edges = user_activity_buckets(train)
    labelled = users.join(activity, on="user_id", how="left").with_columns(
        pl.col("bucket").fill_null("new"), pl.col("train_positives").fill_null(0)
    )
    names = _metric_names(ks)
    grouped = {
        row["bucket"]: row
        for row in labelled.group_by("bucket")
        .agg(pl.len().alias("users"), *[pl.col(name).mean() for name in names])
        .iter_rows(named=True)
    }
    ranges = {"new": "0"}
    if edges is not None:
        ranges["light"] = f"1–{edges.light_max}"
        ranges["medium"] = f"{edges.light_max + 1}–{edges.medium_max}" if edges.medium_max > edges.light_max else "—"
        ranges["heavy"] = f"{edges.medium_max + 1}–{edges.max}" if edges.max > edges.medium_max else "—"
    rows = []
    for name in USER_BUCKETS:
        stat = grouped.get(name, {})
        row: dict[str, Any] = {"bucket": name, "train_positives": ranges.get(name, "—"), "users": int(stat.get("users") or 0)}
        for metric in names:
            value = stat.get(metric)
            row[metric] = float(value) if value is not None else None
        rows.append(row)
    return rows, edges


def _warn_short_lists(recs: Recs, ks: Sequence[int], path: str | Path) -> None:
    """Say so when every list is shorter than a K: its @K metrics equal the list length's."""
    longest = int(recs.rows["position"].max() or 0) if recs.rows.height else 0  # type: ignore[arg-type]
    beyond = [k for k in ks if k > longest]
    if recs.rows.height and beyond:
        log.warning(f"{path}: the longest recommendation list has {longest} items, fewer than K = {', '.join(map(str, beyond))}: "
                    f"those metrics count only the first {longest} — recall at least --k {max(ks)} items to measure @{max(ks)}",
                    longest_list=longest)


def run_evaluate(
    recs: str | Path,
    truth: str | Path,
    *,
    ks: str | Sequence[int] = DEFAULT_KS,
    train: str | Path | None = None,
    report: str | Path | None = None,
    out: str | Path | None = None,
) -> EvaluateResult:
    """Evaluate `recs` against the positives of `truth`; optionally write an HTML report and
    a metrics JSON file (both atomically). Returns the metrics."""
    cutoffs = parse_ks(ks)
    _check_truth_path(truth)
    for option, path in (("--report", report), ("--out", out)):
        if path is not None and str(path) == "-":
            raise UsageError(f"{option} - is not supported: stdout already gets the table",
                             hint="use --json for metrics on stdout, or give a file name")
        if path is not None:
            check_output_file(path)
    if report is not None and out is not None and Path(report).resolve() == Path(out).resolve():
        raise UsageError("--report and --out name the same file", path=out, hint="give them different names")
    recs_frame = load_recs(recs)
    truth_frame = load_samples(truth, "truth")
    train_path = _resolve_train(train) if train is not None else None
    train_frame = load_samples(train_path, "train") if train_path is not None else None

    truth_schema = truth_frame.collect_schema()
    for column in ("user_id", "item_id"):
        check_id_types_match(recs_frame.rows.schema[column], truth_schema[column], column, recs, truth)
        if train_frame is not None:
            check_id_types_match(
                train_frame.collect_schema()[column], truth_schema[column], column, train_path, truth  # type: ignore[arg-type]
            )

    metrics = evaluate_frames(recs_frame, truth_frame, ks=cutoffs, train=train_frame, recs_path=recs)
    _warn_short_lists(recs_frame, cutoffs, recs)
    if metrics["users_evaluated"] == 0:
        log.warning(f"{truth}: no positives (label 1) in the truth; every metric is empty")
    result = EvaluateResult(
        recs_path=str(recs),
        truth_path=str(truth),
        train_path=str(train_path) if train_path is not None else None,
        **metrics,
    )
    # Take both locks first, so a locked --out never leaves a fresh --report behind.
    with contextlib.ExitStack() as stack:
        for path in (report, out):
            if path is not None:
                stack.enter_context(output_lock(path, "coldrec evaluate"))
        if report is not None:
            with atomic_file(report) as temp:
                temp.write_text(result.to_html(), encoding="utf-8")
            result.report_path = str(report)
        if out is not None:
            write_json_atomic(_finite(result.to_dict()), out)
            result.out_path = str(out)
    return result


# --------------------------------------------------------------------------- rendering


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _overall_rows(result: EvaluateResult) -> tuple[list[str], list[list[str]]]:
    header = ["metric"] + [f"@{k}" for k in result.ks]
    o = result.overall
    rows = [
        ["Recall"] + [_fmt(o.get(f"recall@{k}")) for k in result.ks],
        ["NDCG"] + [_fmt(o.get(f"ndcg@{k}")) for k in result.ks],
        ["HitRate"] + [_fmt(o.get(f"hit_rate@{k}")) for k in result.ks],
        ["Coverage"] + [_pct(o.get(f"coverage@{k}")) for k in result.ks],
        ["Cold share"] + [_pct(o.get(f"cold_share@{k}")) for k in result.ks],
    ]
    return header, rows


def _item_rows(result: EvaluateResult) -> tuple[list[str], list[list[str]]]:
    ks = result.ks
    header = ["item bucket", "train items", "train positives", "test positives", "users"]
    header += [f"Recall@{k}" for k in ks] + [f"rec share@{k}" for k in ks]
    rows = []
    for row in result.item_buckets or []:
        rows.append(
            [row["bucket"], f"{row['train_items']:,}", _pct(row["train_positive_share"]), f"{row['positives']:,}", f"{row['users']:,}"]
            + [_fmt(row[f"recall@{k}"]) for k in ks]
            + [_pct(row[f"rec_share@{k}"]) for k in ks]
        )
    return header, rows


def _user_rows(result: EvaluateResult) -> tuple[list[str], list[list[str]]]:
    ks = result.ks
    header = ["user bucket", "train positives", "users"]
    header += [f"Recall@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + [f"HitRate@{k}" for k in ks] + ["MRR"]
    rows = []
    for row in result.user_buckets or []:
        rows.append(
            [row["bucket"], row["train_positives"], f"{row['users']:,}"]
            + [_fmt(row[f"recall@{k}"]) for k in ks]
            + [_fmt(row[f"ndcg@{k}"]) for k in ks]
            + [_fmt(row[f"hit_rate@{k}"]) for k in ks]
            + [_fmt(row["mrr"])]
        )
    return header, rows


def _headline(result: EvaluateResult) -> str:
    return (
        f"{result.users_evaluated:,} users with positives ({result.users_without_recs:,} without recs, "
        f"scored 0), {result.positives:,} positives, catalogue {result.catalogue_items:,} items"
    )


def render_markdown(result: EvaluateResult) -> str:
    """The tables as Markdown (what `coldrec evaluate` prints on stdout)."""
    parts = [f"## Evaluation: {result.recs_path}", "", _headline(result), ""]
    parts += [_markdown_table(*_overall_rows(result)), "", f"MRR: {_fmt(result.overall.get('mrr'))}"]
    if result.item_buckets is not None:
        parts += ["", "### By item popularity in train", "", _markdown_table(*_item_rows(result))]
    if result.user_buckets is not None:
        parts += ["", "### By user activity in train", "", _markdown_table(*_user_rows(result))]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- HTML report

def render_html(result: EvaluateResult) -> str:
    """A self-contained HTML page: inline CSS and SVG, no scripts, no external assets."""
    ks = result.ks
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>coldrec evaluate</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>coldrec evaluate</h1>",
        '<p class="meta">recs <code>{}</code> · truth <code>{}</code>{}</p>'.format(
            html.escape(result.recs_path),
            html.escape(result.truth_path),
            f" · train <code>{html.escape(result.train_path)}</code>" if result.train_path else "",
        ),
        f"<p>{html.escape(_headline(result))}. MRR {_fmt(result.overall.get('mrr'))}.</p>",
        "<h2>Overall</h2>",
        html_table(*_overall_rows(result)),
    ]
    plots = [svg_line_chart("Recall@k", result.curve_k, result.curve_recall, ks)]
    breakdowns = (
        ("By item popularity in train", "Recall by item bucket", result.item_buckets, _item_rows),
        ("By user activity in train", "Recall by user bucket", result.user_buckets, _user_rows),
    )
    for heading, chart_title, buckets, table_rows in breakdowns:
        if buckets is None:
            continue
        parts += [f"<h2>{heading}</h2>", html_table(*table_rows(result))]
        categories = [row["bucket"] for row in buckets]
        plots.append(
            svg_bar_chart(chart_title, categories, {f"recall@{k}": [row[f"recall@{k}"] for row in buckets] for k in ks})
        )
    parts += ["<h2>Plots</h2>", '<div class="plots">', *plots, "</div>"]
    parts += [
        '<p class="meta">Recall@K = hits in the top K / number of positives; NDCG with binary relevance; '
        "users with positives but no recs count as zeros. Item buckets: head, mid and tail hold equal "
        "thirds of the train positives; new items never appear in train. Definitions: docs/metrics.md.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
