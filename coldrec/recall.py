"""Batch top-k recall: user vectors against an index, seen items excluded, sharded.

For each user: search the main index (Annoy or exact) and the delta (exact), drop items the
user already clicked (`--exclude`) and main items the delta superseded, over-fetching and
re-asking until k remain (or the catalogue runs out), merge by cosine and keep the best k.
`--fresh-quota F` then reserves ceil(F·k) of the k slots for items first seen within
`--fresh-days` of `--as-of`: the best fresh items replace the lowest-scoring others when
fewer than that made the list on their own. Output rows: user_id, rank (1 = best), item_id,
score (cosine), users in input order.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import polars as pl

from coldrec import io, log
from coldrec.embed import Embeddings, read_embeddings
from coldrec.errors import IncompatibleModel, MissingColumn, UsageError
from coldrec.index import ExactSearcher, LoadedIndex, Searcher, load_index
from coldrec.options import RecallOptions
from coldrec.result import StageResult
from coldrec.schema import Column, Kind, TableContract, check_id_types_match, check_schema

FORMATS = ("parquet", "jsonl", "csv")
DEFAULT_K = RecallOptions.k
DEFAULT_FRESH_DAYS = RecallOptions.fresh_days
# Users per search batch: large enough to amortise the matrix multiply, small enough that
# a batch's candidates stay a few MB.
BATCH_USERS = 4096
PREPARE_SPLITS = ("train.parquet", "valid.parquet")

EXCLUDE_CONTRACT = TableContract(
    "samples",
    (Column("user_id", Kind.ID), Column("item_id", Kind.ID), Column("label", Kind.LABEL)),
    description="labelled exposures; rows with label 1 are excluded from recall",
)


# --------------------------------------------------------------------------- small parts


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str | None) -> Shard | None:
    """'i/n' with 0 <= i < n. None passes through."""
    if spec is None:
        return None
    parts = spec.split("/")
    try:
        index, count = (int(p) for p in parts)
        if len(parts) != 2:
            raise ValueError
    except ValueError:
        raise UsageError(f"--shard '{spec}' is not of the form i/n", hint="pass e.g. --shard 0/4 (shards 0..3 of 4)") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(
            f"--shard {spec} is out of range (the shard index runs 0..n-1)",
            hint=f"pass --shard i/{max(count, 1)} with 0 <= i < {max(count, 1)}",
        )
    return Shard(index, count)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    x = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def shard_of(ids: pl.Series, count: int) -> np.ndarray:
    """The shard (0..count-1) of every id: a stable hash, the same on every machine and run.

    Integer ids: splitmix64 of the value; string ids: CRC-32 of the UTF-8 bytes.
    """
    if ids.dtype.is_integer():
        hashed = _splitmix64(ids.cast(pl.Int64).to_numpy().view(np.uint64))
    else:
        hashed = np.fromiter((zlib.crc32(s.encode()) for s in ids.to_list()), dtype=np.uint64, count=len(ids))
    return (hashed % np.uint64(count)).astype(np.int64)


def _exclusion_files(path: Path) -> list[Path]:
    if path.is_dir() and any((path / name).exists() for name in PREPARE_SPLITS):
        # A `prepare` output directory: what the user saw in training and validation.
        return [path / name for name in PREPARE_SPLITS if (path / name).exists()]
    return [path]


def load_exclusions(
    path: str | Path, users: pl.Series, index: LoadedIndex
) -> tuple[np.ndarray, np.ndarray]:
    """Items each user clicked (label 1) in a samples file or `prepare` directory.

    users: (n,) the query ids in batch order. Returns CSR arrays: offsets (n + 1,) and global
    item positions (m,), so user row r excludes positions[offsets[r]:offsets[r + 1]].
    Items absent from the index are ignored.
    """
    path = Path(path)
    frames = []
    for file in _exclusion_files(path):
        frame = io.scan_parquet(file)
        schema = frame.collect_schema()
        check_schema(schema, EXCLUDE_CONTRACT, file)
        check_id_types_match(schema["user_id"], users.dtype, "user_id", file, "the query embeddings")
        check_id_types_match(schema["item_id"], index.item_ids.dtype, "item_id", file, index.directory)
        frames.append(
            frame.filter(pl.col("label").cast(pl.Int8) == 1)
            .select(pl.col("user_id").cast(users.dtype), pl.col("item_id").cast(index.item_ids.dtype))
        )
    user_rows = pl.DataFrame({"user_id": users, "row": np.arange(len(users), dtype=np.int64)}).lazy()
    item_positions = pl.DataFrame(
        {"item_id": index.item_ids, "position": np.arange(index.count, dtype=np.int64)}
    ).lazy()
    pairs = (
        pl.concat(frames)
        .unique()
        .join(user_rows, on="user_id", how="inner")
        .join(item_positions, on="item_id", how="inner")
        .select("row", "position")
        .sort("row", "position")
        .collect()
    )
    rows = pairs["row"].to_numpy()
    counts = np.bincount(rows, minlength=len(users)) if len(rows) else np.zeros(len(users), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, pairs["position"].to_numpy().astype(np.int64)


# --------------------------------------------------------------------------- the search


@dataclass
class RecallPlan:
    """Everything needed to answer a batch of users (built once, used per batch)."""

    index: LoadedIndex
    main: Searcher
    delta: ExactSearcher | None
    k: int
    blocked: np.ndarray  # (m,) global positions never returned (superseded by the delta)
    fresh_positions: np.ndarray  # (f,) global positions of fresh items
    fresh: ExactSearcher | None
    fresh_slots: int


def _mask_pairs(rows: np.ndarray, positions: np.ndarray, excl_rows: np.ndarray, excl_pos: np.ndarray, total: int) -> np.ndarray:
    """(b, w) bool: True where (row, position) is an excluded pair."""
    if len(excl_pos) == 0:
        return np.zeros(positions.shape, dtype=bool)
    keys = rows[:, None] * (total + 1) + positions  # (b, w)
    return np.isin(keys, excl_rows * (total + 1) + excl_pos)


def search_batch(
    plan: RecallPlan, queries: np.ndarray, offsets: np.ndarray, excluded: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k global positions and scores for a batch of users.

    queries: (b, dim). offsets (b + 1,) / excluded (m,): this batch's exclusions (CSR).
    Returns positions (b, k) int64 and scores (b, k) float32, -1 / -inf where fewer remain.
    """
    index, k = plan.index, plan.k
    rows_n = len(queries)
    excl_counts = np.diff(offsets)  # (b,)
    excl_rows = np.repeat(np.arange(rows_n), excl_counts)  # (m,)
    positions = np.full((rows_n, k), -1, dtype=np.int64)
    scores = np.full((rows_n, k), -np.inf, dtype=np.float32)
    fetch = k + excl_counts + len(plan.blocked)  # (b,) per-user over-fetch
    pending = np.arange(rows_n)
    delta_found: tuple[np.ndarray, np.ndarray] | None = None
    if plan.delta is not None and plan.delta.count:
        delta_idx, delta_scores = plan.delta.search(queries, np.minimum(k + excl_counts, plan.delta.count))
        delta_idx = np.where(delta_idx >= 0, delta_idx + index.main_count, -1)
        delta_found = (delta_idx, delta_scores)
    while len(pending):
        main_idx, main_scores = plan.main.search(queries[pending], np.minimum(fetch[pending], max(plan.main.count, 1)))
        cand_idx, cand_scores = main_idx, main_scores
        if delta_found is not None:
            cand_idx = np.concatenate([main_idx, delta_found[0][pending]], axis=1)
            cand_scores = np.concatenate([main_scores, delta_found[1][pending]], axis=1)
        invalid = cand_idx < 0
        if len(plan.blocked):
            invalid |= np.isin(cand_idx, plan.blocked)
        in_batch = np.isin(excl_rows, pending)
        invalid |= _mask_pairs(pending, cand_idx, excl_rows[in_batch], excluded[in_batch], index.count)
        cand_scores = np.where(invalid, -np.inf, cand_scores)
        order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]  # (p, <=k)
        top_idx = np.take_along_axis(cand_idx, order, axis=1)
        top_scores = np.take_along_axis(cand_scores, order, axis=1)
        top_idx = np.where(np.isfinite(top_scores), top_idx, -1)
        width = top_idx.shape[1]
        positions[pending, :width] = top_idx
        scores[pending, :width] = top_scores
        # Re-ask users left short while the main searcher may hold more (it filled its fetch).
        found = (top_idx >= 0).sum(axis=1)
        asked = np.minimum(fetch[pending], plan.main.count)
        filled = (main_idx >= 0).sum(axis=1) >= asked
        short = (found < k) & filled & (asked < plan.main.count)
        pending = pending[short]
        fetch[pending] *= 2
    if plan.fresh is not None and plan.fresh_slots:
        _apply_fresh_quota(plan, queries, positions, scores, offsets, excluded, excl_rows)
    return positions, scores


def _apply_fresh_quota(
    plan: RecallPlan,
    queries: np.ndarray,
    positions: np.ndarray,
    scores: np.ndarray,
    offsets: np.ndarray,
    excluded: np.ndarray,
    excl_rows: np.ndarray,
) -> None:
    """Make sure each row holds at least `fresh_slots` fresh items when enough exist (in place)."""
    assert plan.fresh is not None
    index = plan.index
    slots = plan.fresh_slots
    is_fresh = np.zeros(index.count, dtype=bool)
    is_fresh[plan.fresh_positions] = True
    excl_counts = np.diff(offsets)
    fresh_idx, fresh_scores = plan.fresh.search(queries, np.minimum(slots + excl_counts, plan.fresh.count))
    fresh_idx = np.where(fresh_idx >= 0, plan.fresh_positions[np.maximum(fresh_idx, 0)], -1)
    invalid = (fresh_idx < 0) | _mask_pairs(np.arange(len(queries)), fresh_idx, excl_rows, excluded, index.count)
    fresh_scores = np.where(invalid, -np.inf, fresh_scores)
    have = (is_fresh[np.maximum(positions, 0)] & (positions >= 0)).sum(axis=1)  # (b,)
    for row in np.flatnonzero(have < slots):
        current = positions[row][positions[row] >= 0]
        current_scores = scores[row][: len(current)]
        taken = set(current.tolist())
        extra = [
            (int(p), float(s))
            for p, s in zip(fresh_idx[row], fresh_scores[row])
            if np.isfinite(s) and int(p) not in taken
        ][: slots - int(have[row])]
        if not extra:
            continue
        room = plan.k - len(current)
        replace = max(0, len(extra) - room)
        # Drop the lowest-scoring non-fresh items to make room.
        non_fresh = [i for i in range(len(current)) if not is_fresh[current[i]]]
        drop = set(non_fresh[len(non_fresh) - replace :]) if replace else set()
        kept = [(int(current[i]), float(current_scores[i])) for i in range(len(current)) if i not in drop]
        merged = sorted(kept + extra, key=lambda pair: -pair[1])[: plan.k]
        positions[row] = -1
        scores[row] = -np.inf
        positions[row, : len(merged)] = [p for p, _ in merged]
        scores[row, : len(merged)] = [s for _, s in merged]


# --------------------------------------------------------------------------- output


class _Sink:
    """Receives result batches; parquet/jsonl/csv to a file (atomically) or stdout."""

    def __init__(self, out: str | None, fmt: str, stdout: TextIO) -> None:
        self.out, self.fmt, self.stdout = out, fmt, stdout
        self.rows = 0
        self._writer: Any = None
        self._handle: TextIO | None = None
        self._first = True
        self._schema: Any = None

    def open(self, temp: Path | None) -> None:
        self._temp = temp
        if temp is not None and self.fmt != "parquet":
            self._handle = open(temp, "w", encoding="utf-8")

    def write(self, frame: pl.DataFrame) -> None:
        self.rows += len(frame)
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            table = frame.to_arrow()
            if self._writer is None:
                self._schema = _plain_schema(table.schema)
                self._writer = pq.ParquetWriter(self._temp, self._schema)
            self._writer.write_table(table.cast(self._schema))
            return
        target = self._handle or self.stdout
        if self.fmt == "jsonl":
            if len(frame):
                target.write(frame.write_ndjson())
        else:
            target.write(frame.write_csv(include_header=self._first))
            self._first = False
        target.flush()

    def close(self, empty: pl.DataFrame) -> None:
        if self.fmt == "parquet" and self._writer is None:
            self.write(empty)
        if self._writer is not None:
            self._writer.close()
        if self._handle is not None:
            self._handle.close()
        elif self.fmt == "csv" and self._first:
            self.stdout.write(empty.write_csv(include_header=True))


def _plain_schema(schema: Any) -> Any:
    import pyarrow as pa

    fields = []
    for f in schema:
        kind = f.type
        if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
            kind = pa.string()
        fields.append(pa.field(f.name, kind, nullable=f.nullable))
    return pa.schema(fields)


def _batch_frame(users: pl.Series, index: LoadedIndex, positions: np.ndarray, scores: np.ndarray) -> pl.DataFrame:
    valid = positions >= 0  # (b, k)
    counts = valid.sum(axis=1)
    rows = np.repeat(np.arange(len(users)), counts)
    ranks = (np.cumsum(valid, axis=1)[valid]).astype(np.int32)
    return pl.DataFrame(
        {
            "user_id": users.gather(rows),
            "rank": pl.Series(ranks, dtype=pl.Int32),
            "item_id": index.item_ids.gather(positions[valid]),
            "score": pl.Series(scores[valid], dtype=pl.Float32),
        }
    )


# --------------------------------------------------------------------------- the command


@dataclass
class RecallResult(StageResult):
    out: str
    users: int
    rows: int
    k: int
    searcher: str
    short_users: int
    shard: str | None
    seconds: float

    def summary(self) -> str:
        shard = f" (shard {self.shard})" if self.shard else ""
        short = f"; {self.short_users} user(s) got fewer than {self.k}" if self.short_users else ""
        return (
            f"recall: {self.users} users{shard} x top {self.k} ({self.searcher}) -> {self.rows} rows "
            f"to {self.out} in {self.seconds:.1f}s{short}"
        )


def _check_options(k: int, fmt: str | None, out: str | None, user_id: str | None, fresh_quota: float, fresh_days: int, threads: int | None) -> None:
    if k <= 0:
        raise UsageError(f"--k must be positive, got {k}", hint="pass --k 100")
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format {fmt} is not one of {', '.join(FORMATS)}", hint="pass --format jsonl")
    if out is None and user_id is None:
        raise UsageError("--out is required (a file, or - for stdout)", hint="pass --out recs.parquet or --out -")
    if (out is None or io.is_stdout(out)) and fmt == "parquet":
        raise UsageError("Parquet cannot stream to stdout", hint="pass --format jsonl or csv, or --out recs.parquet")
    if out is not None and not io.is_stdout(out):
        io.check_output_file(out)
    if not 0.0 <= fresh_quota <= 1.0:
        raise UsageError(f"--fresh-quota must be within 0..1, got {fresh_quota}", hint="pass e.g. --fresh-quota 0.1")
    if fresh_days < 1:
        raise UsageError(f"--fresh-days must be at least 1, got {fresh_days}", hint="pass e.g. --fresh-days 7")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}", hint="pass --threads 4")


def _output_format(fmt: str | None, out: str | None) -> str:
    if fmt is not None:
        return fmt
    if out is None or io.is_stdout(out):
        return "jsonl"
    suffix = Path(out).suffix.lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(suffix, "parquet")


def _query_embeddings(
    queries: str | Path | None,
    model: str | Path | None,
    users: str | Path | None,
    stats: str | Path | None,
    cold: bool,
) -> Embeddings:
    if (queries is None) == (model is None):
        raise UsageError(
            "pass either --queries USER_EMB.parquet or --model MODEL_DIR --users USERS",
            hint="embed users with `coldrec embed --users`, or let recall do it with --model/--users",
        )
    if queries is not None:
        embeddings = read_embeddings(queries)
        if embeddings.id_column != "user_id":
            raise MissingColumn(
                f"query embeddings need a user_id column, found '{embeddings.id_column}'",
                path=queries,
                hint="pass the output of `coldrec embed --users ...`",
            )
        return embeddings
    if users is None:
        raise UsageError("--model needs --users (the users table to embed)", hint="pass --users users.parquet")
    from coldrec.embed import embed_entities

    return embed_entities(model, users=users, stats=stats, cold=cold)


def _select_user(embeddings: Embeddings, user_id: str) -> np.ndarray:
    ids = embeddings.ids
    if ids.dtype.is_integer():
        try:
            wanted: Any = int(user_id)
        except ValueError:
            raise UsageError(
                f"--user-id {user_id!r} is not an integer, but user ids are {ids.dtype}",
                path=embeddings.path,
                hint="pass an integer id",
            ) from None
    else:
        wanted = user_id
    rows = np.flatnonzero((ids == wanted).to_numpy())
    if len(rows) == 0:
        raise UsageError(
            f"user id {user_id!r} is not in the query embeddings",
            path=embeddings.path,
            hint="embed that user first (or use --model with --users holding it)",
        )
    return rows


def run_recall(
    *,
    index: str | Path,
    out: str | Path | None = None,
    queries: str | Path | None = None,
    model: str | Path | None = None,
    users: str | Path | None = None,
    stats: str | Path | None = None,
    cold: bool = False,
    k: int = DEFAULT_K,
    exclude: str | Path | None = None,
    search_k: int | None = None,
    exact: bool | None = None,
    shard: str | None = None,
    threads: int | None = None,
    user_id: str | None = None,
    output_format: str | None = None,
    fresh_quota: float = 0.0,
    fresh_days: int = DEFAULT_FRESH_DAYS,
    as_of: dt.date | None = None,
    strict: bool = False,
    batch_users: int = BATCH_USERS,
    stdout: TextIO | None = None,
) -> RecallResult:
    """Top-k items for every user (or one shard of them, or one user) -> recs.

    Everything is checked before anything is written: a bad option or input raises a
    ColdrecError and leaves `out` untouched. `exact=None` picks exact search below
    index.EXACT_BELOW_ITEMS items.
    """
    started = time.monotonic()
    out_text = None if out is None else str(out)
    _check_options(k, output_format, out_text, user_id, fresh_quota, fresh_days, threads)
    parsed_shard = parse_shard(shard)
    fmt = _output_format(output_format, out_text)
    threads = threads or (os.cpu_count() or 1)

    loaded = load_index(index)
    embeddings = _query_embeddings(queries, model, users, stats, cold)
    _check_queries_match(embeddings, loaded, strict)
    rows = _query_rows(embeddings, user_id, parsed_shard)
    user_ids = embeddings.ids.gather(rows).rename("user_id")
    vectors = embeddings.vectors[rows]  # (n, dim)
    offsets, excluded = (np.zeros(len(rows) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if exclude is not None:
        offsets, excluded = load_exclusions(exclude, user_ids, loaded)

    plan = make_plan(loaded, k=k, exact=exact, search_k=search_k, threads=threads, fresh_quota=fresh_quota, fresh_days=fresh_days, as_of=as_of)
    empty = _batch_frame(user_ids.clear(), loaded, np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32))
    sink = _Sink(out_text, fmt, stdout or sys.stdout)
    batches = _recall_batches(plan, user_ids, vectors, offsets, excluded, batch_users)
    shown, short = _write_recs(sink, batches, out_text, len(rows), empty)
    return RecallResult(
        out=shown,
        users=len(rows),
        rows=sink.rows,
        k=k,
        searcher=type(plan.main).__name__.removesuffix("Searcher").lower(),
        short_users=short,
        shard=str(parsed_shard) if parsed_shard else None,
        seconds=time.monotonic() - started,
    )


def _check_queries_match(embeddings: Embeddings, loaded: LoadedIndex, strict: bool) -> None:
    """Refuse queries of another dim than the index's; warn (or refuse) on another model."""
    if embeddings.dim != loaded.dim:
        raise IncompatibleModel(
            f"query embeddings have dim {embeddings.dim}, the index has dim {loaded.dim}",
            path=embeddings.path,
            hint="embed users with the model the index was built from",
        )
    _check_fingerprints(embeddings, loaded, strict)


def _query_rows(embeddings: Embeddings, user_id: str | None, shard: Shard | None) -> np.ndarray:
    """Rows of the query embeddings to answer: all, the one --user-id, then this shard's."""
    rows = np.arange(len(embeddings))
    if user_id is not None:
        rows = _select_user(embeddings, user_id)
    if shard is not None:
        rows = rows[shard_of(embeddings.ids.gather(rows), shard.count) == shard.index]
    return rows


def _recall_batches(
    plan: RecallPlan,
    user_ids: pl.Series,
    vectors: np.ndarray,
    offsets: np.ndarray,
    excluded: np.ndarray,
    batch_users: int,
) -> Iterator[tuple[pl.DataFrame, int, int]]:
    """Per batch of users: (its recs, its number of users, how many of them got fewer than k)."""
    total = len(user_ids)
    for start in range(0, total, batch_users):
        stop = min(start + batch_users, total)
        batch_offsets = offsets[start : stop + 1] - offsets[start]
        batch_excluded = excluded[offsets[start] : offsets[stop]]
        positions, scores = search_batch(plan, vectors[start:stop], batch_offsets, batch_excluded)
        short = int(((positions >= 0).sum(axis=1) < plan.k).sum())
        yield _batch_frame(user_ids[start:stop], plan.index, positions, scores), stop - start, short
        log.debug(f"recall: {stop}/{total} users")


def _write_recs(
    sink: _Sink,
    batches: Iterator[tuple[pl.DataFrame, int, int]],
    out_text: str | None,
    total: int,
    empty: pl.DataFrame,
) -> tuple[str, int]:
    """Write every batch to stdout, or atomically to `out_text`. Returns (where, short users)."""
    short = 0
    if out_text is None or io.is_stdout(out_text):
        sink.open(None)
        for frame, _, batch_short in batches:
            short += batch_short
            sink.write(frame)
        sink.close(empty)
        return "stdout", short
    with io.output_lock(out_text, "coldrec recall"), io.atomic_file(out_text) as temp:
        sink.open(temp)
        with log.progress("recall", total) as bar:
            for frame, done, batch_short in batches:
                short += batch_short
                sink.write(frame)
                bar.advance(done)
        sink.close(empty)
    return out_text, short


def _check_fingerprints(embeddings: Embeddings, loaded: LoadedIndex, strict: bool) -> None:
    ours, theirs = embeddings.model_fingerprint, loaded.model_fingerprint
    if ours and theirs and ours == theirs:
        return
    if ours and theirs:
        message = f"query embeddings come from model {ours}, the index from model {theirs}"
    else:
        message = "cannot tell whether the queries and the index come from the same model (no fingerprint)"
        if not strict:
            log.debug(message)
            return
    if strict:
        raise IncompatibleModel(
            message, path=embeddings.path, hint="embed users and items with the same model, or rebuild the index"
        )
    log.warning(f"{message}; scores may be meaningless (pass --strict to refuse)")


def make_plan(
    loaded: LoadedIndex,
    *,
    k: int,
    exact: bool | None,
    search_k: int | None,
    threads: int,
    fresh_quota: float,
    fresh_days: int,
    as_of: dt.date | None,
) -> RecallPlan:
    main = loaded.main_searcher(exact=exact, search_k=search_k, threads=threads)
    delta = loaded.delta_searcher(threads=threads) if loaded.delta_count else None
    fresh_positions = np.zeros(0, dtype=np.int64)
    fresh = None
    slots = 0
    if fresh_quota > 0:
        slots = math.ceil(fresh_quota * k - 1e-9)
        as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
        since = np.datetime64(as_of - dt.timedelta(days=fresh_days - 1), "D")
        known = ~np.isnat(loaded.first_seen)
        is_fresh = known & (loaded.first_seen >= since)
        is_fresh[loaded.superseded] = False
        fresh_positions = np.flatnonzero(is_fresh).astype(np.int64)
        if len(fresh_positions):
            fresh = ExactSearcher(loaded.vectors_at(fresh_positions), threads=threads)
        else:
            log.warning(f"--fresh-quota: no item first seen since {since}; the quota is unused")
    return RecallPlan(
        index=loaded,
        main=main,
        delta=delta,
        k=k,
        blocked=loaded.superseded,
        fresh_positions=fresh_positions,
        fresh=fresh,
        fresh_slots=slots,
    )
