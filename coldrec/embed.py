"""Embeddings files: the contract between `embed`, `index` and `recall`.

An embeddings file is one Parquet file with the id column under its input name (`user_id` or
`item_id`, integer or string, kept as given), `embedding` (fixed-size list of float32,
L2-normalised) and `cold` (bool). An optional `first_seen` column (Date or Datetime) tells
`index` when an item arrived (used by `recall --fresh-quota`). The model that produced the
vectors is recorded in the file's key-value metadata (`coldrec.model_fingerprint`,
`coldrec.dim`), so an index and a query file from different models are told apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from coldrec import io, log
from coldrec.errors import (
    BadValues,
    DuplicateIds,
    EmptyInput,
    InputNotFound,
    MissingColumn,
    NullValues,
    UsageError,
    WrongDtype,
)
from coldrec.options import EmbedOptions
from coldrec.result import StageResult

FINGERPRINT_KEY = b"coldrec.model_fingerprint"
DIM_KEY = b"coldrec.dim"
ID_COLUMNS = ("user_id", "item_id")
# Parquet options of embeddings files: float vectors and unique ids gain nothing from
# dictionary pages, and trying them costs about 2x on write and on read.
EMBEDDINGS_PARQUET = {"use_dictionary": False}
# Vectors whose norm is off by more than this are renormalised on read (with a warning).
UNIT_TOLERANCE = 1e-3


@dataclass
class Embeddings:
    """Vectors read from an embeddings file; row i of `vectors` belongs to `ids[i]`."""

    ids: pl.Series  # (n,) Int64 or String, as written
    vectors: np.ndarray  # (n, dim) float32, unit norm, C-contiguous
    cold: np.ndarray  # (n,) bool
    id_column: str
    model_fingerprint: str | None
    first_seen: pl.Series | None = None  # (n,) Date, nullable
    path: Path | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32). Zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _arrow_ids(ids: pl.Series, name: str) -> pa.Array:
    array = ids.rename(name).to_arrow()
    if pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        array = array.cast(pa.string())
    return array


def embeddings_table(
    ids: pl.Series,
    vectors: np.ndarray,
    cold: np.ndarray,
    *,
    model_fingerprint: str | None,
    id_column: str | None = None,
    first_seen: pl.Series | None = None,
) -> pa.Table:
    """The Arrow table of an embeddings file (with its key-value metadata)."""
    id_column = id_column or ids.name
    if id_column not in ID_COLUMNS:
        raise MissingColumn(
            f"embeddings need an id column named user_id or item_id, got '{id_column}'",
            hint="name the ids Series user_id or item_id",
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(cold) != len(ids):
        raise BadValues(
            f"{len(ids)} ids, vectors of shape {vectors.shape} and {len(cold)} cold flags do not line up",
            hint="pass one vector and one cold flag per id",
        )
    dim = int(vectors.shape[1])
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns = {
        id_column: _arrow_ids(ids, id_column),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "cold": pa.array(np.asarray(cold, dtype=bool)),
    }
    if first_seen is not None:
        columns["first_seen"] = first_seen.cast(pl.Date).to_arrow()
    table = pa.table(columns)
    metadata = {DIM_KEY: str(dim).encode()}
    if model_fingerprint:
        metadata[FINGERPRINT_KEY] = model_fingerprint.encode()
    return table.replace_schema_metadata(metadata)


def write_embeddings(
    path: str | Path,
    ids: pl.Series,
    vectors: np.ndarray,
    cold: np.ndarray,
    *,
    model_fingerprint: str | None,
    first_seen: pl.Series | None = None,
) -> Path:
    """Write an embeddings file atomically. `ids.name` must be user_id or item_id.

    vectors: (n, dim), normalised here if they are not already. cold: (n,) bool.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.size and not np.isfinite(vectors).all():
        raise BadValues(
            "embedding vectors contain NaN or inf", path=path, hint="check the model weights and inputs"
        )
    table = embeddings_table(
        ids, normalise_rows(vectors), cold, model_fingerprint=model_fingerprint, first_seen=first_seen
    )
    path = Path(path)
    with io.atomic_file(path) as temp:
        pq.write_table(table, temp, **EMBEDDINGS_PARQUET)
    return path


def read_fingerprint(path: str | Path) -> str | None:
    """The model fingerprint stored in an embeddings file's metadata (None if absent)."""
    files = io.parquet_files(path)
    metadata = pq.read_schema(files[0]).metadata or {}
    value = metadata.get(FINGERPRINT_KEY)
    return value.decode() if value else None


def read_embeddings(path: str | Path, *, id_column: str | None = None) -> Embeddings:
    """Read and validate an embeddings file.

    Checks: exactly one id column (or `id_column`), no null or duplicate ids, `embedding` a
    float vector of one fixed length, every value finite and no zero vector. Vectors that are
    not unit length are renormalised (with a warning), so cosine = dot product downstream.
    """
    path = Path(path)
    frame = io.read_parquet(path)
    schema = frame.schema
    if id_column is None:
        present = [name for name in ID_COLUMNS if name in schema]
        if len(present) != 1:
            raise MissingColumn(
                "embeddings file needs exactly one id column (user_id or item_id), found "
                + (", ".join(present) if present else "none"),
                path=path,
                hint=f"found columns: {', '.join(schema.names())}; write it with `coldrec embed`",
            )
        id_column = present[0]
    elif id_column not in schema:
        raise MissingColumn(
            f"missing column '{id_column}'",
            path=path,
            hint=f"found columns: {', '.join(schema.names())}; pass {id_column.split('_')[0]} embeddings",
        )
    id_dtype = schema[id_column]
    if not (id_dtype.is_integer() or id_dtype == pl.String):
        raise WrongDtype(
            f"id column should be integer or string, found {id_dtype}",
            path=path,
            column=id_column,
            hint="cast the ids before writing the file",
        )
    if "embedding" not in schema:
        raise MissingColumn(
            "missing column 'embedding'",
            path=path,
            hint=f"found columns: {', '.join(schema.names())}; write it with `coldrec embed`",
        )
    vectors = _vectors(frame["embedding"], path)
    ids = frame[id_column]
    if ids.null_count():
        raise NullValues(
            f"{ids.null_count()} null id(s)", path=path, column=id_column, hint="drop rows with null ids"
        )
    if ids.n_unique() != len(ids):
        raise DuplicateIds(
            f"{len(ids) - ids.n_unique()} duplicate id(s)",
            path=path,
            column=id_column,
            hint="keep one embedding per id",
        )
    cold = np.zeros(len(frame), dtype=bool)
    if "cold" in schema:
        if schema["cold"] != pl.Boolean:
            raise WrongDtype(
                f"should be boolean, found {schema['cold']}", path=path, column="cold", hint="cast it to bool"
            )
        cold = frame["cold"].fill_null(False).to_numpy().astype(bool)
    first_seen = None
    if "first_seen" in schema:
        dtype = schema["first_seen"]
        if not (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
            raise WrongDtype(
                f"should be Date or Datetime, found {dtype}",
                path=path,
                column="first_seen",
                hint="cast it to a date (the day the item arrived)",
            )
        first_seen = frame["first_seen"].cast(pl.Date)
    return Embeddings(
        ids=ids,
        vectors=vectors,
        cold=cold,
        id_column=id_column,
        model_fingerprint=read_fingerprint(path),
        first_seen=first_seen,
        path=path,
    )


def _vectors(column: pl.Series, path: Path) -> np.ndarray:
    dtype = column.dtype
    if not (isinstance(dtype, (pl.Array, pl.List)) and dtype.inner.is_float()):
        raise WrongDtype(
            f"should be a fixed-size list of float, found {dtype}",
            path=path,
            column="embedding",
            hint="write float32 vectors (pl.Array(pl.Float32, dim))",
        )
    if column.null_count():
        raise NullValues(
            f"{column.null_count()} null vector(s)", path=path, column="embedding", hint="drop those rows"
        )
    if isinstance(dtype, pl.List):
        lengths = column.list.len().unique()
        if len(lengths) > 1:
            raise BadValues(
                f"vectors of different lengths {sorted(lengths.to_list())}",
                path=path,
                column="embedding",
                hint="every embedding must have the model's dim",
            )
        width = int(lengths[0]) if len(lengths) else 0
        column = column.list.to_array(width)
    if len(column) == 0:
        return np.zeros((0, column.dtype.size), dtype=np.float32)
    vectors = np.ascontiguousarray(column.to_numpy(), dtype=np.float32)  # (n, dim)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise BadValues(
            f"{int((~finite).sum())} vector(s) contain NaN or inf",
            path=path,
            column="embedding",
            hint="re-embed with a healthy model (check its training metrics)",
        )
    norms = np.linalg.norm(vectors, axis=1)  # (n,)
    zero = norms == 0
    if zero.any():
        raise BadValues(
            f"{int(zero.sum())} zero vector(s) (no direction, cosine undefined)",
            path=path,
            column="embedding",
            hint="drop those rows or re-embed them",
        )
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    if off.any():
        log.warning(f"{path}: {int(off.sum())} embedding(s) not unit length; renormalised")
        vectors = np.ascontiguousarray(vectors / norms[:, None], dtype=np.float32)
    return vectors


# --------------------------------------------------------------------------- computing embeddings

# Rows encoded and embedded per chunk: bounds memory on huge tables (the model itself
# batches inside a chunk).
EMBED_CHUNK_ROWS = 262_144
# Rows per forward pass. bench/embed.py on 2 CPU cores: 1024 is the fastest (the MLP's
# activations stay in cache); 8192 was ~35% slower.
EMBED_BATCH_ROWS = EmbedOptions.batch_size


def model_fingerprint(model: Any) -> str:
    """The identity of a loaded model: its weights' sha256 prefix (as recorded in spec.json)."""
    explicit = getattr(model, "fingerprint", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    from coldrec.model import SPEC_FILE, WEIGHTS_FILE

    directory = Path(model.directory)
    try:
        recorded = json.loads((directory / SPEC_FILE).read_text()).get("weights_sha256")
    except (OSError, json.JSONDecodeError):
        recorded = None
    return recorded or io.content_fingerprint(directory / WEIGHTS_FILE)


def _entity_args(users: str | Path | None, items: str | Path | None) -> tuple[str, Path]:
    if (users is None) == (items is None):
        raise UsageError(
            "pass exactly one of --users and --items",
            hint="coldrec embed --model MODEL --users users.parquet --out user_emb.parquet",
        )
    return ("user", Path(users)) if users is not None else ("item", Path(items))  # type: ignore[arg-type]


def _latest_stats(stats: str | Path | None, side: str, cold: bool) -> tuple[pl.DataFrame | None, Path | None]:
    """The `{side}_stats_latest.parquet` table of a stats directory (or a file given directly)."""
    if stats is None or cold:
        return None, None
    stats = Path(stats)
    if stats.is_dir():
        from coldrec.stats import ITEM_LATEST_FILE, USER_LATEST_FILE

        path = stats / (USER_LATEST_FILE if side == "user" else ITEM_LATEST_FILE)
        if not path.exists():
            raise InputNotFound(
                f"no {path.name} in the stats directory",
                path=stats,
                hint="point --stats at a directory written by `coldrec stats`",
            )
    else:
        path = stats
    return io.read_parquet(path), path


def _content_table(path: Path, id_column: str) -> pl.LazyFrame:
    from coldrec.schema import check_content_table

    frame = io.scan_parquet(path)
    check_content_table(frame, id_column, path)
    return frame


def embed_entities(
    model_dir: str | Path | Any,
    *,
    users: str | Path | None = None,
    items: str | Path | None = None,
    stats: str | Path | None = None,
    cold: bool = False,
    batch_size: int = EMBED_BATCH_ROWS,
    chunk_rows: int = EMBED_CHUNK_ROWS,
) -> Embeddings:
    """Embed a users or items table in memory (recall --model uses this).

    `model_dir` is a model directory or an already loaded model. With `cold` every row is
    embedded from content alone; otherwise known ids use their id embedding and the latest
    statistics, unknown ids fall back to content (their `cold` flag is true).
    """
    side, path = _entity_args(users, items)
    loaded = _load(model_dir)
    chunks = list(_embed_chunks(loaded, side, path, stats, cold, batch_size, chunk_rows))
    id_column = f"{side}_id"
    if not chunks:
        raise EmptyInput(f"{side}s table has no rows", path=path, hint="check the file")
    return Embeddings(
        ids=pl.concat([c[0] for c in chunks]).rename(id_column),
        vectors=np.concatenate([c[1] for c in chunks]),
        cold=np.concatenate([c[2] for c in chunks]),
        id_column=id_column,
        model_fingerprint=model_fingerprint(loaded),
        path=path,
    )


def _load(model_dir: str | Path | Any) -> Any:
    if isinstance(model_dir, (str, Path)):
        from coldrec.model import load_model

        return load_model(model_dir)
    return model_dir


def _embed_chunks(
    loaded: Any, side: str, path: Path, stats: str | Path | None, cold: bool, batch_size: int, chunk_rows: int
) -> Iterator[tuple[pl.Series, np.ndarray, np.ndarray]]:
    """(ids, vectors (n, dim), cold (n,)) per chunk of the table, in table order."""
    id_column = f"{side}_id"
    frame = _content_table(path, id_column)
    stats_table, stats_path = _latest_stats(stats, side, cold)
    rows = frame.select(pl.len()).collect().item()
    with log.progress(f"embedding {side}s", rows) as bar:
        for start in range(0, rows, chunk_rows):
            table = frame.slice(start, chunk_rows).collect()
            chunk_stats = None
            if stats_table is not None:
                if stats_table.schema.get(id_column) == table.schema[id_column]:
                    chunk_stats = stats_table.join(table.select(id_column), on=id_column, how="semi")
                else:
                    chunk_stats = stats_table  # let the model report the id type mismatch
            vectors, cold_mask = loaded.embed(
                side, table, stats=chunk_stats, cold=cold, batch_size=batch_size, path=path,
                stats_path=stats_path or "stats",
            )
            vectors = np.asarray(vectors, dtype=np.float32)  # (chunk, dim)
            if not np.isfinite(vectors).all():
                raise BadValues(
                    f"the model produced NaN/inf embeddings for rows {start}..{start + len(table) - 1}",
                    path=path,
                    hint="check the content values (huge numbers?) and the model's training metrics",
                )
            bar.advance(len(table))
            yield table[id_column], normalise_rows(vectors), np.asarray(cold_mask, dtype=bool)


@dataclass
class EmbedResult(StageResult):
    out: Path
    side: str
    rows: int
    cold_rows: int
    dim: int
    seconds: float

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return (
            f"embed: {self.rows:,} {self.side}s ({self.cold_rows:,} cold), dim {self.dim} -> {self.out} "
            f"in {self.seconds:.1f}s ({rate:,.0f}/s)"
        )


def run_embed(
    *,
    model: str | Path,
    out: str | Path,
    users: str | Path | None = None,
    items: str | Path | None = None,
    stats: str | Path | None = None,
    cold: bool = False,
    batch_size: int = EMBED_BATCH_ROWS,
    chunk_rows: int = EMBED_CHUNK_ROWS,
    threads: int | None = None,
) -> EmbedResult:
    """The `coldrec embed` command: a users or items table -> an embeddings file, atomically.

    Streams the table in chunks (bounded memory) into one Parquet file carrying the model
    fingerprint in its metadata. A content column the model needs that is missing or of the
    wrong type is a SchemaError (nothing written); unseen category values map to the
    out-of-vocabulary slot.
    """
    started = time.monotonic()
    side, path = _entity_args(users, items)
    out = Path(out)
    if io.is_stdout(out):
        raise UsageError("embed writes Parquet, not stdout", hint="pass --out emb.parquet")
    io.check_output_file(out)
    if batch_size < 1 or chunk_rows < 1:
        raise UsageError("batch size and chunk rows must be positive", hint="leave the defaults")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}", hint="pass --threads 1")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    loaded = _load(model)
    fingerprint = model_fingerprint(loaded)
    rows = cold_rows = 0
    dim = int(loaded.dim)
    chunks = _embed_chunks(loaded, side, path, stats, cold, batch_size, chunk_rows)
    with io.output_lock(out, "coldrec embed"), io.atomic_file(out) as temp:
        writer = None
        try:
            for ids, vectors, cold_mask in chunks:
                table = embeddings_table(ids, vectors, cold_mask, model_fingerprint=fingerprint)
                if writer is None:
                    writer = pq.ParquetWriter(temp, table.schema, **EMBEDDINGS_PARQUET)
                    dim = int(vectors.shape[1])
                writer.write_table(table)
                rows += len(ids)
                cold_rows += int(cold_mask.sum())
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise EmptyInput(f"{side}s table has no rows", path=path, hint="check the file")
    if stats is None and not cold and loaded.spec.side(side).stats_columns:
        # Known ids got all-zero statistics: a train/serve mismatch worth a word.
        log.warning(f"the model was trained with {side} statistics but no --stats was given; "
                    f"known {side}s were embedded with zero statistics (pass --stats STATS_DIR)")
    return EmbedResult(out=out, side=side, rows=rows, cold_rows=cold_rows, dim=dim, seconds=time.monotonic() - started)
